"""A chaos run's report, as JSON (for tools) and Markdown (for people): the scenario and its seed, the
faults as they were applied, the load as measured, how the system settled, every invariant passed or
broken with its minimal witnesses, and the command that replays the run."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from chaos.checker import (
    InvariantResult,
    Snapshot,
    breaker_answer_latencies,
    percentile,
    provider_payments,
    provider_refunds,
)
from chaos.history import CREATE_PAYMENT, REFUND_PAYMENT, History, Kind

#: Witnesses shown per broken invariant in the Markdown (the JSON has them all).
WITNESSES_SHOWN = 10


@dataclass(frozen=True)
class AppliedFault:
    description: str
    planned_at_s: float
    planned_heal_s: float
    applied_at_s: float
    healed_at_s: float
    #: what went wrong applying or healing it (the run goes on; the report says so)
    error: str | None = None


@dataclass(frozen=True)
class Convergence:
    converged: bool
    #: seconds from the last heal until the system settled (or until the run stopped waiting)
    elapsed_s: float
    #: what was still unsettled at the last look, by kind
    left: dict[str, int]


@dataclass(frozen=True)
class LoadSummary:
    duration_s: float
    payments_asked: int
    calls: int
    calls_per_s: float
    #: the completion code ("OK", "UNAVAILABLE", ...) -> count, p50 and p99 in seconds
    by_code: dict[str, dict[str, float]]
    #: answers from an open breaker: how many, and their p99 in seconds
    breaker_answers: int
    breaker_p99_s: float | None
    #: the last answer per key: the state an `ok` told, or the error code of the last call (a client
    #: that gave up after its retries shows the code of its last one)
    outcomes: dict[str, int]
    ballast_states: dict[str, int]
    provider_statuses: dict[str, int]
    cases: dict[str, int]
    #: calls begun while a fault was on, and the others: so a report shows whether its fault bit
    during_faults: dict[str, float] = field(default_factory=dict)
    outside_faults: dict[str, float] = field(default_factory=dict)
    #: the longest any payment stayed UNKNOWN, in seconds (one still UNKNOWN counts until the snapshot)
    longest_unknown_s: float | None = None
    #: refunds asked (keys), Ballast's refunds' final states and the provider's refunds' (empty without)
    refunds_asked: int = 0
    refund_states: dict[str, int] = field(default_factory=dict)
    provider_refund_statuses: dict[str, int] = field(default_factory=dict)
    #: refunds that were UNKNOWN at some point (sent, no answer: the resolver asked the provider)
    refunds_through_unknown: int = 0
    #: refunds the provider took without answering (its truth's create_fault accept-then-timeout)
    refunds_taken_unanswered: int = 0


def _window_stats(calls: list[tuple[float, bool]]) -> dict[str, float]:
    """calls: (latency, answered ok) -> count, share answered ok, p50 and p99."""
    latencies = [latency for latency, _ in calls]
    return {
        "calls": len(calls),
        "ok_share": round(sum(ok for _, ok in calls) / len(calls), 3) if calls else 0.0,
        "p50_s": round(percentile(latencies, 0.5) or 0.0, 3),
        "p99_s": round(percentile(latencies, 0.99) or 0.0, 3),
    }


def _longest_unknown_s(snapshot: Snapshot) -> float | None:
    longest: float | None = None
    for timeline in snapshot.moves_by_payment().values():
        for index, move in enumerate(timeline):
            if move.to_state != "UNKNOWN" or move.occurred_at_s is None:
                continue
            left = timeline[index + 1].occurred_at_s if index + 1 < len(timeline) else snapshot.taken_at_s
            if left is not None:
                longest = max(longest or 0.0, left - move.occurred_at_s)
    return None if longest is None else round(longest, 2)


def summarize_load(
    history: History,
    load_s: float,
    snapshot: Snapshot,
    truth: dict[str, Any],
    fault_windows: Sequence[tuple[float, float]] = (),
) -> LoadSummary:
    latencies: dict[str, list[float]] = defaultdict(list)
    for invoked, done in history.calls():
        code = "OK" if done.kind is Kind.OK else (done.error or done.kind.value)
        latencies[code].append(done.time_s - invoked.time_s)
    by_code = {
        code: {
            "count": len(values),
            "p50_s": round(percentile(values, 0.5) or 0.0, 3),
            "p99_s": round(percentile(values, 0.99) or 0.0, 3),
        }
        for code, values in sorted(latencies.items())
    }
    last: dict[str, str] = {}
    for operation in history:
        if operation.kind is Kind.OK:
            last[operation.idempotency_key] = operation.state or "OK"
        elif operation.kind is not Kind.INVOKE:
            last[operation.idempotency_key] = operation.error or operation.kind.value
    breaker = breaker_answer_latencies(history)
    calls = sum(len(values) for values in latencies.values())
    during: list[tuple[float, bool]] = []
    outside: list[tuple[float, bool]] = []
    for invoked, done in history.calls():
        faulted = any(start <= invoked.time_s < end for start, end in fault_windows)
        (during if faulted else outside).append((done.time_s - invoked.time_s, done.kind is Kind.OK))
    return LoadSummary(
        duration_s=round(load_s, 2),
        payments_asked=len(history.of_operation(CREATE_PAYMENT).by_key()),
        calls=calls,
        calls_per_s=round(calls / load_s, 1) if load_s > 0 else 0.0,
        by_code=by_code,
        breaker_answers=len(breaker),
        breaker_p99_s=percentile(breaker, 0.99),
        outcomes=dict(Counter(last.values()).most_common()),
        ballast_states=dict(Counter(payment.state for payment in snapshot.payments).most_common()),
        provider_statuses=dict(Counter(str(p["final_status"]) for p in provider_payments(truth)).most_common()),
        cases=dict(Counter(f"{case.kind} {case.status}" for case in snapshot.cases).most_common()),
        during_faults=_window_stats(during),
        outside_faults=_window_stats(outside),
        longest_unknown_s=_longest_unknown_s(snapshot),
        refunds_asked=len(history.of_operation(REFUND_PAYMENT).by_key()),
        refund_states=dict(Counter(refund.state for refund in snapshot.refunds).most_common()),
        refunds_through_unknown=len({t.refund_id for t in snapshot.refund_transitions if t.to_state == "UNKNOWN"}),
        refunds_taken_unanswered=sum(
            1 for r in provider_refunds(truth) if r.get("create_fault") == "accept-then-timeout"
        ),
        provider_refund_statuses=dict(Counter(str(r["final_status"]) for r in provider_refunds(truth)).most_common()),
    )


@dataclass
class RunReport:
    scenario: str
    story: str
    seed: int
    started_at: str
    servers: int
    relays: int
    profile: str
    #: where the Toxiproxy server came from: running, binary or builtin
    toxiproxy: str
    faults: list[AppliedFault]
    load: LoadSummary
    convergence: Convergence
    breaker_changes: list[dict[str, Any]]
    invariants: list[InvariantResult]
    work_dir: str
    duration_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(result.passed for result in self.invariants) and not any(f.error for f in self.faults)

    @property
    def replay(self) -> str:
        return f"python -m chaos run {self.scenario} --seed {self.seed}"

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "story": self.story,
            "seed": self.seed,
            "passed": self.passed,
            "replay": self.replay,
            "started_at": self.started_at,
            "duration_s": self.duration_s,
            "topology": {
                "servers": self.servers,
                "relays": self.relays,
                "simulator_profile": self.profile,
                "toxiproxy": self.toxiproxy,
            },
            "faults": [asdict(fault) for fault in self.faults],
            "load": asdict(self.load),
            "convergence": asdict(self.convergence),
            "breaker_changes": self.breaker_changes,
            "invariants": [
                {
                    "name": result.name,
                    "passed": result.passed,
                    "description": result.description,
                    "witnesses": [
                        {"subject": w.subject, "evidence": list(w.evidence), "timeline": list(w.timeline)}
                        for w in result.witnesses
                    ],
                }
                for result in self.invariants
            ],
            "work_dir": self.work_dir,
            **self.extra,
        }

    def summary(self) -> str:
        broken = [result.name for result in self.invariants if not result.passed]
        verdict = "PASS" if self.passed else "FAIL (" + ", ".join(broken or ["a fault was not applied"]) + ")"
        return f"{self.scenario} seed {self.seed}: {verdict} in {self.duration_s:.0f}s"

    def to_markdown(self) -> str:
        load = self.load
        lines = [
            f"# Chaos run: {self.scenario}, seed {self.seed}: {'PASS' if self.passed else 'FAIL'}",
            "",
            self.story,
            "",
            f"- Replay: `{self.replay}`",
            f"- Started {self.started_at}, took {self.duration_s:.0f} s; {self.servers} server(s),"
            f" {self.relays} relay(s), simulator profile `{self.profile}`, Toxiproxy: {self.toxiproxy}",
            f"- Run directory (logs, history.jsonl): `{self.work_dir}`",
            "",
            "## Faults as applied",
            "",
            "| fault | planned | applied | healed | error |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {f.description.split(' from ')[0]} | {f.planned_at_s:.2f}-{f.planned_heal_s:.2f} s"
            f" | {f.applied_at_s:.2f} s | {f.healed_at_s:.2f} s | {f.error or ''} |"
            for f in self.faults
        ]
        lines += [
            "",
            "## Load as measured",
            "",
            f"{load.payments_asked} payments asked in {load.duration_s:.1f} s, {load.calls} calls"
            f" ({load.calls_per_s:g}/s). Open-breaker answers: {load.breaker_answers}"
            + (f", p99 {load.breaker_p99_s:.3f} s." if load.breaker_p99_s is not None else "."),
            "",
            "| answer | calls | p50 | p99 |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {code} | {stats['count']:g} | {stats['p50_s']:.3f} s | {stats['p99_s']:.3f} s |"
            for code, stats in load.by_code.items()
        ]
        lines += [
            "",
            f"While a fault was on: {_window(load.during_faults)}; otherwise: {_window(load.outside_faults)}.",
            "",
            "- Last answer per key: " + _counts(load.outcomes),
            "- Ballast's final states: " + _counts(load.ballast_states),
            "- The provider's truth: " + _counts(load.provider_statuses),
            *(
                [
                    f"- Refunds: {load.refunds_asked} asked, {load.refunds_taken_unanswered} taken by the provider"
                    f" without an answer, {load.refunds_through_unknown} through UNKNOWN;"
                    f" Ballast's final states: {_counts(load.refund_states)};"
                    f" the provider's truth: {_counts(load.provider_refund_statuses) or 'none'}"
                ]
                if load.refunds_asked
                else []
            ),
            "- Cases: " + (_counts(load.cases) or "none"),
            "- Longest stay in UNKNOWN: "
            + ("none" if load.longest_unknown_s is None else f"{load.longest_unknown_s:.1f} s")
            + f" (SLA {self.extra.get('unknown_sla_s', '?')} s)",
            f"- Breaker changes: {len(self.breaker_changes)}"
            + (
                " ("
                + ", ".join(f"{c['server']} {c['old']}->{c['new']}" for c in self.breaker_changes[:12])
                + (", ..." if len(self.breaker_changes) > 12 else "")
                + ")"
                if self.breaker_changes
                else ""
            ),
            "",
            "## Convergence",
            "",
            (
                f"Settled {self.convergence.elapsed_s:.1f} s after the last heal."
                if self.convergence.converged
                else f"NOT settled {self.convergence.elapsed_s:.1f} s after the last heal: "
                + _counts({k: v for k, v in self.convergence.left.items() if v})
            ),
            "",
            *_reconciliation(self.extra.get("reconciliation")),
            "## Invariants",
            "",
        ]
        for result in self.invariants:
            mark = "pass" if result.passed else f"**FAIL** ({len(result.witnesses)} witnesses)"
            lines.append(f"- `{result.name}`: {mark}")
            if result.passed:
                continue
            lines.append(f"  {result.description}")
            for witness in result.witnesses[:WITNESSES_SHOWN]:
                lines.append(f"  - `{witness.subject}`: " + "; ".join(witness.evidence))
                if witness.timeline:
                    lines.append("    timeline: " + ", ".join(witness.timeline))
            if len(result.witnesses) > WITNESSES_SHOWN:
                lines.append(f"  - ... and {len(result.witnesses) - WITNESSES_SHOWN} more in report.json")
        return "\n".join(lines) + "\n"


def _reconciliation(done: dict[str, Any] | None) -> list[str]:
    """The reconciliation's section: the upload, the kill and the stage it met, how long the run took
    to complete, the replay, and precision and recall per class against the simulator's truth."""
    if done is None:
        return []
    run = done.get("run") or {}
    lines = [
        "## Reconciliation",
        "",
        f"- Report: {done['report_rows']} lines, {done['report_bytes']} bytes, SHA-256 `{done['sha256'][:16]}...`;"
        f" run `{done['run_id'] or '-'}` uploaded in {_s(done['upload_s'])} s",
        f"- Kill (times from the upload's start): at {_s(done['killed_at_s'])} s, {done['kill']};"
        f" restarted at {_s(done['restarted_at_s'])} s",
        f"- The run ended {done['ended'] or '-'} at {_s(done['ended_at_s'])} s after the upload began: "
        + (
            f"{run.get('row_count')} rows, {run.get('matched_row_count')} matched, {run.get('unmatched_row_count')}"
            f" unmatched, {run.get('invalid_row_count')} invalid, {run.get('opened_case_count')} cases opened"
            if run
            else "no run"
        ),
        f"- Second upload: replayed {done['replayed']}, run `{done['replay_run_id'] or '-'}`,"
        f" in {_s(done['replay_s'])} s; rows before {_counts(done['counts_before_replay'])};"
        f" after {_counts(done['counts_after_replay'])}",
        *(f"- Note: {note}" for note in done.get("notes", [])),
        "",
        "| class | planted | found | both | precision | recall |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {name} | {score['planted']} | {score['found']} | {score['hits']} | {score['precision']:.2f}"
        f" | {score['recall']:.2f} |"
        for name, score in done.get("classes", {}).items()
    ]
    return [*lines, ""]


def _s(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:g}"


def _window(stats: dict[str, float]) -> str:
    if not stats.get("calls"):
        return "no calls"
    return (
        f"{stats['calls']:g} calls, {stats['ok_share']:.0%} ok, p50 {stats['p50_s']:.3f} s, p99 {stats['p99_s']:.3f} s"
    )


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {count}" for name, count in counts.items())
