"""SQL for reconciliation: report runs, their raw bytes, and the set-wise statements of each stage.

No statement here runs per row, and no report is read into Python: the raw bytes go to PostgreSQL
in chunks as they arrive, PostgreSQL splits and parses them (normalization), and matching and
classification are joins over the run's rows (docs/reconciliation.md). Each stage runs in one
transaction of the caller's, so a run killed mid-stage is simply taken up again at that stage.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import structlog

from server.domain.ledger import settlement_bank
from server.domain.money import MINOR_UNITS
from server.domain.payment_states import UNDECIDED_STATES, PaymentState
from server.domain.reconciliation import (
    ERROR_LENGTH_MAX,
    FINAL_RUN_STATUSES,
    IN_FORCE_WINDOW_DAYS,
    SELF_CLOSING,
    Difference,
    HeaderColumns,
    ReportKind,
    ReportMapping,
    RowType,
    RunStatus,
)
from server.domain.refund_states import RefundState


@dataclass(frozen=True)
class ReportRunRecord:
    id: uuid.UUID
    provider: str
    kind: ReportKind
    file_name: str
    content_type: str
    sha256: str
    byte_count: int
    status: RunStatus
    failure_reason: str
    row_count: int
    invalid_row_count: int
    matched_row_count: int
    unmatched_row_count: int
    opened_case_count: int
    period_start: date | None
    period_end: date | None
    superseded_by: uuid.UUID | None
    created_at: datetime
    completed_at: datetime | None

    @classmethod
    def of(cls, row: asyncpg.Record) -> ReportRunRecord:
        return cls(
            id=row["id"],
            provider=row["provider"],
            kind=ReportKind(row["kind"]),
            file_name=row["file_name"],
            content_type=row["content_type"],
            sha256=row["sha256"],
            byte_count=row["byte_count"],
            status=RunStatus(row["status"]),
            failure_reason=row["failure_reason"],
            row_count=row["row_count"],
            invalid_row_count=row["invalid_row_count"],
            matched_row_count=row["matched_row_count"],
            unmatched_row_count=row["unmatched_row_count"],
            opened_case_count=row["opened_case_count"],
            period_start=row["period_start"],
            period_end=row["period_end"],
            superseded_by=row["superseded_by"],
            created_at=row["created_at"],
            completed_at=row["completed_at"],
        )


@dataclass(frozen=True)
class ProviderSettings:
    """What a provider's reports are compared with (provider_settings)."""

    provider: str
    fee_bps: Decimal
    fee_fixed_minor_units: int
    refund_fee_fixed_minor_units: int
    fee_tolerance_minor_units: int
    amount_tolerance_minor_units: int
    fx_tolerance_minor_units: int
    settlement_delay_days: int
    settlement_window_days: int


log = structlog.get_logger(__name__)

_RUN_COLUMNS = (
    "id, provider, kind, file_name, content_type, sha256, byte_count, status, failure_reason, row_count,"
    " invalid_row_count, matched_row_count, unmatched_row_count, opened_case_count, period_start, period_end,"
    " superseded_by, created_at, completed_at"
)
_FINAL = [status.value for status in FINAL_RUN_STATUSES]


# -- runs ------------------------------------------------------------------------------------------


async def replayed_run(
    connection: asyncpg.Connection, provider: str, kind: ReportKind, sha256: str
) -> ReportRunRecord | None:
    """The run of an earlier upload of the same file (same provider, kind and SHA-256) that did not fail."""
    row = await connection.fetchrow(
        f"SELECT {_RUN_COLUMNS} FROM report_runs WHERE provider = $1 AND kind = $2 AND sha256 = $3"
        f" AND status <> '{RunStatus.FAILED}'",
        provider,
        kind.value,
        sha256,
    )
    return None if row is None else ReportRunRecord.of(row)


async def insert_run(
    connection: asyncpg.Connection,
    run_id: uuid.UUID,
    provider: str,
    kind: ReportKind,
    file_name: str,
    content_type: str,
    sha256: str,
    byte_count: int,
) -> ReportRunRecord | None:
    """A new RECEIVED run, or None when a run of the same file that did not fail exists (a concurrent
    upload of the same file waits on the unique index and then finds the first one's)."""
    row = await connection.fetchrow(
        f"""
        INSERT INTO report_runs (id, provider, kind, file_name, content_type, sha256, byte_count, status)
        VALUES ($1, $2, $3, $4, $5, $6, $7, '{RunStatus.RECEIVED}')
        ON CONFLICT (provider, kind, sha256) WHERE status <> '{RunStatus.FAILED}' DO NOTHING
        RETURNING {_RUN_COLUMNS}
        """,
        run_id,
        provider,
        kind.value,
        file_name,
        content_type,
        sha256,
        byte_count,
    )
    return None if row is None else ReportRunRecord.of(row)


async def insert_chunks(connection: asyncpg.Connection, run_id: uuid.UUID, first_seq: int, chunks: list[bytes]) -> None:
    """Store the next chunks of a run's raw bytes, numbered from `first_seq`, in one round trip."""
    await connection.copy_records_to_table(
        "report_chunks",
        records=[(run_id, first_seq + offset, chunk) for offset, chunk in enumerate(chunks)],
        columns=("run_id", "seq", "bytes"),
    )


async def set_digest(connection: asyncpg.Connection, run_id: uuid.UUID, sha256: str, byte_count: int) -> None:
    """The SHA-256 and size of the bytes stored, once all of them are."""
    await connection.execute(
        "UPDATE report_runs SET sha256 = $2, byte_count = $3, updated_at = now() WHERE id = $1",
        run_id,
        sha256,
        byte_count,
    )


async def start_normalizing(connection: asyncpg.Connection, run_id: uuid.UUID) -> None:
    await connection.execute(
        f"UPDATE report_runs SET status = '{RunStatus.NORMALIZING}', updated_at = now() WHERE id = $1", run_id
    )


#: Memory each sort or hash of a stage statement may use before it spills to disk: a report's rows joined
#: to the payments they settle are hashed in memory up to a couple of million rows.
STAGE_WORK_MEM_MB = 64


async def limit_statements(connection: asyncpg.Connection, timeout_s: int) -> None:
    """The settings of a stage's transaction. Each statement may take up to `timeout_s` (a stage over a
    big report), and stops within a second of its server's death (PostgreSQL checks that the client is
    still there: a killed server's stage does not hold the run's lock until it ends). Its joins hash in
    up to STAGE_WORK_MEM_MB, and without JIT compilation: the planner takes a report's statements for
    expensive enough to compile, which costs about a second each and saves less."""
    await connection.execute(  # one round trip
        f"SET LOCAL statement_timeout = {int(timeout_s) * 1000}; SET LOCAL client_connection_check_interval = 1000;"
        f" SET LOCAL jit = off; SET LOCAL work_mem = '{int(STAGE_WORK_MEM_MB)}MB'"
    )


#: How long a stage waits for another stage's ANALYZE of the same table before it plans without one.
ANALYZE_LOCK_WAIT_MS = 200


async def analyze_if_free(connection: asyncpg.Connection, table: str) -> None:
    """ANALYZE `table` in the caller's transaction (its own new rows counted), unless another stage's
    transaction is analyzing it: an ANALYZE holds its lock until its transaction ends, so waiting would
    make the stages of concurrent runs take turns. The planner then goes on with the statistics it has."""
    lock_timeout = await connection.fetchval("SELECT current_setting('lock_timeout')")
    try:
        async with connection.transaction():  # a savepoint: a lock not had undoes only this
            await connection.execute(f"SET LOCAL lock_timeout = {ANALYZE_LOCK_WAIT_MS}")
            await connection.execute(f"ANALYZE {table}")
    except asyncpg.LockNotAvailableError:
        log.info("recon.analyze_skipped", table=table)
    finally:
        await connection.execute("SELECT set_config('lock_timeout', $1, true)", lock_timeout)


async def get_run(connection: asyncpg.Connection, run_id: uuid.UUID) -> ReportRunRecord | None:
    row = await connection.fetchrow(f"SELECT {_RUN_COLUMNS} FROM report_runs WHERE id = $1", run_id)
    return None if row is None else ReportRunRecord.of(row)


async def claim_run(connection: asyncpg.Connection, lease_s: float) -> ReportRunRecord | None:
    """The oldest unfinished run no live worker holds, now held by the caller for `lease_s`."""
    row = await connection.fetchrow(
        f"""
        UPDATE report_runs SET lease_until = now() + make_interval(secs => $2), updated_at = now()
        WHERE id = (
            SELECT id FROM report_runs
            WHERE NOT (status = ANY($1::text[])) AND (lease_until IS NULL OR lease_until < now())
            ORDER BY created_at
            FOR UPDATE SKIP LOCKED
            LIMIT 1
        )
        RETURNING {_RUN_COLUMNS}
        """,
        _FINAL,
        lease_s,
    )
    return None if row is None else ReportRunRecord.of(row)


async def lock_run(connection: asyncpg.Connection, run_id: uuid.UUID, lease_s: float) -> ReportRunRecord | None:
    """The run, locked for this transaction (a stage's writes and its status move together), its lease
    renewed for the caller."""
    row = await connection.fetchrow(
        f"""
        UPDATE report_runs SET lease_until = now() + make_interval(secs => $2) WHERE id = $1
        RETURNING {_RUN_COLUMNS}
        """,
        run_id,
        lease_s,
    )
    return None if row is None else ReportRunRecord.of(row)


async def fail_run(connection: asyncpg.Connection, run_id: uuid.UUID, reason: str) -> None:
    await connection.execute(
        f"""
        UPDATE report_runs SET status = '{RunStatus.FAILED}', failure_reason = $2, completed_at = now(),
               updated_at = now(), lease_until = NULL
        WHERE id = $1 AND NOT (status = ANY($3::text[]))
        """,
        run_id,
        reason[:ERROR_LENGTH_MAX],
        _FINAL,
    )


async def stored_chunks(connection: asyncpg.Connection, run_id: uuid.UUID) -> AsyncIterator[bytes]:
    """The run's raw bytes, a stored chunk at a time, in order (one round trip each)."""
    seq = 0
    while (
        chunk := await connection.fetchval(
            "SELECT bytes FROM report_chunks WHERE run_id = $1 AND seq = $2", run_id, seq
        )
    ) is not None:
        yield chunk
        seq += 1


async def header_line(connection: asyncpg.Connection, run_id: uuid.UUID, bytes_max: int) -> bytes:
    """The first line of the run's raw bytes (at most `bytes_max` of them)."""
    head: bytes = await connection.fetchval(
        "SELECT substring(bytes FROM 1 FOR $2) FROM report_chunks WHERE run_id = $1 AND seq = 0", run_id, bytes_max
    )
    return (head or b"").split(b"\n", 1)[0]


async def provider_settings(connection: asyncpg.Connection, provider: str) -> ProviderSettings | None:
    row = await connection.fetchrow(
        """
        SELECT provider, fee_bps, fee_fixed_minor_units, refund_fee_fixed_minor_units, fee_tolerance_minor_units,
               amount_tolerance_minor_units, fx_tolerance_minor_units, settlement_delay_days,
               settlement_window_days
        FROM provider_settings WHERE provider = $1
        """,
        provider,
    )
    return None if row is None else ProviderSettings(**dict(row))


# -- stage 2: normalization --------------------------------------------------------------------------


#: A data line's fields: split on commas, or (a line with a double quote) by the CSV rules for quoted
#: fields ("a, b" is one field, "" inside quotes is one quote).
def _split(line: str) -> str:
    """A line's fields: split on commas, or (a line with a double quote) by the CSV rules for quoted
    fields ("a, b" is one field, "" inside quotes is one quote)."""
    return rf"""
        CASE WHEN strpos({line}, '"') = 0 THEN string_to_array({line}, ',')
             ELSE ARRAY(SELECT replace(regexp_replace(m[1], '^"(.*)"$', '\1'), '""', '"')
                        FROM regexp_matches({line} || ',', '("(?:[^"]|"")*"|[^,]*),', 'g') AS m)
        END
    """


#: What a valid row's fields look like. A field that matches is cast; the first check that fails names
#: the field and what is wrong with it (_row_error).
_DECIMAL = r"^-?[0-9]+(\.[0-9]+)?$"
#: The longest amount a row may write (sign, digits and point): longer is not an amount, and is never cast.
_AMOUNT_TEXT_MAX = 40
_DATE = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
#: The years a settlement date may fall in.
_YEARS = ("1900", "2999")


def _plain(number: str, text: str) -> str:
    """`number` (the field `text` cast to numeric) is written as `text`: a plain decimal, no exponent
    (1e3), sign (+5), blanks or leading zeros; -0.00 is 0.00 written with its sign."""
    return f"({number}::text = {text} OR '-' || {number}::text = {text})"


def _amount_error(name: str) -> str:
    """The CASE branches that name what is wrong with an amount field, for a clear row error (each cast
    guarded by the branches before it)."""
    plain = f"""
        '{name} ' || quote_nullable(left({name}, 40)) || ' is not a plain decimal amount (such as 12.34)'
    """
    return f"""
        WHEN NOT ({name} ~ '{_DECIMAL}') OR length({name}) > {_AMOUNT_TEXT_MAX} THEN {plain}
        WHEN NOT {_plain(f"{name}::numeric", name)} THEN {plain}
        WHEN scale({name}::numeric) > digits THEN
            '{name} ' || {name} || ' has more fraction digits than ' || currency || ' allows (' || digits || ')'
    """


#: Why a row (of the judged columns: the canonical fields as text, their `width`, the row type's
#: `canonical` name, the currency's ISO `code` and `digits`) is not valid; NULL for a valid row. $4 is
#: the provider's type words, $6 the header's width. No cast runs before the pattern that makes it safe.
_ROW_ERROR = f"""
    CASE
        WHEN width <> $6 THEN 'has ' || width || ' fields where the header has ' || $6 || ' (a cut or malformed line)'
        WHEN provider_transaction_id IS NULL THEN 'has no transaction id'
        WHEN canonical IS NULL THEN
            'type ' || quote_nullable(left(type, 40)) || ' is not one of ' || array_to_string($4, ', ')
        WHEN code IS NULL THEN 'currency ' || quote_nullable(left(currency, 40)) || ' is not an ISO 4217 code'
        {_amount_error("gross")}
        {_amount_error("fee")}
        {_amount_error("net")}
        WHEN net::numeric <> gross::numeric - fee::numeric THEN
            'net ' || net || ' is not gross ' || gross || ' less fee ' || fee
        WHEN NOT (settlement_date ~ '{_DATE}')
             OR NOT (substr(settlement_date, 1, 4) BETWEEN '{_YEARS[0]}' AND '{_YEARS[1]}'
                     AND substr(settlement_date, 6, 2) BETWEEN '01' AND '12'
                     AND substr(settlement_date, 9, 2) BETWEEN '01' AND '31') THEN
            'settlement_date ' || quote_nullable(left(settlement_date, 40)) || ' is not a date such as 2026-11-30'
        -- its first of the month plus its day less one stays in its month (2026-02-30 does not)
        WHEN extract(month FROM (substr(settlement_date, 1, 8) || '01')::date
                                + (substr(settlement_date, 9, 2)::int - 1)) <> substr(settlement_date, 6, 2)::int THEN
            'settlement_date ' || settlement_date || ' is not a day of its month'
    END
"""

#: A row is valid, its fields already cast (gross_n, fee_n, net_n, date_d): the same rules as _ROW_ERROR,
#: decided by the casts and their written forms instead of patterns. NULL (a NaN amount) is not valid.
_CAST_VALID = f"""
    coalesce(
        width = $6 AND provider_transaction_id IS NOT NULL AND canonical IS NOT NULL AND code IS NOT NULL
        AND {_plain("gross_n", "gross")} AND {_plain("fee_n", "fee")} AND {_plain("net_n", "net")}
        AND greatest(length(gross), length(fee), length(net)) <= {_AMOUNT_TEXT_MAX}
        AND scale(gross_n) <= digits AND scale(fee_n) <= digits AND scale(net_n) <= digits
        AND net_n = gross_n - fee_n
        AND date_d BETWEEN '{_YEARS[0]}-01-01' AND '{_YEARS[1]}-12-31'
        AND to_char(date_d, 'YYYY-MM-DD') = settlement_date,
        false
    )
"""


def _normalize_sql(source: str, *, cast_first: bool) -> str:
    """INSERT the canonical rows of `source` (a subquery of row_number, width and the canonical fields
    as text) into report_rows, each valid or with the reason it is not ($1 run id, $2/$3 currency codes
    and digits, $4/$5 the provider's type words and their canonical types, $6 the header's width).

    `cast_first`: every amount and date is cast up front and a row's validity decided from the casts
    (a few operations a row: the common case, a well-formed report); the statement fails with a
    DataError when any field does not cast at all, and is then run without it, where each row's fields
    are checked against their patterns before any cast (_ROW_ERROR)."""
    casts = (
        ", gross::numeric AS gross_n, fee::numeric AS fee_n, net::numeric AS net_n, settlement_date::date AS date_d"
        if cast_first
        else ""
    )
    error = (
        f"CASE WHEN {_CAST_VALID} THEN NULL ELSE coalesce({_ROW_ERROR}, 'does not parse') END"
        if cast_first
        else _ROW_ERROR
    )

    def value(field: str, cast: str, cast_column: str) -> str:
        return f"CASE WHEN error IS NULL THEN {cast_column if cast_first else f'{field}::{cast}'} END"

    # each level computed once per row (OFFSET 0 keeps the planner from inlining it into every use)
    return f"""
        INSERT INTO report_rows (run_id, row_number, provider_transaction_id, source_id, reference, payout_id, type,
                                 status, currency_code, gross, fee, net, settlement_date, error)
        SELECT $1, row_number, left(provider_transaction_id, 255), left(source_id, 255), left(reference, 255),
               left(payout_id, 255), canonical, left(status, 64), CASE WHEN error IS NULL THEN currency END,
               {value("gross", "numeric", "gross_n")}, {value("fee", "numeric", "fee_n")},
               {value("net", "numeric", "net_n")}, {value("settlement_date", "date", "date_d")},
               'line ' || (row_number + 1) || ': ' || left(error, {ERROR_LENGTH_MAX - 20})
        FROM (
            SELECT judged.*, {error} AS error
            FROM (
                SELECT f.*, t.canonical, c.code, c.digits {casts}
                FROM ({source}) f
                LEFT JOIN (SELECT unnest($2::text[]) AS code, unnest($3::int[]) AS digits) c ON c.code = f.currency
                LEFT JOIN unnest($4::text[], $5::text[]) AS t(word, canonical) ON t.word = f.type
                OFFSET 0
            ) judged
            OFFSET 0
        ) checked
    """


def _fields(position: dict[str, int], column: Callable[[int], str], width: str) -> str:
    """The canonical fields' select list over a row's columns (`column(i)`, 1-based); `width` its count."""

    def text(field: str) -> str:
        return f"coalesce({column(position[field])}, '')"

    def optional(field: str) -> str:
        return f"nullif({text(field)}, '')"

    return f"""
        {width} AS width,
        {optional("provider_transaction_id")} AS provider_transaction_id, {optional("source_id")} AS source_id,
        {optional("reference")} AS reference, {optional("payout_id")} AS payout_id, {text("type")} AS type,
        {optional("status")} AS status, {text("currency")} AS currency, {text("gross")} AS gross,
        {text("fee")} AS fee, {text("net")} AS net, {text("settlement_date")} AS settlement_date
    """


#: A staged line without its carriage return (a file with CRLF line ends).
_LINE = "rtrim(l.line, E'\\r')"


class UnreadableReport(Exception):
    """The report's bytes are not UTF-8 text PostgreSQL can read as lines; nothing was kept."""


async def normalize_rows(
    connection: asyncpg.Connection,
    run_id: uuid.UUID,
    mapping: ReportMapping,
    columns: HeaderColumns,
    rows_max: int,
    chunks: Callable[[], AsyncIterator[bytes]],
) -> int | None:
    """Stage 2, in the caller's transaction: PostgreSQL reads the run's raw bytes (streamed to it by
    `chunks`, a fresh iterator each call) and casts each data line into a canonical row (report_rows),
    or keeps it with its line number and the reason it does not parse. The number of data rows, or None
    (nothing written) when there are more than `rows_max`. UnreadableReport for bytes that are not UTF-8.

    A well-formed CSV file is parsed by COPY itself, into a staging table of the header's columns; a file
    with a malformed line (another number of fields, an unterminated quote) is read line by line instead
    and its lines split in SQL, so that each bad line is kept with its error."""
    position = dict(columns.positions)
    types = list(mapping.types)
    canonical = [mapping.types[name].value for name in types]
    arguments = [run_id, list(MINOR_UNITS), list(MINOR_UNITS.values()), types, canonical, columns.width]
    staged = ", ".join(f"c{i} text" for i in range(1, columns.width + 1))
    try:
        async with connection.transaction():  # a savepoint: a file COPY cannot parse as CSV undoes only this
            await connection.execute(
                f"CREATE TEMP TABLE recon_fields (n bigint GENERATED ALWAYS AS IDENTITY, {staged})"
            )
            await connection.copy_to_table(
                "recon_fields",
                source=chunks(),
                columns=[f"c{i}" for i in range(1, columns.width + 1)],
                format="csv",
                header=True,
                encoding="UTF8",
            )
            count: int = await connection.fetchval("SELECT count(*) FROM recon_fields")
            if count > rows_max:
                return None
            source = (
                f"SELECT n AS row_number, {_fields(position, lambda i: f'c{i}', str(columns.width))} FROM recon_fields"
            )
            try:
                async with connection.transaction():
                    await connection.execute(_normalize_sql(source, cast_first=True), *arguments)
            except asyncpg.DataError:  # a field that does not cast: each row checked field by field
                await connection.execute(_normalize_sql(source, cast_first=False), *arguments)
            await connection.execute("DROP TABLE recon_fields")
            return count
    except (asyncpg.CharacterNotInRepertoireError, asyncpg.UntranslatableCharacterError) as error:
        raise UnreadableReport(str(error)) from None
    except asyncpg.BadCopyFileFormatError:
        pass  # a malformed line: read the file line by line
    try:
        async with connection.transaction():
            await connection.execute("CREATE TEMP TABLE recon_lines (n bigint GENERATED ALWAYS AS IDENTITY, line text)")
            # each line one field: delimiter and quote are bytes no report holds
            await connection.copy_to_table(
                "recon_lines",
                source=chunks(),
                columns=["line"],
                format="csv",
                delimiter="\x01",
                quote="\x02",
                encoding="UTF8",
            )
            count = await connection.fetchval("SELECT count(*) FROM recon_lines WHERE n > 1 AND line IS NOT NULL")
            if count > rows_max:
                return None
            fields = _fields(position, lambda i: f"s.fields[{i}]", "cardinality(s.fields)")
            split = f"""
                SELECT row_number() OVER (ORDER BY l.n) AS row_number, {fields}
                FROM recon_lines l, LATERAL (SELECT {_split(_LINE)} AS fields OFFSET 0) s
                WHERE l.n > 1 AND l.line IS NOT NULL
            """
            await connection.execute(_normalize_sql(split, cast_first=False), *arguments)
            await connection.execute("DROP TABLE recon_lines")
            return count
    except (asyncpg.CharacterNotInRepertoireError, asyncpg.UntranslatableCharacterError) as error:
        raise UnreadableReport(str(error)) from None
    except asyncpg.BadCopyFileFormatError as error:
        raise UnreadableReport(f"its lines could not be read ({error})") from None


async def finish_normalizing(connection: asyncpg.Connection, run_id: uuid.UUID) -> ReportRunRecord:
    """The run's counts and period from its rows; the run moves on to MATCHING. An earlier run of the same
    provider and kind whose period overlaps this one's, and that nothing superseded yet, is superseded."""
    row = await connection.fetchrow(
        f"""
        WITH counted AS (
            SELECT count(*) AS rows, count(*) FILTER (WHERE error IS NOT NULL) AS invalid,
                   min(settlement_date) FILTER (WHERE type <> '{RowType.PAYOUT}') AS period_start,
                   max(settlement_date) FILTER (WHERE type <> '{RowType.PAYOUT}') AS period_end
            FROM report_rows WHERE run_id = $1
        )
        UPDATE report_runs r SET status = '{RunStatus.MATCHING}', row_count = c.rows, invalid_row_count = c.invalid,
               period_start = c.period_start, period_end = c.period_end, updated_at = now()
        FROM counted c WHERE r.id = $1
        RETURNING {", ".join(f"r.{column.strip()}" for column in _RUN_COLUMNS.split(","))}
        """,
        run_id,
    )
    run = ReportRunRecord.of(row)
    # the rows just written are most of what the next stage joins: without statistics for them, the
    # planner takes the run for a few rows and joins them by nested loops
    await analyze_if_free(connection, "report_rows")
    if run.period_start is not None:
        await connection.execute(
            f"""
            UPDATE report_runs SET superseded_by = $1, updated_at = now()
            WHERE provider = $2 AND kind = $3 AND id <> $1 AND superseded_by IS NULL
              AND status <> '{RunStatus.FAILED}' AND created_at <= $6
              AND period_start <= $5 AND period_end >= $4
            """,
            run.id,
            run.provider,
            run.kind.value,
            run.period_start,
            run.period_end,
            run.created_at,
        )
    return run


# -- stages 3 and 4: matching and classification -----------------------------------------------------

#: A payment's money is captured at the provider (a settlement row is expected for it).
_CAPTURED = [
    PaymentState.SUCCEEDED.value,
    PaymentState.PARTIALLY_REFUNDED.value,
    PaymentState.REFUND_PENDING.value,
    PaymentState.REFUNDED.value,
]
#: A payment that ended without money moving: a settlement row for it is a STATUS_MISMATCH.
_NOT_CAPTURED = [PaymentState.FAILED.value, PaymentState.REJECTED.value, PaymentState.EXPIRED.value]
_REFUND_NOT_PAID = [RefundState.FAILED.value, RefundState.REJECTED.value, RefundState.EXPIRED.value]


#: The provider's side of a finding about a charge or refund row (m), by its class (d.difference).
_OBSERVED = f"""
    CASE d.difference
        WHEN '{Difference.MISSING_INTERNAL}' THEN
            jsonb_build_object('source_id', m.source_id, 'gross', m.gross::text, 'currency', m.r_currency)
        WHEN '{Difference.CURRENCY_MISMATCH}' THEN jsonb_build_object('currency', m.r_currency)
        WHEN '{Difference.AMOUNT_MISMATCH}' THEN jsonb_build_object('gross', m.gross::text)
        WHEN '{Difference.STATUS_MISMATCH}' THEN jsonb_build_object('status', 'settled')
        WHEN '{Difference.FEE_MISMATCH}' THEN jsonb_build_object('fee', m.fee::text)
        WHEN '{Difference.TIMING_MISMATCH}' THEN jsonb_build_object('settlement_date', m.settlement_date::text)
    END
"""


async def classify(connection: asyncpg.Connection, run: ReportRunRecord, settings: ProviderSettings) -> None:
    """Stages 3 and 4, in the caller's transaction: match the run's valid rows to Ballast's payments and
    refunds with joins, and write a finding for every difference, by class."""
    # $1 the run, $2 to $4 each currency's code, fraction digits and minor unit (_KNOWN)
    args: list[Any] = [run.id, list(MINOR_UNITS), list(MINOR_UNITS.values())]
    args.append([Decimal(1).scaleb(-digits) for digits in MINOR_UNITS.values()])
    # rows of the other runs still in force near this one's period: a transaction reported there is not
    # reported again here (a run without a period, no valid row, has nothing to compare)
    near = "false"
    if run.period_start is not None and run.period_end is not None:
        window = timedelta(days=IN_FORCE_WINDOW_DAYS)
        near = (
            f"other.period_start <= '{(run.period_end + window).isoformat()}'::date"
            f" AND other.period_end >= '{(run.period_start - window).isoformat()}'::date"
        )
    in_force = f"""
        SELECT o.provider_transaction_id, o.source_id, o.type FROM report_rows o
        JOIN report_runs other ON other.id = o.run_id
        WHERE other.id <> $1 AND other.provider = '{_quoted(run.provider)}' AND other.kind = '{run.kind.value}'
          AND other.superseded_by IS NULL AND other.status <> '{RunStatus.FAILED}' AND o.error IS NULL AND {near}
    """
    await connection.execute(
        f"""
        WITH counted AS (  -- one pass: each transaction id's first row here, and whether it is reported twice
            SELECT provider_transaction_id, min(row_number) FILTER (WHERE here) AS first_row,
                   count(*) FILTER (WHERE here) AS here, bool_or(NOT here) AS reported_before
            FROM (SELECT provider_transaction_id, row_number, true AS here FROM report_rows
                  WHERE run_id = $1 AND error IS NULL
                  UNION ALL
                  SELECT provider_transaction_id, NULL, false FROM ({in_force}) elsewhere) rows
            GROUP BY provider_transaction_id
            HAVING count(*) > 1 AND count(*) FILTER (WHERE here) > 0
        )
        INSERT INTO report_findings (run_id, row_number, difference, observed)
        SELECT $1, r.row_number, '{Difference.DUPLICATE_PROVIDER_ROW}',
               jsonb_build_object('provider_transaction_id', r.provider_transaction_id,
                                  'reported_before', c.reported_before)
        FROM report_rows r JOIN counted c ON c.provider_transaction_id = r.provider_transaction_id
        WHERE r.run_id = $1 AND r.error IS NULL AND (c.reported_before OR r.row_number > c.first_row)
        ORDER BY r.row_number
        """,
        run.id,
    )
    # charges: by the provider's payment id, or (a row without one) by the merchant's reference; one
    # join, each row's checks evaluated once, the classes named only for the few rows that differ
    await connection.execute(
        f"""
        WITH matched AS (
            SELECT r.row_number, r.currency_code AS r_currency, r.gross, r.fee, r.settlement_date, r.source_id,
                   coalesce(by_id.id, by_ref.id) AS payment_id, coalesce(by_id.amount, by_ref.amount) AS amount,
                   coalesce(by_id.currency_code, by_ref.currency_code) AS p_currency,
                   coalesce(by_id.state, by_ref.state) AS state,
                   coalesce(by_id.succeeded_at, by_ref.succeeded_at) AS succeeded_at
            FROM report_rows r
            LEFT JOIN payments by_id ON by_id.provider_payment_id = r.source_id
            LEFT JOIN LATERAL (  -- Ballast's payment id, sent as the reference: looked up only for a row not matched
                SELECT q.id, q.amount, q.currency_code, q.state, q.succeeded_at FROM payments q
                WHERE by_id.id IS NULL AND q.provider_payment_id IS NULL
                  AND q.id = CASE WHEN r.reference ~ '{_UUID}' THEN r.reference::uuid END
                OFFSET 0
            ) by_ref ON true
            WHERE r.run_id = $1 AND r.error IS NULL AND r.type = '{RowType.CHARGE}'
              AND NOT EXISTS (SELECT 1 FROM report_findings d WHERE d.run_id = $1 AND d.row_number = r.row_number
                              AND d.difference = '{Difference.DUPLICATE_PROVIDER_ROW}')
        ),
        checked AS (
            SELECT m.*, c.digits, c.unit, round(m.amount * $6::numeric / 10000 + $7::int * c.unit, c.digits) AS due_fee,
                   (m.succeeded_at AT TIME ZONE 'UTC')::date + $9::int AS due_day
            FROM matched m LEFT JOIN {_KNOWN} c ON c.code = m.p_currency
        ),
        differing AS (  -- most rows match: one test of each row, the classes named for the rest
            SELECT * FROM checked m
            WHERE m.payment_id IS NULL OR m.r_currency <> m.p_currency OR abs(m.gross - m.amount) > $5::int * m.unit
               OR m.state = ANY($10::text[]) OR abs(m.fee - m.due_fee) > $8::int * m.unit
               OR m.settlement_date <> m.due_day
        ),
        found AS (
            SELECT m.row_number, m.payment_id, d.difference,
                   CASE d.difference
                       WHEN '{Difference.MISSING_INTERNAL}' THEN '{{}}'::jsonb
                       WHEN '{Difference.CURRENCY_MISMATCH}' THEN jsonb_build_object('currency', m.p_currency)
                       WHEN '{Difference.AMOUNT_MISMATCH}' THEN jsonb_build_object('amount', m.amount::text)
                       WHEN '{Difference.STATUS_MISMATCH}' THEN jsonb_build_object('state', m.state)
                       WHEN '{Difference.FEE_MISMATCH}' THEN jsonb_build_object('fee', m.due_fee::text)
                       WHEN '{Difference.TIMING_MISMATCH}' THEN jsonb_build_object('settlement_date', m.due_day::text)
                   END AS expected,
                   {_OBSERVED} AS observed
            FROM differing m
            CROSS JOIN LATERAL (VALUES
                ('{Difference.MISSING_INTERNAL}', m.payment_id IS NULL),
                ('{Difference.CURRENCY_MISMATCH}', m.payment_id IS NOT NULL AND m.r_currency <> m.p_currency),
                ('{Difference.AMOUNT_MISMATCH}', m.payment_id IS NOT NULL AND m.r_currency = m.p_currency
                    AND abs(m.gross - m.amount) > $5::int * m.unit),
                ('{Difference.STATUS_MISMATCH}', m.state = ANY($10::text[])),
                ('{Difference.FEE_MISMATCH}', m.payment_id IS NOT NULL AND m.r_currency = m.p_currency
                    AND abs(m.fee - m.due_fee) > $8::int * m.unit),
                ('{Difference.TIMING_MISMATCH}', m.succeeded_at IS NOT NULL AND m.settlement_date <> m.due_day)
            ) AS d(difference, applies)
            WHERE d.applies
        )
        INSERT INTO report_findings (run_id, row_number, payment_id, difference, expected, observed)
        SELECT $1, row_number, payment_id, difference, expected, observed FROM found
        """,
        *args,
        settings.amount_tolerance_minor_units,
        settings.fee_bps,
        settings.fee_fixed_minor_units,
        settings.fee_tolerance_minor_units,
        settings.settlement_delay_days,
        _NOT_CAPTURED,
    )
    # refunds: by the provider's refund id; the gross is the money returned, negative
    await connection.execute(
        f"""
        WITH rows AS (
            SELECT r.* FROM report_rows r
            WHERE r.run_id = $1 AND r.error IS NULL AND r.type = '{RowType.REFUND}'
              AND NOT EXISTS (SELECT 1 FROM report_findings d WHERE d.run_id = $1 AND d.row_number = r.row_number
                              AND d.difference = '{Difference.DUPLICATE_PROVIDER_ROW}')
        ),
        matched AS (
            SELECT r.row_number, r.currency_code AS r_currency, r.gross, r.fee, r.source_id, r.settlement_date,
                   f.id AS refund_id, f.payment_id, f.amount, f.currency_code AS f_currency, f.state, c.unit,
                   s.succeeded_at
            FROM rows r
            LEFT JOIN refunds f ON f.provider_refund_id = r.source_id
            LEFT JOIN LATERAL (
                SELECT min(t.occurred_at) AS succeeded_at FROM refund_transitions t
                WHERE t.refund_id = f.id AND t.to_state = '{RefundState.SUCCEEDED}'
            ) s ON true
            LEFT JOIN {_KNOWN} c ON c.code = f.currency_code
        ),
        found AS (
            SELECT m.row_number, m.payment_id, m.refund_id, d.difference,
                   CASE d.difference
                       WHEN '{Difference.MISSING_INTERNAL}' THEN '{{}}'::jsonb
                       WHEN '{Difference.CURRENCY_MISMATCH}' THEN jsonb_build_object('currency', m.f_currency)
                       WHEN '{Difference.AMOUNT_MISMATCH}' THEN jsonb_build_object('amount', (-m.amount)::text)
                       WHEN '{Difference.STATUS_MISMATCH}' THEN jsonb_build_object('state', m.state)
                       WHEN '{Difference.FEE_MISMATCH}' THEN jsonb_build_object('fee', ($6::int * m.unit)::text)
                       WHEN '{Difference.TIMING_MISMATCH}' THEN jsonb_build_object(
                           'settlement_date', ((m.succeeded_at AT TIME ZONE 'UTC')::date + $9::int)::text)
                   END AS expected,
                   {_OBSERVED} AS observed
            FROM matched m
            CROSS JOIN LATERAL (VALUES
                ('{Difference.MISSING_INTERNAL}', m.refund_id IS NULL),
                ('{Difference.CURRENCY_MISMATCH}', m.refund_id IS NOT NULL AND m.r_currency <> m.f_currency),
                ('{Difference.AMOUNT_MISMATCH}', m.refund_id IS NOT NULL AND m.r_currency = m.f_currency
                    AND abs(-m.gross - m.amount) > $5::int * m.unit),
                ('{Difference.STATUS_MISMATCH}', m.state = ANY($8::text[])),
                ('{Difference.FEE_MISMATCH}', m.refund_id IS NOT NULL AND m.r_currency = m.f_currency
                    AND abs(m.fee - $6::int * m.unit) > $7::int * m.unit),
                ('{Difference.TIMING_MISMATCH}', m.succeeded_at IS NOT NULL
                    AND m.settlement_date <> (m.succeeded_at AT TIME ZONE 'UTC')::date + $9::int)
            ) AS d(difference, applies)
            WHERE d.applies
        )
        INSERT INTO report_findings (run_id, row_number, payment_id, refund_id, difference, expected, observed)
        SELECT $1, row_number, payment_id, refund_id, difference, expected, observed FROM found
        """,
        *args,
        settings.amount_tolerance_minor_units,
        settings.refund_fee_fixed_minor_units,
        settings.fee_tolerance_minor_units,
        _REFUND_NOT_PAID,
        settings.settlement_delay_days,
    )
    # adjustments (FX) beyond the tolerance, and payouts whose total is not the net of their lines
    await connection.execute(
        f"""
        INSERT INTO report_findings (run_id, row_number, payment_id, difference, observed)
        SELECT $1, r.row_number, p.id, '{Difference.FX_ADJUSTMENT}',
               jsonb_build_object('gross', r.gross::text, 'currency', r.currency_code, 'source_id', r.source_id)
        FROM report_rows r
        JOIN {_KNOWN} c ON c.code = r.currency_code
        LEFT JOIN payments p ON p.provider_payment_id = r.source_id
        WHERE r.run_id = $1 AND r.error IS NULL AND r.type = '{RowType.ADJUSTMENT}'
          AND abs(r.gross) > $5 * c.unit
        """,
        *args,
        settings.fx_tolerance_minor_units,
    )
    await connection.execute(
        f"""
        WITH lines AS (
            SELECT payout_id, sum(net) AS net, count(*) AS line_count FROM report_rows
            WHERE run_id = $1 AND error IS NULL AND type <> '{RowType.PAYOUT}' AND payout_id IS NOT NULL
            GROUP BY payout_id
        )
        INSERT INTO report_findings (run_id, row_number, payout_id, difference, expected, observed)
        SELECT $1, p.row_number, p.payout_id, '{Difference.PAYOUT_MISMATCH}',
               jsonb_build_object('net', (-coalesce(l.net, 0))::text, 'line_count', coalesce(l.line_count, 0)),
               jsonb_build_object('net', p.net::text)
        FROM report_rows p LEFT JOIN lines l ON l.payout_id = p.payout_id
        WHERE p.run_id = $1 AND p.error IS NULL AND p.type = '{RowType.PAYOUT}'
          AND p.net <> -coalesce(l.net, 0)
        """,
        run.id,
    )
    # a payout posted from an earlier report whose total this report changes (a paid payout never should)
    await connection.execute(
        f"""
        INSERT INTO report_findings (run_id, row_number, payout_id, difference, expected, observed)
        SELECT $1, p.row_number, p.payout_id, '{Difference.PAYOUT_MISMATCH}',
               jsonb_build_object('net_posted', l.amount::text), jsonb_build_object('net', (-p.net)::text)
        FROM report_rows p
        JOIN ledger_entries e ON e.event_key = 'payout:' || $2 || ':' || p.payout_id
        JOIN ledger_lines l ON l.entry_id = e.id AND l.account = $3 AND l.currency_code = p.currency_code
        WHERE p.run_id = $1 AND p.error IS NULL AND p.type = '{RowType.PAYOUT}' AND l.amount <> -p.net
          AND NOT EXISTS (SELECT 1 FROM report_findings f WHERE f.run_id = $1 AND f.row_number = p.row_number)
        """,
        run.id,
        run.provider,
        settlement_bank(run.provider),
    )
    # successes with no row, once the report covers their settlement date and the window after it
    if run.period_start is not None and run.period_end is not None:
        await _find_unreported(connection, run, settings, in_force)
    # what resolution joins next (cases, payouts) is planned with the findings just written counted
    await analyze_if_free(connection, "report_findings")


#: The first and the day after the last day of success whose settlement a run's period covers, its
#: window passed ($2/$3 the run's first and last day, $4 the settlement delay, $5 the window), in UTC.
_SUCCESS_FROM = "($2::date - $4::int)::timestamp AT TIME ZONE 'UTC'"
_SUCCESS_UNTIL = "($3::date - $5::int - $4::int + 1)::timestamp AT TIME ZONE 'UTC'"


async def _find_unreported(
    connection: asyncpg.Connection, run: ReportRunRecord, settings: ProviderSettings, in_force: str
) -> None:
    """MISSING_PROVIDER: the payments and refunds that succeeded so that they settle in the run's period
    (its window passed) and that neither this run nor another in force reports. In two steps: what this
    run lacks (a hash anti-join of the records against its rows) is usually a handful, and is taken with
    its real size to the runs in force (however many rows they hold, joined the way that size calls for)."""
    await connection.execute(
        """
        CREATE TEMP TABLE recon_unreported (
            payment_id uuid, refund_id uuid, type text, source_id text, expected jsonb
        ) ON COMMIT DROP
        """
    )
    delay, window = settings.settlement_delay_days, settings.settlement_window_days
    bounds = [run.id, run.period_start, run.period_end, delay, window]
    await connection.execute(
        f"""
        INSERT INTO recon_unreported (payment_id, type, source_id, expected)
        SELECT p.id, '{RowType.CHARGE}', p.provider_payment_id,
               jsonb_build_object('provider_payment_id', p.provider_payment_id, 'amount', p.amount::text,
                                  'currency', p.currency_code,
                                  'settlement_date', ((p.succeeded_at AT TIME ZONE 'UTC')::date + $4::int)::text)
        FROM payments p  -- by the time each first succeeded (ix_payments_succeeded_at)
        WHERE p.succeeded_at >= {_SUCCESS_FROM} AND p.succeeded_at < {_SUCCESS_UNTIL} AND p.state = ANY($6::text[])
          AND NOT EXISTS (SELECT 1 FROM report_rows r WHERE r.run_id = $1 AND r.error IS NULL
                          AND r.type = '{RowType.CHARGE}' AND r.source_id = p.provider_payment_id)
        """,
        *bounds,
        _CAPTURED,
    )
    await connection.execute(
        f"""
        INSERT INTO recon_unreported (payment_id, refund_id, type, source_id, expected)
        SELECT f.payment_id, f.id, '{RowType.REFUND}', f.provider_refund_id,
               jsonb_build_object('provider_refund_id', f.provider_refund_id, 'amount', (-f.amount)::text,
                                  'currency', f.currency_code,
                                  'settlement_date', ((t.occurred_at AT TIME ZONE 'UTC')::date + $4::int)::text)
        FROM refund_transitions t JOIN refunds f ON f.id = t.refund_id  -- a refund succeeds once
        WHERE t.to_state = '{RefundState.SUCCEEDED}' AND f.state = '{RefundState.SUCCEEDED}'
          AND t.occurred_at >= {_SUCCESS_FROM} AND t.occurred_at < {_SUCCESS_UNTIL}
          AND NOT EXISTS (SELECT 1 FROM report_rows r WHERE r.run_id = $1 AND r.error IS NULL
                          AND r.type = '{RowType.REFUND}' AND r.source_id = f.provider_refund_id)
        """,
        *bounds,
    )
    await connection.execute("ANALYZE recon_unreported")
    await connection.execute(
        f"""
        INSERT INTO report_findings (run_id, payment_id, refund_id, difference, expected)
        SELECT $1, u.payment_id, u.refund_id, '{Difference.MISSING_PROVIDER}', u.expected
        FROM recon_unreported u
        WHERE NOT EXISTS (SELECT 1 FROM ({in_force}) o WHERE o.type = u.type AND o.source_id = u.source_id)
        """,
        run.id,
    )
    await connection.execute("DROP TABLE recon_unreported")


_UUID = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
#: Each ISO 4217 currency with its fraction digits and one minor unit ($2, $3 and $4 of a statement).
_KNOWN = "(SELECT unnest($2::text[]) AS code, unnest($3::int[]) AS digits, unnest($4::numeric[]) AS unit)"


def _quoted(text: str) -> str:
    return text.replace("'", "''")


# -- stage 5: resolution -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SettledRow:
    """A report row that settles a payment Ballast has not decided, with nothing else differing."""

    payment_id: uuid.UUID
    row_number: int
    source_id: str
    status: str | None
    gross: Decimal
    currency_code: str


async def settled_undecided(connection: asyncpg.Connection, run_id: uuid.UUID) -> list[SettledRow]:
    """The run's charge rows that settle an undecided payment (its outcome unknown, or still pending) whose
    amount and currency they match: the report is the evidence that decides them."""
    rows = await connection.fetch(
        f"""
        WITH undecided AS (
            SELECT id, provider_payment_id, amount, currency_code FROM payments WHERE state = ANY($2::text[])
        ), candidates AS (
            SELECT u.id, u.amount, u.currency_code AS p_currency, r.* FROM undecided u
            JOIN report_rows r ON r.run_id = $1 AND r.source_id = u.provider_payment_id
            UNION ALL
            SELECT u.id, u.amount, u.currency_code AS p_currency, r.* FROM undecided u
            JOIN report_rows r ON r.run_id = $1 AND u.provider_payment_id IS NULL AND r.reference = u.id::text
        )
        SELECT DISTINCT ON (c.id) c.id AS payment_id, c.row_number, c.source_id, c.status, c.gross, c.currency_code
        FROM candidates c
        WHERE c.error IS NULL AND c.type = '{RowType.CHARGE}' AND c.currency_code = c.p_currency AND c.gross = c.amount
          AND NOT EXISTS (SELECT 1 FROM report_findings f WHERE f.run_id = $1 AND f.row_number = c.row_number)
        ORDER BY c.id, c.row_number
        """,
        run_id,
        [state.value for state in UNDECIDED_STATES],
    )
    return [SettledRow(**dict(row)) for row in rows]


@dataclass(frozen=True)
class MatchedPayout:
    """A payout the provider paid whose every line matched: its sums, by kind of line."""

    payout_id: str
    currency_code: str
    cleared: Decimal  # the gross of its charges and refunds
    fees: Decimal
    adjustments: Decimal  # the gross of its adjustment lines
    net: Decimal
    line_count: int


async def matched_payouts(
    connection: asyncpg.Connection, run_id: uuid.UUID, settled_statuses: list[str]
) -> list[MatchedPayout]:
    """The run's payouts that the provider paid (a settled status), in one currency, whose total is the
    net of their lines and none of whose lines differs from Ballast's records (a late line aside) or
    failed to parse: what may be posted."""
    line = f"error IS NULL AND type <> '{RowType.PAYOUT}'"
    payout = f"error IS NULL AND type = '{RowType.PAYOUT}'"
    rows = await connection.fetch(
        f"""
        WITH lines AS (  -- one pass over the run's rows: each payout's own row, its lines' sums and currencies
            SELECT payout_id, min(currency_code) FILTER (WHERE {line}) AS currency_code,
                   max(currency_code) FILTER (WHERE {line}) AS other_currency,
                   coalesce(sum(gross) FILTER (WHERE {line} AND type IN ('{RowType.CHARGE}', '{RowType.REFUND}')), 0)
                       AS cleared,
                   sum(fee) FILTER (WHERE {line}) AS fees,
                   coalesce(sum(gross) FILTER (WHERE {line} AND type = '{RowType.ADJUSTMENT}'), 0) AS adjustments,
                   sum(net) FILTER (WHERE {line}) AS net, count(*) FILTER (WHERE {line}) AS line_count,
                   count(*) FILTER (WHERE error IS NOT NULL) AS unreadable,
                   min(net) FILTER (WHERE {payout}) AS paid_out, max(net) FILTER (WHERE {payout}) AS also_paid_out,
                   bool_and(status = ANY($2::text[])) FILTER (WHERE {payout}) AS paid
            FROM report_rows
            WHERE run_id = $1 AND payout_id IS NOT NULL
            GROUP BY payout_id
        ),
        differing AS (  -- payouts with a line that differs from Ballast's records (a late line aside)
            SELECT DISTINCT r.payout_id FROM report_findings f
            JOIN report_rows r ON r.run_id = f.run_id AND r.row_number = f.row_number
            WHERE f.run_id = $1 AND r.payout_id IS NOT NULL AND NOT (f.difference = ANY($3::text[]))
        )
        SELECT l.payout_id, l.currency_code, l.cleared, l.fees, l.adjustments, l.net, l.line_count
        FROM lines l
        WHERE l.line_count > 0 AND l.currency_code = l.other_currency AND l.unreadable = 0
          AND l.paid AND l.paid_out = -l.net AND l.also_paid_out = -l.net
          AND NOT EXISTS (SELECT 1 FROM differing d WHERE d.payout_id = l.payout_id)
        ORDER BY l.payout_id
        """,
        run_id,
        settled_statuses,
        [difference.value for difference in SELF_CLOSING],
    )
    return [MatchedPayout(**dict(row)) for row in rows]


async def open_cases(connection: asyncpg.Connection, run_id: uuid.UUID) -> int:
    """A case for every finding that needs a person (one open case per class and payment: a payment's
    finding joins an open case of its class), each finding pointing at its case. The number opened.

    A difference the run this one supersedes found too keeps that run's case, open or decided: a
    corrected report neither reopens a decision nor opens a second case for the same difference."""
    self_closing = [difference.value for difference in SELF_CLOSING]
    await connection.execute(
        """
        WITH earlier AS (
            SELECT f.case_id, f.difference, f.payment_id, f.payout_id, w.provider_transaction_id
            FROM report_findings f JOIN report_runs r ON r.id = f.run_id
            LEFT JOIN report_rows w ON w.run_id = f.run_id AND w.row_number = f.row_number
            WHERE r.superseded_by = $1 AND f.case_id IS NOT NULL
        ), found AS (
            SELECT f.id, f.difference, f.payment_id, f.payout_id, w.provider_transaction_id
            FROM report_findings f LEFT JOIN report_rows w ON w.run_id = f.run_id AND w.row_number = f.row_number
            WHERE f.run_id = $1 AND f.case_id IS NULL
        ), kept AS (
            SELECT DISTINCT ON (n.id) n.id, e.case_id FROM found n JOIN earlier e ON e.difference = n.difference
               AND (n.payment_id = e.payment_id
                    OR (n.payment_id IS NULL AND e.payment_id IS NULL
                        AND (n.provider_transaction_id = e.provider_transaction_id OR n.payout_id = e.payout_id)))
            ORDER BY n.id, e.case_id
        )
        UPDATE report_findings f SET case_id = kept.case_id FROM kept WHERE f.id = kept.id
        """,
        run_id,
    )
    evidence = """
        jsonb_build_array(jsonb_build_object('report_run_id', f.run_id, 'row_number', f.row_number,
                                             'difference', f.difference, 'expected', f.expected,
                                             'observed', f.observed))
    """
    summary = """
        f.difference || CASE WHEN f.row_number IS NULL THEN '' ELSE ' (report row ' || f.row_number || ')' END
        || CASE WHEN f.expected = '{}'::jsonb THEN '' ELSE ': Ballast ' || f.expected::text END
        || CASE WHEN f.observed = '{}'::jsonb THEN '' ELSE ', provider ' || f.observed::text END
    """
    # the case of each class and payment, opened or joined, and its findings pointing at it: one statement
    opened_about_payments: int = await connection.fetchval(
        f"""
        WITH opened AS (
            INSERT INTO cases (kind, payment_id, report_run_id, summary, evidence)
            SELECT DISTINCT ON (f.difference, f.payment_id) f.difference, f.payment_id, f.run_id,
                   left({summary}, 2000), {evidence}
            FROM report_findings f
            WHERE f.run_id = $1 AND f.payment_id IS NOT NULL AND f.case_id IS NULL
              AND NOT (f.difference = ANY($2::text[]))
            ORDER BY f.difference, f.payment_id, f.id
            ON CONFLICT (kind, payment_id) WHERE status = 'OPEN'
            DO UPDATE SET evidence = cases.evidence || EXCLUDED.evidence, updated_at = now()
            RETURNING id, kind, payment_id, (xmax = 0) AS opened
        ), linked AS (
            UPDATE report_findings f SET case_id = o.id FROM opened o
            WHERE f.run_id = $1 AND f.case_id IS NULL AND f.payment_id = o.payment_id AND f.difference = o.kind
            RETURNING f.id
        )
        SELECT count(*) FILTER (WHERE opened) FROM opened  -- linked runs to completion, unread
        """,
        run_id,
        self_closing,
    )
    # about no payment: a case per finding (per transaction for its duplicates: a report repeating a
    # row a thousand times is one case), its id derived from the finding's, so a repeat opens none
    case_id = f"""
        md5(f.run_id::text || ':' || CASE WHEN f.difference = '{Difference.DUPLICATE_PROVIDER_ROW}'
            THEN 'duplicate:' || coalesce(f.observed ->> 'provider_transaction_id', f.id::text)
            ELSE f.id::text END)::uuid
    """
    about_rows = await connection.fetch(
        f"""
        INSERT INTO cases (id, kind, report_run_id, summary, evidence)
        SELECT DISTINCT ON ({case_id}) {case_id}, f.difference, f.run_id, left({summary}, 2000), {evidence}
        FROM report_findings f
        WHERE f.run_id = $1 AND f.payment_id IS NULL AND f.case_id IS NULL AND NOT (f.difference = ANY($2::text[]))
        ORDER BY {case_id}, f.id
        ON CONFLICT (id) DO NOTHING
        RETURNING id
        """,
        run_id,
        self_closing,
    )
    await connection.execute(
        f"""
        UPDATE report_findings f SET case_id = {case_id}
        WHERE f.run_id = $1 AND f.payment_id IS NULL AND f.case_id IS NULL AND NOT (f.difference = ANY($2::text[]))
        """,
        run_id,
        self_closing,
    )
    # the open cases of the runs this one supersedes that it did not find again are closed: the corrected
    # report no longer shows that difference (the earlier run, its findings and the cases stay as they were)
    await connection.execute(
        """
        WITH closed AS (
            SELECT c.id FROM cases c JOIN report_runs old ON old.id = c.report_run_id
            WHERE old.superseded_by = $1 AND c.status = 'OPEN'
              AND NOT EXISTS (SELECT 1 FROM report_findings f WHERE f.case_id = c.id AND f.run_id = $1)
            FOR UPDATE OF c
        )
        UPDATE cases c SET status = 'RESOLVED', updated_at = now(), provider_check_due_at = NULL,
               evidence = c.evidence || jsonb_build_array(jsonb_build_object(
                   'resolution', 'NO_DISCREPANCY', 'resolved_by', 'reconciliation',
                   'note', 'the corrected report ' || $1::text || ' no longer shows this difference',
                   'at', now()))
        FROM closed WHERE c.id = closed.id
        """,
        run_id,
    )
    return opened_about_payments + len(about_rows)


async def complete_run(connection: asyncpg.Connection, run_id: uuid.UUID, opened_cases: int) -> ReportRunRecord:
    """The run's final counts; COMPLETED."""
    row = await connection.fetchrow(
        f"""
        WITH flagged AS (  -- a finding names a valid row, or none: the rest of the valid rows matched
            SELECT count(DISTINCT row_number) AS rows FROM report_findings WHERE run_id = $1 AND row_number IS NOT NULL
        )
        UPDATE report_runs r SET status = '{RunStatus.COMPLETED}',
               matched_row_count = r.row_count - r.invalid_row_count - f.rows, unmatched_row_count = f.rows,
               opened_case_count = $2, completed_at = now(), updated_at = now(), lease_until = NULL
        FROM flagged f WHERE r.id = $1
        RETURNING {", ".join(f"r.{column.strip()}" for column in _RUN_COLUMNS.split(","))}
        """,
        run_id,
        opened_cases,
    )
    return ReportRunRecord.of(row)


async def finding_counts(connection: asyncpg.Connection, run_id: uuid.UUID) -> dict[str, int]:
    """How many findings of each class a run wrote."""
    rows = await connection.fetch(
        "SELECT difference, count(*) AS n FROM report_findings WHERE run_id = $1 GROUP BY difference", run_id
    )
    return {row["difference"]: row["n"] for row in rows}


async def findings_of(connection: asyncpg.Connection, run_id: uuid.UUID) -> list[dict[str, Any]]:
    """Every finding of a run, in the order found: what a spec or an export reads."""
    rows = await connection.fetch(
        """
        SELECT f.row_number, f.difference, f.payment_id, f.refund_id, f.payout_id, f.expected, f.observed, f.case_id,
               r.provider_transaction_id, r.source_id
        FROM report_findings f LEFT JOIN report_rows r ON r.run_id = f.run_id AND r.row_number = f.row_number
        WHERE f.run_id = $1 ORDER BY f.id
        """,
        run_id,
    )
    return [dict(row) for row in rows]


# -- evidence bundles --------------------------------------------------------------------------------


async def write_raw_report(connection: asyncpg.Connection, run_id: uuid.UUID, write: Callable[[bytes], Any]) -> None:
    """The run's raw bytes, chunk by chunk, in order, to `write` (never all of them in memory)."""
    async with connection.transaction():
        async for row in connection.cursor("SELECT bytes FROM report_chunks WHERE run_id = $1 ORDER BY seq", run_id):
            write(row["bytes"])


async def copy_query_csv(
    connection: asyncpg.Connection, query: str, args: list[Any], write: Callable[[bytes], Any]
) -> None:
    """A query's rows as CSV with a header line, written by PostgreSQL's COPY."""

    async def sink(data: bytes) -> None:
        write(data)

    await connection.copy_from_query(query, *args, output=sink, format="csv", header=True)


#: What a run's bundle holds beside its raw report: (file name, query over $1 = the run id).
RUN_EVIDENCE_QUERIES = (
    ("rows.csv", "SELECT * FROM report_rows WHERE run_id = $1::uuid ORDER BY row_number"),
    ("findings.csv", "SELECT * FROM report_findings WHERE run_id = $1::uuid ORDER BY id"),
    ("cases.csv", "SELECT * FROM cases WHERE report_run_id = $1::uuid ORDER BY opened_at, id"),
    (
        "payout_entries.csv",
        """
        SELECT e.id, e.event_key, e.posted_at, l.line_number, l.account, l.currency_code, l.amount
        FROM ledger_entries e JOIN ledger_lines l ON l.entry_id = e.id
        WHERE e.event_key IN (SELECT DISTINCT 'payout:' || r.provider || ':' || w.payout_id
                              FROM report_rows w JOIN report_runs r ON r.id = w.run_id
                              WHERE w.run_id = $1::uuid AND w.payout_id IS NOT NULL)
        ORDER BY e.posted_at, e.id, l.line_number
        """,
    ),
)
#: What a case's bundle holds: (file name, query over $1 = the case id).
CASE_EVIDENCE_QUERIES = (
    ("case.csv", "SELECT * FROM cases WHERE id = $1::uuid"),
    ("findings.csv", "SELECT * FROM report_findings WHERE case_id = $1::uuid ORDER BY id"),
    (
        "rows.csv",
        "SELECT r.* FROM report_rows r JOIN report_findings f ON f.run_id = r.run_id AND f.row_number = r.row_number"
        " WHERE f.case_id = $1::uuid ORDER BY r.run_id, r.row_number",
    ),
    ("payment.csv", "SELECT p.* FROM payments p JOIN cases c ON c.payment_id = p.id WHERE c.id = $1::uuid"),
    (
        "transitions.csv",
        "SELECT t.* FROM payment_transitions t JOIN cases c ON c.payment_id = t.payment_id WHERE c.id = $1::uuid"
        " ORDER BY t.id",
    ),
    (
        "provider_statuses.csv",
        "SELECT s.* FROM provider_statuses s JOIN cases c ON c.payment_id = s.payment_id WHERE c.id = $1::uuid",
    ),
    (
        "ledger.csv",
        """
        SELECT e.id, e.event_key, e.payment_id, e.posted_at, l.line_number, l.account, l.currency_code, l.amount
        FROM ledger_entries e JOIN ledger_lines l ON l.entry_id = e.id
        WHERE e.payment_id = (SELECT payment_id FROM cases WHERE id = $1::uuid)
           OR e.event_key LIKE 'case:' || $1 || ':%'
        ORDER BY e.posted_at, e.id, l.line_number
        """,
    ),
    (
        "audit.csv",
        "SELECT * FROM audit_log WHERE aggregate_type = 'case' AND aggregate_id = $1 ORDER BY id",
    ),
)
