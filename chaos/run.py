"""One chaos run: the world up, the load and the seeded faults at once, every fault healed, a bounded
wait for the system to settle, then the checker over the history, the provider's truth, the database
and the broker's stream. A reconciling scenario then reconciles the provider's settlement report
(chaos/reconcile.py) and the checker judges that too. `run_scenario` returns the report; it never raises
for a broken invariant.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import asyncpg

from chaos import checker
from chaos.history import CREATE_PAYMENT, REFUND_PAYMENT, History
from chaos.load import Driver, Target
from chaos.observe import read_snapshot, read_stream
from chaos.reconcile import prepare, reconcile
from chaos.report import AppliedFault, Convergence, RunReport, summarize_load
from chaos.scenarios import Down, Kill, PlannedFault, ProviderFaults, Scenario, Toxic, kill_stage, plan
from chaos.topology import Timings, World, world
from server.db.engine import asyncpg_dsn

#: How long after the load (and its last heal) the run waits for the system to settle.
SETTLE_TIMEOUT_S = 90.0
SETTLE_POLL_S = 0.5
#: An answer from an open breaker must come faster than this (the provider's timeout is 1.5 s).
FAST_FAIL_S = 0.5
#: An UNKNOWN payment must be resolved, or a case opened on it, within the scenario's longest fault, the
#: resolver's worst case (Timings.resolver_worst_case_s) and this margin (scheduling, a loaded machine).
UNKNOWN_SLA_MARGIN_S = 10.0
#: A flapping provider must have taken the breaker open -> half-open -> closed at least this often.
BREAKER_CYCLES_MIN = 2
#: How often the run says what it is still waiting for while it settles.
SETTLE_PROGRESS_S = 5.0
#: How long the run waits for a fault's change (a restart included) to be made.
FAULT_ACTION_TIMEOUT_S = 45.0

#: States in which a payment is not decided yet.
_UNDECIDED = """
SELECT count(*) FROM payments p
WHERE p.state IN ('RECORDED', 'PENDING', 'UNKNOWN')
  AND NOT EXISTS (SELECT 1 FROM cases c WHERE c.payment_id = p.id AND c.status = 'OPEN')
"""
#: Refunds not decided yet (a refund of a payment with an open case waits for a person, as the payment does).
_REFUNDS_UNDECIDED = """
SELECT count(*) FROM refunds r
WHERE r.state IN ('RECORDED', 'PENDING', 'UNKNOWN')
  AND NOT EXISTS (SELECT 1 FROM cases c WHERE c.payment_id = r.payment_id AND c.status = 'OPEN')
"""
_OUTBOX_BEHIND = """
SELECT count(*) FILTER (WHERE o.published_at IS NULL AND o.dead_lettered_at IS NULL) AS unpublished,
       count(*) FILTER (WHERE o.published_at IS NOT NULL AND NOT EXISTS (
           SELECT 1 FROM processed_events e WHERE e.consumer_group = 'exposures' AND e.event_id = o.id::text
       )) AS unconsumed
FROM outbox o
"""


def _apply(the_world: World, fault: PlannedFault) -> None:
    what, faults = fault.what, the_world.faults
    if isinstance(what, Toxic):
        faults.add_toxic(
            the_world.proxy_names[what.proxy],
            fault.name,
            what.type,
            stream=what.stream,
            toxicity=what.toxicity,
            attributes=dict(what.attributes),
        )
    elif isinstance(what, Down):
        faults.disable(the_world.proxy_names[what.proxy])
    elif isinstance(what, Kill):
        the_world.process(what.role, what.index).kill()
    elif isinstance(what, ProviderFaults):
        the_world.simulator.control("PUT", "/_sim/profile", {"settings": dict(what.settings)})


def _heal(the_world: World, fault: PlannedFault) -> None:
    what, faults = fault.what, the_world.faults
    if isinstance(what, Toxic):
        faults.remove_toxic(the_world.proxy_names[what.proxy], fault.name)
    elif isinstance(what, Down):
        faults.enable(the_world.proxy_names[what.proxy])
    elif isinstance(what, Kill):
        the_world.restart(what.role, what.index)
    elif isinstance(what, ProviderFaults):
        _restore_profile(the_world)


def _restore_profile(the_world: World) -> None:
    """The simulator back on its scenario's profile, without the settings a ProviderFaults put over it."""
    name = str(the_world.simulator.control("GET", "/_sim/profile")["name"])
    if name.endswith("+custom"):
        the_world.simulator.control("PUT", "/_sim/profile", {"name": name.removesuffix("+custom")})


def _heal_everything(the_world: World, planned: list[PlannedFault]) -> None:
    """Nothing stays broken, whatever a fault's own heal did: every toxic off, every proxy up, every
    process running."""
    for fault in planned:
        if isinstance(fault.what, Kill) and not the_world.process(fault.what.role, fault.what.index).running:
            _heal(the_world, fault)
    if any(isinstance(fault.what, ProviderFaults) for fault in planned):
        _restore_profile(the_world)
    for name in the_world.proxy_names.values():
        for toxic in the_world.faults.toxics(name):
            the_world.faults.remove_toxic(name, toxic["name"])
        the_world.faults.enable(name)


async def _at(started: float, offset_s: float, step: Callable[[], None]) -> tuple[float, str | None]:
    """Run `step` (blocking: the Toxiproxy client and process control are synchronous) at `offset_s`."""
    await asyncio.sleep(max(0.0, started + offset_s - time.monotonic()))
    applied_s = round(time.monotonic() - started, 3)
    try:
        await asyncio.wait_for(asyncio.to_thread(step), FAULT_ACTION_TIMEOUT_S)
    except Exception as error:  # recorded in the report, and the run goes on to heal
        return applied_s, f"{type(error).__name__}: {error}"[:500]
    return applied_s, None


async def _play(the_world: World, fault: PlannedFault, started: float, applied: list[AppliedFault]) -> None:
    """Apply the fault and heal it on its schedule; how that really went goes into `applied`."""
    applied_s, apply_error = await _at(started, fault.at_s, lambda: _apply(the_world, fault))
    healed_s, heal_error = await _at(started, fault.heals_at_s, lambda: _heal(the_world, fault))
    applied.append(
        AppliedFault(fault.describe(), fault.at_s, fault.heals_at_s, applied_s, healed_s, apply_error or heal_error)
    )


def say(message: str) -> None:
    """Progress, on standard error: a run takes a minute or two."""
    print(f"    {message}", file=sys.stderr, flush=True)


async def _settle(the_world: World, started_s: float, timeout_s: float) -> Convergence:
    """Poll until the simulator has decided every payment and refund and sent every webhook it will,
    Ballast holds no payment nor refund undecided outside an open case, and every outbox event is
    published and consumed."""
    deadline = time.monotonic() + timeout_s
    next_progress = time.monotonic() + SETTLE_PROGRESS_S
    connection = await asyncpg.connect(asyncpg_dsn(the_world.database_url))
    try:
        while True:
            undecided = int(await connection.fetchval(_UNDECIDED))
            refunds_undecided = int(await connection.fetchval(_REFUNDS_UNDECIDED))
            behind = await connection.fetchrow(_OUTBOX_BEHIND)
            truth = await asyncio.to_thread(the_world.simulator.truth)
            payments = checker.provider_payments(truth)
            refunds = checker.provider_refunds(truth)
            pending = sum(1 for p in payments if p["final_status"] == "pending")
            refunds_pending = sum(1 for r in refunds if r["final_status"] == "pending")
            queued = sum(
                1 for p in [*payments, *refunds] if any(e["outcome"] == "queued" for e in p.get("webhooks", []))
            )
            left = {
                "undecided_in_ballast": undecided,
                "refunds_undecided_in_ballast": refunds_undecided,
                "pending_at_provider": pending,
                "refunds_pending_at_provider": refunds_pending,
                "webhooks_queued": queued,
                "outbox_unpublished": int(behind["unpublished"]),
                "events_unconsumed": int(behind["unconsumed"]),
            }
            now = time.monotonic()
            if not any(left.values()):
                return Convergence(True, round(now - started_s, 2), left)
            if now > deadline:
                return Convergence(False, round(now - started_s, 2), left)
            if now >= next_progress:
                waiting = ", ".join(f"{name.replace('_', ' ')} {count}" for name, count in left.items() if count)
                say(f"settling for {now - started_s:.0f}s (at most {timeout_s:g}s): {waiting}")
                next_progress = now + SETTLE_PROGRESS_S
            await asyncio.sleep(SETTLE_POLL_S)
    finally:
        await connection.close()


def _breaker_changes(the_world: World) -> list[dict[str, Any]]:
    """The breaker's state changes every server logged, in order per server."""
    changes = []
    for replica in the_world.servers:
        for line in replica.child.log().splitlines():
            if "breaker_state_changed" not in line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            changes.append({"server": replica.child.name, "old": record.get("old"), "new": record.get("new")})
    return changes


class LoadRunner(Protocol):
    """What drives a run's load: called once the world serves, at `started` (the time.monotonic() the
    faults share); records every payment and refund call in `history`; returns when the load is done."""

    def describe(self) -> str: ...

    async def __call__(self, the_world: World, started: float, history: History) -> None: ...


@dataclass(frozen=True)
class DriverLoad:
    """The harness's own clients (chaos/load.py), as the scenario's Load says."""

    scenario: Scenario
    seed: int

    def describe(self) -> str:
        return f"{self.scenario.load.clients} clients for {self.scenario.load.duration_s:g}s"

    async def __call__(self, the_world: World, started: float, history: History) -> None:
        targets = [Target(replica.address, replica.metadata) for replica in the_world.servers]
        await Driver(targets, self.scenario.load, self.seed, the_world.run_id, history).run(started)


async def _exercise(
    scenario: Scenario, seed: int, the_world: World, timings: Timings, load: LoadRunner | None = None
) -> RunReport:
    history = History()
    planned = plan(scenario, seed)
    applied: list[AppliedFault] = []  # the faults as they were really applied, for the report
    load = load or DriverLoad(scenario, seed)
    faults = f"{len(planned)} fault(s): " + "; ".join(fault.describe() for fault in planned) if planned else "no fault"
    say(f"load: {load.describe()}; {faults}")
    if scenario.reconcile is not None:
        say(scenario.reconcile.describe())
        await prepare(the_world, scenario.reconcile)
    started = time.monotonic()
    began_at = datetime.now(UTC)
    playing = [asyncio.create_task(_play(the_world, fault, started, applied)) for fault in planned]
    try:
        await load(the_world, started, history)
        load_s = time.monotonic() - started
        await asyncio.gather(*playing)
    finally:
        for task in playing:
            task.cancel()
        # what the clients were told so far, even when the run is interrupted: it can be checked later
        history.write(the_world.work_dir / "history.jsonl")
    await asyncio.to_thread(_heal_everything, the_world, planned)
    healed = time.monotonic()
    asked = history.of_operation(CREATE_PAYMENT).by_key()
    refunds_asked = history.of_operation(REFUND_PAYMENT).by_key()
    say(f"{len(asked)} payments and {len(refunds_asked)} refunds asked in {load_s:.0f}s; every fault healed, settling")
    convergence = await _settle(the_world, healed, SETTLE_TIMEOUT_S)
    # the payments, the stream and the truth as the load and its faults left them: a reconciliation that
    # follows opens cases on some payments, which must not explain a payment away
    connection = await asyncpg.connect(asyncpg_dsn(the_world.database_url))
    try:
        snapshot = await read_snapshot(connection)
    finally:
        await connection.close()
    stream = await read_stream(the_world.nats_url, the_world.names.stream)
    truth = await asyncio.to_thread(the_world.simulator.truth)
    extra: dict[str, Any] = {}
    report_results: list[checker.InvariantResult] = []
    if scenario.reconcile is not None:
        reconciled, report_log = await reconcile(the_world, scenario.reconcile, kill_stage(scenario, seed), say)
        # read after the report was downloaded: every line it holds is one of the truth's bookings
        settled_truth = await asyncio.to_thread(the_world.simulator.truth)
        report_results = checker.check_report(settled_truth, reconciled)
        scores = checker.report_class_scores(settled_truth, reconciled)
        extra["reconciliation"] = {
            **report_log.to_json(),
            "run": None if reconciled.run is None else asdict(reconciled.run),
            "replayed": reconciled.replayed,
            "replay_run_id": reconciled.replay_run_id,
            "counts_before_replay": dict(reconciled.counts_before_replay),
            "counts_after_replay": dict(reconciled.counts_after_replay),
            "classes": {
                name: {**asdict(score), "precision": round(score.precision, 4), "recall": round(score.recall, 4)}
                for name, score in scores.items()
            },
        }
    say("checking the invariants")
    sla_s = scenario.longest_fault_s + timings.resolver_worst_case_s + UNKNOWN_SLA_MARGIN_S
    results = checker.check(history, truth, snapshot, stream, sla_s)
    results.append(checker.breaker_fails_fast(history, FAST_FAIL_S, expected="breaker_opened" in scenario.expect))
    changes = _breaker_changes(the_world)
    if "breaker_cycled" in scenario.expect:
        results.append(checker.breaker_cycles(changes, BREAKER_CYCLES_MIN))
    results.insert(0, checker.converged(snapshot, convergence.left, SETTLE_TIMEOUT_S))
    results += report_results
    return RunReport(
        scenario=scenario.name,
        story=scenario.story,
        seed=seed,
        started_at=began_at.isoformat(timespec="seconds"),
        servers=scenario.servers,
        relays=scenario.relays,
        profile=scenario.profile,
        toxiproxy=the_world.toxiproxy_origin,
        faults=sorted(applied, key=lambda fault: fault.planned_at_s),
        load=summarize_load(history, load_s, snapshot, truth, [(f.applied_at_s, f.healed_at_s) for f in applied]),
        convergence=convergence,
        breaker_changes=changes,
        invariants=results,
        work_dir=str(the_world.work_dir),
        extra={
            "unknown_sla_s": round(sla_s, 1),
            "fast_fail_bound_s": FAST_FAIL_S,
            "timings": asdict(timings),
            **extra,
        },
    )


def run_scenario(
    scenario: Scenario, seed: int, work_dir: Path, timings: Timings | None = None, load: LoadRunner | None = None
) -> RunReport:
    """The whole run, its load the scenario's own clients unless `load` says otherwise; its report is also
    written to work_dir as report.json and report.md."""
    timings = timings or Timings()
    started = time.monotonic()
    say(f"starting the world in {work_dir}")
    with world(scenario, seed, work_dir, timings) as the_world:
        report = asyncio.run(_exercise(scenario, seed, the_world, timings, load))
    report.duration_s = round(time.monotonic() - started, 1)
    (work_dir / "report.json").write_text(json.dumps(report.to_json(), indent=2) + "\n")
    (work_dir / "report.md").write_text(report.to_markdown())
    return report
