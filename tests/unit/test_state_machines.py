"""The payment and order-leg machines, driven by random event sequences (hypothesis)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.domain.order_legs import LEG_MACHINE, LEG_TRANSITIONS, Fill, FillError, Leg, LegState, apply_fill
from server.domain.payment_evidence import judge
from server.domain.payment_states import (
    EVENT_TARGETS,
    PAYMENT_EVENTS,
    PAYMENT_MACHINE,
    PaymentEvent,
    PaymentState,
    Verdict,
    Witness,
    event_towards,
)
from server.domain.state_machine import IllegalTransition

P = PaymentState
L = LegState


def test_the_leg_table_is_exactly_the_specified_one() -> None:
    assert {state.value: sorted(s.value for s in tos) for state, tos in LEG_TRANSITIONS.items()} == {
        "SUBMITTED": ["CLOSED", "PENDING", "REJECTED"],
        "PENDING": ["CLOSED", "FILLED", "MODIFYING", "PARTIALLY_FILLED", "REJECTED"],
        "PARTIALLY_FILLED": ["CLOSED", "FILLED", "MODIFYING", "PARTIALLY_FILLED"],
        "FILLED": ["CLOSED", "MODIFYING"],
        "MODIFYING": ["CLOSED", "FILLED", "MODIFYING", "PARTIALLY_FILLED", "PENDING", "REJECTED"],
        "REJECTED": ["CLOSED"],
        "CLOSED": [],
    }


def test_terminal_payment_states_never_move() -> None:
    assert {state for state in P if PAYMENT_MACHINE.is_terminal(state)} == {P.FAILED, P.REJECTED, P.REFUNDED, P.EXPIRED}


def test_an_illegal_transition_names_both_states() -> None:
    assert judge(P.FAILED, PaymentEvent.SUCCEEDED, Witness.BALLAST) is Verdict.STALE  # never moved on Ballast's word
    with pytest.raises(IllegalTransition, match="FAILED -> SUCCEEDED"):
        PAYMENT_MACHINE.check(P.FAILED, P.SUCCEEDED)


def test_a_repeated_event_changes_nothing() -> None:
    for witness in Witness:
        assert judge(P.PENDING, PaymentEvent.ACCEPTED, witness) is Verdict.REPEAT
        assert judge(P.SUCCEEDED, PaymentEvent.SUCCEEDED, witness) is Verdict.REPEAT


def test_a_stale_event_after_a_final_answer_is_refused() -> None:
    for witness in Witness:
        assert judge(P.SUCCEEDED, PaymentEvent.ACCEPTED, witness) is Verdict.STALE
    assert event_towards(P.SUCCEEDED, P.PENDING) is None


@given(st.lists(st.sampled_from(list(PaymentEvent)), max_size=40))
def test_no_event_sequence_reaches_an_illegal_payment_state(events: list[PaymentEvent]) -> None:
    """Ballast's own conclusions, applied as payment_events applies them: moved where the machine has the move."""
    state = PAYMENT_MACHINE.initial
    terminal_reached = False
    for event in events:
        verdict = judge(state, event, Witness.BALLAST)
        if verdict is not Verdict.APPLY:
            assert verdict in (Verdict.REPEAT, Verdict.STALE)
            assert (EVENT_TARGETS[event] is state) is (verdict is Verdict.REPEAT)
            continue
        towards = event_towards(state, EVENT_TARGETS[event])
        assert towards is not None
        assert not terminal_reached, "a terminal state moved"
        assert PAYMENT_MACHINE.allows(state, EVENT_TARGETS[event])
        assert PAYMENT_EVENTS[state][towards] is EVENT_TARGETS[event]
        state = EVENT_TARGETS[event]
        terminal_reached = PAYMENT_MACHINE.is_terminal(state)


@given(st.lists(st.sampled_from(list(LegState)), max_size=40))
def test_no_sequence_of_requested_leg_states_escapes_the_table(requested: list[LegState]) -> None:
    state = LEG_MACHINE.initial
    for wanted in requested:
        if LEG_MACHINE.allows(state, wanted):
            state = wanted
        else:
            with pytest.raises(IllegalTransition):
                LEG_MACHINE.check(state, wanted)
    assert state in LEG_TRANSITIONS


quantities = st.decimals(min_value=Decimal("0.000001"), max_value=Decimal("1000000"), places=6)
prices = st.decimals(min_value=Decimal("0.0001"), max_value=Decimal("100000"), places=4)
fills = st.lists(st.tuples(st.sampled_from([f"x{i}" for i in range(12)]), quantities, prices), min_size=1, max_size=30)


@given(ordered=quantities, fills=fills)
def test_fills_apply_once_never_overfill_and_keep_an_exact_average(
    ordered: Decimal, fills: list[tuple[str, Decimal, Decimal]]
) -> None:
    leg = Leg(ordered_quantity=ordered, state=L.PENDING)
    applied: dict[str, tuple[Decimal, Decimal]] = {}
    for execution_id, quantity, price in fills:
        before = leg
        try:
            leg = apply_fill(leg, Fill(execution_id, quantity, price))
        except (FillError, IllegalTransition):
            assert leg == before
            continue
        if execution_id in applied:
            assert leg == before, "a fill id applied twice"
        else:
            applied[execution_id] = (quantity, price)
        assert leg.filled_quantity >= before.filled_quantity
        assert leg.filled_quantity <= ordered
    assert leg.filled_quantity == sum((q for q, _ in applied.values()), Decimal(0))
    assert leg.fill_notional == sum((q * p for q, p in applied.values()), Decimal(0))
    assert leg.state is (L.FILLED if leg.filled_quantity == ordered else L.PARTIALLY_FILLED if applied else L.PENDING)


def test_the_average_price_is_exact_where_it_is_representable() -> None:
    leg = Leg(ordered_quantity=Decimal(3))
    for execution_id, price in (("a", "100.01"), ("b", "100.02"), ("c", "100.03")):
        leg = apply_fill(leg, Fill(execution_id, Decimal(1), Decimal(price)))
    assert leg.state is L.FILLED
    assert leg.average_fill_price(2) == Decimal("100.02")


def test_a_fill_on_a_leg_the_venue_has_not_acknowledged_is_illegal() -> None:
    with pytest.raises(IllegalTransition, match="SUBMITTED -> PARTIALLY_FILLED"):
        apply_fill(Leg(ordered_quantity=Decimal(2), state=L.SUBMITTED), Fill("a", Decimal(1), Decimal(1)))
