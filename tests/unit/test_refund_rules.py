"""The refund machine and the amount rules (server/domain/refund_states.py): refunds asked in any order,
of any size, never hold more than the payment captured, and a refund's moves are a walk of its machine."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.domain.refund_states import (
    INITIAL_REFUND_STATE,
    REFUND_EVENTS,
    REFUND_MACHINE,
    RELEASED_REFUND_STATES,
    UNDECIDED_REFUND_STATES,
    RefundEvent,
    RefundState,
    RefundTooLarge,
    holds_amount,
    left_to_refund,
    refund_amount,
)

CENTS = st.integers(min_value=1, max_value=10_000_000).map(lambda cents: Decimal(cents).scaleb(-2))


def test_a_refund_starts_recorded_and_ends_in_a_state_nothing_leaves() -> None:
    assert INITIAL_REFUND_STATE is RefundState.RECORDED
    finals = {state for state in RefundState if REFUND_MACHINE.is_terminal(state)}
    assert finals == {RefundState.SUCCEEDED, RefundState.FAILED, RefundState.REJECTED, RefundState.EXPIRED}
    assert UNDECIDED_REFUND_STATES.isdisjoint(finals)


def test_a_decided_refund_never_moves_back_and_a_pending_one_is_never_rejected() -> None:
    for state in (RefundState.SUCCEEDED, RefundState.FAILED):
        assert not REFUND_MACHINE.allows(state, RefundState.PENDING)
    assert not REFUND_MACHINE.allows(RefundState.PENDING, RefundState.REJECTED)
    assert not REFUND_MACHINE.allows(RefundState.PENDING, RefundState.EXPIRED)  # the provider has it
    assert not REFUND_MACHINE.allows(RefundState.UNKNOWN, RefundState.EXPIRED)  # it may have arrived


def test_only_a_refund_that_ended_without_money_moving_releases_its_amount() -> None:
    assert {state for state in RefundState if not holds_amount(state)} == RELEASED_REFUND_STATES
    assert holds_amount(RefundState.SUCCEEDED)
    assert holds_amount(RefundState.UNKNOWN)  # the money may be on its way back


@given(captured=CENTS, asks=st.lists(st.one_of(st.none(), CENTS), max_size=30))
def test_refunds_asked_in_any_order_never_hold_more_than_was_captured(
    captured: Decimal, asks: list[Decimal | None]
) -> None:
    held = Decimal(0)
    for asked in asks:
        try:
            amount = refund_amount(asked, captured, held)
        except RefundTooLarge as error:
            assert asked is not None and asked > error.left == captured - held
            continue
        except ValueError:
            assert held == captured  # nothing left: only "the rest" of nothing is refused this way
            continue
        assert 0 < amount <= captured - held
        held += amount
        assert held <= captured
    assert left_to_refund(captured, held) == captured - held


def test_the_rest_of_a_payment_is_what_no_other_refund_holds() -> None:
    assert refund_amount(None, Decimal("10.00"), Decimal("3.50")) == Decimal("6.50")
    with pytest.raises(RefundTooLarge, match=r"6.51 is more than the 6.50 left to refund"):
        refund_amount(Decimal("6.51"), Decimal("10.00"), Decimal("3.50"))
    with pytest.raises(ValueError, match="nothing is left to refund"):
        refund_amount(None, Decimal("10.00"), Decimal("10.00"))
    with pytest.raises(ValueError, match="must be positive"):
        refund_amount(Decimal(0), Decimal("10.00"), Decimal(0))


def test_every_event_leads_to_one_state_from_each_state_that_takes_it() -> None:
    for state, events in REFUND_EVENTS.items():
        for target in events.values():
            assert REFUND_MACHINE.allows(state, target)


def test_a_refunds_evidence_is_judged_by_its_witness_and_a_decided_refund_is_never_moved_back() -> None:
    from server.domain.payment_states import Verdict, Witness
    from server.domain.refund_states import RefundEvent, RefundState, judge_refund

    r, e, w = RefundState, RefundEvent, Witness
    # a webhook may say pending; any other news makes Ballast ask the API
    assert judge_refund(r.RECORDED, e.ACCEPTED, w.WEBHOOK) is Verdict.APPLY
    assert judge_refund(r.PENDING, e.SUCCEEDED, w.WEBHOOK) is Verdict.CONFIRM
    assert judge_refund(r.UNKNOWN, e.FAILED, w.WEBHOOK) is Verdict.CONFIRM
    # the API decides
    assert judge_refund(r.PENDING, e.SUCCEEDED, w.API) is Verdict.APPLY
    assert judge_refund(r.UNKNOWN, e.FAILED, w.API) is Verdict.APPLY
    # late and repeated words change nothing
    assert judge_refund(r.SUCCEEDED, e.ACCEPTED, w.API) is Verdict.STALE
    assert judge_refund(r.SUCCEEDED, e.SUCCEEDED, w.WEBHOOK) is Verdict.REPEAT
    assert judge_refund(r.FAILED, e.REJECTED, w.API) is Verdict.REPEAT
    # a contradiction of a decided refund: the webhook makes Ballast ask, the API's word waits for a person
    assert judge_refund(r.SUCCEEDED, e.FAILED, w.WEBHOOK) is Verdict.CONFIRM
    assert judge_refund(r.SUCCEEDED, e.FAILED, w.API) is Verdict.HOLD
    assert judge_refund(r.FAILED, e.SUCCEEDED, w.API) is Verdict.HOLD
    # Ballast concludes only what the machine allows
    assert judge_refund(r.PENDING, e.OUTCOME_UNKNOWN, w.BALLAST) is Verdict.STALE
    assert judge_refund(r.RECORDED, e.EXPIRED, w.BALLAST) is Verdict.APPLY


@given(
    st.sampled_from(list(RefundState)),
    st.sampled_from(list(RefundEvent)),
    st.sampled_from(["api", "webhook", "ballast"]),
)
def test_only_an_applied_verdict_moves_a_refund_and_only_along_its_machine(
    current: RefundState, event: RefundEvent, witness: str
) -> None:
    from server.domain.payment_states import Verdict, Witness
    from server.domain.refund_states import REFUND_EVENT_TARGETS, judge_refund

    verdict = judge_refund(current, event, Witness(witness))
    if verdict is Verdict.APPLY:
        assert REFUND_MACHINE.allows(current, REFUND_EVENT_TARGETS[event])
    if current not in UNDECIDED_REFUND_STATES:
        assert verdict is not Verdict.APPLY  # a decided refund never moves again


@given(
    captured=st.decimals(min_value=Decimal("0.01"), max_value=Decimal("1000"), places=2),
    share=st.integers(min_value=0, max_value=100),
)
def test_a_payments_own_refunds_leave_it_partially_refunded_or_refunded_by_what_they_returned(
    captured: Decimal, share: int
) -> None:
    from server.domain.payment_states import PaymentState
    from server.domain.refund_states import payment_state_after_refunds

    refunded = (captured * share / 100).quantize(Decimal("0.01"))
    state = payment_state_after_refunds(PaymentState.SUCCEEDED, captured, refunded)
    if refunded == 0:
        assert state is PaymentState.SUCCEEDED
    elif refunded == captured:
        assert state is PaymentState.REFUNDED
    else:
        assert state is PaymentState.PARTIALLY_REFUNDED
    # a payment that is not captured is not theirs to move
    assert payment_state_after_refunds(PaymentState.FAILED, captured, refunded) is PaymentState.FAILED


def test_a_succeeded_refund_posts_its_reversal_once_under_its_own_key() -> None:
    import uuid

    from server.domain.ledger import PROVIDER_CLEARING, merchant_payable, refund_postings

    refund_id, payment_id = uuid.uuid4(), uuid.uuid4()
    (posting,) = refund_postings(refund_id, payment_id, "shop", Decimal("7.50"), "EUR")
    assert posting.event_key == f"refund:{refund_id}:succeeded"
    assert posting.payment_id == payment_id
    amounts = {line.account: line.amount for line in posting.lines}
    assert amounts == {merchant_payable("shop"): Decimal("7.50"), PROVIDER_CLEARING: Decimal("-7.50")}
