"""Reconciliation: a provider's report taken in and checked against Ballast's records, in five stages.

    ingest_report     1. ingestion: the raw bytes stored as received, with their SHA-256; the same
                         file twice is one run (replayed); size bounded
    normalize_report  2. normalization: PostgreSQL parses the stored bytes into canonical rows with the
                         provider's mapping; a row that does not parse is kept with its line and error
    match_report      3 and 4. matching and classification: set-wise joins to payments and refunds,
                         a finding for every difference, by class
    resolve_report    5. resolution: a case for every finding a person must decide; the run COMPLETED

`process_run` runs the stages a run still needs, each in one transaction (a run killed mid-stage is
taken up again at that stage); `ReportWorker` processes runs as they arrive, one at a time per worker,
under a lease another worker takes over after a crash. docs/reconciliation.md has the design.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
import uuid
from collections.abc import AsyncIterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import asyncpg
import structlog
from prometheus_client import Counter, Histogram

from server.db import ledger_repository
from server.db import recon_repository as repo
from server.db.database import Budget, Database
from server.db.recon_repository import ReportRunRecord
from server.domain.errors import DeadlineExceeded, FieldViolation, InvalidArgument, NotFound, Unavailable
from server.domain.ledger import payout_postings
from server.domain.payment_states import PaymentEvent, Witness
from server.domain.reconciliation import (
    CHUNK_BYTES_MAX,
    CONTENT_TYPE_LENGTH_MAX,
    FILE_NAME_LENGTH_MAX,
    REPORT_BYTES_MAX,
    REPORT_ROWS_MAX,
    RUN_LEASE_S,
    ReportKind,
    RunStatus,
    check_sha256,
    header_columns,
    mapping_for,
)
from server.providers.gateway import GatewayClient, ReportUnavailable
from server.services.payment_events import Application, Evidence, apply_provider_evidence_each

log = structlog.get_logger(__name__)

RUNS = Counter("ballast_recon_runs", "Report runs that ended, by provider and status", ["provider", "status"])
STAGE_SECONDS = Histogram(
    "ballast_recon_stage_seconds",
    "Time of each reconciliation stage of a run (its transaction), by stage",
    ["stage"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
FINDINGS = Counter("ballast_recon_findings", "Differences found by report runs, by class", ["difference"])

#: How long one stage's statements may run (a million-row report takes seconds, not minutes).
STAGE_STATEMENT_TIMEOUT_S = 300
#: The raw bytes are written to PostgreSQL in batches of about this many bytes (one round trip each).
WRITE_BATCH_BYTES = 8 * 1024 * 1024
#: The longest header line read to find the report's columns.
HEADER_BYTES_MAX = 64 * 1024
#: How long an idle worker waits before it looks for a new run again.
WORKER_POLL_S = 1.0


@dataclass(frozen=True)
class ReportHeader:
    """What an upload says of its file, checked (`validated`) before any byte is stored."""

    provider: str
    kind: ReportKind
    file_name: str
    content_type: str
    #: the SHA-256 the client computed; None when Ballast computes it itself (the CLI reads the file)
    sha256: str | None

    def validated(self) -> ReportHeader:
        violations: list[FieldViolation] = []
        try:
            mapping_for(self.provider)
        except InvalidArgument as error:
            violations.extend(error.violations)
        for name, value, length_max in (
            ("header.file_name", self.file_name, FILE_NAME_LENGTH_MAX),
            ("header.content_type", self.content_type, CONTENT_TYPE_LENGTH_MAX),
        ):
            if not 1 <= len(value) <= length_max or not value.isprintable():
                violations.append(FieldViolation(name, f"must be 1 to {length_max} printable characters"))
        if self.sha256 is not None:
            try:
                check_sha256(self.sha256, "header.sha256")
            except InvalidArgument as error:
                violations.extend(error.violations)
        if violations:
            raise InvalidArgument(violations)
        return self


@dataclass(frozen=True)
class Ingested:
    run: ReportRunRecord
    #: an earlier upload of the same file's run, returned again; this upload's bytes were discarded
    replayed: bool


class _Digest:
    """The SHA-256 and size of an upload's bytes, as they go by."""

    def __init__(self) -> None:
        self.sha256 = hashlib.sha256()
        self.byte_count = 0

    def add(self, chunk: bytes) -> None:
        self.sha256.update(chunk)
        self.byte_count += len(chunk)

    def check(self, expected: str) -> None:
        """INVALID_ARGUMENT unless the bytes are the file whose SHA-256 the upload named."""
        if self.sha256.hexdigest() != expected:
            raise InvalidArgument(
                [
                    FieldViolation(
                        "header.sha256",
                        f"the {self.byte_count} bytes received hash to {self.sha256.hexdigest()}, not {expected}:"
                        " the upload was cut or changed; nothing was stored, upload the whole file again",
                    )
                ]
            )


async def _store_chunks(
    connection: asyncpg.Connection, run_id: uuid.UUID, chunks: AsyncIterable[bytes], digest: _Digest
) -> None:
    """Every chunk of the upload into report_chunks, in batches, hashing as they go; refused past
    REPORT_BYTES_MAX (the caller's transaction then keeps nothing)."""
    batch: list[bytes] = []
    batch_bytes, seq = 0, 0
    async for chunk in chunks:
        if not chunk:
            continue
        digest.add(chunk)
        if digest.byte_count > REPORT_BYTES_MAX:
            raise InvalidArgument(
                [
                    FieldViolation(
                        "chunk",
                        f"the report is larger than {REPORT_BYTES_MAX // (1024 * 1024)} MiB: split it by period"
                        " (a day or a week per file) and upload each part",
                    )
                ]
            )
        for start in range(0, len(chunk), CHUNK_BYTES_MAX):
            piece = chunk[start : start + CHUNK_BYTES_MAX]
            batch.append(piece)
            batch_bytes += len(piece)
        if batch_bytes >= WRITE_BATCH_BYTES:
            await repo.insert_chunks(connection, run_id, seq, batch)
            seq, batch, batch_bytes = seq + len(batch), [], 0
    if batch:
        await repo.insert_chunks(connection, run_id, seq, batch)


async def ingest_report(database: Database, header: ReportHeader, chunks: AsyncIterable[bytes]) -> Ingested:
    """Stage 1: store the upload's bytes exactly as received, with their SHA-256, as a RECEIVED run.

    The same file (provider, kind, SHA-256) as an earlier run that did not fail returns that run,
    `replayed`. Bytes that do not hash to the header's SHA-256, an empty file or one over
    REPORT_BYTES_MAX are INVALID_ARGUMENT, and nothing is kept: the run and its bytes are written in
    one transaction. Holds one connection for the whole upload."""
    header = header.validated()
    async with database.connection(Budget.within(STAGE_STATEMENT_TIMEOUT_S)) as connection:
        if header.sha256 is not None:
            earlier = await repo.replayed_run(connection, header.provider, header.kind, header.sha256)
            if earlier is not None:  # the bytes sent are checked, then discarded
                await _check_discarded(chunks, header.sha256)
                return Ingested(earlier, replayed=True)
        run_id = uuid.uuid4()
        digest = _Digest()
        async with connection.transaction():
            # the run first (its chunks reference it), its SHA-256 and size set once they are known
            claimed = header.sha256 or "0" * 64
            await repo.limit_statements(connection, STAGE_STATEMENT_TIMEOUT_S)
            run = await repo.insert_run(
                connection, run_id, header.provider, header.kind, header.file_name, header.content_type, claimed, 1
            )
            if run is None:  # a concurrent upload of the same file committed first
                await _check_discarded(chunks, claimed)
                earlier = await repo.replayed_run(connection, header.provider, header.kind, claimed)
                if earlier is None:
                    raise NotFound("report run", f"{header.provider}/{claimed}")
                return Ingested(earlier, replayed=True)
            await _store_chunks(connection, run_id, chunks, digest)
            actual = digest.sha256.hexdigest()
            if digest.byte_count == 0:
                raise InvalidArgument([FieldViolation("chunk", "the file is empty: nothing was stored")])
            if header.sha256 is not None:
                digest.check(header.sha256)
            if header.sha256 is None:
                earlier = await repo.replayed_run(connection, header.provider, header.kind, actual)
                if earlier is not None:
                    raise _Replayed(earlier)
            await repo.set_digest(connection, run_id, actual, digest.byte_count)
            stored = await repo.get_run(connection, run_id)
    assert stored is not None
    log.info("recon.ingested", run_id=str(run_id), provider=header.provider, bytes=digest.byte_count, sha256=actual)
    return Ingested(stored, replayed=False)


async def _check_discarded(chunks: AsyncIterable[bytes], sha256: str) -> None:
    """The bytes of an upload that replays an earlier run, hashed: they must be the file its header names."""
    digest = _Digest()
    async for chunk in chunks:
        digest.add(chunk)
    digest.check(sha256)


class _Replayed(Exception):
    def __init__(self, run: ReportRunRecord) -> None:
        self.run = run


async def ingest_file_report(database: Database, header: ReportHeader, chunks: AsyncIterable[bytes]) -> Ingested:
    """ingest_report for bytes whose SHA-256 Ballast computes itself (the CLI): the same file again is a
    replay, found once its bytes are hashed."""
    try:
        return await ingest_report(database, header, chunks)
    except _Replayed as replayed:
        return Ingested(replayed.run, replayed=True)


async def normalize_report(database: Database, connection: asyncpg.Connection, run: ReportRunRecord) -> ReportRunRecord:
    """Stage 2, in the caller's transaction: the run's canonical rows, PostgreSQL reading the stored bytes
    (streamed back to it from another connection of `database`, a chunk at a time). A report whose header
    lacks the mapping's columns, whose bytes are not UTF-8, or with more than REPORT_ROWS_MAX rows FAILS,
    with a reason that says what to do."""
    mapping = mapping_for(run.provider)
    header = await repo.header_line(connection, run.id, HEADER_BYTES_MAX)
    try:
        columns = header_columns(mapping, header.decode("utf-8", errors="strict"))
    except UnicodeDecodeError:
        return await _failed(
            connection, run, "the report is not UTF-8 text: export it as UTF-8 CSV and upload it again"
        )
    except InvalidArgument as error:
        return await _failed(connection, run, error.violations[0].description)
    try:
        async with database.connection(Budget.within(STAGE_STATEMENT_TIMEOUT_S)) as reader:
            count = await repo.normalize_rows(
                connection, run.id, mapping, columns, REPORT_ROWS_MAX, lambda: repo.stored_chunks(reader, run.id)
            )
    except repo.UnreadableReport as error:
        return await _failed(
            connection, run, f"the report is not UTF-8 text ({error}): export it as UTF-8 CSV and upload it again"
        )
    if count is None:
        return await _failed(
            connection,
            run,
            f"the report has more than {REPORT_ROWS_MAX} rows: split it by period and upload each part",
        )
    return await repo.finish_normalizing(connection, run.id)


async def _failed(connection: asyncpg.Connection, run: ReportRunRecord, reason: str) -> ReportRunRecord:
    await repo.fail_run(connection, run.id, reason)
    failed = await repo.get_run(connection, run.id)
    assert failed is not None
    log.warning("recon.run_failed", run_id=str(run.id), reason=reason)
    return failed


async def match_report(connection: asyncpg.Connection, run: ReportRunRecord) -> None:
    """Stages 3 and 4, in the caller's transaction: every difference between the run's rows and
    Ballast's records, found set-wise and written as findings by class."""
    settings = await repo.provider_settings(connection, run.provider)
    if settings is None:
        raise NotFound("provider settings", run.provider)
    await repo.classify(connection, run, settings)


#: The cause of the evidence a settlement report's row is.
REPORT_CAUSE = "report.settled"


async def resolve_report(connection: asyncpg.Connection, run: ReportRunRecord) -> ReportRunRecord:
    """Stage 5, in the caller's transaction: what is safe resolves through the same state machines and
    ledger rules as any evidence (a payment whose outcome Ballast never learned, which the report shows
    settled, becomes SUCCEEDED with the row as its evidence); a case for every finding a person must
    decide; a payout the provider paid whose every line matched is posted to the ledger, once; the run's
    final counts; COMPLETED."""
    settled = await repo.settled_undecided(connection, run.id)
    if settled:
        applications = [
            Application(
                row.payment_id,
                PaymentEvent.SUCCEEDED,
                Evidence(
                    REPORT_CAUSE,
                    f"report:{run.id}:{row.row_number}",
                    provider=run.provider,
                    provider_status=(row.status or "settled")[:64],
                    provider_payment_id=row.source_id,
                    witness=Witness.REPORT,
                    amount=format(row.gross, "f"),
                    currency_code=row.currency_code,
                ),
            )
            for row in settled
        ]
        outcomes = await apply_provider_evidence_each(connection, applications)
        moved = sum(1 for outcome in outcomes if outcome is not None and outcome.to_state is not None)
        log.info("recon.decided_by_report", run_id=str(run.id), payments=len(settled), moved=moved)
    payouts = await repo.matched_payouts(connection, run.id, sorted(mapping_for(run.provider).settled_statuses))
    postings = [
        posting
        for payout in payouts
        for posting in payout_postings(
            run.provider,
            payout.payout_id,
            payout.currency_code,
            cleared=payout.cleared,
            fees=payout.fees,
            adjustments=payout.adjustments,
            net=payout.net,
        )
    ]
    posted = await ledger_repository.post_entries(connection, postings) if postings else 0
    if payouts:
        log.info("recon.payouts", run_id=str(run.id), matched=len(payouts), posted=posted)
    opened = await repo.open_cases(connection, run.id)
    return await repo.complete_run(connection, run.id, opened)


async def process_run(database: Database, run_id: uuid.UUID) -> ReportRunRecord:
    """Every stage the run still needs, each in one transaction with the run locked: a run whose worker
    died mid-stage is taken up again at that stage, and nothing is written twice."""
    budget = Budget.within(STAGE_STATEMENT_TIMEOUT_S * 3)
    while True:
        async with database.connection(budget) as connection, connection.transaction():
            await repo.limit_statements(connection, STAGE_STATEMENT_TIMEOUT_S)
            run = await repo.lock_run(connection, run_id, RUN_LEASE_S)
            if run is None:
                raise NotFound("report run", str(run_id))
            if run.status in (RunStatus.COMPLETED, RunStatus.FAILED):
                return run
            if run.status == RunStatus.RECEIVED:  # committed first: GetReportRun shows the stage under way
                await repo.start_normalizing(connection, run.id)
                continue
            started = time.perf_counter()
            if run.status == RunStatus.NORMALIZING:
                stage = "normalization"
                continue_with = await normalize_report(database, connection, run)
            else:
                stage = "matching_and_resolution"
                await match_report(connection, run)
                continue_with = await resolve_report(connection, run)
                for difference, count in (await repo.finding_counts(connection, run.id)).items():
                    FINDINGS.labels(difference).inc(count)
        STAGE_SECONDS.labels(stage).observe(time.perf_counter() - started)
        if continue_with.status in (RunStatus.COMPLETED, RunStatus.FAILED):
            RUNS.labels(continue_with.provider, continue_with.status.value).inc()
        log.info(
            "recon.stage_done",
            run_id=str(run_id),
            stage=stage,
            status=continue_with.status.value,
            rows=continue_with.row_count,
            invalid=continue_with.invalid_row_count,
            cases=continue_with.opened_case_count,
        )


class ReportWorker:
    """Processes report runs as they arrive: claims the oldest unfinished run under a lease (a worker
    that dies leaves it to another once the lease ends) and runs its stages."""

    def __init__(self, database: Database, poll_s: float = WORKER_POLL_S) -> None:
        self._database = database
        self._poll_s = poll_s

    async def run_once(self) -> ReportRunRecord | None:
        """Claim and process one run; None when there was none to claim."""
        async with self._database.connection(Budget.within(30)) as connection:
            claimed = await repo.claim_run(connection, RUN_LEASE_S)
        if claimed is None:
            return None
        try:
            return await process_run(self._database, claimed.id)
        except (Unavailable, DeadlineExceeded):  # the database is away: the run is taken up again after its lease
            log.warning("recon.run_interrupted", run_id=str(claimed.id))
            raise
        except Exception as error:  # a run this code cannot process: FAILED, saying why, rather than retried forever
            log.exception("recon.run_error", run_id=str(claimed.id))
            async with self._database.connection(Budget.within(30)) as connection:
                await repo.fail_run(
                    connection, claimed.id, f"processing stopped: {type(error).__name__}: {error}"[:500]
                )
            raise

    async def run(self, stopping: asyncio.Event) -> None:
        """Until `stopping` is set: process each run as it arrives, looking again every poll_s when idle."""
        while not stopping.is_set():
            try:
                done = await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # logged; the run FAILED with its reason (or waits out its lease), and the worker goes on
                done = None
            if done is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), timeout=self._poll_s)


#: How long downloading one day's report may take.
REPORT_PULL_TIMEOUT_S = 300


class ReportPuller:
    """Every `interval_s`, downloads the provider's settlement report of each of the last `days` closed
    days (UTC) and ingests it, so that nothing depends on someone remembering: a report taken in before
    is a replay and changes nothing, a corrected one is a new run that supersedes it. The runs are then
    reconciled by the ReportWorker of any server."""

    def __init__(self, database: Database, gateway: GatewayClient, interval_s: float, days: int) -> None:
        self._database = database
        self._gateway = gateway
        self._interval_s = interval_s
        self._days = days

    async def pull_once(self, today: date | None = None) -> list[Ingested]:
        """Each closed day's report, oldest first; a day whose report cannot be read is logged and skipped."""
        today = today or datetime.now(UTC).date()
        ingested: list[Ingested] = []
        for back in range(self._days, 0, -1):
            day = today - timedelta(days=back)
            header = ReportHeader(
                self._gateway.provider, ReportKind.SETTLEMENT, f"settlement_{day.isoformat()}.csv", "text/csv", None
            )
            try:
                async with self._gateway.settlement_report(day, REPORT_PULL_TIMEOUT_S) as chunks:
                    result = await ingest_file_report(self._database, header, chunks)
            except (ReportUnavailable, InvalidArgument) as error:
                log.warning("recon.pull_failed", provider=self._gateway.provider, day=day.isoformat(), error=str(error))
                continue
            log.info("recon.pulled", day=day.isoformat(), run_id=str(result.run.id), replayed=result.replayed)
            ingested.append(result)
        return ingested

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            try:
                await self.pull_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # logged; the next pull tries again
                log.exception("recon.pull_error")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), timeout=self._interval_s)
