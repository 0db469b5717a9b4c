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
