"""The chaos checker (chaos/checker.py) and its history (chaos/history.py): each invariant passes on a
consistent run, and fails on a run that breaks it, naming exactly the witness."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import pytest

from chaos.checker import (
    BrokerMessage,
    CaseRow,
    ExposureRow,
    FindingRow,
    InvariantResult,
    LedgerLineRow,
    OutboxRow,
    PaymentRow,
    RefundRow,
    RefundTransitionRow,
    ReportRunRow,
    ReportSnapshot,
    Snapshot,
    TransitionRow,
    breaker_answer_latencies,
    breaker_cycles,
    breaker_fails_fast,
    check,
    check_report,
    converged,
    made_progress,
    no_payout_posted_twice,
    percentile,
    report_cases_for_risky_classes,
    report_class_scores,
    report_classes_match_truth,
    report_replay_idempotent,
    report_run_completed,
)
from chaos.history import CREATE_PAYMENT, REFUND_PAYMENT, History, Kind, Operation
from server.domain.corrections import CORRECTION_EVENT
from server.domain.events import PAYMENT_RECORDED, PAYMENT_STATE_CHANGED
from server.domain.ledger import payment_postings, refund_postings
from server.domain.payment_states import PaymentState
from server.domain.refund_states import payment_state_after_refunds


def test_a_history_survives_json_lines() -> None:
    history = History()
    history.invoke("c1", "key-1", amount="10.00", currency="EUR", time_s=1.0)
    history.ok("c1", "key-1", "pay-1", "PENDING", time_s=1.5)
    history.invoke("c2", "key-2", amount="700", currency="JPY", time_s=1.1)
    history.info("c2", "key-2", "DEADLINE_EXCEEDED", time_s=3.1)
    history.invoke("c2", "key-2", time_s=3.2)
    history.fail("c2", "key-2", "INVALID_ARGUMENT", time_s=3.3)
    again = History.from_jsonl(history.to_jsonl())
    assert again == history
    assert [operation.kind for operation in again.by_key()["key-2"]] == [Kind.INVOKE, Kind.INFO, Kind.INVOKE, Kind.FAIL]
    assert again.of_kind(Kind.OK) == [Operation(Kind.OK, "c1", "key-1", 1.5, payment_id="pay-1", state="PENDING")]


@pytest.mark.parametrize(
    "line", ['{"kind": "maybe", "process": "c", "idempotency_key": "k", "time_s": 1}', "[1]", "{not json"]
)
def test_a_line_that_is_not_an_operation_is_refused_with_its_number(line: str) -> None:
    with pytest.raises(ValueError, match="line 2"):
        History.from_jsonl('{"kind": "invoke", "process": "c", "idempotency_key": "k", "time_s": 0}\n' + line)


# -- the checker --------------------------------------------------------------------------------

CLIENT = "chaos-unit"
MERCHANT = f"merchant_payable:{CLIENT}"
UNKNOWN_SLA_S = 60.0


class World:
    """A run written by hand: what clients were told, the provider's truth, Ballast's database and the
    broker's stream; consistent until a spec breaks it. Payments move along the domain's machine and post
    what server/domain/ledger.py posts; every move writes one outbox event, published once, in order."""

    def __init__(self) -> None:
        self.history = History()
        self.provider: list[dict[str, Any]] = []
        self.payments: list[PaymentRow] = []
        self.transitions: list[TransitionRow] = []
        self.lines: list[LedgerLineRow] = []
        self.outbox: list[OutboxRow] = []
        self.cases: list[CaseRow] = []
        self.stream: list[BrokerMessage] = []
        self._clock = 0.0
        #: when the snapshot is read: after the last move unless a spec says otherwise
        self.taken_at_s: float | None = None
        #: the exposures projection as a spec breaks it (None: as the consumer would leave it)
        self.exposure_rows: list[ExposureRow] | None = None
        self.refunds: list[RefundRow] = []
        self.refund_transitions: list[RefundTransitionRow] = []
        self.provider_refunds: list[dict[str, Any]] = []

    def payment(
        self,
        path: Sequence[str],
        provider_status: str | None,
        *,
        amount: str = "10.00",
        currency: str = "EUR",
        told: str | None = None,
    ) -> str:
        """A payment moved RECORDED -> path..., the provider's record of it (None: it never had it), and
        its client told `told` (default: the first state of the path)."""
        payment_id = str(uuid.uuid4())
        key = f"key-{payment_id}"
        process = f"client-{len(self.payments) % 4}"
        self._clock += 1
        self.history.invoke(process, key, amount=amount, currency=currency, time_s=self._clock)
        self.history.ok(process, key, payment_id, told or path[0], time_s=self._clock + 0.5)
        self.announce(f"recorded-{payment_id}", payment_id, PAYMENT_RECORDED)
        at = PaymentState.RECORDED
        for name in path:
            self.move(payment_id, at, PaymentState(name), Decimal(amount), currency)
            at = PaymentState(name)
        self.payments.append(PaymentRow(payment_id, key, Decimal(amount), currency, at.value))
        if provider_status is not None:
            self.provider.append(
                {
                    "id": f"pi_{len(self.provider)}",
                    "idempotency_key": payment_id,
                    "final_status": provider_status,
                    "amount": amount,
                    "currency": currency,
                }
            )
        return payment_id

    def move(self, payment_id: str, at: PaymentState, to: PaymentState, amount: Decimal, currency: str) -> None:
        sequence = len(self.transitions) + 1
        self._clock += 1
        self.transitions.append(
            TransitionRow(payment_id, sequence, at.value, to.value, "MOVE", occurred_at_s=self._clock)
        )
        for posting in payment_postings(uuid.UUID(payment_id), CLIENT, amount, currency, at, to):
            entry_id = posting.event_key
            self.lines += [
                LedgerLineRow(entry_id, payment_id, line.account, line.currency_code, line.amount)
                for line in posting.lines
            ]
        self.announce(f"event-{sequence}", payment_id, PAYMENT_STATE_CHANGED)

    def announce(self, event_id: str, payment_id: str, topic: str) -> None:
        """An outbox event about the payment, published once, in the order it was written."""
        self.outbox.append(OutboxRow(event_id, payment_id, len(self.outbox) + 1, published=True, topic=topic))
        self.stream.append(BrokerMessage(event_id, payment_id, len(self.stream) + 1))

    def exposures(self) -> list[ExposureRow]:
        """What the exposures projection holds once every event is consumed: the undecided payments'
        amounts in flight, and every account's ledger balance settled, per currency."""
        in_flight: dict[str, Decimal] = {}
        for payment in self.payments:
            open_amount = payment.amount if payment.state in {"RECORDED", "PENDING", "UNKNOWN"} else Decimal(0)
            in_flight[payment.currency] = in_flight.get(payment.currency, Decimal(0)) + open_amount
        balances: dict[tuple[str, str], Decimal] = {}
        for line in self.lines:
            balances[(line.account, line.currency)] = (
                balances.get((line.account, line.currency), Decimal(0)) + line.amount
            )
        rows = [
            ExposureRow(MERCHANT, currency, in_flight[currency], balances.pop((MERCHANT, currency), Decimal(0)))
            for currency in sorted(in_flight)
        ]
        return rows + [
            ExposureRow(account, currency, Decimal(0), settled)
            for (account, currency), settled in sorted(balances.items())
        ]

    def snapshot(self) -> Snapshot:
        return Snapshot(
            self.payments,
            self.transitions,
            self.lines,
            self.outbox,
            self.cases,
            self.taken_at_s or self._clock,
            self.exposure_rows if self.exposure_rows is not None else self.exposures(),
            self.refunds,
            self.refund_transitions,
        )

    def truth(self) -> dict[str, Any]:
        return {"seed": 7, "profile": "flaky", "payments": self.provider, "refunds": self.provider_refunds}

    def refund(self, payment_id: str, amount: str, path: Sequence[str], provider_status: str | None) -> str:
        """A refund of the payment moved RECORDED -> path..., its client told the first state of the path,
        the provider's record of it (None: it never had it); a SUCCEEDED one posts its reversal and moves
        its payment as Ballast does, and the payment's refund totals follow."""
        payment = next(p for p in self.payments if p.id == payment_id)
        refund_id = str(uuid.uuid4())
        key = f"{payment.idempotency_key}-r{sum(r.payment_id == payment_id for r in self.refunds)}"
        process = f"client-{len(self.refunds) % 4}"
        self._clock += 1
        self.history.invoke(
            process, key, amount=amount, currency=payment.currency, time_s=self._clock,
            operation=REFUND_PAYMENT, payment_id=payment_id,
        )  # fmt: skip
        self.history.ok(
            process, key, payment_id, path[0], time_s=self._clock + 0.5, operation=REFUND_PAYMENT, refund_id=refund_id
        )
        at = "RECORDED"
        for name in path:
            self.refund_transitions.append(RefundTransitionRow(refund_id, len(self.refund_transitions) + 1, at, name))
            at = name
        value = Decimal(amount)
        self.refunds.append(RefundRow(refund_id, payment_id, key, value, payment.currency, at))
        held = payment.refund_held + (value if at not in ("FAILED", "REJECTED", "EXPIRED") else Decimal(0))
        self.replace_payment(payment_id, refund_held=held)
        if at == "SUCCEEDED":
            for posting in refund_postings(
                uuid.UUID(refund_id), uuid.UUID(payment_id), CLIENT, value, payment.currency
            ):
                self.lines += [
                    LedgerLineRow(
                        posting.event_key, payment_id, line.account, line.currency_code, line.amount, posting.event_key
                    )
                    for line in posting.lines
                ]
            refunded = payment.refunded + value
            state = PaymentState(payment.state)
            after = payment_state_after_refunds(state, payment.amount, refunded)
            if after is not state:
                self.move(payment_id, state, after, payment.amount, payment.currency)
            self.replace_payment(payment_id, refunded=refunded, state=after.value)
            if after is PaymentState.REFUNDED:
                next(p for p in self.provider if p["idempotency_key"] == payment_id)["final_status"] = "refunded"
        if provider_status is not None:
            self.provider_refunds.append(
                {
                    "id": f"re_{len(self.provider_refunds)}",
                    "idempotency_key": refund_id,
                    "payment": next(p["id"] for p in self.provider if p["idempotency_key"] == payment_id),
                    "final_status": provider_status,
                    "amount": amount,
                    "currency": payment.currency,
                }
            )
        return refund_id

    def results(self) -> dict[str, InvariantResult]:
        return {
            result.name: result
            for result in check(self.history, self.truth(), self.snapshot(), self.stream, UNKNOWN_SLA_S)
        }

    def broken(self) -> dict[str, list[str]]:
        """Each failing invariant's witnesses' subjects."""
        return {name: result.subjects for name, result in self.results().items() if not result.passed}

    def replace_payment(self, payment_id: str, **changes: Any) -> None:
        self.payments = [dataclasses.replace(p, **changes) if p.id == payment_id else p for p in self.payments]


def consistent_world() -> World:
    world = World()
    world.payment(["PENDING", "SUCCEEDED"], "succeeded")
    world.payment(["SUCCEEDED"], "succeeded", amount="1200", currency="JPY")
    world.payment(["UNKNOWN", "FAILED"], "declined")
    world.payment(["PENDING", "FAILED"], "failed")
    world.payment(["SUCCEEDED", "REFUND_PENDING", "REFUNDED"], "refunded", told="SUCCEEDED")
    world.payment(["SUCCEEDED", "REFUND_PENDING", "SUCCEEDED"], "succeeded")
    world.payment(["EXPIRED"], None)
    world.payment(["REJECTED"], None)
    return world


def test_a_consistent_run_keeps_every_invariant() -> None:
    world = consistent_world()
    results = world.results()
    assert list(results) == [
        "no_double_charge",
        "final_state_matches_truth",
        "no_backward_transition",
        "ledger_balanced",
        "outbox_published_once_in_order",
        "unknown_resolved_within_sla",
        "ok_is_durable",
        "charged_as_asked",
        "fail_had_no_effect",
        "every_charge_known",
        "no_needless_case",
        "exposures_match_ledger",
        "every_move_announced",
        "made_progress",
        "never_refunded_more_than_captured",
        "refund_posted_once",
        "refund_matches_truth",
        "refunds_converged",
        "refund_ok_is_durable",
    ]
    assert world.broken() == {}


def test_a_key_charged_twice_at_the_provider_is_named() -> None:
    world = consistent_world()
    twice = world.payment(["SUCCEEDED"], "succeeded")
    charged = world.provider[-1]["id"]
    world.provider.append({**world.provider[-1], "id": "pi_again"})
    world.provider.append({**world.provider[-1], "id": "pi_declined", "final_status": "declined"})  # no charge
    result = world.results()["no_double_charge"]
    assert result.subjects == [twice]
    assert result.witnesses[0].evidence == (
        f"provider {charged} succeeded 10.00 EUR",
        "provider pi_again succeeded 10.00 EUR",
    )
    assert world.broken() == {"no_double_charge": [twice]}


def test_a_client_key_charged_through_two_payments_is_named() -> None:
    world = consistent_world()
    first = world.payment(["SUCCEEDED"], "succeeded")
    second = world.payment(["SUCCEEDED"], "succeeded")
    key = f"key-{first}"
    world.replace_payment(second, idempotency_key=key)
    result = world.results()["no_double_charge"]
    assert result.subjects == [key]
    assert {line.split(":")[0] for line in result.witnesses[0].evidence} == {f"payment {first}", f"payment {second}"}


def test_a_wrong_final_state_without_an_open_case_is_named_and_one_with_a_case_is_not() -> None:
    world = consistent_world()
    wrong = world.payment(["PENDING", "FAILED"], "succeeded")
    charged = world.provider[-1]["id"]
    explained = world.payment(["PENDING", "FAILED"], "succeeded")
    world.cases.append(CaseRow("case-1", "CONTRADICTORY_EVIDENCE", "OPEN", explained))
    world.cases.append(CaseRow("case-2", "CONTRADICTORY_EVIDENCE", "RESOLVED", wrong))
    never_sent = world.payment(["SUCCEEDED"], None)
    result = world.results()["final_state_matches_truth"]
    assert sorted(result.subjects) == sorted([wrong, never_sent])
    witness = next(w for w in result.witnesses if w.subject == wrong)
    assert witness.evidence[:2] == ("ballast FAILED", f"provider {charged} succeeded 10.00 EUR")
    assert witness.timeline == ("RECORDED -> PENDING (MOVE)", "PENDING -> FAILED (MOVE)")


def test_a_backward_move_is_named_with_its_timeline() -> None:
    world = consistent_world()
    backward = world.payment(["PENDING", "SUCCEEDED"], "succeeded")
    world.transitions.append(TransitionRow(backward, 100, "SUCCEEDED", "PENDING", "ACCEPTED"))
    world.replace_payment(backward, state="PENDING")
    result = world.results()["no_backward_transition"]
    assert result.subjects == [backward]
    assert result.witnesses[0].evidence == ("move #100 SUCCEEDED -> PENDING is not allowed",)
    assert result.witnesses[0].timeline[-1] == "SUCCEEDED -> PENDING (ACCEPTED)"


def test_a_correction_the_table_allows_is_not_backward_and_one_it_does_not_is() -> None:
    world = consistent_world()
    corrected = world.payment(["PENDING", "FAILED"], "succeeded")
    world.transitions.append(TransitionRow(corrected, 100, "FAILED", "SUCCEEDED", CORRECTION_EVENT))
    world.replace_payment(corrected, state="SUCCEEDED")
    unlisted = world.payment(["PENDING", "FAILED"], "failed")
    world.transitions.append(TransitionRow(unlisted, 101, "FAILED", "PENDING", CORRECTION_EVENT))
    world.replace_payment(unlisted, state="PENDING")
    assert world.results()["no_backward_transition"].subjects == [unlisted]


def test_a_move_left_out_of_a_timeline_is_named() -> None:
    world = consistent_world()
    gap = world.payment(["PENDING", "SUCCEEDED"], "succeeded")
    world.transitions = [t for t in world.transitions if not (t.payment_id == gap and t.to_state == "PENDING")]
    result = world.results()["no_backward_transition"]
    assert result.subjects == [gap]
    (move,) = (t for t in world.transitions if t.payment_id == gap)
    assert result.witnesses[0].evidence == (f"move #{move.sequence} starts from PENDING, the payment was RECORDED",)


def test_an_unbalanced_entry_is_named_by_its_entry() -> None:
    world = consistent_world()
    payment_id = world.payment(["SUCCEEDED"], "succeeded")
    entry = f"payment:{payment_id}:captured"
    world.lines = [
        dataclasses.replace(line, amount=Decimal("-9.99")) if line.entry_id == entry and line.amount < 0 else line
        for line in world.lines
    ]
    result = world.results()["ledger_balanced"]
    assert result.subjects == [f"entry {entry}"]
    assert result.witnesses[0].evidence == ("EUR lines sum to 0.01", f"payment {payment_id}")


def test_a_capture_posted_for_a_failed_payment_or_missing_for_a_succeeded_one_is_named() -> None:
    world = consistent_world()
    missing = world.payment(["SUCCEEDED"], "succeeded", amount="3.00")
    world.lines = [line for line in world.lines if line.payment_id != missing]
    posted = world.payment(["PENDING", "FAILED"], "failed", amount="4.00")
    world.lines += [
        LedgerLineRow("stray", posted, "provider_clearing", "EUR", Decimal("4.00")),
        LedgerLineRow("stray", posted, f"merchant_payable:{CLIENT}", "EUR", Decimal("-4.00")),
    ]
    result = world.results()["ledger_balanced"]
    assert sorted(result.subjects) == sorted([missing, posted])
    assert next(w for w in result.witnesses if w.subject == posted).evidence == (
        "ballast FAILED 4.00 EUR",
        "provider_clearing 4.00",
    )


def test_a_balanced_entry_of_no_payment_that_moves_clearing_is_named_by_its_currency() -> None:
    world = consistent_world()
    world.lines += [
        LedgerLineRow("settlement", None, "provider_clearing", "JPY", Decimal("-500")),
        LedgerLineRow("settlement", None, "bank", "JPY", Decimal("500")),
    ]
    result = world.results()["ledger_balanced"]
    assert result.subjects == ["JPY"]
    assert result.witnesses[0].evidence == ("provider_clearing 700, succeeded 1200",)


def test_a_lost_event_is_named() -> None:
    world = consistent_world()
    lost_on_the_way = world.outbox[3].id
    world.stream = [message for message in world.stream if message.event_id != lost_on_the_way]
    never = world.outbox[5]
    world.outbox[5] = dataclasses.replace(never, published=False)
    world.stream = [message for message in world.stream if message.event_id != never.id]
    result = world.results()["outbox_published_once_in_order"]
    assert result.subjects == sorted([lost_on_the_way, never.id])
    evidence = {w.subject: w.evidence[-1] for w in result.witnesses}
    assert evidence == {lost_on_the_way: "marked published, never on the stream", never.id: "never published"}


def test_a_duplicated_or_stray_event_is_named() -> None:
    world = consistent_world()
    twice = world.stream[2]
    world.stream.append(dataclasses.replace(twice, sequence=len(world.stream) + 1))
    world.stream.append(BrokerMessage("event-from-nowhere", "somewhere", len(world.stream) + 1))
    result = world.results()["outbox_published_once_in_order"]
    assert result.subjects == sorted([twice.event_id, "event-from-nowhere"])
    assert {w.subject: w.evidence[-1] for w in result.witnesses}[twice.event_id] == "2 copies on the stream"


def test_an_event_ahead_of_an_earlier_one_of_its_aggregate_is_named() -> None:
    world = consistent_world()
    payment_id = world.payment(["PENDING", "SUCCEEDED"], "succeeded")
    moves = [row for row in world.outbox if row.message_key == payment_id and row.topic == PAYMENT_STATE_CHANGED]
    first, second = (next(m for m in world.stream if m.event_id == row.id) for row in moves)
    earlier, later = (row.position for row in moves)
    swapped = {first.event_id: second.sequence, second.event_id: first.sequence}
    world.stream = [dataclasses.replace(m, sequence=swapped.get(m.event_id, m.sequence)) for m in world.stream]
    result = world.results()["outbox_published_once_in_order"]
    assert result.subjects == [second.event_id]
    assert result.witnesses[0].evidence[1] == f"written after {first.event_id} (position {later} > {earlier})"


def test_a_lost_ok_is_named() -> None:
    world = consistent_world()
    lost = world.payment(["PENDING", "SUCCEEDED"], "succeeded")
    world.payments = [p for p in world.payments if p.id != lost]
    world.transitions = [t for t in world.transitions if t.payment_id != lost]
    world.lines = [line for line in world.lines if line.payment_id != lost]
    world.provider = [p for p in world.provider if p["idempotency_key"] != lost]
    world.outbox = [row for row in world.outbox if row.message_key != lost]
    world.stream = [m for m in world.stream if m.message_key != lost]
    result = world.results()["ok_is_durable"]
    assert world.broken() == {"ok_is_durable": [lost]}
    assert result.witnesses[0].evidence[1] == "no such payment in the database"


def test_an_ok_whose_payment_went_back_before_what_the_client_was_told_is_named() -> None:
    world = consistent_world()
    told_succeeded = world.payment(["PENDING"], "pending", told="SUCCEEDED")
    result = world.results()["ok_is_durable"]
    assert result.subjects == [told_succeeded]
    assert result.witnesses[0].evidence[1] == "the payment holds PENDING, not reachable from SUCCEEDED"


def test_an_ok_a_recorded_correction_overturned_is_not_lost() -> None:
    world = consistent_world()
    corrected = world.payment(["SUCCEEDED"], "failed")
    world.transitions.append(TransitionRow(corrected, 100, "SUCCEEDED", "FAILED", CORRECTION_EVENT))
    world.announce("event-correction", corrected, PAYMENT_STATE_CHANGED)
    world.lines += [
        LedgerLineRow("reversal", corrected, "provider_clearing", "EUR", Decimal("-10.00")),
        LedgerLineRow("reversal", corrected, f"merchant_payable:{CLIENT}", "EUR", Decimal("10.00")),
    ]
    world.replace_payment(corrected, state="FAILED")
    assert world.broken() == {}
    world.transitions[-1] = dataclasses.replace(world.transitions[-1], event="FAILED")
    assert world.broken() == {"no_backward_transition": [corrected], "ok_is_durable": [corrected]}


def test_an_unknown_left_past_its_sla_without_a_case_is_named() -> None:
    world = consistent_world()
    late = world.payment(["UNKNOWN", "SUCCEEDED"], "succeeded")
    escalated = world.payment(["UNKNOWN", "FAILED"], "failed")
    stuck = world.payment(["UNKNOWN"], "pending")
    waiting = world.payment(["UNKNOWN"], "pending")
    world.cases.append(CaseRow("case-1", "OUTCOME_UNKNOWN", "OPEN", stuck))  # explains its final state only
    times = {late: (0.0, 61.0), escalated: (0.0, 200.0), stuck: (0.0, None), waiting: (990.0, None)}
    for index, move in enumerate(world.transitions):
        if move.payment_id in times:
            entered, left = times[move.payment_id]
            world.transitions[index] = dataclasses.replace(
                move, occurred_at_s=entered if move.to_state == "UNKNOWN" else left
            )
    world.taken_at_s = 1000.0
    world.cases.append(CaseRow("case-2", "OUTCOME_UNKNOWN", "RESOLVED", escalated, opened_at_s=59.0))
    result = world.results()["unknown_resolved_within_sla"]
    assert result.subjects == sorted([late, stuck])
    evidence = {witness.subject: witness.evidence[1] for witness in result.witnesses}
    assert evidence == {late: "left for SUCCEEDED after 61s", stuck: "still UNKNOWN"}


def test_a_charge_of_another_amount_or_currency_is_named() -> None:
    world = consistent_world()
    overcharged = world.payment(["SUCCEEDED"], "succeeded", amount="10.00")
    world.provider[-1] = {**world.provider[-1], "amount": "100.00"}
    other_currency = world.payment(["SUCCEEDED"], "succeeded", amount="10.00", currency="EUR")
    world.provider[-1] = {**world.provider[-1], "currency": "USD"}
    result = world.results()["charged_as_asked"]
    assert sorted(result.subjects) == sorted([overcharged, other_currency])
    witness = next(w for w in result.witnesses if w.subject == overcharged)
    assert witness.evidence[0] == "ballast 10.00 EUR"
    assert witness.evidence[1].endswith("succeeded 100.00 EUR")


def test_a_payment_recorded_for_another_amount_than_its_client_asked_is_named() -> None:
    world = consistent_world()
    payment_id = world.payment(["SUCCEEDED"], "succeeded", amount="10.00")
    world.replace_payment(payment_id, amount=Decimal("1.00"))
    world.provider[-1] = {**world.provider[-1], "amount": "1.00"}
    result = world.results()["charged_as_asked"]
    assert result.subjects == [payment_id]
    assert result.witnesses[0].evidence == (f"asked 10.00 EUR under key key-{payment_id}", "ballast recorded 1.00 EUR")


def test_a_refused_call_that_took_money_is_named_by_its_key() -> None:
    world = consistent_world()
    refused = world.payment(["SUCCEEDED"], "succeeded")
    key = f"key-{refused}"
    world.history = History(op for op in world.history if op.idempotency_key != key)
    world.history.invoke("client-9", key, amount="10.00", currency="EUR", time_s=90.0)
    world.history.fail("client-9", key, "INVALID_ARGUMENT", message="amount: nope", time_s=90.1)
    failed_cleanly = world.payment(["PENDING", "FAILED"], "failed")
    clean_key = f"key-{failed_cleanly}"
    world.history = History(op for op in world.history if op.idempotency_key != clean_key)
    world.history.invoke("client-9", clean_key, amount="10.00", currency="EUR", time_s=91.0)
    world.history.fail("client-9", clean_key, "FAILED_PRECONDITION", time_s=91.1)
    result = world.results()["fail_had_no_effect"]
    assert result.subjects == [key]
    assert result.witnesses[0].evidence[0] == "every call under this key was refused"


def test_an_indeterminate_call_that_took_money_is_not_a_refusal() -> None:
    world = consistent_world()
    landed = world.payment(["SUCCEEDED"], "succeeded")
    key = f"key-{landed}"
    world.history = History(op for op in world.history if op.idempotency_key != key)
    world.history.invoke("client-9", key, amount="10.00", currency="EUR", time_s=90.0)
    world.history.info("client-9", key, "DEADLINE_EXCEEDED", time_s=93.0)
    assert world.results()["fail_had_no_effect"].passed


def _breaker_history(
    *latencies_s: float, message: str = "provider x was not asked: the circuit breaker for x is open"
) -> History:
    history = History()
    for number, latency_s in enumerate(latencies_s):
        history.invoke(f"client-{number}", f"key-{number}", amount="1.00", currency="EUR", time_s=10.0)
        history.info(f"client-{number}", f"key-{number}", "UNAVAILABLE", message=message, time_s=10.0 + latency_s)
    return history


def test_slow_answers_from_an_open_breaker_are_named_when_its_p99_is_over_the_bound() -> None:
    fast = _breaker_history(0.002, 0.004, 0.01)
    assert breaker_fails_fast(fast, 0.5, expected=True).passed
    assert breaker_answer_latencies(fast) == [0.002, 0.004, 0.01]
    slow = _breaker_history(0.002, 1.7)
    result = breaker_fails_fast(slow, 0.5, expected=True)
    assert result.subjects == ["key-1"]
    assert result.witnesses[0].evidence == ("client-1: answered by an open breaker after 1.700s",)
    # the bound is on the p99: one pause among two hundred fast answers is not a breaker that waits
    assert breaker_fails_fast(_breaker_history(*[0.003] * 199, 1.7), 0.5, expected=True).passed
    assert not breaker_fails_fast(_breaker_history(*[0.003] * 197, 1.7, 1.7, 1.7), 0.5, expected=True).passed


def test_a_breaker_the_scenario_expected_to_open_that_never_did_is_named() -> None:
    waited = _breaker_history(1.5, message="deadline exceeded: the outcome is unknown")
    assert breaker_fails_fast(waited, 0.5, expected=False).passed
    assert breaker_fails_fast(waited, 0.5, expected=True).subjects == ["breaker"]


def test_calls_pair_each_invoke_with_its_process_completion() -> None:
    history = History()
    history.invoke("a", "k1", time_s=1.0)
    history.invoke("b", "k2", time_s=1.1)
    history.ok("b", "k2", "p2", "PENDING", time_s=1.3)
    history.info("a", "k1", "UNAVAILABLE", time_s=1.4)
    history.invoke("a", "k1", time_s=2.0)  # never completed: the run stopped
    assert [(i.time_s, d.time_s) for i, d in history.calls()] == [(1.1, 1.3), (1.0, 1.4)]


@pytest.mark.parametrize(("fraction", "expected"), [(0.5, 50.0), (0.99, 99.0), (1.0, 100.0), (0.0, 1.0)])
def test_percentiles_are_nearest_rank(fraction: float, expected: float) -> None:
    assert percentile([float(n) for n in range(100, 0, -1)], fraction) == expected
    assert percentile([], fraction) is None


def test_a_charge_no_payment_of_ballasts_sent_is_named_by_the_providers_id() -> None:
    world = consistent_world()
    world.provider.append(
        {
            "id": "pi_stray",
            "idempotency_key": "not-a-payment",
            "final_status": "succeeded",
            "amount": "5.00",
            "currency": "EUR",
        }
    )
    result = world.results()["every_charge_known"]
    assert result.subjects == ["pi_stray"]
    assert result.witnesses[0].evidence == ("provider pi_stray succeeded 5.00 EUR", "under key not-a-payment")


def test_a_case_left_open_though_the_provider_answers_plainly_is_named_and_one_on_a_pending_payment_is_not() -> None:
    world = consistent_world()
    needless = world.payment(["PENDING", "SUCCEEDED"], "succeeded")
    world.cases.append(CaseRow("case-1", "CONTRADICTORY_EVIDENCE", "OPEN", needless))
    pending = world.payment(["PENDING"], "pending")
    world.cases.append(CaseRow("case-2", "CONTRADICTORY_EVIDENCE", "OPEN", pending))
    resolved = world.payment(["PENDING", "SUCCEEDED"], "succeeded")
    world.cases.append(CaseRow("case-3", "CONTRADICTORY_EVIDENCE", "RESOLVED", resolved))
    result = world.results()["no_needless_case"]
    assert result.subjects == [needless]
    assert result.witnesses[0].evidence[0] == "CONTRADICTORY_EVIDENCE case case-1 open"


def test_an_exposure_that_lost_an_event_is_named_by_its_account_and_currency() -> None:
    world = consistent_world()
    rows = world.exposures()
    eur = next(row for row in rows if row.currency == "EUR")
    # a captured posting never consumed: settled lags the ledger by one payment
    world.exposure_rows = [
        dataclasses.replace(eur, settled=eur.settled + Decimal("10.00")) if row is eur else row for row in rows
    ]
    assert world.results()["exposures_match_ledger"].subjects == [f"{MERCHANT} EUR"]


def test_money_left_in_flight_for_a_decided_payment_is_named_by_its_currency() -> None:
    world = consistent_world()
    rows = world.exposures()
    world.exposure_rows = [
        dataclasses.replace(row, in_flight=row.in_flight + Decimal("1200"))
        if (row.account, row.currency) == (MERCHANT, "JPY")
        else row
        for row in rows
    ]
    result = world.results()["exposures_match_ledger"]
    assert result.subjects == ["JPY"]
    assert result.witnesses[0].evidence == ("in flight 1200, undecided payments ask 0",)


def test_a_run_that_did_not_settle_names_its_undecided_payments_and_what_else_was_left() -> None:
    world = consistent_world()
    assert converged(world.snapshot(), {"undecided_in_ballast": 0, "events_unconsumed": 0}, 90).passed
    stuck = world.payment(["UNKNOWN"], "succeeded")
    explained = world.payment(["PENDING"], "pending")
    world.cases.append(CaseRow("case-1", "UNRESOLVED_OUTCOME", "OPEN", explained))
    result = converged(world.snapshot(), {"undecided_in_ballast": 1, "events_unconsumed": 3}, 90)
    assert result.subjects == [stuck, "run"]
    assert result.witnesses[0].timeline == ("RECORDED -> UNKNOWN (MOVE)",)
    assert result.witnesses[1].evidence == ("undecided_in_ballast: 1", "events_unconsumed: 3")


def _changes(*moves: str, server: str = "server-0") -> list[dict[str, str]]:
    return [{"server": server, "old": old, "new": new} for old, new in (move.split(">") for move in moves)]


def test_a_breaker_that_cycled_twice_passes_and_one_that_never_closed_again_is_named() -> None:
    cycle = ("closed>open", "open>half_open", "half_open>closed")
    assert breaker_cycles(_changes(*cycle, *cycle), 2).passed
    # a probe that failed sends it back to open; only a close after opening counts
    stuck = _changes(*cycle, "closed>open", "open>half_open", "half_open>open")
    result = breaker_cycles(stuck, 2)
    assert result.subjects == ["breaker"]
    assert result.witnesses[0].evidence == ("1 open -> half_open -> closed cycles of the 2 expected",)
    # two replicas' cycles add up, each in its own order
    assert breaker_cycles(_changes(*cycle) + _changes(*cycle, server="server-1"), 2).passed


def test_a_move_without_its_outbox_event_and_a_payment_announced_twice_are_named() -> None:
    world = consistent_world()
    silent = world.payment(["PENDING", "SUCCEEDED"], "succeeded")
    last_move = next(row for row in reversed(world.outbox) if row.message_key == silent)
    world.outbox = [row for row in world.outbox if row.id != last_move.id]
    world.stream = [message for message in world.stream if message.event_id != last_move.id]
    twice = world.payment(["SUCCEEDED"], "succeeded")
    world.announce("recorded-again", twice, PAYMENT_RECORDED)
    result = world.results()["every_move_announced"]
    assert sorted(result.subjects) == sorted([silent, twice])
    evidence = {w.subject: w.evidence for w in result.witnesses}
    assert evidence[silent][1] == "1 payments.state_changed events for 2 moves"
    assert evidence[twice][0] == "2 payments.recorded events (1 expected)"


def test_an_exposure_row_missing_for_an_account_the_ledger_holds_money_on_is_named() -> None:
    world = consistent_world()
    world.exposure_rows = [row for row in world.exposures() if row.currency != "JPY"]
    result = world.results()["exposures_match_ledger"]
    assert result.subjects == [f"{MERCHANT} JPY", "provider_clearing JPY"]
    assert result.witnesses[0].evidence == ("no exposure row, ledger -1200",)


def test_a_system_that_refused_every_call_or_never_charged_made_no_progress() -> None:
    world = consistent_world()
    assert world.results()["made_progress"].passed
    refused = History()
    for number in range(10):
        refused.invoke(f"client-{number}", f"key-{number}", amount="1.00", currency="EUR", time_s=1.0)
        refused.info(f"client-{number}", f"key-{number}", "UNAVAILABLE", time_s=1.1)
    world.history = refused
    assert world.results()["made_progress"].subjects == ["load"]
    world = consistent_world()
    world.provider = [dict(p, final_status="declined") for p in world.provider]
    assert "provider" in world.results()["made_progress"].subjects
    assert made_progress(History(), {"payments": []}).subjects == ["load", "provider"]


# -- refunds ------------------------------------------------------------------------------------


def refunded_world() -> tuple[World, str, str]:
    """The consistent world with refunds: one payment refunded in two parts (REFUNDED), one in part
    (PARTIALLY_REFUNDED) with a refund that failed beside it, one refund never at the provider."""
    world = consistent_world()
    whole = world.payment(["PENDING", "SUCCEEDED"], "succeeded", amount="30.00")
    world.refund(whole, "10.00", ["UNKNOWN", "SUCCEEDED"], "succeeded")
    world.refund(whole, "20.00", ["PENDING", "SUCCEEDED"], "succeeded")
    part = world.payment(["SUCCEEDED"], "succeeded", amount="900", currency="JPY")
    world.refund(part, "300", ["SUCCEEDED"], "succeeded")
    world.refund(part, "600", ["PENDING", "FAILED"], "failed")
    world.refund(part, "100", ["EXPIRED"], None)
    return world, whole, part


def test_refunds_that_followed_the_rules_keep_every_invariant() -> None:
    world, whole, part = refunded_world()
    states = {p.id: (p.state, p.refunded, p.refund_held) for p in world.payments}
    assert states[whole] == ("REFUNDED", Decimal("30.00"), Decimal("30.00"))
    assert states[part] == ("PARTIALLY_REFUNDED", Decimal("300"), Decimal("300"))
    assert world.broken() == {}


def test_a_history_keeps_each_calls_operation_and_the_refund_it_named() -> None:
    world, _, _ = refunded_world()
    again = History.from_jsonl(world.history.to_jsonl())
    assert again == world.history
    refunds = again.of_operation(REFUND_PAYMENT)
    assert len(refunds.by_key()) == 5
    assert all(op.refund_id for op in refunds.of_kind(Kind.OK))
    assert len(again.of_operation(CREATE_PAYMENT)) + len(refunds) == len(again)


def test_refunds_returning_more_than_was_captured_are_named_by_their_payment() -> None:
    world, whole, _ = refunded_world()
    world.refunds = [dataclasses.replace(r, state="SUCCEEDED") if r.payment_id == whole else r for r in world.refunds]
    world.refunds.append(RefundRow("extra", whole, "key-extra", Decimal("5.00"), "EUR", "SUCCEEDED"))
    result = world.results()["never_refunded_more_than_captured"]
    assert result.subjects == [whole]
    assert result.witnesses[0].evidence == (
        "refunds succeeded 35.00, captured 30.00 EUR",
        "payments.refunded 30.00, its SUCCEEDED refunds 35.00",
        "payments.refund_held 30.00, its refunds not released 35.00",
    )


def test_refund_totals_that_disagree_with_the_refunds_are_named() -> None:
    world, whole, part = refunded_world()
    world.replace_payment(whole, refunded=Decimal("10.00"))
    world.replace_payment(part, refund_held=Decimal("900"))  # the failed refund's amount never released
    result = world.results()["never_refunded_more_than_captured"]
    assert sorted(result.subjects) == sorted([whole, part])
    assert next(w for w in result.witnesses if w.subject == part).evidence == (
        "payments.refund_held 900, its refunds not released 300",
    )


def test_a_succeeded_refunds_reversal_missing_twice_or_of_another_amount_is_named_and_a_failed_ones_too() -> None:
    world, whole, part = refunded_world()
    first, second, kept, failed, _ = world.refunds
    lost = f"refund:{first.id}:succeeded"
    world.lines = [line for line in world.lines if line.event_key != lost]
    twice = f"refund:{second.id}:succeeded"
    world.lines += [dataclasses.replace(line, entry_id="again") for line in world.lines if line.event_key == twice]
    other = f"refund:{kept.id}:succeeded"
    world.lines = [
        dataclasses.replace(line, amount=line.amount * 2) if line.event_key == other else line for line in world.lines
    ]
    posted = f"refund:{failed.id}:succeeded"
    world.lines += [
        LedgerLineRow(posted, part, MERCHANT, "JPY", Decimal(600), posted),
        LedgerLineRow(posted, part, "provider_clearing", "JPY", Decimal(-600), posted),
    ]
    result = world.results()["refund_posted_once"]
    assert sorted(result.subjects) == sorted([first.id, second.id, kept.id, failed.id])
    evidence = {w.subject: w.evidence[1] for w in result.witnesses}
    assert evidence == {
        first.id: f"0 entries {lost} (1 expected)",
        second.id: f"2 entries {twice} (1 expected)",
        kept.id: f"entry {other} moves provider_clearing -600 in JPY",
        failed.id: f"1 entries {posted} for a refund that did not succeed",
    }
    # provider clearing no longer holds what succeeded, per payment
    assert sorted(world.results()["ledger_balanced"].subjects) == sorted([whole, part])


def test_a_refund_that_ends_elsewhere_than_the_provider_is_named_unless_a_case_explains_it() -> None:
    world, whole, part = refunded_world()
    wrong = world.refund(part, "50", ["PENDING", "FAILED"], "succeeded")
    never = world.refund(part, "60", ["UNKNOWN", "SUCCEEDED"], None)
    explained_payment = world.payment(["SUCCEEDED"], "succeeded")
    explained = world.refund(explained_payment, "1.00", ["PENDING", "FAILED"], "succeeded")
    world.cases.append(CaseRow("case-r", "REFUND_CONTRADICTED", "OPEN", explained_payment))
    result = world.results()["refund_matches_truth"]
    assert sorted(result.subjects) == sorted([wrong, never])
    witness = next(w for w in result.witnesses if w.subject == wrong)
    assert witness.evidence[:2] == (
        "ballast FAILED 50 JPY",
        f"provider refund {world.provider_refunds[-2]['id']} succeeded 50 JPY",
    )
    assert witness.timeline == ("RECORDED -> PENDING", "PENDING -> FAILED")
    assert next(w for w in result.witnesses if w.subject == never).evidence[1] == "provider has no such refund"
    assert whole not in result.subjects
    assert explained not in result.subjects


def test_a_refund_made_twice_or_never_asked_for_at_the_provider_is_named() -> None:
    world, _, _ = refunded_world()
    twice = world.refunds[0].id
    world.provider_refunds.append({**world.provider_refunds[0], "id": "re_again"})
    world.provider_refunds.append({**world.provider_refunds[0], "id": "re_stranger", "idempotency_key": "nobody"})
    result = world.results()["refund_matches_truth"]
    assert sorted(result.subjects) == sorted([twice, "nobody"])
    assert next(w for w in result.witnesses if w.subject == twice).evidence[-1] == "one refund made more than once"
    assert (
        next(w for w in result.witnesses if w.subject == "nobody").evidence[-1] == "no refund of Ballast's has this id"
    )


def test_a_refund_of_another_amount_at_the_provider_is_named() -> None:
    world, _, _ = refunded_world()
    world.provider_refunds[0] = {**world.provider_refunds[0], "amount": "11.00"}
    result = world.results()["refund_matches_truth"]
    assert result.subjects == [world.refunds[0].id]
    assert result.witnesses[0].evidence[0] == "ballast SUCCEEDED 10.00 EUR"


def test_a_refund_left_undecided_is_named_unless_its_payment_has_an_open_case() -> None:
    world, _, part = refunded_world()
    stuck = world.refund(part, "50", ["UNKNOWN"], "succeeded")
    waiting_payment = world.payment(["SUCCEEDED"], "succeeded")
    waiting = world.refund(waiting_payment, "1.00", ["PENDING"], "pending")
    world.cases.append(CaseRow("case-w", "REFUND_CONTRADICTED", "OPEN", waiting_payment))
    result = world.results()["refunds_converged"]
    assert result.subjects == [stuck]
    assert result.witnesses[0].evidence == (f"ballast UNKNOWN, no open case on payment {part}",)
    assert waiting not in result.subjects


def test_a_refund_timeline_the_refund_machine_does_not_allow_is_named() -> None:
    world, _, _ = refunded_world()
    failed = world.refunds[3]
    world.refund_transitions.append(RefundTransitionRow(failed.id, 100, "FAILED", "SUCCEEDED"))
    result = world.results()["refunds_converged"]
    assert result.subjects == [failed.id]
    assert result.witnesses[0].evidence == (
        "move #100 FAILED -> SUCCEEDED is not allowed",
        "the refund holds FAILED, its last move ends in SUCCEEDED",
    )


def test_a_refund_a_client_was_told_about_that_the_database_lost_is_named() -> None:
    world, _, _ = refunded_world()
    lost = world.refunds[2]
    world.refunds = [r for r in world.refunds if r.id != lost.id]
    world.refund_transitions = [t for t in world.refund_transitions if t.refund_id != lost.id]
    broken = world.broken()
    assert broken["refund_ok_is_durable"] == [lost.id]
    assert broken["refund_posted_once"] == [f"refund:{lost.id}:succeeded"]


# -- reconciliation -----------------------------------------------------------------------------

RUN_ID = "run-1"


def _line(source_id: str, gross: str = "10.00", kind: str = "charge", date: str = "2026-12-02") -> dict[str, Any]:
    return {
        "type": kind,
        "source_id": source_id,
        "gross": gross,
        "currency": "EUR",
        "fee": "0.59",
        "settlement_date": date,
    }


def _settlement() -> dict[str, Any]:
    """The simulator's truth: one booking of each kind of drift, and one that reported what happened."""
    late = _line("pay_late")
    return {
        "settlement": [
            {"true": _line("pay_ok"), "reported": [_line("pay_ok")], "drift": []},
            {"true": _line("pay_missing"), "reported": [], "drift": ["missing"]},
            {"true": None, "reported": [_line("pay_invented", "99.00")], "drift": ["extra"]},
            {"true": _line("pay_amount"), "reported": [_line("pay_amount", "10.07")], "drift": ["amount"]},
            {"true": _line("pay_fee"), "reported": [_line("pay_fee")], "drift": ["fee"]},
            {
                "true": _line("pay_fx"),
                "reported": [_line("pay_fx"), _line("pay_fx", "0.42", kind="adjustment")],
                "drift": ["fx"],
            },
            {"true": late, "reported": [{**late, "settlement_date": "2026-12-03"}], "drift": ["late"]},
        ]
    }


def _reconciled() -> ReportSnapshot:
    """A run that found exactly what was planted, a case for each finding but the late one, and replayed."""
    found = [
        ("MISSING_PROVIDER", None, "pay_missing", "p-missing"),
        ("MISSING_INTERNAL", 3, "pay_invented", None),
        ("AMOUNT_MISMATCH", 4, "pay_amount", "p-amount"),
        ("FEE_MISMATCH", 5, "pay_fee", "p-fee"),
        ("FX_ADJUSTMENT", 7, "pay_fx", "p-fx"),
        ("TIMING_MISMATCH", 8, "pay_late", "p-late"),
    ]
    findings = [
        FindingRow(
            RUN_ID,
            number,
            difference,
            row,
            provider_id,
            payment,
            None if difference == "TIMING_MISMATCH" else f"case-{number}",
        )
        for number, (difference, row, provider_id, payment) in enumerate(found, start=1)
    ]
    cases = [
        CaseRow(f"case-{f.id}", f.difference, "OPEN", f.payment_id, report_run_id=RUN_ID)
        for f in findings
        if f.case_id is not None
    ]
    counts = {"report_runs": 1, "report_chunks": 1, "report_rows": 10, "report_findings": 6, "cases": 5}
    return ReportSnapshot(
        run=ReportRunRow(RUN_ID, "COMPLETED", 10, 5, 5, 0, 5),
        findings=findings,
        cases=cases,
        replayed=True,
        replay_run_id=RUN_ID,
        counts_before_replay=counts,
        counts_after_replay=dict(counts),
        payout_entries=[("entry-1", "payout:simulator:po_20261202_eur")],
        file_rows=10,
    )


def _broken(report: ReportSnapshot) -> dict[str, list[str]]:
    return {result.name: result.subjects for result in check_report(_settlement(), report) if not result.passed}


def test_a_run_that_found_exactly_the_planted_drift_keeps_every_reconciliation_invariant() -> None:
    report = _reconciled()
    assert _broken(report) == {}
    scores = report_class_scores(_settlement(), report)
    assert set(scores) == {
        "MISSING_PROVIDER",
        "MISSING_INTERNAL",
        "AMOUNT_MISMATCH",
        "FEE_MISMATCH",
        "FX_ADJUSTMENT",
        "TIMING_MISMATCH",
    }
    assert all(score.precision == score.recall == 1.0 and score.planted == 1 for score in scores.values())


def test_a_run_that_did_not_complete_or_whose_counts_do_not_add_up_is_named() -> None:
    report = _reconciled()
    stuck = dataclasses.replace(report, run=ReportRunRow(RUN_ID, "MATCHING", 10, 0, 0, 0))
    result = report_run_completed(stuck)
    assert result.subjects == [RUN_ID]
    assert result.witnesses[0].evidence[1:] == (
        "ended MATCHING, not COMPLETED",
        "row_count 10 != matched + unmatched + invalid = 0",
    )
    miscounted = dataclasses.replace(report, run=ReportRunRow(RUN_ID, "COMPLETED", 10, 5, 4, 0))
    assert report_run_completed(miscounted).witnesses[0].evidence[1:] == (
        "row_count 10 != matched + unmatched + invalid = 9",
    )
    # a stage taken up again that wrote its rows twice
    doubled = dataclasses.replace(report, run=ReportRunRow(RUN_ID, "COMPLETED", 20, 10, 10, 0), file_rows=10)
    assert report_run_completed(doubled).witnesses[0].evidence[1:] == (
        "row_count 20, the file uploaded has 10 data lines",
    )
    refused = ReportSnapshot(None, upload_error="PERMISSION_DENIED: no")
    assert report_run_completed(refused).witnesses[0].evidence == (
        "the report was not taken in: PERMISSION_DENIED: no",
    )


def test_a_difference_found_in_the_wrong_class_and_one_not_found_are_named_by_their_provider_ids() -> None:
    report = _reconciled()
    findings = list(report.findings)
    # the fee difference found as an amount one; the FX adjustment not found at all
    findings[3] = dataclasses.replace(findings[3], difference="AMOUNT_MISMATCH")
    del findings[4]
    wrong = dataclasses.replace(report, findings=findings)
    result = report_classes_match_truth(_settlement(), wrong)
    assert result.subjects == ["pay_fee", "pay_fee", "pay_fx"]
    evidence = [w.evidence[0] for w in result.witnesses]
    assert "found as AMOUNT_MISMATCH, which the truth did not plant (planted as FEE_MISMATCH)" in evidence
    assert "planted as FEE_MISMATCH, not found" in evidence
    assert "planted as FX_ADJUSTMENT, not found" in evidence
    scores = report_class_scores(_settlement(), wrong)
    assert (scores["AMOUNT_MISMATCH"].precision, scores["AMOUNT_MISMATCH"].recall) == (0.5, 1.0)
    assert (scores["FEE_MISMATCH"].recall, scores["FX_ADJUSTMENT"].recall) == (0.0, 0.0)
    # a class the simulator never plants (a status difference) found at all is a false finding
    extra = FindingRow(RUN_ID, 9, "STATUS_MISMATCH", 1, "pay_ok", "p-ok", "case-9")
    status = dataclasses.replace(
        report,
        findings=[*report.findings, extra],
        cases=[*report.cases, CaseRow("case-9", "STATUS_MISMATCH", "OPEN", "p-ok")],
    )
    assert report_classes_match_truth(_settlement(), status).subjects == ["pay_ok"]
    # findings of another run do not count
    other = dataclasses.replace(report, findings=[dataclasses.replace(f, run_id="run-0") for f in report.findings])
    assert len(report_classes_match_truth(_settlement(), other).witnesses) == 6


def test_a_risky_finding_without_its_case_and_a_timing_one_with_a_case_are_named() -> None:
    report = _reconciled()
    findings = list(report.findings)
    findings[2] = dataclasses.replace(findings[2], case_id=None)  # the amount difference: no case
    findings[3] = dataclasses.replace(findings[3], case_id="case-gone")  # the fee: a case that does not exist
    findings[5] = dataclasses.replace(findings[5], case_id="case-late")  # the late row: a case
    cases = [*report.cases, CaseRow("case-late", "TIMING_MISMATCH", "OPEN", "p-late")]
    result = report_cases_for_risky_classes(dataclasses.replace(report, findings=findings, cases=cases))
    assert result.subjects == ["case-late", "pay_amount #3", "pay_fee #4", "pay_late #6"]
    evidence = {w.subject: w.evidence[-1] for w in result.witnesses}
    assert evidence["pay_amount #3"] == "no case"
    assert evidence["pay_fee #4"] == "case case-gone does not exist"
    assert evidence["pay_late #6"] == "a self-closing class with a case"
    # a case of another class, or on another payment
    misfiled = [dataclasses.replace(c, kind="FEE_MISMATCH") if c.id == "case-3" else c for c in report.cases]
    result = report_cases_for_risky_classes(dataclasses.replace(report, cases=misfiled))
    assert result.subjects == ["pay_amount #3"]
    assert result.witnesses[0].evidence[-1] == "its case is FEE_MISMATCH on payment p-amount"


def test_an_upload_again_that_made_a_new_run_or_wrote_rows_is_named() -> None:
    report = _reconciled()
    assert report_replay_idempotent(report).passed
    new_run = dataclasses.replace(report, replayed=False, replay_run_id="run-2")
    assert report_replay_idempotent(new_run).witnesses[0].evidence == (
        "the second upload was not replayed: it made run run-2",
    )
    wrote = dataclasses.replace(report, counts_after_replay={**report.counts_before_replay, "report_findings": 12})
    result = report_replay_idempotent(wrote)
    assert result.subjects == [RUN_ID]
    assert result.witnesses[0].evidence == ("report_findings: 6 rows before the second upload, 12 after",)
    failed = dataclasses.replace(report, replayed=None, replay_run_id=None, replay_error="UNAVAILABLE: gone")
    assert report_replay_idempotent(failed).witnesses[0].evidence == ("the second upload failed: UNAVAILABLE: gone",)


def test_a_payout_posted_twice_is_named_with_its_entries() -> None:
    report = _reconciled()
    assert no_payout_posted_twice(report).passed
    twice = dataclasses.replace(
        report,
        payout_entries=[
            *report.payout_entries,
            ("entry-2", "payout:simulator:po_20261202_eur:again"),
            ("entry-3", "payout:simulator:po_20261203_eur"),
        ],
    )
    result = no_payout_posted_twice(twice)
    assert result.subjects == ["simulator:po_20261202_eur"]
    assert result.witnesses[0].evidence == ("2 entries: entry-1, entry-2",)
