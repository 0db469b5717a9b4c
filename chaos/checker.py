"""The chaos checker's core: the invariants a run must keep, judged over plain data.

Its inputs are the history of what clients were told (chaos/history.py), the simulator's
`/_sim/truth` as parsed JSON, the broker's stream after de-duplication, and a snapshot of Ballast's
database as typed rows. Nothing here does I/O. Each invariant is one function returning an
InvariantResult: passed when it has no witness, and otherwise the fewest subjects (payment ids,
idempotency keys, ledger entries, outbox events) that show the break, each with its evidence and,
for a payment, its timeline.

What counts as a legal move is the domain's: PAYMENT_MACHINE, and the correction table for the
explicit CORRECTION transitions (server/domain/corrections.py). What a state means for the money is
MONEY_OUTCOMES; what the ledger must hold for it follows server/domain/ledger.py.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from itertools import pairwise
from typing import Any

from chaos.history import History, Kind, Operation
from server.domain.cases import CaseStatus
from server.domain.corrections import CORRECTION_EVENT, CORRECTIONS
from server.domain.events import PAYMENT_RECORDED, PAYMENT_STATE_CHANGED
from server.domain.ledger import PROVIDER_CLEARING
from server.domain.payment_states import (
    INITIAL_PAYMENT_STATE,
    MONEY_OUTCOMES,
    PAYMENT_MACHINE,
    UNDECIDED_STATES,
    MoneyOutcome,
    PaymentState,
)

# -- the inputs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PaymentRow:
    id: str
    idempotency_key: str
    amount: Decimal
    currency: str
    state: str


@dataclass(frozen=True)
class TransitionRow:
    payment_id: str
    #: the row's id: the order moves were written in
    sequence: int
    from_state: str
    to_state: str
    event: str = ""
    evidence_ref: str = ""
    #: when it was written, in seconds (any clock the snapshot's other times share)
    occurred_at_s: float | None = None


@dataclass(frozen=True)
class LedgerLineRow:
    entry_id: str
    payment_id: str | None
    account: str
    currency: str
    amount: Decimal


@dataclass(frozen=True)
class OutboxRow:
    id: str
    #: the aggregate: events of one key must reach the broker in `position` order
    message_key: str
    position: int
    published: bool
    dead_lettered: bool = False
    #: what the event says happened (server/domain/events.py: payments.recorded, payments.state_changed, ...)
    topic: str = ""


@dataclass(frozen=True)
class CaseRow:
    id: str
    kind: str
    status: str
    payment_id: str | None
    opened_at_s: float | None = None


@dataclass(frozen=True)
class ExposureRow:
    """The exposures projection's row of one account and currency (server/services/exposures.py)."""

    account: str
    currency: str
    #: money asked for and not yet decided
    in_flight: Decimal
    #: what the projection holds as the account's ledger balance
    settled: Decimal


@dataclass(frozen=True)
class BrokerMessage:
    """One message the broker's stream holds after its de-duplication (Nats-Msg-Id = the outbox id)."""

    event_id: str
    message_key: str
    #: the stream's sequence: the order consumers see
    sequence: int


@dataclass(frozen=True)
class Snapshot:
    """Ballast's database after convergence, as the checker needs it."""

    payments: Sequence[PaymentRow] = ()
    transitions: Sequence[TransitionRow] = ()
    ledger_lines: Sequence[LedgerLineRow] = ()
    outbox: Sequence[OutboxRow] = ()
    cases: Sequence[CaseRow] = ()
    #: when the snapshot was read, on the clock of the rows' times
    taken_at_s: float | None = None
    exposures: Sequence[ExposureRow] = ()

    def payment_by_id(self) -> dict[str, PaymentRow]:
        return {payment.id: payment for payment in self.payments}

    def open_cases(self) -> dict[str, list[CaseRow]]:
        found: dict[str, list[CaseRow]] = defaultdict(list)
        for case in self.cases:
            if case.status == CaseStatus.OPEN and case.payment_id is not None:
                found[case.payment_id].append(case)
        return found

    def moves_by_payment(self) -> dict[str, list[TransitionRow]]:
        """Each payment's moves, in the order they were written."""
        moves: dict[str, list[TransitionRow]] = defaultdict(list)
        for move in sorted(self.transitions, key=lambda t: t.sequence):
            moves[move.payment_id].append(move)
        return dict(moves)

    def timeline(self, payment_id: str) -> tuple[str, ...]:
        """The payment's moves in the order they were written, `FROM -> TO (EVENT)`."""
        moves = sorted((t for t in self.transitions if t.payment_id == payment_id), key=lambda t: t.sequence)
        return tuple(f"{t.from_state} -> {t.to_state}" + (f" ({t.event})" if t.event else "") for t in moves)


def provider_payments(truth: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The provider's payments from `/_sim/truth`; each has idempotency_key (Ballast's payment id),
    id, final_status, amount and currency."""
    payments: list[Mapping[str, Any]] = truth.get("payments", [])
    return payments


# -- the result ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Witness:
    #: a payment id, an idempotency key, a ledger entry, an outbox event or a currency
    subject: str
    evidence: tuple[str, ...] = ()
    #: for a payment: its moves, as written
    timeline: tuple[str, ...] = ()

    def __str__(self) -> str:
        lines = [self.subject, *(f"  {line}" for line in self.evidence)]
        if self.timeline:
            lines.append("  timeline: " + ", ".join(self.timeline))
        return "\n".join(lines)


@dataclass(frozen=True)
class InvariantResult:
    name: str
    description: str
    witnesses: tuple[Witness, ...] = field(default=())

    @property
    def passed(self) -> bool:
        return not self.witnesses

    @property
    def subjects(self) -> list[str]:
        return [witness.subject for witness in self.witnesses]


def _result(name: str, description: str, witnesses: Iterable[Witness]) -> InvariantResult:
    return InvariantResult(name, description, tuple(sorted(witnesses, key=lambda w: w.subject)))


# -- the invariants -----------------------------------------------------------------------------

#: Provider statuses under which the customer's money was taken (a refund returned it later, but the
#: charge happened).
CHARGED_STATUSES = frozenset({"succeeded", "refunded"})
#: The provider's final word -> the states Ballast may end in.
_EXPECTED_STATES: dict[str, frozenset[PaymentState]] = {
    "succeeded": frozenset({PaymentState.SUCCEEDED, PaymentState.REFUND_PENDING}),
    "failed": frozenset({PaymentState.FAILED}),
    "declined": frozenset({PaymentState.FAILED}),
    "refunded": frozenset({PaymentState.REFUNDED}),
    "pending": UNDECIDED_STATES,
}
#: Where a payment the provider never had may end: expired (its client gave up), or refused outright.
_NEVER_AT_THE_PROVIDER = frozenset({PaymentState.EXPIRED, PaymentState.REJECTED})


def _charge(provider: Mapping[str, Any]) -> str:
    return f"provider {provider.get('id', '?')} {provider['final_status']} {provider['amount']} {provider['currency']}"


def no_double_charge(truth: Mapping[str, Any], snapshot: Snapshot) -> InvariantResult:
    """No idempotency key charged twice at the provider: neither Ballast's key there (the payment id)
    nor a client's key (two of Ballast's payments for one key, each charged)."""
    charges: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for provider in provider_payments(truth):
        if provider["final_status"] in CHARGED_STATUSES:
            charges[str(provider["idempotency_key"])].append(provider)
    witnesses = [
        Witness(payment_id, tuple(_charge(p) for p in found)) for payment_id, found in charges.items() if len(found) > 1
    ]
    by_client_key: dict[str, list[PaymentRow]] = defaultdict(list)
    for payment in snapshot.payments:
        if payment.id in charges:
            by_client_key[payment.idempotency_key].append(payment)
    witnesses += [
        Witness(key, tuple(f"payment {p.id}: {_charge(charges[p.id][0])}" for p in sorted(found, key=lambda p: p.id)))
        for key, found in by_client_key.items()
        if len(found) > 1
    ]
    return _result("no_double_charge", "the provider charged one idempotency key more than once", witnesses)


def final_state_matches_truth(truth: Mapping[str, Any], snapshot: Snapshot) -> InvariantResult:
    """Every payment's final state is the provider's truth, or an open case on it explains why not."""
    by_key: dict[str, Mapping[str, Any]] = {}
    for record in provider_payments(truth):  # the first of a key's: a second is no_double_charge's witness
        by_key.setdefault(str(record["idempotency_key"]), record)
    open_cases = snapshot.open_cases()
    witnesses = []
    for payment in snapshot.payments:
        provider = by_key.get(payment.id)
        if provider is None:
            expected, said = _NEVER_AT_THE_PROVIDER, "provider has no such payment"
        else:
            expected = _EXPECTED_STATES.get(provider["final_status"], frozenset())
            said = _charge(provider)
        if payment.state in expected or payment.id in open_cases:
            continue
        witnesses.append(
            Witness(payment.id, (f"ballast {payment.state}", said, "no open case"), snapshot.timeline(payment.id))
        )
    return _result(
        "final_state_matches_truth",
        "a payment's final state differs from the provider's truth and no open case explains it",
        witnesses,
    )


def _state(name: str) -> PaymentState | None:
    try:
        return PaymentState(name)
    except ValueError:
        return None


def _legal(move: TransitionRow) -> bool:
    from_state, to_state = _state(move.from_state), _state(move.to_state)
    if from_state is None or to_state is None:
        return False
    if move.event == CORRECTION_EVENT:
        return (from_state, to_state) in CORRECTIONS
    return PAYMENT_MACHINE.allows(from_state, to_state)


def no_backward_transition(snapshot: Snapshot) -> InvariantResult:
    """Every payment's timeline is a walk of the domain's machine from its initial state to the state it
    holds: no move the machine (or, for a CORRECTION, the correction table) does not allow, and no gap
    where a move went unrecorded."""
    moves = snapshot.moves_by_payment()
    payments = snapshot.payment_by_id()
    witnesses = []
    for payment_id in sorted(set(moves) | set(payments)):
        timeline = moves.get(payment_id, [])
        evidence = []
        at = INITIAL_PAYMENT_STATE.value
        for move in timeline:
            if move.from_state != at:
                evidence.append(f"move #{move.sequence} starts from {move.from_state}, the payment was {at}")
            if not _legal(move):
                evidence.append(f"move #{move.sequence} {move.from_state} -> {move.to_state} is not allowed")
            at = move.to_state
        payment = payments.get(payment_id)
        if payment is None:
            evidence.append("moves of a payment that does not exist")
        elif payment.state != at:
            evidence.append(f"the payment holds {payment.state}, its last move ends in {at}")
        if evidence:
            witnesses.append(Witness(payment_id, tuple(evidence), snapshot.timeline(payment_id)))
    return _result("no_backward_transition", "a payment's timeline is not a walk of the payment machine", witnesses)


def _captured(state: str) -> bool:
    known = _state(state)
    return known is not None and MONEY_OUTCOMES.get(known) is MoneyOutcome.CAPTURED


def ledger_balanced(snapshot: Snapshot) -> InvariantResult:
    """Every ledger entry balances per currency, and provider_clearing holds, per payment and per
    currency, exactly what succeeded: a payment's amount while its money is captured, nothing otherwise."""
    entries: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    entry_payment: dict[str, str | None] = {}
    clearing: dict[str, Decimal] = defaultdict(Decimal)
    clearing_by_currency: dict[str, Decimal] = defaultdict(Decimal)
    for line in snapshot.ledger_lines:
        entries[(line.entry_id, line.currency)] += line.amount
        entry_payment[line.entry_id] = line.payment_id
        if line.account == PROVIDER_CLEARING:
            clearing_by_currency[line.currency] += line.amount
            if line.payment_id is not None:
                clearing[line.payment_id] += line.amount
    witnesses = [
        Witness(
            f"entry {entry_id}",
            (f"{currency} lines sum to {total}", f"payment {entry_payment[entry_id] or 'none'}"),
        )
        for (entry_id, currency), total in entries.items()
        if total != 0
    ]
    succeeded: dict[str, Decimal] = defaultdict(Decimal)
    payments = snapshot.payment_by_id()
    for payment in snapshot.payments:
        expected = payment.amount if _captured(payment.state) else Decimal(0)
        succeeded[payment.currency] += expected
        posted = clearing.pop(payment.id, Decimal(0))
        if posted != expected:
            witnesses.append(
                Witness(
                    payment.id,
                    (f"ballast {payment.state} {payment.amount} {payment.currency}", f"{PROVIDER_CLEARING} {posted}"),
                    snapshot.timeline(payment.id),
                )
            )
    witnesses += [
        Witness(payment_id, (f"{PROVIDER_CLEARING} {posted} for a payment that does not exist",))
        for payment_id, posted in clearing.items()
        if posted != 0 and payment_id not in payments
    ]
    if not witnesses:  # the per-payment witnesses already explain any difference in the totals
        witnesses = [
            Witness(
                currency, (f"{PROVIDER_CLEARING} {clearing_by_currency[currency]}, succeeded {succeeded[currency]}",)
            )
            for currency in sorted(set(succeeded) | set(clearing_by_currency))
            if clearing_by_currency[currency] != succeeded[currency]
        ]
    return _result(
        "ledger_balanced",
        "the ledger is not balanced per currency, or does not hold exactly what succeeded",
        witnesses,
    )


def outbox_published_once_in_order(snapshot: Snapshot, stream: Sequence[BrokerMessage]) -> InvariantResult:
    """Every outbox event is on the broker's stream exactly once (after its de-duplication), nothing else
    is, and each aggregate's events are there in the order they were written."""
    outbox = {row.id: row for row in snapshot.outbox}
    copies = Counter(message.event_id for message in stream)
    witnesses = []
    for row in snapshot.outbox:
        count = copies.get(row.id, 0)
        if count == 1:
            continue
        if count > 1:
            evidence = (f"{count} copies on the stream",)
        elif row.dead_lettered:
            evidence = ("dead-lettered, never on the stream",)
        elif row.published:
            evidence = ("marked published, never on the stream",)
        else:
            evidence = ("never published",)
        witnesses.append(Witness(row.id, (f"aggregate {row.message_key}", *evidence)))
    witnesses += [
        Witness(event_id, ("on the stream, not in the outbox",)) for event_id in copies if event_id not in outbox
    ]
    first_seen: dict[str, int] = {}
    for message in sorted(stream, key=lambda m: m.sequence):
        first_seen.setdefault(message.event_id, message.sequence)
    by_aggregate: dict[str, list[OutboxRow]] = defaultdict(list)
    for row in snapshot.outbox:
        if row.id in first_seen:
            by_aggregate[row.message_key].append(row)
    for key, rows in by_aggregate.items():
        rows.sort(key=lambda row: row.position)
        for earlier, later in pairwise(rows):
            if first_seen[earlier.id] > first_seen[later.id]:
                witnesses.append(
                    Witness(
                        later.id,
                        (
                            f"aggregate {key}",
                            f"written after {earlier.id} (position {later.position} > {earlier.position})",
                            f"on the stream before it (sequence {first_seen[later.id]} < {first_seen[earlier.id]})",
                        ),
                    )
                )
    return _result(
        "outbox_published_once_in_order",
        "an outbox event is lost, duplicated or out of its aggregate's order on the broker",
        witnesses,
    )


def _reachable(state: PaymentState, corrected: bool) -> frozenset[PaymentState]:
    """The states the machine reaches from `state`; with `corrected`, through corrections too."""
    seen, frontier = {state}, [state]
    while frontier:
        at = frontier.pop()
        following = set(PAYMENT_MACHINE.transitions[at])
        if corrected:
            following |= {to for (origin, to) in CORRECTIONS if origin is at}
        for state_after in following - seen:
            seen.add(state_after)
            frontier.append(state_after)
    return frozenset(seen)


def ok_is_durable(history: History, snapshot: Snapshot) -> InvariantResult:
    """Every `ok` a client got is durable: its payment exists under the client's key, in the state the
    client was told or one the machine reaches from it (through a correction the table allows, when its
    timeline records one: a deliberate correction is not a loss)."""
    payments = snapshot.payment_by_id()
    corrected = {move.payment_id for move in snapshot.transitions if move.event == CORRECTION_EVENT and _legal(move)}
    witnesses: dict[str, Witness] = {}
    for told in history.of_kind(Kind.OK):
        if told.payment_id is None or told.payment_id in witnesses:
            continue
        said = f"{told.process} told {told.state} for key {told.idempotency_key} at {told.time_s}"
        payment = payments.get(told.payment_id)
        if payment is None:
            evidence: tuple[str, ...] = (said, "no such payment in the database")
        elif payment.idempotency_key != told.idempotency_key:
            evidence = (said, f"the payment is under key {payment.idempotency_key}")
        else:
            told_state, now = _state(told.state or ""), _state(payment.state)
            if told_state is not None and now is not None and now in _reachable(told_state, payment.id in corrected):
                continue
            evidence = (said, f"the payment holds {payment.state}, not reachable from {told.state}")
        witnesses[told.payment_id] = Witness(told.payment_id, evidence, snapshot.timeline(told.payment_id))
    return _result("ok_is_durable", "a client was told ok about a payment the database lost", witnesses.values())


def unknown_resolved_within_sla(snapshot: Snapshot, sla_s: float) -> InvariantResult:
    """Every stay in UNKNOWN ends within `sla_s`: the payment moves on, or a case on it is opened, by
    then. A stay still open when the snapshot was taken is judged only once its SLA has run out; a stay
    whose moves carry no time cannot be judged and is a witness of its own."""
    cases_opened: dict[str, list[float]] = defaultdict(list)
    for case in snapshot.cases:
        if case.payment_id is not None and case.opened_at_s is not None:
            cases_opened[case.payment_id].append(case.opened_at_s)
    witnesses = []
    for payment_id, timeline in snapshot.moves_by_payment().items():
        for index, entered in enumerate(timeline):
            if entered.to_state != PaymentState.UNKNOWN:
                continue
            left = timeline[index + 1] if index + 1 < len(timeline) else None
            if entered.occurred_at_s is None or (left is not None and left.occurred_at_s is None):
                evidence: tuple[str, ...] = (f"move #{entered.sequence} into UNKNOWN: its stay has no time",)
                witnesses.append(Witness(payment_id, evidence, snapshot.timeline(payment_id)))
                break
            deadline = entered.occurred_at_s + sla_s
            if left is not None and left.occurred_at_s is not None and left.occurred_at_s <= deadline:
                continue
            if any(entered.occurred_at_s <= opened <= deadline for opened in cases_opened.get(payment_id, [])):
                continue
            if left is None and (snapshot.taken_at_s is None or snapshot.taken_at_s <= deadline):
                continue  # still within its SLA when the snapshot was taken
            ended = (
                f"left for {left.to_state} after {left.occurred_at_s - entered.occurred_at_s:g}s"
                if left is not None and left.occurred_at_s is not None
                else "still UNKNOWN"
            )
            evidence = (f"UNKNOWN at {entered.occurred_at_s:g}s, SLA {sla_s:g}s", ended, "no case opened in time")
            witnesses.append(Witness(payment_id, evidence, snapshot.timeline(payment_id)))
            break
    return _result(
        "unknown_resolved_within_sla",
        "a payment stayed UNKNOWN past its SLA with no case opened on it",
        witnesses,
    )


def every_charge_known(truth: Mapping[str, Any], snapshot: Snapshot) -> InvariantResult:
    """The provider holds no payment that no payment of Ballast's sent (its idempotency key there is
    always a Ballast payment id): money taken that Ballast would never see."""
    payments = snapshot.payment_by_id()
    witnesses = [
        Witness(str(provider.get("id", "?")), (_charge(provider), f"under key {provider['idempotency_key']}"))
        for provider in provider_payments(truth)
        if str(provider["idempotency_key"]) not in payments
    ]
    return _result("every_charge_known", "the provider holds a payment Ballast never sent", witnesses)


def no_needless_case(truth: Mapping[str, Any], snapshot: Snapshot) -> InvariantResult:
    """No case stays open on a payment the provider's API answers about without doubt (its final word
    is not pending): asking by id settles it, and a person's time is not spent on it."""
    by_key = {str(provider["idempotency_key"]): provider for provider in provider_payments(truth)}
    witnesses = [
        Witness(case.payment_id, (f"{case.kind} case {case.id} open", _charge(by_key[case.payment_id])))
        for case in snapshot.cases
        if case.status == CaseStatus.OPEN
        and case.payment_id in by_key
        and by_key[case.payment_id]["final_status"] != "pending"
    ]
    return _result(
        "no_needless_case", "a case is open though the provider's API answers about the payment plainly", witnesses
    )


def exposures_match_ledger(snapshot: Snapshot) -> InvariantResult:
    """Once every event is consumed, the exposures projection agrees with the database: per currency,
    the money it holds in flight is what the undecided payments ask for, and every account the ledger
    holds money on has its row, settled at its ledger balance (a missing row is a lost event too)."""
    balances: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for line in snapshot.ledger_lines:
        balances[(line.account, line.currency)] += line.amount
    undecided: dict[str, Decimal] = defaultdict(Decimal)
    for payment in snapshot.payments:
        if _state(payment.state) in UNDECIDED_STATES:
            undecided[payment.currency] += payment.amount
    projected: dict[str, Decimal] = defaultdict(Decimal)
    settled: dict[tuple[str, str], Decimal] = {}
    for row in snapshot.exposures:
        projected[row.currency] += row.in_flight
        settled[(row.account, row.currency)] = row.settled
    witnesses = []
    for account, currency in sorted(set(balances) | set(settled)):
        ledger = balances.get((account, currency), Decimal(0))
        if (account, currency) not in settled:
            if ledger != 0:
                witnesses.append(Witness(f"{account} {currency}", (f"no exposure row, ledger {ledger}",)))
        elif settled[(account, currency)] != ledger:
            evidence = (f"settled {settled[(account, currency)]}, ledger {ledger}",)
            witnesses.append(Witness(f"{account} {currency}", evidence))
    witnesses += [
        Witness(currency, (f"in flight {projected[currency]}, undecided payments ask {undecided[currency]}",))
        for currency in sorted(set(projected) | set(undecided))
        if projected[currency] != undecided[currency]
    ]
    return _result("exposures_match_ledger", "the exposures projection disagrees with the database", witnesses)


def every_move_announced(snapshot: Snapshot) -> InvariantResult:
    """Every payment's recording and every move of it wrote its outbox event, in the same transaction:
    one `payments.recorded` and one `payments.state_changed` per move, under the payment's id."""
    recorded: Counter[str] = Counter()
    changed: Counter[str] = Counter()
    for row in snapshot.outbox:
        if row.topic == PAYMENT_RECORDED:
            recorded[row.message_key] += 1
        elif row.topic == PAYMENT_STATE_CHANGED:
            changed[row.message_key] += 1
    moves = Counter(move.payment_id for move in snapshot.transitions)
    witnesses = [
        Witness(
            payment.id,
            (
                f"{recorded[payment.id]} payments.recorded events (1 expected)",
                f"{changed[payment.id]} payments.state_changed events for {moves[payment.id]} moves",
            ),
            snapshot.timeline(payment.id),
        )
        for payment in snapshot.payments
        if recorded[payment.id] != 1 or changed[payment.id] != moves[payment.id]
    ]
    return _result("every_move_announced", "a payment or a move of it has no outbox event, or more than one", witnesses)


#: A run made progress when at least this share of its keys got an `ok`: a system that refused every
#: call, or never reached the provider, keeps every other invariant and is still broken.
PROGRESS_SHARE_MIN = 0.5


def made_progress(history: History, truth: Mapping[str, Any]) -> InvariantResult:
    """The system did its job under the faults: most keys were answered `ok` (clients retry, as told),
    and the provider took money for some of them. A system that refused every call, or never reached
    the provider, would keep every other invariant."""
    keys = history.by_key()
    answered = {operation.idempotency_key for operation in history.of_kind(Kind.OK)}
    charged = [p for p in provider_payments(truth) if p["final_status"] in CHARGED_STATUSES]
    witnesses = []
    if not keys or len(answered) < PROGRESS_SHARE_MIN * len(keys):
        witnesses.append(
            Witness("load", (f"{len(answered)} of {len(keys)} keys answered ok ({PROGRESS_SHARE_MIN:.0%} at least)",))
        )
    if not charged:
        witnesses.append(Witness("provider", ("the provider charged nothing",)))
    return _result("made_progress", "the system did not do its job: most calls refused, or nothing charged", witnesses)


def charged_as_asked(history: History, truth: Mapping[str, Any], snapshot: Snapshot) -> InvariantResult:
    """What the provider holds for a payment is what Ballast recorded, and what Ballast recorded is what
    the client asked under that key: the same amount and currency (evidence that does not fit is never
    applied; a charge of another amount is a loss, not a detail)."""
    asked: dict[str, tuple[Decimal, str]] = {}
    for invoke in history.of_kind(Kind.INVOKE):
        if invoke.amount is not None and invoke.currency is not None:
            asked.setdefault(invoke.idempotency_key, (Decimal(invoke.amount), invoke.currency))
    payments = snapshot.payment_by_id()
    witnesses = []
    for payment in snapshot.payments:
        wanted = asked.get(payment.idempotency_key)
        if wanted is not None and wanted != (payment.amount, payment.currency):
            witnesses.append(
                Witness(
                    payment.id,
                    (
                        f"asked {wanted[0]} {wanted[1]} under key {payment.idempotency_key}",
                        f"ballast recorded {payment.amount} {payment.currency}",
                    ),
                )
            )
    for provider in provider_payments(truth):
        charged = payments.get(str(provider["idempotency_key"]))
        if charged is None:
            continue
        if (Decimal(str(provider["amount"])), str(provider["currency"])) != (charged.amount, charged.currency):
            witnesses.append(
                Witness(
                    charged.id,
                    (f"ballast {charged.amount} {charged.currency}", _charge(provider)),
                    snapshot.timeline(charged.id),
                )
            )
    return _result("charged_as_asked", "a payment was recorded or charged for another amount or currency", witnesses)


def fail_had_no_effect(history: History, truth: Mapping[str, Any], snapshot: Snapshot) -> InvariantResult:
    """A key whose every call was refused outright (`fail`, never `ok` nor `info`) took no money: no
    payment under it was charged at the provider."""
    completions: dict[str, set[Kind]] = defaultdict(set)
    for operation in history:
        if operation.kind is not Kind.INVOKE:
            completions[operation.idempotency_key].add(operation.kind)
    refused = {key for key, kinds in completions.items() if kinds == {Kind.FAIL}}
    charged = {
        str(provider["idempotency_key"]): provider
        for provider in provider_payments(truth)
        if provider["final_status"] in CHARGED_STATUSES
    }
    witnesses = [
        Witness(
            payment.idempotency_key,
            ("every call under this key was refused", f"payment {payment.id}: {_charge(charged[payment.id])}"),
            snapshot.timeline(payment.id),
        )
        for payment in snapshot.payments
        if payment.idempotency_key in refused and payment.id in charged
    ]
    return _result("fail_had_no_effect", "a call refused outright took money all the same", witnesses)


#: What an answer from an open breaker says (server/providers/breaker.py's BreakerOpen, passed on).
BREAKER_OPEN_MESSAGE = "circuit breaker"


def _breaker_answers(history: History) -> list[tuple[Operation, Operation]]:
    """The calls an open breaker answered, as (invoke, completion), in the order they completed."""
    return [
        (invoked, done)
        for invoked, done in history.calls()
        if done.kind is not Kind.OK and BREAKER_OPEN_MESSAGE in (done.message or "")
    ]


def breaker_answer_latencies(history: History) -> list[float]:
    """How long each call answered by an open breaker took, in seconds, in the order they completed."""
    return [round(done.time_s - invoked.time_s, 4) for invoked, done in _breaker_answers(history)]


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """The nearest-rank percentile (fraction 0.99 for p99); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, int(fraction * len(ordered) + 0.999999) - 1))
    return ordered[rank]


def breaker_fails_fast(history: History, bound_s: float, *, expected: bool) -> InvariantResult:
    """While the breaker was open, calls failed fast: the p99 of the answers an open breaker gave is
    within `bound_s` (not the provider's timeout); when it is not, the calls slower than the bound are
    the witnesses. With `expected`, the scenario must have opened it."""
    answers = _breaker_answers(history)
    p99 = percentile([done.time_s - invoked.time_s for invoked, done in answers], 0.99)
    witnesses = []
    if p99 is not None and p99 > bound_s:
        witnesses = [
            Witness(
                done.idempotency_key,
                (f"{done.process}: answered by an open breaker after {done.time_s - invoked.time_s:.3f}s",),
            )
            for invoked, done in answers
            if done.time_s - invoked.time_s > bound_s
        ]
    if expected and not answers:
        witnesses.append(Witness("breaker", ("no call was answered by an open breaker: it never opened",)))
    return _result(
        "breaker_fails_fast",
        f"the p99 of an open breaker's answers was over {bound_s:g}s (p99 {p99 or 0:.3f}s), or it never opened",
        witnesses,
    )


def converged(snapshot: Snapshot, left: Mapping[str, int], timeout_s: float) -> InvariantResult:
    """The system settled after the faults healed: nothing was left unfinished (`left`: what the run
    still waited for when it stopped waiting, by kind). Otherwise the witnesses are the payments still
    undecided outside an open case, each with its timeline, and the counts of the rest."""
    if not any(left.values()):
        return _result("converged", "the system settled after the faults healed", ())
    open_cases = snapshot.open_cases()
    witnesses = [
        Witness(payment.id, (f"ballast {payment.state}, no open case",), snapshot.timeline(payment.id))
        for payment in snapshot.payments
        if _state(payment.state) in UNDECIDED_STATES and payment.id not in open_cases
    ]
    witnesses.append(Witness("run", tuple(f"{name}: {count}" for name, count in left.items() if count)))
    return _result("converged", f"the system had not settled {timeout_s:g}s after the faults healed", witnesses)


#: How a breaker's state changes read in a server's log (server/providers/breaker.py's BreakerState).
BREAKER_OPEN, BREAKER_HALF_OPEN, BREAKER_CLOSED = "open", "half_open", "closed"


def breaker_cycles(changes: Sequence[Mapping[str, Any]], at_least: int) -> InvariantResult:
    """The breaker went open -> half-open -> closed at least `at_least` times (per server, in the order
    each logged its changes: {"server", "old", "new"})."""
    cycles: Counter[str] = Counter()
    opened: set[str] = set()
    for change in changes:
        server, old, new = str(change.get("server")), change.get("old"), change.get("new")
        if new == BREAKER_OPEN:
            opened.add(server)
        elif old == BREAKER_HALF_OPEN and new == BREAKER_CLOSED and server in opened:
            cycles[server] += 1
            opened.discard(server)
    total = sum(cycles.values())
    witnesses = (
        ()
        if total >= at_least
        else (Witness("breaker", (f"{total} open -> half_open -> closed cycles of the {at_least} expected",)),)
    )
    return _result(
        "breaker_cycles", f"the breaker did not cycle open -> half-open -> closed {at_least} times", witnesses
    )


def check(
    history: History,
    truth: Mapping[str, Any],
    snapshot: Snapshot,
    stream: Sequence[BrokerMessage],
    unknown_sla_s: float,
) -> list[InvariantResult]:
    """Every invariant, in the order a report shows them."""
    return [
        no_double_charge(truth, snapshot),
        final_state_matches_truth(truth, snapshot),
        no_backward_transition(snapshot),
        ledger_balanced(snapshot),
        outbox_published_once_in_order(snapshot, stream),
        unknown_resolved_within_sla(snapshot, unknown_sla_s),
        ok_is_durable(history, snapshot),
        charged_as_asked(history, truth, snapshot),
        fail_had_no_effect(history, truth, snapshot),
        every_charge_known(truth, snapshot),
        no_needless_case(truth, snapshot),
        exposures_match_ledger(snapshot),
        every_move_announced(snapshot),
        made_progress(history, truth),
    ]
