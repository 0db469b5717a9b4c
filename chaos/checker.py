"""The chaos checker's core: the invariants a run must keep, judged over plain data.

Its inputs are the history of what clients were told (chaos/history.py), the simulator's
`/_sim/truth` as parsed JSON, the broker's stream after de-duplication, and a snapshot of Ballast's
database as typed rows. Nothing here does I/O. Each invariant is one function returning an
InvariantResult: passed when it has no witness, and otherwise the fewest subjects (payment ids,
idempotency keys, ledger entries, outbox events) that show the break, each with its evidence and,
for a payment, its timeline.

Refunds are judged the same way: each against its payment (what its refunds hold and returned), its
one reversal in the ledger (`refund:<id>:succeeded`), and the provider's refunds (its idempotency key
there is the refund's id).

A run that reconciles the provider's settlement report (`ReportSnapshot`) is judged against the
simulator's settlement truth (`/_sim/truth`'s `settlement`: each booking as it really was, as it was
reported, and the drift planted in it): the run completed with its counts adding up, every class holds
exactly the provider ids the drift planted in it, every finding a person must decide has a case, a
second upload of the file replayed the run without writing anything, and no payout posted twice.

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

from chaos.history import CREATE_PAYMENT, REFUND_PAYMENT, History, Kind, Operation
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
from server.domain.reconciliation import SELF_CLOSING
from server.domain.refund_states import (
    REFUND_MACHINE,
    RELEASED_REFUND_STATES,
    UNDECIDED_REFUND_STATES,
    RefundState,
)


@dataclass(frozen=True)
class PaymentRow:
    id: str
    idempotency_key: str
    amount: Decimal
    currency: str
    state: str
    #: what its succeeded refunds returned (payments.refunded)
    refunded: Decimal = Decimal(0)
    #: what its refunds that succeeded or may still succeed count against it (payments.refund_held)
    refund_held: Decimal = Decimal(0)


@dataclass(frozen=True)
class RefundRow:
    id: str
    payment_id: str
    #: the client's key for the refund (the provider's key for it is its id)
    idempotency_key: str
    amount: Decimal
    currency: str
    state: str


@dataclass(frozen=True)
class RefundTransitionRow:
    refund_id: str
    #: the row's id: the order moves were written in
    sequence: int
    from_state: str
    to_state: str
    event: str = ""


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
    #: the entry's event key: what it posts for (`payment:<id>:captured`, `refund:<id>:succeeded`, ...)
    event_key: str = ""


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
    #: the report run that opened it (a reconciliation case)
    report_run_id: str | None = None


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
    refunds: Sequence[RefundRow] = ()
    refund_transitions: Sequence[RefundTransitionRow] = ()

    def refund_timeline(self, refund_id: str) -> tuple[str, ...]:
        """The refund's moves in the order they were written, `FROM -> TO (EVENT)`."""
        moves = sorted((t for t in self.refund_transitions if t.refund_id == refund_id), key=lambda t: t.sequence)
        return tuple(f"{t.from_state} -> {t.to_state}" + (f" ({t.event})" if t.event else "") for t in moves)

    def succeeded_refunds(self) -> dict[str, Decimal]:
        """Per payment id, what its SUCCEEDED refunds returned."""
        returned: dict[str, Decimal] = defaultdict(Decimal)
        for refund in self.refunds:
            if refund.state == RefundState.SUCCEEDED:
                returned[refund.payment_id] += refund.amount
        return dict(returned)

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


def provider_refunds(truth: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The provider's refunds from `/_sim/truth`; each has idempotency_key (Ballast's refund id), id,
    payment (the provider's payment id), final_status (pending, succeeded, failed), amount and currency."""
    refunds: list[Mapping[str, Any]] = truth.get("refunds", [])
    return refunds


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
    # a payment partly refunded by the refunds Ballast asked for is still `succeeded` at the provider
    "succeeded": frozenset({PaymentState.SUCCEEDED, PaymentState.REFUND_PENDING, PaymentState.PARTIALLY_REFUNDED}),
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
    currency, exactly what succeeded: a payment's amount less what its SUCCEEDED refunds returned while
    its money is captured, nothing otherwise."""
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
    returned = snapshot.succeeded_refunds()
    for payment in snapshot.payments:
        refunded = returned.get(payment.id, Decimal(0))
        expected = payment.amount - refunded if _captured(payment.state) else Decimal(0)
        succeeded[payment.currency] += expected
        posted = clearing.pop(payment.id, Decimal(0))
        if posted != expected:
            said = f"ballast {payment.state} {payment.amount} {payment.currency}"
            if refunded:
                said += f", refunds succeeded {refunded}"
            witnesses.append(
                Witness(payment.id, (said, f"{PROVIDER_CLEARING} {posted}"), snapshot.timeline(payment.id))
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


# -- refunds ------------------------------------------------------------------------------------

#: A refund's state -> what the ledger holds for it: a SUCCEEDED refund's reversal, and nothing else.
REFUND_EVENT_KEY = "refund:{}:succeeded"
#: The provider's final word on a refund -> the state Ballast's refund must end in.
_EXPECTED_REFUND_STATES: dict[str, frozenset[RefundState]] = {
    "succeeded": frozenset({RefundState.SUCCEEDED}),
    "failed": frozenset({RefundState.FAILED}),
    "pending": UNDECIDED_REFUND_STATES,
}
#: Where a refund the provider never had may end: nothing moved.
_REFUND_NEVER_AT_THE_PROVIDER = frozenset({RefundState.REJECTED, RefundState.EXPIRED, RefundState.FAILED})


def _refund_state(name: str) -> RefundState | None:
    try:
        return RefundState(name)
    except ValueError:
        return None


def _refund(provider: Mapping[str, Any]) -> str:
    return (
        f"provider refund {provider.get('id', '?')} {provider['final_status']}"
        f" {provider['amount']} {provider['currency']}"
    )


def never_refunded_more_than_captured(snapshot: Snapshot) -> InvariantResult:
    """No payment gave back more than it captured: its SUCCEEDED refunds add up to at most its amount,
    `payments.refunded` is exactly that sum, and `payments.refund_held` is exactly what its refunds that
    succeeded or may still succeed (none FAILED, REJECTED or EXPIRED) ask; no refund of a payment that
    does not exist, or in another currency than its payment's."""
    payments = snapshot.payment_by_id()
    returned: dict[str, Decimal] = defaultdict(Decimal)
    held: dict[str, Decimal] = defaultdict(Decimal)
    witnesses: dict[str, list[str]] = defaultdict(list)
    for refund in snapshot.refunds:
        payment = payments.get(refund.payment_id)
        if payment is None:
            witnesses[refund.payment_id].append(f"refund {refund.id} of a payment that does not exist")
            continue
        if refund.currency != payment.currency:
            witnesses[payment.id].append(f"refund {refund.id} in {refund.currency}, the payment in {payment.currency}")
        state = _refund_state(refund.state)
        if state is None:
            witnesses[payment.id].append(f"refund {refund.id} in an unknown state {refund.state}")
            continue
        if state is RefundState.SUCCEEDED:
            returned[payment.id] += refund.amount
        if state not in RELEASED_REFUND_STATES:
            held[payment.id] += refund.amount
    for payment in snapshot.payments:
        back, holding = returned.get(payment.id, Decimal(0)), held.get(payment.id, Decimal(0))
        if back > payment.amount:
            witnesses[payment.id].append(f"refunds succeeded {back}, captured {payment.amount} {payment.currency}")
        if payment.refunded != back:
            witnesses[payment.id].append(f"payments.refunded {payment.refunded}, its SUCCEEDED refunds {back}")
        if payment.refund_held != holding:
            witnesses[payment.id].append(
                f"payments.refund_held {payment.refund_held}, its refunds not released {holding}"
            )
    return _result(
        "never_refunded_more_than_captured",
        "a payment's refunds returned more than it captured, or its refund totals disagree with its refunds",
        (
            Witness(payment_id, tuple(evidence), snapshot.timeline(payment_id))
            for payment_id, evidence in witnesses.items()
        ),
    )


def refund_posted_once(snapshot: Snapshot) -> InvariantResult:
    """Each SUCCEEDED refund posted exactly one ledger entry, `refund:<id>:succeeded`, for its amount
    (its provider_clearing line credits the amount, in its currency); a refund in any other state has
    none, and no such entry names a refund that does not exist."""
    entries: dict[str, set[str]] = defaultdict(set)
    clearing: dict[str, Decimal] = defaultdict(Decimal)
    currencies: dict[str, set[str]] = defaultdict(set)
    for line in snapshot.ledger_lines:
        if not line.event_key.startswith("refund:"):
            continue
        entries[line.event_key].add(line.entry_id)
        currencies[line.event_key].add(line.currency)
        if line.account == PROVIDER_CLEARING:
            clearing[line.event_key] += line.amount
    witnesses = []
    known = set()
    for refund in snapshot.refunds:
        key = REFUND_EVENT_KEY.format(refund.id)
        known.add(key)
        found = entries.get(key, set())
        said = f"refund {refund.state} {refund.amount} {refund.currency} of payment {refund.payment_id}"
        evidence: list[str] = []
        if refund.state == RefundState.SUCCEEDED:
            if len(found) != 1:
                evidence.append(f"{len(found)} entries {key} (1 expected)")
            elif clearing[key] != -refund.amount or currencies[key] != {refund.currency}:
                evidence.append(
                    f"entry {key} moves {PROVIDER_CLEARING} {clearing[key]} in {', '.join(sorted(currencies[key]))}"
                )
        elif found:
            evidence.append(f"{len(found)} entries {key} for a refund that did not succeed")
        if evidence:
            witnesses.append(Witness(refund.id, (said, *evidence), snapshot.refund_timeline(refund.id)))
    witnesses += [
        Witness(key, (f"entry {', '.join(sorted(ids))} for a refund that does not exist",))
        for key, ids in entries.items()
        if key not in known
    ]
    return _result(
        "refund_posted_once",
        "a SUCCEEDED refund's reversal is missing, repeated or of another amount, or another refund posted one",
        witnesses,
    )


def refund_matches_truth(truth: Mapping[str, Any], snapshot: Snapshot) -> InvariantResult:
    """Every refund ends where the provider's refund under its id is (succeeded: SUCCEEDED, failed:
    FAILED; none there: REJECTED, EXPIRED or FAILED, nothing moved), for its amount and currency, unless
    an open case on its payment explains why not; and every provider refund maps to exactly one of
    Ballast's refunds (its key there is a refund id, used once, of the payment it refunds): no refund
    made twice, none Ballast never asked for."""
    refunds = {refund.id: refund for refund in snapshot.refunds}
    at_provider: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for provider in provider_refunds(truth):
        at_provider[str(provider["idempotency_key"])].append(provider)
    # the provider's payment id -> Ballast's payment id (the provider's key for a payment is its id)
    provider_payment = {
        str(p.get("id")): str(p["idempotency_key"]) for p in provider_payments(truth) if p.get("id") is not None
    }
    open_cases = snapshot.open_cases()
    witnesses = []
    for key, found in at_provider.items():
        refund = refunds.get(key)
        if refund is None:
            witnesses.append(Witness(key, (*map(_refund, found), "no refund of Ballast's has this id")))
            continue
        if len(found) > 1:
            witnesses.append(Witness(key, (*map(_refund, found), "one refund made more than once")))
        refunded = provider_payment.get(str(found[0].get("payment")))
        if refunded is not None and refunded != refund.payment_id:
            witnesses.append(
                Witness(key, (f"refund of payment {refund.payment_id}", f"the provider refunded payment {refunded}"))
            )
    for refund in snapshot.refunds:
        found = at_provider.get(refund.id, [])
        if found:
            provider = found[0]
            expected = _EXPECTED_REFUND_STATES.get(str(provider["final_status"]), frozenset())
            said = _refund(provider)
            if (Decimal(str(provider["amount"])), str(provider["currency"])) != (refund.amount, refund.currency):
                witnesses.append(
                    Witness(
                        refund.id,
                        (f"ballast {refund.state} {refund.amount} {refund.currency}", said),
                        snapshot.refund_timeline(refund.id),
                    )
                )
                continue
        else:
            expected, said = _REFUND_NEVER_AT_THE_PROVIDER, "provider has no such refund"
        if _refund_state(refund.state) in expected or refund.payment_id in open_cases:
            continue
        witnesses.append(
            Witness(
                refund.id,
                (f"ballast {refund.state} {refund.amount} {refund.currency}", said, "no open case on its payment"),
                snapshot.refund_timeline(refund.id),
            )
        )
    return _result(
        "refund_matches_truth",
        "a refund's final state differs from the provider's truth with no open case, or the provider made a"
        " refund twice or one Ballast never asked for",
        witnesses,
    )


def refunds_converged(snapshot: Snapshot) -> InvariantResult:
    """No refund was left undecided (RECORDED, PENDING, UNKNOWN) after the settle, outside an open case
    on its payment; and every refund's timeline is a walk of the refund machine to the state it holds."""
    open_cases = snapshot.open_cases()
    moves: dict[str, list[RefundTransitionRow]] = defaultdict(list)
    for move in sorted(snapshot.refund_transitions, key=lambda t: t.sequence):
        moves[move.refund_id].append(move)
    witnesses = []
    for refund in snapshot.refunds:
        evidence = []
        state = _refund_state(refund.state)
        if state in UNDECIDED_REFUND_STATES and refund.payment_id not in open_cases:
            evidence.append(f"ballast {refund.state}, no open case on payment {refund.payment_id}")
        at = RefundState.RECORDED.value
        for move in moves.get(refund.id, []):
            origin, to = _refund_state(move.from_state), _refund_state(move.to_state)
            if move.from_state != at:
                evidence.append(f"move #{move.sequence} starts from {move.from_state}, the refund was {at}")
            if origin is None or to is None or not REFUND_MACHINE.allows(origin, to):
                evidence.append(f"move #{move.sequence} {move.from_state} -> {move.to_state} is not allowed")
            at = move.to_state
        if snapshot.refund_transitions and refund.state != at:
            evidence.append(f"the refund holds {refund.state}, its last move ends in {at}")
        if evidence:
            witnesses.append(Witness(refund.id, tuple(evidence), snapshot.refund_timeline(refund.id)))
    return _result(
        "refunds_converged",
        "a refund was left undecided after the settle, or its timeline is not a walk of the refund machine",
        witnesses,
    )


def refund_ok_is_durable(history: History, snapshot: Snapshot) -> InvariantResult:
    """Every refund a client was told about (`ok`) is in the database under the client's key, of the
    payment it asked to refund, in the state it was told or one the refund machine reaches from it."""
    refunds = {refund.id: refund for refund in snapshot.refunds}
    witnesses: dict[str, Witness] = {}
    for told in history.of_kind(Kind.OK):
        if told.operation != REFUND_PAYMENT or told.refund_id is None or told.refund_id in witnesses:
            continue
        said = f"{told.process} told {told.state} for key {told.idempotency_key} at {told.time_s}"
        refund = refunds.get(told.refund_id)
        if refund is None:
            evidence: tuple[str, ...] = (said, "no such refund in the database")
        elif refund.idempotency_key != told.idempotency_key or refund.payment_id != told.payment_id:
            evidence = (said, f"the refund is under key {refund.idempotency_key} of payment {refund.payment_id}")
        else:
            told_state, now = _refund_state(told.state or ""), _refund_state(refund.state)
            if told_state is not None and now is not None and (now is told_state or _refund_reaches(told_state, now)):
                continue
            evidence = (said, f"the refund holds {refund.state}, not reachable from {told.state}")
        witnesses[told.refund_id] = Witness(told.refund_id, evidence, snapshot.refund_timeline(told.refund_id))
    return _result("refund_ok_is_durable", "a client was told ok about a refund the database lost", witnesses.values())


def _refund_reaches(origin: RefundState, target: RefundState) -> bool:
    seen, frontier = {origin}, [origin]
    while frontier:
        at = frontier.pop()
        for following in REFUND_MACHINE.transitions[at]:
            if following not in seen:
                seen.add(following)
                frontier.append(following)
    return target in seen


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


# -- reconciliation ------------------------------------------------------------------------------

#: Each kind of drift the simulator plants in its settlement report, and the class it must be found in.
DRIFT_CLASSES: dict[str, str] = {
    "missing": "MISSING_PROVIDER",
    "extra": "MISSING_INTERNAL",
    "amount": "AMOUNT_MISMATCH",
    "fee": "FEE_MISMATCH",
    "fx": "FX_ADJUSTMENT",
    "late": "TIMING_MISMATCH",
}
#: The classes that close themselves and open no case.
SELF_CLOSING_CLASSES = frozenset(difference.value for difference in SELF_CLOSING)
#: The ledger event keys of payouts: `payout:<provider>:<payout id>`.
PAYOUT_EVENT_PREFIX = "payout:"
#: The tables a replayed upload must leave as they were.
REPORT_TABLES = ("report_runs", "report_chunks", "report_rows", "report_findings", "cases")


@dataclass(frozen=True)
class ReportRunRow:
    id: str
    status: str
    row_count: int = 0
    matched_row_count: int = 0
    unmatched_row_count: int = 0
    invalid_row_count: int = 0
    opened_case_count: int = 0
    failure_reason: str = ""

    def describe(self) -> str:
        return (
            f"run {self.id} {self.status}: {self.row_count} rows, {self.matched_row_count} matched,"
            f" {self.unmatched_row_count} unmatched, {self.invalid_row_count} invalid,"
            f" {self.opened_case_count} cases opened" + (f"; {self.failure_reason}" if self.failure_reason else "")
        )


@dataclass(frozen=True)
class FindingRow:
    """One difference a report run found (report_findings)."""

    run_id: str
    #: the finding's id: the order it was found in
    id: int
    difference: str
    #: the report row it is about (None: a MISSING_PROVIDER, about a payment the report lacks)
    row_number: int | None
    #: what the provider calls what it is about: the row's source id (its payment's or refund's id), a
    #: payout's id, or for a MISSING_PROVIDER the payment's id at the provider
    provider_id: str | None
    payment_id: str | None = None
    case_id: str | None = None

    def describe(self) -> str:
        row = "no row" if self.row_number is None else f"row {self.row_number}"
        payment = f", payment {self.payment_id}" if self.payment_id else ""
        case = f", case {self.case_id}" if self.case_id else ", no case"
        return f"finding #{self.id} {self.difference} ({row}{payment}{case})"


@dataclass(frozen=True)
class ReportSnapshot:
    """What reconciling the provider's settlement report did and left (chaos/reconcile.py)."""

    #: the run reconciled, as the database held it at the end (None: the upload failed)
    run: ReportRunRow | None
    #: the first upload's error, when it had one
    upload_error: str | None = None
    findings: Sequence[FindingRow] = ()
    #: every case in the database at the end
    cases: Sequence[CaseRow] = ()
    #: the second upload of the same file: replayed, under which run (None: it failed, upload_error says)
    replayed: bool | None = None
    replay_run_id: str | None = None
    replay_error: str | None = None
    #: rows per table (REPORT_TABLES) just before the second upload and just after it
    counts_before_replay: Mapping[str, int] = field(default_factory=dict)
    counts_after_replay: Mapping[str, int] = field(default_factory=dict)
    #: the ledger's payout postings: (entry id, event key) per ledger entry whose key starts with `payout:`
    payout_entries: Sequence[tuple[str, str]] = ()
    #: the data lines of the file uploaded (its lines but the header): the rows the run must hold
    file_rows: int | None = None


def planted_drift(truth: Mapping[str, Any]) -> dict[str, dict[str, tuple[str, ...]]]:
    """Per class, the provider ids the simulator's settlement truth planted in it, each with what the
    booking says (its drift, and its line as it was and as reported)."""
    planted: dict[str, dict[str, tuple[str, ...]]] = defaultdict(dict)
    for booking in truth.get("settlement", []):
        true, reported = booking.get("true"), booking.get("reported") or []
        line = true or (reported[0] if reported else None)
        if line is None:
            continue
        said = (
            f"drift {', '.join(booking.get('drift', []))}",
            "true " + (_booking_line(true) if true else "none (invented)"),
            "reported " + ("; ".join(_booking_line(r) for r in reported) or "nothing"),
        )
        for drift in booking.get("drift", []):
            planted[DRIFT_CLASSES.get(str(drift), f"unknown drift {drift}")][str(line["source_id"])] = said
    return dict(planted)


def _booking_line(line: Mapping[str, Any]) -> str:
    return (
        f"{line.get('type')} {line.get('gross')} {line.get('currency')} fee {line.get('fee')}"
        f" settling {line.get('settlement_date')}"
    )


@dataclass(frozen=True)
class ClassScore:
    planted: int
    found: int
    hits: int

    @property
    def precision(self) -> float:
        return self.hits / self.found if self.found else 1.0

    @property
    def recall(self) -> float:
        return self.hits / self.planted if self.planted else 1.0


def _found_by_class(report: ReportSnapshot) -> dict[str, dict[str, list[FindingRow]]]:
    found: dict[str, dict[str, list[FindingRow]]] = defaultdict(lambda: defaultdict(list))
    for finding in report.findings:
        if report.run is not None and finding.run_id == report.run.id:
            found[finding.difference][finding.provider_id or f"finding #{finding.id}"].append(finding)
    return found


def report_class_scores(truth: Mapping[str, Any], report: ReportSnapshot) -> dict[str, ClassScore]:
    """Per class (every class planted or found), how many provider ids were planted, found, and both."""
    planted, found = planted_drift(truth), _found_by_class(report)
    return {
        difference: ClassScore(
            len(planted.get(difference, {})),
            len(found.get(difference, {})),
            len(set(planted.get(difference, {})) & set(found.get(difference, {}))),
        )
        for difference in sorted(set(planted) | set(found))
    }


def report_run_completed(report: ReportSnapshot) -> InvariantResult:
    """The report's run ended COMPLETED, and its counts add up: row_count == matched + unmatched + invalid,
    and it is the number of data lines in the file uploaded (a stage taken up again wrote no row twice)."""
    run = report.run
    witnesses = []
    if run is None:
        witnesses.append(Witness("upload", (f"the report was not taken in: {report.upload_error or 'no run'}",)))
    else:
        evidence = []
        if run.status != "COMPLETED":
            evidence.append(f"ended {run.status}, not COMPLETED")
        counted = run.matched_row_count + run.unmatched_row_count + run.invalid_row_count
        if run.row_count != counted:
            evidence.append(f"row_count {run.row_count} != matched + unmatched + invalid = {counted}")
        if report.file_rows is not None and run.row_count != report.file_rows:
            evidence.append(f"row_count {run.row_count}, the file uploaded has {report.file_rows} data lines")
        if run.status == "COMPLETED" and run.row_count == 0:
            evidence.append("no rows: the report reconciled nothing")
        if evidence:
            witnesses.append(Witness(run.id, (run.describe(), *evidence)))
    return _result(
        "report_run_completed", "the report's run did not complete, or its row counts do not add up", witnesses
    )


def report_classes_match_truth(truth: Mapping[str, Any], report: ReportSnapshot) -> InvariantResult:
    """Per class, the provider ids the run's findings name are exactly those the simulator's truth planted
    in it (precision and recall 1.0): every planted difference found in its class, nothing else found.
    A witness is a provider id found in a class the truth did not plant it in, or planted and not found."""
    planted, found = planted_drift(truth), _found_by_class(report)
    witnesses = []
    if report.run is not None and not planted:
        witnesses.append(Witness("settlement", ("the simulator planted no drift: the run proves nothing",)))
    for difference in sorted(set(planted) | set(found)):
        planted_here, found_here = planted.get(difference, {}), found.get(difference, {})
        for provider_id in sorted(set(found_here) - set(planted_here)):
            elsewhere = [name for name, ids in planted.items() if provider_id in ids]
            witnesses.append(
                Witness(
                    provider_id,
                    (
                        f"found as {difference}, which the truth did not plant"
                        + (f" (planted as {', '.join(sorted(elsewhere))})" if elsewhere else ""),
                        *(finding.describe() for finding in found_here[provider_id]),
                    ),
                )
            )
        for provider_id in sorted(set(planted_here) - set(found_here)):
            witnesses.append(Witness(provider_id, (f"planted as {difference}, not found", *planted_here[provider_id])))
    return _result(
        "report_classes_match_truth",
        "a class of the run's findings differs from the drift the simulator planted (precision or recall below 1)",
        witnesses,
    )


def report_cases_for_risky_classes(report: ReportSnapshot) -> InvariantResult:
    """Every finding of a class that needs a person (all but TIMING_MISMATCH) points at an existing case
    of its class (on its payment, when it is about one); no TIMING_MISMATCH finding has a case, and no
    case of that class exists."""
    cases = {case.id: case for case in report.cases}
    witnesses = []
    for finding in report.findings:
        subject = f"{finding.provider_id or '-'} #{finding.id}"
        if finding.difference in SELF_CLOSING_CLASSES:
            if finding.case_id is not None:
                witnesses.append(Witness(subject, (finding.describe(), "a self-closing class with a case")))
            continue
        case = None if finding.case_id is None else cases.get(finding.case_id)
        if case is None:
            missing = "no case" if finding.case_id is None else f"case {finding.case_id} does not exist"
            witnesses.append(Witness(subject, (finding.describe(), missing)))
        elif case.kind != finding.difference or (
            finding.payment_id is not None and case.payment_id != finding.payment_id
        ):
            witnesses.append(
                Witness(subject, (finding.describe(), f"its case is {case.kind} on payment {case.payment_id}"))
            )
    witnesses += [
        Witness(case.id, (f"a case of the self-closing class {case.kind}, {case.status}",))
        for case in report.cases
        if case.kind in SELF_CLOSING_CLASSES
    ]
    return _result(
        "report_cases_for_risky_classes",
        "a finding a person must decide has no case of its class, or a self-closing one has a case",
        witnesses,
    )


def report_replay_idempotent(report: ReportSnapshot) -> InvariantResult:
    """The same file uploaded again was answered `replayed`, with the first upload's run, and wrote
    nothing: report_runs, report_chunks, report_rows, report_findings and cases hold as many rows after
    it as before."""
    witnesses = []
    if report.run is not None:
        evidence = []
        if report.replay_error is not None:
            evidence.append(f"the second upload failed: {report.replay_error}")
        else:
            if not report.replayed:
                evidence.append(f"the second upload was not replayed: it made run {report.replay_run_id}")
            elif report.replay_run_id != report.run.id:
                evidence.append(f"the second upload replayed run {report.replay_run_id}, not {report.run.id}")
            for table in REPORT_TABLES:
                before, after = report.counts_before_replay.get(table), report.counts_after_replay.get(table)
                if before != after:
                    evidence.append(f"{table}: {before} rows before the second upload, {after} after")
        if evidence:
            witnesses.append(Witness(report.run.id, tuple(evidence)))
    return _result(
        "report_replay_idempotent", "uploading the same report again did not replay its run, or wrote rows", witnesses
    )


def no_payout_posted_twice(report: ReportSnapshot) -> InvariantResult:
    """Each payout (`payout:<provider>:<payout id>`) posted at most one ledger entry: the witness is the
    payout, with its entries."""
    entries: dict[str, set[str]] = defaultdict(set)
    for entry_id, event_key in report.payout_entries:
        if event_key.startswith(PAYOUT_EVENT_PREFIX):
            # <provider>:<payout id>, whatever a key says after them (one payout, however its keys differ)
            entries[":".join(event_key.split(":")[1:3])].add(entry_id)
    return _result(
        "no_payout_posted_twice",
        "a payout posted more than one ledger entry",
        (
            Witness(payout, (f"{len(ids)} entries: {', '.join(sorted(ids))}",))
            for payout, ids in entries.items()
            if len(ids) > 1
        ),
    )


def check_report(truth: Mapping[str, Any], report: ReportSnapshot) -> list[InvariantResult]:
    """The reconciliation's invariants, in the order a report shows them."""
    return [
        report_run_completed(report),
        report_classes_match_truth(truth, report),
        report_cases_for_risky_classes(report),
        report_replay_idempotent(report),
        no_payout_posted_twice(report),
    ]


def check(
    history: History,
    truth: Mapping[str, Any],
    snapshot: Snapshot,
    stream: Sequence[BrokerMessage],
    unknown_sla_s: float,
) -> list[InvariantResult]:
    """Every invariant, in the order a report shows them."""
    payments = history.of_operation(CREATE_PAYMENT)  # the payment invariants judge payments' calls only
    return [
        no_double_charge(truth, snapshot),
        final_state_matches_truth(truth, snapshot),
        no_backward_transition(snapshot),
        ledger_balanced(snapshot),
        outbox_published_once_in_order(snapshot, stream),
        unknown_resolved_within_sla(snapshot, unknown_sla_s),
        ok_is_durable(payments, snapshot),
        charged_as_asked(payments, truth, snapshot),
        fail_had_no_effect(payments, truth, snapshot),
        every_charge_known(truth, snapshot),
        no_needless_case(truth, snapshot),
        exposures_match_ledger(snapshot),
        every_move_announced(snapshot),
        made_progress(payments, truth),
        never_refunded_more_than_captured(snapshot),
        refund_posted_once(snapshot),
        refund_matches_truth(truth, snapshot),
        refunds_converged(snapshot),
        refund_ok_is_durable(history, snapshot),
    ]
