"""`python -m bench.reconciliation`: a settlement report reconciled end to end, stage by stage, against a
plain COPY plus one classifying join and against the batch-fetch approach, as ratios from one run.

What is measured, in one run on one machine, on the same data:

  the pipeline    the real stage functions of server/services/reconciliation.py, in the transactions
                  process_run gives them: (a) ingestion (ingest_file_report, the file read in 1 MiB
                  chunks), (b) normalization (normalize_report), (c) matching and classification
                  (match_report), (d) resolution (resolve_report, committed with (c) as process_run
                  commits them).
  COPY + join     (e) the same CSV copied into a staging table of typed columns (COPY ... FROM STDIN,
                  streamed from the file), then ONE classifying join of it against payments (a FULL
                  JOIN on the provider's id, a CASE naming the class, INSERT ... SELECT into a temp
                  table). The least PostgreSQL can do with the file: no raw bytes kept, no timing or
                  duplicate checks, no cases.
  batch-fetch     (f) the CSV read in Python, the payments of each 10,000 charge rows fetched with one
                  query (= ANY), compared in dicts.
  keeping         (g) the rows (e) staged, already typed, written once into a table shaped like
                  report_rows (its key and checks): nothing judged or matched. COPY + keeping + join is
                  the least any pipeline that keeps its canonical rows can take.

The data: --rows payments (default 1,000,000) generated set-wise in SQL, each RECORDED and then
SUCCEEDED by an appended payment_transitions row (the legal way: the table's trigger applies the move),
spread over four weeks; and their settlement report in the simulator's CSV format
(simulator/settlement.py), written by COPY ... TO STDOUT to a temporary file, with planted drift:
0.5 % of the rows with another amount, 0.5 % with another fee, 0.1 % missing, 0.1 % a day late and
0.1 % invented charges, every day's lines closed by their payout. The fee schedule is
provider_settings' for 'simulator' (settled a day after success, settlement window 0 days).

Targets (docs/reconciliation.md): the pipeline end to end within 1.5x of COPY + join, and this
process's peak RSS (Ballast's side of the pipeline, sampled from /proc/self/statm) under 300 MB
whatever the size. With --check the exit status is 1 when a target is missed; it is 1 whenever the
pipeline's findings per class differ from the planted drift.

A fresh database `ballast_bench_<random>` on DATABASE_URL's server (or the embedded PostgreSQL) is
migrated to head and dropped at the end, Ctrl-C included; every statement and wait is bounded.
Progress goes to stderr, the tables to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import csv
import os
import resource
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import IO

import asyncpg

from bench.harness import Ratio, bench_database, postgres_server_url, record_ratios, redacted
from server.db import recon_repository as repo
from server.db.database import Budget, Database
from server.db.engine import create_pool
from server.db.migrate import migrate_to_head
from server.db.recon_repository import ProviderSettings, ReportRunRecord
from server.domain.errors import BallastError
from server.domain.money import MINOR_UNITS
from server.domain.payment_states import PaymentEvent, PaymentState
from server.domain.payments import CREATE_PAYMENT_OPERATION
from server.domain.reconciliation import (
    CHUNK_BYTES_MAX,
    REPORT_ROWS_MAX,
    RUN_LEASE_S,
    Difference,
    ReportKind,
    RunStatus,
)
from server.services.reconciliation import (
    STAGE_STATEMENT_TIMEOUT_S,
    ReportHeader,
    ingest_file_report,
    match_report,
    normalize_report,
    resolve_report,
)
from simulator.settlement import CSV_COLUMNS

ROWS_DEFAULT = 1_000_000
ROWS_MIN = 1_000
#: the report holds a little more than one row per payment (invented charges, payouts): under REPORT_ROWS_MAX
ROWS_MAX = REPORT_ROWS_MAX * 3 // 4
PROVIDER = "simulator"
CLIENT_ID = "bench-recon"
#: payments are generated, and moved to SUCCEEDED, this many per statement
GENERATE_BATCH = 100_000
#: the batch-fetch approach asks for the payments of this many charge rows at a time
FETCH_CHUNK_ROWS = 10_000
#: ingestion reads the file in chunks of this size (the largest chunk a run stores)
READ_CHUNK_BYTES = CHUNK_BYTES_MAX
#: the successes are spread over this many days from PERIOD_START (UTC)
PERIOD_DAYS = 28
PERIOD_START = "2026-01-01 00:00:00+00"
#: a success settles this many days later (provider_settings.settlement_delay_days, set for the run)
SETTLEMENT_DELAY_DAYS = 1
CURRENCIES = ("USD", "EUR")

END_TO_END_RATIO_TARGET = 1.5
#: the same target against the batch-fetch approach: the pipeline about 2.8x faster or better
BATCH_FETCH_RATIO_TARGET = 2.8
PEAK_RSS_TARGET_MB = 300.0

#: generation, baselines and checks: each statement's limit (the pipeline sets its own per stage)
STATEMENT_TIMEOUT_MS = 600_000
POOL_WAIT_S = 30.0
POOL_CLOSE_S = 10.0
#: the whole measured run, generation included
RUN_TIMEOUT_S = 3_600.0
RSS_SAMPLE_S = 0.01


@dataclass(frozen=True)
class Drift:
    """Which payments (by their number n) drift how: disjoint residues, so each count is exact."""

    name: str
    modulus: int
    residue: int
    difference: Difference

    def count(self, rows: int) -> int:
        return 0 if rows < self.residue else (rows - self.residue) // self.modulus + 1

    def sql(self) -> str:
        return f"n % {self.modulus} = {self.residue}"


AMOUNT = Drift("amount", 200, 1, Difference.AMOUNT_MISMATCH)  # 0.5 %: gross moved by 1 to 50 minor units
FEE = Drift("fee", 200, 2, Difference.FEE_MISMATCH)  # 0.5 %: fee moved up by 1 to 20 minor units
MISSING = Drift("missing", 1000, 3, Difference.MISSING_PROVIDER)  # 0.1 %: no row
LATE = Drift("late", 1000, 4, Difference.TIMING_MISMATCH)  # 0.1 %: settled a day late
EXTRA = Drift("extra", 1000, 5, Difference.MISSING_INTERNAL)  # 0.1 %: a charge Ballast never made, besides
DRIFTS = (AMOUNT, FEE, MISSING, LATE, EXTRA)
#: the classes the baselines look at (no timing: that needs the transitions, a second join)
BASELINE_CLASSES = (
    Difference.MISSING_INTERNAL,
    Difference.MISSING_PROVIDER,
    Difference.CURRENCY_MISMATCH,
    Difference.AMOUNT_MISMATCH,
    Difference.STATUS_MISMATCH,
    Difference.FEE_MISMATCH,
)

#: batch-fetch sees only the rows, never the payments no row names
BATCH_FETCH_CLASSES = tuple(c for c in BASELINE_CLASSES if c is not Difference.MISSING_PROVIDER)

# -- the data, a function of n ----------------------------------------------------------------------

_PERIOD_S = PERIOD_DAYS * 86_400
#: $1 is the number of payments
_SUCCEEDED_AT = f"(timestamptz '{PERIOD_START}' + make_interval(secs => (n - 1) * {_PERIOD_S}::bigint / $1::bigint))"
_AMOUNT = "round((1000 + n * 7919 % 99001)::numeric / 100, 2)"
_CURRENCY = f"(CASE WHEN n % 10 = 0 THEN '{CURRENCIES[1]}' ELSE '{CURRENCIES[0]}' END)"
_PAYMENT_ID = "md5('bench-' || n)::uuid"


def _status(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def generate_payments(pool: asyncpg.Pool, rows: int) -> None:
    """`rows` SUCCEEDED payments with provider ids pay_<n>, in batches: the idempotency key each needs,
    the payment RECORDED, then a RECORDED -> SUCCEEDED transition whose trigger moves it (payments refuse
    a direct write of their state)."""
    for first in range(1, rows + 1, GENERATE_BATCH):
        last = min(rows, first + GENERATE_BATCH - 1)
        async with pool.acquire(timeout=POOL_WAIT_S) as connection, connection.transaction():
            await connection.execute(
                f"""
                INSERT INTO idempotency_keys (client_id, idempotency_key, operation, request_fingerprint, resource_id)
                SELECT '{CLIENT_ID}', 'bench-' || n, '{CREATE_PAYMENT_OPERATION}',
                       sha256(convert_to('bench-' || n, 'UTF8')), {_PAYMENT_ID}
                FROM generate_series($1::bigint, $2::bigint) AS n
                """,
                first,
                last,
            )
            await connection.execute(
                f"""
                INSERT INTO payments (id, client_id, idempotency_key, amount, currency_code, state,
                                      merchant_reference, provider_payment_id, created_at, updated_at)
                SELECT {_PAYMENT_ID}, '{CLIENT_ID}', 'bench-' || n, {_AMOUNT}, {_CURRENCY},
                       '{PaymentState.RECORDED}', 'order_' || n, 'pay_' || n,
                       {_SUCCEEDED_AT} - interval '1 second', {_SUCCEEDED_AT} - interval '1 second'
                FROM generate_series($2::bigint, $3::bigint) AS n
                """,
                rows,
                first,
                last,
            )
            await connection.execute(
                f"""
                INSERT INTO payment_transitions (payment_id, from_state, to_state, event, cause, evidence_ref,
                                                 occurred_at)
                SELECT {_PAYMENT_ID}, '{PaymentState.RECORDED}', '{PaymentState.SUCCEEDED}',
                       '{PaymentEvent.SUCCEEDED}', 'bench', 'bench:pay_' || n, {_SUCCEEDED_AT}
                FROM generate_series($2::bigint, $3::bigint) AS n
                """,
                rows,
                first,
                last,
            )
        _status(f"  {last:,} of {rows:,} payments SUCCEEDED")
    # the statistics and visibility map a database that has had these payments for a while has
    await pool.execute("VACUUM (ANALYZE) idempotency_keys, payments, payment_transitions")


async def settings_for_bench(pool: asyncpg.Pool) -> ProviderSettings:
    """The provider's settings, settling SETTLEMENT_DELAY_DAYS after success with a window of 0 days."""
    await pool.execute(
        "UPDATE provider_settings SET settlement_delay_days = $2, settlement_window_days = 0 WHERE provider = $1",
        PROVIDER,
        SETTLEMENT_DELAY_DAYS,
    )
    async with pool.acquire(timeout=POOL_WAIT_S) as connection:
        settings = await repo.provider_settings(connection, PROVIDER)
    if settings is None:
        raise RuntimeError(f"provider_settings has no row for {PROVIDER!r}: is the database at head?")
    return settings


async def write_report(pool: asyncpg.Pool, rows: int, settings: ProviderSettings, path: Path) -> None:
    """The payments' settlement report, as the simulator writes it, with the planted drift: PostgreSQL
    streams it (COPY ... TO STDOUT) into `path`; every day's lines are followed by their payout."""
    fee = "round({amount} * $2::numeric / 10000 + $3::int * 0.01, 2)"
    settles = f"(({_SUCCEEDED_AT} AT TIME ZONE 'UTC')::date + $4::int)"
    query = f"""
        WITH lines AS (
            SELECT n, 'txn_' || n AS txn, 'pay_' || n AS source_id, 'order_' || n AS reference,
                   {_CURRENCY} AS currency,
                   {_AMOUNT} + CASE WHEN {AMOUNT.sql()} THEN 0.01 * (1 + n % 50) ELSE 0 END AS gross,
                   {fee.format(amount=_AMOUNT)} + CASE WHEN {FEE.sql()} THEN 0.01 * (1 + n % 20) ELSE 0 END AS fee,
                   {settles} + CASE WHEN {LATE.sql()} THEN 1 ELSE 0 END AS settlement_date
            FROM generate_series(1, $1::bigint) AS n
            WHERE NOT ({MISSING.sql()})
            UNION ALL
            SELECT n, 'txn_x' || n, 'pay_x' || n, NULL, {_CURRENCY}, round((500 + n % 9000)::numeric / 100, 2),
                   {fee.format(amount="round((500 + n % 9000)::numeric / 100, 2)")}, {settles}
            FROM generate_series(1, $1::bigint) AS n
            WHERE {EXTRA.sql()}
        ), reported AS (
            SELECT 'po_' || to_char(settlement_date, 'YYYYMMDD') || '_' || lower(currency) AS payout_id,
                   settlement_date, txn AS balance_transaction_id, 'charge' AS type, 'available' AS status,
                   source_id, reference, currency, gross, fee, gross - fee AS net, 'charge' AS description,
                   0 AS payout_last, n
            FROM lines
            UNION ALL
            SELECT 'po_' || to_char(settlement_date, 'YYYYMMDD') || '_' || lower(currency), settlement_date,
                   'po_' || to_char(settlement_date, 'YYYYMMDD') || '_' || lower(currency), 'payout', 'paid',
                   NULL, NULL, currency, -sum(gross - fee), 0, -sum(gross - fee),
                   'payout of ' || count(*) || ' lines', 1, 0
            FROM lines GROUP BY settlement_date, currency
        )
        SELECT payout_id, to_char(settlement_date, 'YYYY-MM-DD') AS settlement_date, balance_transaction_id, type,
               status, source_id, reference, currency, gross, fee, net, description
        FROM reported ORDER BY reported.settlement_date, currency, payout_last, n
    """
    async with pool.acquire(timeout=POOL_WAIT_S) as connection:
        # COPY takes no parameters: the few numbers go in as literals
        literal = (
            query.replace("$1::bigint", f"{rows}::bigint")
            .replace("$2::numeric", f"{settings.fee_bps}::numeric")
            .replace("$3::int", f"{settings.fee_fixed_minor_units}::int")
            .replace("$4::int", f"{settings.settlement_delay_days}::int")
        )
        await connection.copy_from_query(literal, output=str(path), format="csv", header=True)


def _data_rows(path: Path) -> int:
    with path.open("rb") as file:
        return sum(1 for _ in file) - 1  # the header line is not a row


def planted(rows: int) -> dict[Difference, int]:
    return {drift.difference: drift.count(rows) for drift in DRIFTS}


# -- memory ---------------------------------------------------------------------------------------


class RssSampler:
    """This process's resident set, sampled every RSS_SAMPLE_S on a thread (/proc/self/statm); where there
    is no /proc, getrusage's lifetime peak stands in."""

    def __init__(self) -> None:
        self._statm = Path("/proc/self/statm")
        self._page = os.sysconf("SC_PAGE_SIZE") if self._statm.exists() else 0
        self._peak = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)

    def current(self) -> int:
        if self._page:
            return int(self._statm.read_text().split()[1]) * self._page
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _sample(self) -> None:
        while not self._stopping.wait(RSS_SAMPLE_S):
            self.take()

    def take(self) -> None:
        now = self.current()
        with self._lock:
            self._peak = max(self._peak, now)

    def reset(self) -> None:
        with self._lock:
            self._peak = self.current()

    def peak(self) -> int:
        self.take()
        with self._lock:
            return self._peak

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stopping.set()
        self._thread.join(timeout=1.0)


@dataclass
class Stage:
    name: str
    seconds: float = 0.0
    peak_rss_bytes: int = 0
    #: why the stage stopped before it finished (its seconds are then the time until it stopped)
    failure: str = ""


class _Running:
    """A stage being timed; `end` records it."""

    def __init__(self, timings: Timings, name: str, sampler: RssSampler) -> None:
        self._timings, self._sampler = timings, sampler
        self.stage = Stage(name)
        _status(f"{name}...")
        sampler.reset()
        self._started = time.perf_counter()

    def end(self, failure: BaseException | None = None) -> Stage:
        if failure is not None:
            self.stage.failure = f"{type(failure).__name__}: {failure}"
        self.stage.seconds = time.perf_counter() - self._started
        self.stage.peak_rss_bytes = self._sampler.peak()
        self._timings.stages.append(self.stage)
        _status(
            f"  {self.stage.seconds:.2f} s, peak RSS {self.stage.peak_rss_bytes / 2**20:.0f} MB"
            + (f"; STOPPED: {self.stage.failure}" if self.stage.failure else "")
        )
        return self.stage


@dataclass
class Timings:
    stages: list[Stage] = field(default_factory=list)

    def begin(self, name: str, sampler: RssSampler) -> _Running:
        return _Running(self, name, sampler)

    @contextmanager
    def stage(self, name: str, sampler: RssSampler) -> Iterator[Stage]:
        running = self.begin(name, sampler)
        try:
            yield running.stage
        except Exception as error:
            running.end(error)
            raise
        running.end()

    def seconds(self, *names: str) -> float:
        return sum(stage.seconds for stage in self.stages if stage.name in names)

    def peak_mb(self, *names: str) -> float:
        return max(stage.peak_rss_bytes for stage in self.stages if stage.name in names) / 2**20


# -- the pipeline, stage by stage ---------------------------------------------------------------------

INGESTION = "(a) ingestion"
NORMALIZATION = "(b) normalization"
MATCHING = "(c) matching + classification"
RESOLUTION = "(d) resolution"
PIPELINE = (INGESTION, NORMALIZATION, MATCHING, RESOLUTION)
COPY = "(e) plain COPY"
JOIN = "(e) one classifying join"
BATCH_FETCH = "(f) batch-fetch"
KEEP = "(g) keeping the rows"


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    """The file in READ_CHUNK_BYTES chunks, read off the event loop."""
    file: IO[bytes] = await asyncio.to_thread(path.open, "rb")
    try:
        while chunk := await asyncio.to_thread(file.read, READ_CHUNK_BYTES):
            yield chunk
    finally:
        file.close()


@asynccontextmanager
async def _stage_transaction(
    database: Database, run_id: uuid.UUID, timeout_s: int
) -> AsyncIterator[tuple[asyncpg.Connection, ReportRunRecord]]:
    """A transaction as process_run opens one for a stage: its statements bounded, the run locked."""
    async with (
        database.connection(Budget.within(timeout_s * 3)) as connection,
        connection.transaction(),
    ):
        await repo.limit_statements(connection, timeout_s)
        run = await repo.lock_run(connection, run_id, RUN_LEASE_S)
        if run is None:
            raise RuntimeError(f"report run {run_id} vanished")
        yield connection, run


async def run_pipeline(
    database: Database, path: Path, timeout_s: int, timings: Timings, sampler: RssSampler
) -> ReportRunRecord:
    """Stages 1 to 5 with the service's own functions, in process_run's transactions (each statement
    limited to `timeout_s`, the service's STAGE_STATEMENT_TIMEOUT_S unless told), each one timed."""
    with timings.stage(INGESTION, sampler):
        header = ReportHeader(PROVIDER, ReportKind.SETTLEMENT, path.name, "text/csv", None)
        ingested = await ingest_file_report(database, header, _file_chunks(path))
    if ingested.replayed:
        raise RuntimeError("the report was taken for a replay of an earlier one: the database is not fresh")
    run_id = ingested.run.id
    with timings.stage(NORMALIZATION, sampler):
        # process_run commits the move to NORMALIZING first (GetReportRun shows the stage), then normalizes
        async with _stage_transaction(database, run_id, timeout_s) as (connection, _):
            await repo.start_normalizing(connection, run_id)
        async with _stage_transaction(database, run_id, timeout_s) as (connection, locked):
            run = await normalize_report(database, connection, locked)
    if run.status != RunStatus.MATCHING:
        raise RuntimeError(f"normalization left the run {run.status}: {run.failure_reason}")
    # matching and resolution share one transaction in process_run; its commit is counted in resolution
    async with _stage_transaction(database, run_id, timeout_s) as (connection, locked):
        with timings.stage(MATCHING, sampler):
            await match_report(connection, locked)
        resolving = timings.begin(RESOLUTION, sampler)
        try:
            done = await resolve_report(connection, locked)
        except Exception as error:
            resolving.end(error)
            raise
    resolving.end()
    if done.status != RunStatus.COMPLETED:
        raise RuntimeError(f"the run ended {done.status}: {done.failure_reason}")
    return done


async def findings_by_class(pool: asyncpg.Pool, run_id: uuid.UUID) -> dict[Difference, int]:
    rows = await pool.fetch(
        "SELECT difference, count(*) AS found FROM report_findings WHERE run_id = $1 GROUP BY difference", run_id
    )
    return {Difference(row["difference"]): row["found"] for row in rows}


# -- the baselines ------------------------------------------------------------------------------------

_CSV_COLUMNS = CSV_COLUMNS  # the simulator's settlement report


async def copy_and_join(
    pool: asyncpg.Pool, path: Path, settings: ProviderSettings, timings: Timings, sampler: RssSampler
) -> dict[Difference, int]:
    """(e): COPY the file into a staging table of typed columns, then one classifying join against
    payments into a temp table; the classes found. Its statements run with the settings of the pipeline's
    stages (repo.limit_statements: work memory, no JIT), so the two are compared on equal terms."""
    async with pool.acquire(timeout=POOL_WAIT_S) as connection:  # the pool resets them on release
        await connection.execute(f"SET jit = off; SET work_mem = '{repo.STAGE_WORK_MEM_MB}MB'")
        await connection.execute(
            """
            CREATE TABLE bench_staging (
                n bigint GENERATED ALWAYS AS IDENTITY, payout_id text, settlement_date date,
                balance_transaction_id text, type text, status text,
                source_id text, reference text, currency text, gross numeric, fee numeric, net numeric,
                description text
            )
            """
        )
        with timings.stage(COPY, sampler):
            await connection.copy_to_table(
                "bench_staging", source=str(path), columns=_CSV_COLUMNS, format="csv", header=True
            )
        with timings.stage(JOIN, sampler):
            await connection.execute(
                f"""
                CREATE TEMP TABLE bench_classified AS
                SELECT * FROM (
                    SELECT s.balance_transaction_id, coalesce(s.source_id, p.provider_payment_id) AS source_id,
                           p.id AS payment_id,
                           CASE WHEN p.id IS NULL THEN '{Difference.MISSING_INTERNAL}'
                                WHEN s.source_id IS NULL THEN '{Difference.MISSING_PROVIDER}'
                                WHEN s.currency <> p.currency_code THEN '{Difference.CURRENCY_MISMATCH}'
                                WHEN s.gross <> p.amount THEN '{Difference.AMOUNT_MISMATCH}'
                                WHEN p.state <> '{PaymentState.SUCCEEDED}' THEN '{Difference.STATUS_MISMATCH}'
                                WHEN s.fee <> round(p.amount * $1::numeric / 10000 + $2::int * 0.01, 2)
                                    THEN '{Difference.FEE_MISMATCH}'
                           END AS difference
                    FROM (SELECT * FROM bench_staging WHERE type = 'charge') s
                    FULL JOIN payments p ON p.provider_payment_id = s.source_id
                ) classified
                WHERE difference IS NOT NULL
                """.replace("$1::numeric", f"{settings.fee_bps}::numeric").replace(
                    "$2::int", f"{settings.fee_fixed_minor_units}::int"
                )
            )
        rows = await connection.fetch("SELECT difference, count(*) AS found FROM bench_classified GROUP BY difference")
        await connection.execute("DROP TABLE bench_classified")
        # (g) what keeping the canonical rows costs at the least: the staged rows, already typed, written
        # once into a table shaped like report_rows (its key and checks), nothing judged or matched
        await connection.execute("CREATE TABLE bench_rows (LIKE report_rows INCLUDING ALL)")
        with timings.stage(KEEP, sampler):
            await connection.execute(
                """
                INSERT INTO bench_rows (run_id, row_number, provider_transaction_id, source_id, reference, payout_id,
                                        type, status, currency_code, gross, fee, net, settlement_date)
                SELECT $1, n, balance_transaction_id, source_id, reference, payout_id, upper(type), status, currency,
                       gross, fee, net, settlement_date
                FROM bench_staging
                """,
                uuid.uuid4(),
            )
        await connection.execute("DROP TABLE bench_rows")
        await connection.execute("DROP TABLE bench_staging")
    return {Difference(row["difference"]): row["found"] for row in rows}


async def batch_fetch(
    pool: asyncpg.Pool, path: Path, settings: ProviderSettings, timings: Timings, sampler: RssSampler
) -> dict[Difference, int]:
    """(f): the file read in Python; for every FETCH_CHUNK_ROWS charge rows, their payments fetched with
    one query and compared in dicts; the classes found (no MISSING_PROVIDER: that needs every id seen)."""
    found: collections.Counter[Difference] = collections.Counter()
    unit = Decimal("0.01")
    bps, fixed = settings.fee_bps, settings.fee_fixed_minor_units * unit

    async def compare(connection: asyncpg.Connection, chunk: list[dict[str, str]]) -> None:
        payments = await connection.fetch(
            "SELECT provider_payment_id, amount, currency_code, state FROM payments"
            " WHERE provider_payment_id = ANY($1::text[])",
            [row["source_id"] for row in chunk],
        )
        by_id = {payment["provider_payment_id"]: payment for payment in payments}
        for row in chunk:
            payment = by_id.get(row["source_id"])
            if payment is None:
                found[Difference.MISSING_INTERNAL] += 1
            elif row["currency"] != payment["currency_code"]:
                found[Difference.CURRENCY_MISMATCH] += 1
            elif Decimal(row["gross"]) != payment["amount"]:
                found[Difference.AMOUNT_MISMATCH] += 1
            elif payment["state"] != PaymentState.SUCCEEDED:
                found[Difference.STATUS_MISMATCH] += 1
            elif Decimal(row["fee"]) != (payment["amount"] * bps / 10_000 + fixed).quantize(unit, ROUND_HALF_UP):
                found[Difference.FEE_MISMATCH] += 1

    with timings.stage(BATCH_FETCH, sampler):
        file: IO[str] = await asyncio.to_thread(path.open, encoding="utf-8", newline="")
        try:
            async with pool.acquire(timeout=POOL_WAIT_S) as connection:
                chunk: list[dict[str, str]] = []
                for row in csv.DictReader(file):
                    if row["type"] != "charge":
                        continue
                    chunk.append(row)
                    if len(chunk) == FETCH_CHUNK_ROWS:
                        await compare(connection, chunk)
                        chunk = []
                if chunk:
                    await compare(connection, chunk)
        finally:
            file.close()
    return dict(found)


# -- the run --------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    rows: int
    report_rows: int
    report_mb: float
    timings: Timings
    start_rss_mb: float
    #: why the pipeline did not finish ("" when it did)
    pipeline_failure: str
    pipeline: dict[Difference, int]
    copy_join: dict[Difference, int]
    batch: dict[Difference, int]


async def measure(database_url: str, rows: int, stage_timeout_s: int, directory: Path) -> Outcome:
    pool = await create_pool(database_url, size=4, statement_timeout_ms=STATEMENT_TIMEOUT_MS)
    try:
        _status(f"generating {rows:,} SUCCEEDED payments...")
        started = time.perf_counter()
        await generate_payments(pool, rows)
        settings = await settings_for_bench(pool)
        path = directory / "settlement.csv"
        _status(f"  {time.perf_counter() - started:.1f} s; writing their settlement report...")
        await write_report(pool, rows, settings, path)
        report_rows = await asyncio.to_thread(_data_rows, path)
        report_mb = path.stat().st_size / 2**20
        _status(f"  {report_rows:,} rows, {report_mb:.1f} MB in {path}")
        timings = Timings()
        with RssSampler() as sampler:
            start_rss_mb = sampler.current() / 2**20
            pipeline_failure, pipeline = "", {}
            try:
                run = await run_pipeline(Database(pool), path, stage_timeout_s, timings, sampler)
                pipeline = await findings_by_class(pool, run.id)
            except (BallastError, RuntimeError, asyncpg.PostgresError) as error:  # measured up to where it stopped
                pipeline_failure = f"{type(error).__name__}: {error}"
            copy_join = await copy_and_join(pool, path, settings, timings, sampler)
            batch = await batch_fetch(pool, path, settings, timings, sampler)
        return Outcome(
            rows, report_rows, report_mb, timings, start_rss_mb, pipeline_failure, pipeline, copy_join, batch
        )
    finally:
        try:
            await asyncio.wait_for(pool.close(), POOL_CLOSE_S)
        except TimeoutError:
            pool.terminate()


def report(outcome: Outcome, check: bool) -> int:
    """The tables; the exit status."""
    timings = outcome.timings
    print(
        f"reconciliation: {outcome.rows:,} payments, a report of {outcome.report_rows:,} rows"
        f" ({outcome.report_mb:.0f} MB), {os.cpu_count()} CPUs; this process's RSS at start"
        f" {outcome.start_rss_mb:.0f} MB"
    )
    print(f"  {'stage':<32}{'seconds':>9}{'peak RSS MB':>13}")
    for stage in timings.stages:
        stopped = f"  STOPPED ({stage.failure[:120]})" if stage.failure else ""
        print(f"  {stage.name:<32}{stage.seconds:>9.2f}{stage.peak_rss_bytes / 2**20:>13.0f}{stopped}")
        if stage.name == RESOLUTION or (stage.failure and stage.name in PIPELINE):
            print(f"  {'pipeline end to end':<32}{timings.seconds(*PIPELINE):>9.2f}{timings.peak_mb(*PIPELINE):>13.0f}")
        if stage.name == JOIN:
            print(f"  {'(e) COPY + join':<32}{timings.seconds(COPY, JOIN):>9.2f}{timings.peak_mb(COPY, JOIN):>13.0f}")
    end_to_end = timings.seconds(*PIPELINE)
    ratio = end_to_end / timings.seconds(COPY, JOIN)
    batch_ratio = timings.seconds(BATCH_FETCH) / end_to_end
    peak_mb = timings.peak_mb(*PIPELINE)
    finished = not outcome.pipeline_failure
    ratio_met = finished and ratio <= END_TO_END_RATIO_TARGET
    rss_met = peak_mb <= PEAK_RSS_TARGET_MB
    at_least = "" if finished else ">="
    at_most = "" if finished else "<="
    print(
        f"  pipeline / (COPY + join)    {at_least}{ratio:6.2f}x  (target <= {END_TO_END_RATIO_TARGET}x:"
        f" {'met' if ratio_met else 'MISSED'})"
    )
    print(f"  batch-fetch / pipeline      {at_most}{batch_ratio:6.2f}x")
    # the least any pipeline that keeps its canonical rows takes: COPY, the rows written once, one join
    floor = timings.seconds(COPY, KEEP, JOIN) / timings.seconds(COPY, JOIN)
    print(
        f"  (COPY + keeping + join) / (COPY + join) {floor:6.2f}x  (no pipeline that keeps its rows does better;"
        f" pipeline / that: {end_to_end / timings.seconds(COPY, KEEP, JOIN):.2f}x)"
    )
    print(
        f"  pipeline peak RSS           {peak_mb:6.0f} MB (target <= {PEAK_RSS_TARGET_MB:.0f} MB:"
        f" {'met' if rss_met else 'MISSED'})"
    )
    record_ratios(
        "make bench-recon",
        [
            Ratio("reconciliation pipeline / (COPY + one join)", ratio, END_TO_END_RATIO_TARGET, at_least=False),
            Ratio("batch-fetch / pipeline", batch_ratio, BATCH_FETCH_RATIO_TARGET),
            Ratio("pipeline peak RSS MB / 300 MB", peak_mb / PEAK_RSS_TARGET_MB, 1.0, at_least=False),
        ],
        f"{outcome.report_rows:,} rows; (COPY + keeping + join) / (COPY + join) {floor:.2f}",
    )
    expected = planted(outcome.rows)
    print(f"  {'findings by class':<26}{'planted':>9}{'pipeline':>10}{'COPY+join':>11}{'batch-fetch':>13}")
    correct = True
    for difference in Difference:
        counts = (outcome.pipeline.get(difference, 0), outcome.copy_join.get(difference), outcome.batch.get(difference))
        wanted = expected.get(difference, 0)
        if not any(counts) and not wanted:
            continue
        correct = correct and counts[0] == wanted
        shown = [
            str(count or 0) if difference in classes else "-"
            for count, classes in zip(counts[1:], (BASELINE_CLASSES, BATCH_FETCH_CLASSES), strict=True)
        ]
        mark = "" if counts[0] == wanted else "  <- differs"
        print(f"  {difference.value:<26}{wanted:>9}{counts[0]:>10}{shown[0]:>11}{shown[1]:>13}{mark}")
    if not finished:
        print(f"  the pipeline did not finish: {outcome.pipeline_failure[:300]}")
        return 1
    if not correct:
        print("  the pipeline's findings differ from the planted drift")
        return 1
    return 1 if check and not (ratio_met and rss_met) else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.reconciliation", description=__doc__.splitlines()[0] if __doc__ else ""
    )
    parser.add_argument(
        "--rows", type=int, default=ROWS_DEFAULT, help=f"payments, about one report row each ({ROWS_MIN} to {ROWS_MAX})"
    )
    parser.add_argument(
        "--stage-timeout-s",
        type=int,
        default=STAGE_STATEMENT_TIMEOUT_S,
        help=f"each pipeline statement's time limit, as process_run's (default {STAGE_STATEMENT_TIMEOUT_S})",
    )
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    if not ROWS_MIN <= args.rows <= ROWS_MAX:
        parser.error(f"--rows must be from {ROWS_MIN} to {ROWS_MAX}")
    if not 1 <= args.stage_timeout_s <= STAGE_STATEMENT_TIMEOUT_S * 4:
        parser.error(f"--stage-timeout-s must be from 1 to {STAGE_STATEMENT_TIMEOUT_S * 4}")
    if any(digits != 2 for digits in (MINOR_UNITS[currency] for currency in CURRENCIES)):
        raise RuntimeError(f"the generated amounts have two fraction digits: {CURRENCIES} must too")
    from server.observability import configure_logging

    configure_logging("WARNING", "console")
    server_url, source = postgres_server_url()
    with bench_database(server_url) as database_url, tempfile.TemporaryDirectory(prefix="ballast-recon-") as tmp:
        _status(f"database {source}: {redacted(database_url)}; migrating")
        migrate_to_head(database_url)
        measured = measure(database_url, args.rows, args.stage_timeout_s, Path(tmp))
        outcome = asyncio.run(asyncio.wait_for(measured, RUN_TIMEOUT_S))
    return report(outcome, args.check)


if __name__ == "__main__":
    sys.exit(main())
