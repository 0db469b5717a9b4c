"""The named fault scenarios: each a small declarative description of faults over time, the load that
runs meanwhile, and what the run must show, replayed exactly from a seed.

A fault names what breaks (a Toxiproxy toxic on one of the run's proxies, a proxy taken down, a
process killed with SIGKILL) and when, in seconds from the start of the load, for how long. The seed
moves each fault within its `jitter_s` and draws the load's amounts and the simulator's faults, so
the same seed replays the same faults in the same order (`plan`), and another seed tries other
timings. Toxiproxy's own `toxicity` rolls are the proxy's, not the seed's.

A scenario may also reconcile (`Reconcile`): once the load has settled, the provider's settlement report
is uploaded to a server, that server is killed with SIGKILL while it processes the run, and the run
must still complete, find exactly the drift the simulator planted, and replay on a second upload.

The proxies every path of a run goes through (chaos/topology.py):
    provider   server -> the provider's API (the simulator)
    webhooks   simulator -> the first server's webhook intake
    postgres   servers and relays -> PostgreSQL
    nats       relays -> NATS
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

PROXIES = ("provider", "webhooks", "postgres", "nats")
Proxy = Literal["provider", "webhooks", "postgres", "nats"]
Role = Literal["server", "relay"]

#: What a scenario may ask its run to have shown, besides the invariants every run keeps.
#: breaker_opened: calls were answered by an open breaker, fast, instead of waiting for the provider.
#: breaker_cycled: the breaker went open -> half_open -> closed, more than once.
EXPECTATIONS = frozenset({"breaker_opened", "breaker_cycled"})


@dataclass(frozen=True)
class Toxic:
    """A Toxiproxy toxic on one proxy (its attributes are Toxiproxy's, in its units)."""

    proxy: Proxy
    type: str
    attributes: Mapping[str, int] = field(default_factory=dict)
    stream: Literal["upstream", "downstream"] = "downstream"
    toxicity: float = 1.0

    def describe(self) -> str:
        attributes = ", ".join(f"{name}={value}" for name, value in sorted(self.attributes.items()))
        rolled = "" if self.toxicity == 1.0 else f", toxicity {self.toxicity:g}"
        return f"{self.type} on {self.proxy} {self.stream} ({attributes}{rolled})"


@dataclass(frozen=True)
class Down:
    """The proxy stops listening and drops its connections (Toxiproxy's enabled: false)."""

    proxy: Proxy

    def describe(self) -> str:
        return f"{self.proxy} down"


@dataclass(frozen=True)
class Kill:
    """SIGKILL one process of the run; it is started again when the fault heals."""

    role: Role
    index: int = 0

    def describe(self) -> str:
        return f"kill -9 {self.role}-{self.index}"


@dataclass(frozen=True)
class ProviderFaults:
    """The simulator's own request faults change for a while (its `PUT /_sim/profile` settings over the
    scenario's profile, e.g. accept_then_timeout_rate: it takes a payment or refund and never answers);
    the heal puts the scenario's profile back whole (overlapping ProviderFaults heal together)."""

    settings: Mapping[str, float]

    def describe(self) -> str:
        return "provider faults " + ", ".join(f"{name}={value:g}" for name, value in sorted(self.settings.items()))


@dataclass(frozen=True)
class Fault:
    what: Toxic | Down | Kill | ProviderFaults
    #: seconds from the start of the load
    at_s: float
    #: how long until it heals (a killed process is started again then)
    for_s: float
    #: the seed moves at_s by up to this much either way
    jitter_s: float = 0.0


@dataclass(frozen=True)
class Load:
    #: clients paying at once, each one payment after another, under a new key each
    clients: int = 8
    #: clients start no new payment after this long; one in progress finishes its retries
    duration_s: float = 20.0
    #: the share of payments that succeeded which their client then refunds, in one or two refunds
    refund_share: float = 0.0


#: The simulator's settings (FaultSettings) that plant drift in its settlement report, each a rate per booking.
REPORT_DRIFT_SETTINGS = frozenset(
    {
        "report_missing_rate",
        "report_extra_rate",
        "report_amount_rate",
        "report_fee_rate",
        "report_fx_rate",
        "report_late_rate",
    }
)


@dataclass(frozen=True)
class Reconcile:
    """After the load has settled: the simulator's settlement report (CSV) is uploaded with IngestReport
    to server `server`, which is killed with SIGKILL while it processes the run (as soon as GetReportRun
    shows it in the stage the seed picks from `kill_in`, or a later one) and started again; the run must
    end COMPLETED (its lease ends first, server/domain/reconciliation.py's RUN_LEASE_S) and the same
    file uploaded again must replay it."""

    #: the simulator's report drift for the whole run, put over its profile (FaultSettings report_* rates)
    drift: Mapping[str, float]
    #: the replica the report is uploaded to, and the one killed while it processes the run
    server: int = 0
    #: latency added each way on the `postgres` proxy from the upload until the kill: every statement of
    #: a stage then takes a round trip this long, so the kill lands inside a stage, not after the last
    slow_postgres_ms: int = 0
    #: the stages (report runs' statuses) the kill may be aimed at; the seed picks one (`kill_stage`)
    kill_in: tuple[str, ...] = ("NORMALIZING", "MATCHING")

    def describe(self) -> str:
        rates = ", ".join(
            f"{name.removeprefix('report_').removesuffix('_rate')} {rate:g}"
            for name, rate in sorted(self.drift.items())
        )
        slow = f", PostgreSQL {self.slow_postgres_ms} ms slower each way meanwhile" if self.slow_postgres_ms else ""
        stages = " or ".join(self.kill_in)
        return f"report drift ({rates}); kill -9 server-{self.server} while it reconciles ({stages}){slow}"


@dataclass(frozen=True)
class Scenario:
    name: str
    story: str
    faults: tuple[Fault, ...]
    load: Load = field(default_factory=Load)
    #: the simulator's fault profile for the whole run (simulator/profiles.py)
    profile: str = "calm"
    servers: int = 1
    relays: int = 1
    expect: frozenset[str] = frozenset()
    #: part of `make chaos-smoke`
    smoke: bool = False
    #: reconcile the provider's settlement report once the load has settled
    reconcile: Reconcile | None = None

    def __post_init__(self) -> None:
        unknown = self.expect - EXPECTATIONS
        if unknown:
            raise ValueError(f"{self.name}: unknown expectations {sorted(unknown)}")
        if self.reconcile is not None:
            not_drift = set(self.reconcile.drift) - REPORT_DRIFT_SETTINGS
            if not_drift:
                raise ValueError(f"{self.name}: {sorted(not_drift)} are not report drift settings")
            if not 0 <= self.reconcile.server < self.servers:
                raise ValueError(
                    f"{self.name}: reconciles on server-{self.reconcile.server}, a server it does not have"
                )
            if not self.reconcile.kill_in or not set(self.reconcile.kill_in) <= set(RUN_STAGES):
                raise ValueError(f"{self.name}: the kill is aimed at {self.reconcile.kill_in}, not at {RUN_STAGES}")
            if any(isinstance(fault.what, ProviderFaults) for fault in self.faults):
                # their heal puts the profile back whole, and the drift with it
                raise ValueError(f"{self.name}: a reconciling scenario's drift and ProviderFaults do not mix")
        for fault in self.faults:
            if isinstance(fault.what, Kill):
                count = self.servers if fault.what.role == "server" else self.relays
                if not 0 <= fault.what.index < count:
                    raise ValueError(f"{self.name}: {fault.what.describe()} names a process the run does not have")

    @property
    def longest_fault_s(self) -> float:
        return max((fault.for_s + fault.jitter_s for fault in self.faults), default=0.0)


@dataclass(frozen=True)
class PlannedFault:
    """One fault as the seed places it: applied at `at_s`, healed at `heals_at_s`."""

    what: Toxic | Down | Kill | ProviderFaults
    at_s: float
    heals_at_s: float
    #: the toxic's name on its proxy (unique within the run)
    name: str

    def describe(self) -> str:
        return f"{self.what.describe()} from {self.at_s:.2f}s to {self.heals_at_s:.2f}s"


def plan(scenario: Scenario, seed: int) -> list[PlannedFault]:
    """The scenario's faults placed by the seed, in the order they are applied."""
    rng = random.Random(f"{scenario.name}:{seed}")  # noqa: S311 - reproducible timings, not secrets
    planned = []
    for number, fault in enumerate(scenario.faults):
        at_s = max(0.0, fault.at_s + rng.uniform(-fault.jitter_s, fault.jitter_s))
        planned.append(PlannedFault(fault.what, round(at_s, 3), round(at_s + fault.for_s, 3), f"chaos_{number}"))
    return sorted(planned, key=lambda fault: (fault.at_s, fault.name))


#: The stages a report run goes through, in order (RunStatus in server/domain/reconciliation.py).
RUN_STAGES = ("RECEIVED", "NORMALIZING", "MATCHING")


def kill_stage(scenario: Scenario, seed: int) -> str:
    """The stage of the report run the seed aims the reconciliation's kill at (a reconciling scenario):
    each in turn, so consecutive seeds kill in each stage."""
    if scenario.reconcile is None:
        raise ValueError(f"{scenario.name} does not reconcile")
    stages = scenario.reconcile.kill_in
    return stages[seed % len(stages)]


def _flapping(proxy: Proxy, first_s: float, down_s: float, up_s: float, times: int) -> tuple[Fault, ...]:
    return tuple(Fault(Down(proxy), first_s + n * (down_s + up_s), down_s, jitter_s=0.3) for n in range(times))


#: The provider answers 28 s late: Ballast's own timeout ends each call long before.
PROVIDER_HANG_MS = 28_000

SCENARIOS: dict[str, Scenario] = {
    scenario.name: scenario
    for scenario in (
        Scenario(
            "provider-hang",
            "The provider takes 28 s to answer for 10 s: calls time out into UNKNOWN, the breaker opens and"
            " the next calls fail fast; after the heal the resolver asks the provider about each UNKNOWN.",
            (Fault(Toxic("provider", "latency", {"latency": PROVIDER_HANG_MS}), 3.0, 10.0, jitter_s=1.0),),
            Load(clients=8, duration_s=18.0),
            expect=frozenset({"breaker_opened"}),
            smoke=True,
        ),
        Scenario(
            "accept-then-timeout",
            "Three times for 2 s, the provider takes every request and never answers: the provider charged,"
            " Ballast does not know; the resolver must find each charge by id once the answers flow again.",
            tuple(
                Fault(Toxic("provider", "timeout", {"timeout": 0}), at_s, 2.0, jitter_s=0.5)
                for at_s in (2.0, 7.0, 12.0)
            ),
            Load(clients=8, duration_s=16.0),
        ),
        Scenario(
            "provider-flapping",
            "The provider's API goes away for 2.5 s and comes back three times: the breaker opens, lets a"
            " probe through half-open, and closes again each time.",
            _flapping("provider", 2.0, 2.5, 4.0, 3),
            Load(clients=8, duration_s=22.0),
            expect=frozenset({"breaker_cycled"}),
        ),
        Scenario(
            "webhook-storm",
            "The provider's webhooks come twice, out of order, contradicting each other or not at all, and"
            " the path to the intake is slow, sliced and reset.",
            (
                Fault(Toxic("webhooks", "latency", {"latency": 400, "jitter": 300}), 1.0, 12.0, jitter_s=0.5),
                Fault(Toxic("webhooks", "slicer", {"average_size": 64, "size_variation": 32, "delay": 2}), 2.0, 10.0),
                Fault(Toxic("webhooks", "reset_peer", {"timeout": 0}, toxicity=0.3), 4.0, 5.0, jitter_s=1.0),
            ),
            Load(clients=8, duration_s=16.0),
            profile="webhook-storm",
            smoke=True,
        ),
        Scenario(
            "refund-storm",
            "Clients refund most payments that succeeded, in one or two parts, while the provider takes a"
            " third of the requests (refunds too) and never answers, and twice for 1 s all of them; the"
            " server is killed with SIGKILL mid-refund and started again; refund webhooks come twice, out of"
            " order, contradicting each other or not at all. Each refund ends where the provider's does,"
            " posts its reversal once, and no payment gives back more than it captured.",
            (
                # the provider takes a third of the requests (refunds too) and never answers, drawn by
                # its seeded RNG: the load keeps flowing, so clients go on asking refunds, and some of
                # those are the ones taken without an answer
                Fault(ProviderFaults({"accept_then_timeout_rate": 0.35, "refund_fail_rate": 0.2}), 0.5, 17.0),
                # and twice for 1 s, every request, whatever the refund or payment
                *(Fault(Toxic("provider", "timeout", {"timeout": 0}), at_s, 1.0, jitter_s=0.3) for at_s in (3.0, 12.0)),
                Fault(Kill("server", 0), 8.0, 2.0, jitter_s=0.5),
                # webhooks late, often past the server's 1.5 s provider timeout: a refund taken without an
                # answer is sometimes decided by its webhook first, sometimes left UNKNOWN for the resolver
                Fault(Toxic("webhooks", "latency", {"latency": 1200, "jitter": 900}), 1.0, 14.0, jitter_s=0.5),
            ),
            Load(clients=8, duration_s=18.0, refund_share=0.75),
            profile="webhook-storm",
        ),
        Scenario(
            "db-latency",
            "Every round trip to PostgreSQL takes 40 ms more each way, give or take 20, for 10 s (both ways at"
            " once: the seed does not move them apart).",
            (
                Fault(Toxic("postgres", "latency", {"latency": 40, "jitter": 20}), 2.0, 10.0),
                Fault(Toxic("postgres", "latency", {"latency": 40, "jitter": 20}, stream="upstream"), 2.0, 10.0),
            ),
            Load(clients=8, duration_s=16.0),
        ),
        Scenario(
            "db-reset",
            "PostgreSQL's connections are reset for 4 s, mid-transaction: nothing half-written, the pools reconnect.",
            (Fault(Toxic("postgres", "reset_peer", {"timeout": 0}, stream="upstream"), 4.0, 4.0, jitter_s=1.0),),
            Load(clients=8, duration_s=16.0),
        ),
        Scenario(
            "broker-down",
            "NATS is unreachable for 10 s: events wait in the outbox, then go out once each, in order.",
            (Fault(Down("nats"), 3.0, 10.0, jitter_s=1.0),),
            Load(clients=8, duration_s=18.0),
            smoke=True,
        ),
        Scenario(
            "server-kill-9",
            "The server is killed with SIGKILL mid-load and started again 2 s later: clients retry with their"
            " keys, and every payment converges.",
            (Fault(Kill("server", 0), 6.0, 2.0, jitter_s=2.0),),
            Load(clients=8, duration_s=16.0),
            smoke=True,
        ),
        Scenario(
            "relay-kill",
            "The outbox relay is killed with SIGKILL mid-load, twice: another start takes over its events.",
            (Fault(Kill("relay", 0), 4.0, 2.0, jitter_s=1.0), Fault(Kill("relay", 0), 10.0, 1.0, jitter_s=1.0)),
            Load(clients=8, duration_s=16.0),
        ),
        Scenario(
            "two-replicas",
            "Two servers and two relays share one PostgreSQL and one NATS under load from a flaky provider;"
            " one server is killed for 2 s, and its clients retry on the other.",
            (Fault(Kill("server", 1), 6.0, 2.0, jitter_s=1.0),),
            Load(clients=12, duration_s=16.0),
            profile="flaky",
            servers=2,
            relays=2,
        ),
        Scenario(
            "monday-morning",
            "The provider is slow with a long tail and often takes a payment without answering; it hangs"
            " outright for 6 s; webhooks come late (PENDING, FAILED, SUCCEEDED out of order) and clients"
            " retry with their keys.",
            (
                Fault(Toxic("provider", "latency", {"latency": PROVIDER_HANG_MS}), 5.0, 6.0, jitter_s=1.0),
                Fault(Toxic("webhooks", "latency", {"latency": 1500, "jitter": 1000}), 1.0, 14.0, jitter_s=0.5),
            ),
            Load(clients=12, duration_s=18.0),
            profile="monday-morning",
        ),
        Scenario(
            "report-drift",
            "The provider's settlement report disagrees with what happened: rows missing, rows for charges"
            " nobody made, amounts, fees and settlement days changed, FX adjustments; payments ran while the"
            " provider was 28 s slow for 4 s and PostgreSQL slow for 6 s. The report is uploaded and the"
            " server reconciling it is killed with SIGKILL mid-stage: the run is taken up again once its lease"
            " ends and completes, every planted difference lands in its class and nothing else is found,"
            " every risky finding has a case, and the same file again replays the run.",
            (
                Fault(Toxic("provider", "latency", {"latency": PROVIDER_HANG_MS}), 4.0, 4.0, jitter_s=1.0),
                Fault(Toxic("postgres", "latency", {"latency": 30, "jitter": 20}), 9.0, 6.0, jitter_s=1.0),
            ),
            Load(clients=8, duration_s=18.0),
            profile="report-drift",
            reconcile=Reconcile(
                {
                    "report_missing_rate": 0.08,
                    "report_extra_rate": 0.06,
                    "report_amount_rate": 0.08,
                    "report_fee_rate": 0.08,
                    "report_fx_rate": 0.08,
                    "report_late_rate": 0.08,
                },
                server=0,
                slow_postgres_ms=300,
            ),
        ),
    )
}


def smoke() -> list[Scenario]:
    return [scenario for scenario in SCENARIOS.values() if scenario.smoke]


def scenario(name: str) -> Scenario:
    try:
        return SCENARIOS[name]
    except KeyError:
        raise ValueError(f"unknown scenario {name!r}: `python -m chaos list` shows them") from None
