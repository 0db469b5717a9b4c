"""A scenario's reconciliation (chaos/scenarios.py's `Reconcile`), once its load has settled: the
provider's settlement report downloaded as an operator would, uploaded with IngestReport to one server,
that server killed with SIGKILL while it processes the run and started again, the run awaited until it
is COMPLETED (or FAILED), and the same file uploaded again. What it did and left is a `ReportSnapshot`
for the checker, and a `ReportLog` (times, the stage the kill met) for the report.

The kill lands inside a stage because, from the upload until the kill, every round trip to PostgreSQL
is slowed on the `postgres` proxy (`Reconcile.slow_postgres_ms`): a stage of a few statements then takes
seconds. The killed server held the run's lease, so neither it (restarted) nor another replica takes the
run up again before the lease ends (server/domain/reconciliation.py's RUN_LEASE_S): the wait is bounded
by that lease and a margin.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import asyncpg
import grpc

from ballast.reconciliation.v1 import reconciliation_pb2 as pb
from ballast.reconciliation.v1 import reconciliation_pb2_grpc
from chaos.checker import REPORT_TABLES, CaseRow, FindingRow, ReportRunRow, ReportSnapshot
from chaos.scenarios import RUN_STAGES, Reconcile
from chaos.topology import World
from server.db.engine import asyncpg_dsn
from server.domain.reconciliation import RUN_LEASE_S

#: The provider whose report it is (its mapping and provider_settings row are Ballast's).
PROVIDER = "simulator"
#: The report's bytes go in chunks of this size (1 byte to 1 MiB each, the API says).
UPLOAD_CHUNK_BYTES = 64 * 1024
#: One upload's deadline: the file is small, but every round trip may be slowed meanwhile.
UPLOAD_TIMEOUT_S = 60.0
#: One GetReportRun's deadline.
CALL_TIMEOUT_S = 10.0
#: How long the run waits to see the run in the stage aimed at before it kills the server all the same.
STAGE_WAIT_S = 30.0
STAGE_POLL_S = 0.05
#: How long the run waits, from the kill, for the run to be COMPLETED or FAILED: the killed server's
#: lease must end first, then another worker processes the run from the stage it was left in.
COMPLETION_MARGIN_S = 45.0
COMPLETION_TIMEOUT_S = RUN_LEASE_S + COMPLETION_MARGIN_S
COMPLETION_POLL_S = 0.5
#: Where the report is downloaded from (the simulator's own API, as an operator would, not a proxy).
REPORT_PATH = "/v1/reports/settlement?format=csv"
DOWNLOAD_TIMEOUT_S = 30.0
#: The name of the toxics slowing PostgreSQL while the run is processed (unique within the run).
SLOW_TOXIC = "chaos_reconcile_slow"

_STATUS = {
    pb.REPORT_RUN_STATUS_RECEIVED: "RECEIVED",
    pb.REPORT_RUN_STATUS_NORMALIZING: "NORMALIZING",
    pb.REPORT_RUN_STATUS_MATCHING: "MATCHING",
    pb.REPORT_RUN_STATUS_COMPLETED: "COMPLETED",
    pb.REPORT_RUN_STATUS_FAILED: "FAILED",
}
_STAGES = frozenset({"NORMALIZING", "MATCHING"})
_FINAL = frozenset({"COMPLETED", "FAILED"})
#: How far along each status is: the kill is aimed at a stage, and a later one will do when it is passed.
_ORDER = {
    **{stage: number for number, stage in enumerate(RUN_STAGES)},
    "COMPLETED": len(RUN_STAGES),
    "FAILED": len(RUN_STAGES),
}

_RUN = """
SELECT id::text, status, row_count, matched_row_count, unmatched_row_count, invalid_row_count, opened_case_count,
       failure_reason
FROM report_runs WHERE id = $1::uuid
"""
_FINDINGS = """
SELECT f.run_id::text, f.id, f.difference, f.row_number,
       coalesce(r.source_id, f.payout_id, f.expected ->> 'provider_payment_id', f.observed ->> 'source_id'),
       f.payment_id::text, f.case_id::text
FROM report_findings f LEFT JOIN report_rows r ON r.run_id = f.run_id AND r.row_number = f.row_number
ORDER BY f.id
"""
_CASES = """
SELECT id::text, kind, status, payment_id::text, extract(epoch FROM opened_at)::float8, report_run_id::text
FROM cases ORDER BY opened_at, id
"""
_PAYOUT_ENTRIES = "SELECT id::text, event_key FROM ledger_entries WHERE event_key LIKE 'payout:%' ORDER BY id"
_COUNTS = "SELECT " + ", ".join(f"(SELECT count(*) FROM {table}) AS {table}" for table in REPORT_TABLES)


@dataclass
class ReportLog:
    """How the reconciliation went, for the report: its times in seconds from when the first upload began."""

    report_bytes: int = 0
    report_rows: int = 0
    sha256: str = ""
    run_id: str = ""
    upload_s: float | None = None
    #: the stage the seed aimed the kill at
    aimed_at: str = ""
    #: the run's status as GetReportRun last showed it before the kill, and as the database held it then
    seen_before_kill: str = ""
    status_at_kill: str = ""
    #: whether the killed server held the run's lease at the kill
    leased_at_kill: bool | None = None
    killed_at_s: float | None = None
    restarted_at_s: float | None = None
    ended_at_s: float | None = None
    ended: str = ""
    replay_s: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def kill(self) -> str:
        """Which moment the kill met, in words."""
        if self.killed_at_s is None:
            return "no kill: " + "; ".join(self.notes)
        stage = self.status_at_kill or self.seen_before_kill or "unknown"
        lease = ""
        if self.leased_at_kill is not None:
            lease = ", its lease held by the killed server" if self.leased_at_kill else ", not leased"
        if stage in _STAGES:
            return (
                f"mid-stage: the run was {stage} (aimed at {self.aimed_at}, GetReportRun showed"
                f" {self.seen_before_kill}){lease}"
            )
        if stage in _FINAL:
            return f"after the run was already {stage}: the kill met no stage"
        return f"before any stage: the run was {stage}{lease}"

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "kill": self.kill}


def _download(url: str) -> bytes:
    with urllib.request.urlopen(f"{url}{REPORT_PATH}", timeout=DOWNLOAD_TIMEOUT_S) as response:  # noqa: S310
        body: bytes = response.read()
    return body


def _upload(body: bytes) -> Iterator[pb.IngestReportRequest]:
    header = pb.ReportHeader(
        provider=PROVIDER,
        kind=pb.REPORT_KIND_SETTLEMENT,
        file_name="settlement.csv",
        content_type="text/csv",
        sha256=hashlib.sha256(body).hexdigest(),
    )
    yield pb.IngestReportRequest(header=header)
    for start in range(0, len(body), UPLOAD_CHUNK_BYTES):
        yield pb.IngestReportRequest(chunk=body[start : start + UPLOAD_CHUNK_BYTES])


def _error(error: grpc.aio.AioRpcError) -> str:
    return f"{error.code().name}: {error.details() or ''}"[:500]


async def prepare(the_world: World, plan: Reconcile) -> None:
    """Before the load: the simulator plants the scenario's drift, and Ballast's settings for its
    provider say when a row is due (the simulator's payout delay) and that a report covers the whole
    window after it (settlement_window_days 0: a row missing from it is missing for good)."""
    settings = await asyncio.to_thread(
        the_world.simulator.control, "PUT", "/_sim/profile", {"settings": dict(plan.drift)}
    )
    delay_days = int(settings["settings"]["settlement_delay_days"])
    connection = await asyncpg.connect(asyncpg_dsn(the_world.database_url))
    try:
        updated = await connection.execute(
            "UPDATE provider_settings SET settlement_delay_days = $2, settlement_window_days = 0 WHERE provider = $1",
            PROVIDER,
            delay_days,
        )
    finally:
        await connection.close()
    if updated != "UPDATE 1":
        raise RuntimeError(f"provider_settings has no row for {PROVIDER!r} ({updated})")


class _Slow:
    """Every round trip to PostgreSQL slowed on the `postgres` proxy, both ways, until `off`."""

    def __init__(self, the_world: World, latency_ms: int) -> None:
        self._world, self._latency_ms = the_world, latency_ms
        self._proxy = the_world.proxy_names["postgres"]
        self._on: list[str] = []

    def on(self) -> None:
        for stream in ("downstream", "upstream"):
            name = f"{SLOW_TOXIC}_{stream}"
            self._world.faults.add_toxic(
                self._proxy, name, "latency", stream=stream, toxicity=1.0, attributes={"latency": self._latency_ms}
            )
            self._on.append(name)

    def off(self) -> None:
        while self._on:
            self._world.faults.remove_toxic(self._proxy, self._on.pop())


async def _status(stub: reconciliation_pb2_grpc.ReconciliationServiceStub, metadata: Any, run_id: str) -> str:
    reply = await stub.GetReportRun(
        pb.GetReportRunRequest(report_run_id=run_id), metadata=metadata, timeout=CALL_TIMEOUT_S
    )
    return _STATUS.get(reply.run.status, f"STATUS_{reply.run.status}")


async def _watch_for_stage(
    stub: reconciliation_pb2_grpc.ReconciliationServiceStub, metadata: Any, run_id: str, log: ReportLog
) -> None:
    """Ask GetReportRun until the run is in the stage aimed at (or past it), for STAGE_WAIT_S at most."""
    deadline = time.monotonic() + STAGE_WAIT_S
    while time.monotonic() < deadline:
        try:
            log.seen_before_kill = await _status(stub, metadata, run_id)
        except grpc.aio.AioRpcError as error:
            log.notes.append(f"GetReportRun before the kill: {_error(error)}")
        if _ORDER.get(log.seen_before_kill, -1) >= _ORDER[log.aimed_at]:
            return
        await asyncio.sleep(STAGE_POLL_S)
    log.notes.append(f"the run was not seen {log.aimed_at} within {STAGE_WAIT_S:g}s")


async def _await_completion(
    stub: reconciliation_pb2_grpc.ReconciliationServiceStub, metadata: Any, run_id: str, log: ReportLog, started: float
) -> None:
    """Ask GetReportRun (any error: ask again) until the run is COMPLETED or FAILED, for
    COMPLETION_TIMEOUT_S from the kill at most."""
    deadline = time.monotonic() + COMPLETION_TIMEOUT_S
    errors = 0
    while time.monotonic() < deadline:
        try:
            status = await _status(stub, metadata, run_id)
        except grpc.aio.AioRpcError:
            errors += 1
        else:
            if status in _FINAL:
                log.ended, log.ended_at_s = status, round(time.monotonic() - started, 2)
                return
        await asyncio.sleep(COMPLETION_POLL_S)
    log.ended = f"not final {COMPLETION_TIMEOUT_S:g}s after the kill"
    if errors:
        log.notes.append(f"{errors} GetReportRun calls failed while waiting")


async def _run_row(connection: asyncpg.Connection, run_id: str) -> ReportRunRow | None:
    row = await connection.fetchrow(_RUN, run_id)
    return None if row is None else ReportRunRow(*row.values())


async def _counts(connection: asyncpg.Connection) -> dict[str, int]:
    row = await connection.fetchrow(_COUNTS)
    assert row is not None
    return {table: int(row[table]) for table in REPORT_TABLES}


async def reconcile(
    the_world: World, plan: Reconcile, kill_in: str, say: Callable[[str], None]
) -> tuple[ReportSnapshot, ReportLog]:
    """Upload the report, kill the server processing it once it is `kill_in` (a stage), wait for the run,
    upload it again; then read what it left, directly from the database (not through the proxies)."""
    log = ReportLog(aimed_at=kill_in)
    body = await asyncio.to_thread(_download, the_world.simulator.url)
    (the_world.work_dir / "settlement.csv").write_bytes(body)
    log.report_bytes, log.report_rows = len(body), max(body.count(b"\n") - 1, 0)
    log.sha256 = hashlib.sha256(body).hexdigest()
    replica = the_world.servers[plan.server]
    metadata = the_world.operator_metadata
    slow = _Slow(the_world, plan.slow_postgres_ms)
    connection = await asyncpg.connect(asyncpg_dsn(the_world.database_url))
    try:
        say(f"reconciling: {log.report_rows} report lines uploaded to {replica.child.name}, killed once {kill_in}")
        if plan.slow_postgres_ms:
            await asyncio.to_thread(slow.on)
        started = time.monotonic()
        try:
            async with grpc.aio.insecure_channel(replica.address) as channel:
                stub = reconciliation_pb2_grpc.ReconciliationServiceStub(channel)  # type: ignore[no-untyped-call]
                try:
                    first = await stub.IngestReport(_upload(body), metadata=metadata, timeout=UPLOAD_TIMEOUT_S)
                except grpc.aio.AioRpcError as error:
                    return ReportSnapshot(None, upload_error=_error(error)), log
                log.run_id, log.upload_s = first.run.id, round(time.monotonic() - started, 2)
                if first.replayed:
                    log.notes.append("the first upload was answered replayed")
                await _watch_for_stage(stub, metadata, log.run_id, log)
            at_kill = await connection.fetchrow(
                "SELECT status, coalesce(lease_until > now(), false) AS leased FROM report_runs WHERE id = $1::uuid",
                log.run_id,
            )
            await asyncio.to_thread(replica.child.kill)
            log.killed_at_s = round(time.monotonic() - started, 2)
            if at_kill is not None:
                log.status_at_kill, log.leased_at_kill = str(at_kill["status"]), bool(at_kill["leased"])
        finally:
            await asyncio.to_thread(slow.off)
        say(f"reconciling: {replica.child.name} killed with SIGKILL, {log.kill}; started again")
        await asyncio.to_thread(replica.start)
        log.restarted_at_s = round(time.monotonic() - started, 2)
        async with grpc.aio.insecure_channel(replica.address) as channel:
            stub = reconciliation_pb2_grpc.ReconciliationServiceStub(channel)  # type: ignore[no-untyped-call]
            await _await_completion(stub, metadata, log.run_id, log, started)
            when = "" if log.ended_at_s is None else f" {log.ended_at_s:g}s after the upload began"
            say(f"reconciling: the run is {log.ended}{when}; uploading the same file again")
            before = await _counts(connection)
            replay_started = time.monotonic()
            replayed: bool | None = None
            replay_run_id = replay_error = None
            try:
                again = await stub.IngestReport(_upload(body), metadata=metadata, timeout=UPLOAD_TIMEOUT_S)
                replayed, replay_run_id = again.replayed, again.run.id
            except grpc.aio.AioRpcError as error:
                replay_error = _error(error)
            log.replay_s = round(time.monotonic() - replay_started, 2)
            after = await _counts(connection)
        findings = await connection.fetch(_FINDINGS)
        cases = await connection.fetch(_CASES)
        payouts = await connection.fetch(_PAYOUT_ENTRIES)
        report = ReportSnapshot(
            run=await _run_row(connection, log.run_id),
            findings=tuple(FindingRow(*row.values()) for row in findings),
            cases=tuple(CaseRow(*row.values()) for row in cases),
            replayed=replayed,
            replay_run_id=replay_run_id,
            replay_error=replay_error,
            counts_before_replay=before,
            counts_after_replay=after,
            payout_entries=tuple((str(row["id"]), str(row["event_key"])) for row in payouts),
            file_rows=log.report_rows,
        )
    finally:
        await connection.close()
    (the_world.work_dir / "reconciliation.json").write_text(json.dumps(log.to_json(), indent=2) + "\n")
    return report, log
