"""A leg's modification as a cancel/replace at the venue: what may be asked, fills while it waits, and
the venue's answer (server/domain/orders.py, order_legs.py, venue_evidence.py)."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.domain.errors import FailedPrecondition, InvalidArgument
from server.domain.order_legs import (
    LEG_MACHINE,
    Fill,
    FillError,
    Leg,
    LegState,
    ModificationPending,
    answer_modification,
    apply_fill,
    check_venue_state,
)
from server.domain.orders import LegSpec, ModifyLeg, OrderType, Side, check_modification, check_modification_fits_type
from server.domain.provider_status import VenueReport, modification_answer_for
from server.domain.state_machine import IllegalTransition
from server.domain.venue_evidence import (
    FitField,
    KnownLeg,
    Misfit,
    PendingModification,
    VenueClaims,
    answers_pending,
    claims_from_order,
    misfits,
)

L = LegState
D = Decimal
#: A LIMIT leg of 10 at 100 in force.
TERMS = LegSpec("ACME", Side.BUY, D(10), OrderType.LIMIT, D(100), "USD")


def _ask(quantity: str | None = None, limit_price: str | None = None) -> ModifyLeg:
    return ModifyLeg(
        "key",
        uuid.uuid4(),
        uuid.uuid4(),
        None if quantity is None else D(quantity),
        None if limit_price is None else D(limit_price),
    )


def _refused_field(request: ModifyLeg, state: LegState, filled: str) -> str:
    """The field named by the refusal: a precondition on the leg as it stands, naming the leg."""
    with pytest.raises(FailedPrecondition) as caught:
        check_modification(request, state, TERMS, D(filled), "leg x")
    assert caught.value.subject == "leg x"
    return str(caught.value).split()[0].rstrip(":")


# -------------------------------------------------------------------------------- what may be asked


@pytest.mark.parametrize(
    ("state", "filled", "quantity", "limit_price"),
    [
        (L.PENDING, "0", "15", None),  # up
        (L.PENDING, "0", "4", "99"),  # down, and a new price for what is to fill
        (L.PENDING, "0", None, "101"),  # the price alone
        (L.PARTIALLY_FILLED, "4", "4", None),  # down to what filled: the leg stops where it is
        (L.PARTIALLY_FILLED, "4", "6", "99.5"),
        (L.FILLED, "10", "12", None),  # a larger quantity re-opens a filled leg
        (L.FILLED, "10", "10.5", "99"),  # with a price for the re-opened part
    ],
)
def test_a_working_or_filled_leg_takes_a_cancel_replace_that_changes_something(
    state: LegState, filled: str, quantity: str | None, limit_price: str | None
) -> None:
    check_modification(_ask(quantity, limit_price), state, TERMS, D(filled), "leg x")


@pytest.mark.parametrize(
    ("state", "filled", "quantity", "limit_price", "field"),
    [
        (L.PARTIALLY_FILLED, "4", "3.9", None, "new_quantity"),  # below what filled
        (L.FILLED, "10", "9", None, "new_quantity"),
        (L.PENDING, "0", "10.000", None, "new_quantity"),  # the quantity in force: nothing changes
        (L.PENDING, "0", None, "100.0", "new_limit_price"),  # the price in force
        (L.PENDING, "0", "10", "100", "new_quantity"),
        (L.FILLED, "10", "10", None, "new_quantity"),  # a filled leg kept filled: nothing changes
        (L.FILLED, "10", None, "99", "new_limit_price"),  # nothing of a filled leg works to reprice
        (L.FILLED, "10", "10", "99", "new_quantity"),
    ],
)
def test_terms_the_leg_cannot_take_are_refused_naming_the_field(
    state: LegState, filled: str, quantity: str | None, limit_price: str | None, field: str
) -> None:
    assert _refused_field(_ask(quantity, limit_price), state, filled) == field


def test_a_market_leg_has_no_limit_price_to_amend_whatever_its_state() -> None:
    with pytest.raises(InvalidArgument, match="new_limit_price"):
        check_modification_fits_type(_ask("12", "99"), OrderType.MARKET)
    check_modification_fits_type(_ask("12"), OrderType.MARKET)
    check_modification_fits_type(_ask("12", "99"), OrderType.LIMIT)


@pytest.mark.parametrize("state", [L.SUBMITTED, L.REJECTED, L.CLOSED])
def test_a_leg_not_at_the_venue_or_done_with_it_cannot_be_modified_naming_both_states(state: LegState) -> None:
    with pytest.raises(IllegalTransition, match=f"{state.value} -> MODIFYING"):
        check_modification(_ask("12"), state, TERMS, D(0), "leg x")


def test_one_modification_at_a_time_though_a_modifying_leg_still_fills() -> None:
    with pytest.raises(ModificationPending, match="MODIFYING -> MODIFYING") as caught:
        check_modification(_ask("12"), L.MODIFYING, TERMS, D(0), "leg x")
    assert (caught.value.from_state, caught.value.to_state) == ("MODIFYING", "MODIFYING")
    assert LEG_MACHINE.allows(L.MODIFYING, L.MODIFYING)  # the move a fill makes


# -------------------------------------------------------------------------------- fills while it waits


def test_a_modifying_leg_fills_under_its_old_terms_and_stays_modifying() -> None:
    leg = Leg(ordered_quantity=D(10), state=L.MODIFYING, filled_quantity=D(4), fill_notional=D(400))
    after = apply_fill(leg, Fill("x-2", D(6), D(101)))
    assert (after.state, after.filled_quantity, after.fill_notional) == (L.MODIFYING, D(10), D(1006))
    with pytest.raises(FillError, match="of 10 ordered"):
        apply_fill(after, Fill("x-3", D(1), D(101)))  # over the quantity in force: the old one


# -------------------------------------------------------------------------------- the venue's answer


@pytest.mark.parametrize(
    ("filled", "quantity_after", "state"),
    [
        ("0", "60", L.PENDING),
        ("4", "6", L.PARTIALLY_FILLED),
        ("4", "4", L.FILLED),  # amended down to what filled
        ("10", "12", L.PARTIALLY_FILLED),  # a filled leg re-opened
        ("10", "10", L.FILLED),  # refused: the old quantity stays, all of it filled
    ],
)
def test_the_answer_returns_the_leg_to_what_its_fills_say_under_the_terms_then_in_force(
    filled: str, quantity_after: str, state: LegState
) -> None:
    leg = Leg(ordered_quantity=D(10), state=L.MODIFYING, filled_quantity=D(filled))
    assert answer_modification(leg, D(quantity_after), "leg x") is state
    assert LEG_MACHINE.allows(L.MODIFYING, state)


def test_a_confirmed_quantity_below_what_filled_and_an_answer_to_nothing_are_refused() -> None:
    with pytest.raises(FillError, match="below the 7 filled"):
        answer_modification(Leg(D(10), L.MODIFYING, D(7)), D(6), "leg x")
    for state in (L.FILLED, L.PENDING, L.CLOSED):
        with pytest.raises(FillError, match="no modification waiting"):
            answer_modification(Leg(D(10), state, D(0)), D(12), "leg x")


def test_a_venue_status_never_ends_a_modification_as_if_it_answered_it() -> None:
    with pytest.raises(FillError, match="acknowledgement"):
        check_venue_state(L.MODIFYING, L.PENDING, "leg x")  # a late `new`
    with pytest.raises(FillError, match="from fills"):
        check_venue_state(L.MODIFYING, L.FILLED, "leg x")
    with pytest.raises(FillError, match="not rejected"):
        check_venue_state(L.MODIFYING, L.REJECTED, "leg x", filled=D(4))  # a refused modification is not this
    check_venue_state(L.MODIFYING, L.REJECTED, "leg x", filled=D(0))  # the venue refusing the order itself
    check_venue_state(L.MODIFYING, L.CLOSED, "leg x", filled=D(4))


def _terms(leg: Leg) -> LegSpec:
    return LegSpec("ACME", Side.BUY, leg.ordered_quantity, OrderType.MARKET, None, "USD")


steps = st.lists(
    st.one_of(
        st.tuples(st.just("fill"), st.decimals(min_value=D("0.5"), max_value=D(6), places=1)),
        st.tuples(st.just("modify"), st.decimals(min_value=D("0.5"), max_value=D(20), places=1)),
        st.tuples(st.sampled_from(["confirm", "refuse"]), st.just(D(0))),
    ),
    max_size=30,
)


@given(steps=steps)
def test_fills_modifications_and_answers_in_any_order_never_overfill_what_is_in_force(
    steps: list[tuple[str, Decimal]],
) -> None:
    leg, asked = Leg(ordered_quantity=D(10), state=L.PENDING), None
    for number, (kind, value) in enumerate(steps):
        before = leg
        try:
            if kind == "fill":
                leg = apply_fill(leg, Fill(f"x-{number}", value, D(100)))
            elif kind == "modify":
                check_modification(_ask(str(value)), leg.state, _terms(leg), leg.filled_quantity, "leg x")
                leg, asked = Leg(leg.ordered_quantity, L.MODIFYING, leg.filled_quantity, leg.fill_notional), value
            else:
                quantity = asked if kind == "confirm" and asked is not None else leg.ordered_quantity
                state = answer_modification(leg, quantity)
                leg, asked = Leg(quantity, state, leg.filled_quantity, leg.fill_notional), None
        except (FillError, IllegalTransition, InvalidArgument, FailedPrecondition):
            assert leg == before
        assert leg.filled_quantity <= leg.ordered_quantity
        if leg.state is not L.MODIFYING:
            assert asked is None
            assert leg.state is (
                L.PENDING
                if leg.filled_quantity == 0
                else L.FILLED
                if leg.filled_quantity == leg.ordered_quantity
                else L.PARTIALLY_FILLED
            )


# -------------------------------------------------------------------------------- the evidence of an answer

ASKED = PendingModification("mod-1", quantity=D(60), limit_price=D("10.25"))
LEG = KnownLeg("ord_1", "ACME", "BUY", "USD", quantity_max=D(100), modification=ASKED)


@pytest.mark.parametrize(
    ("quantity", "limit_price", "expected"),
    [
        ("60", "10.25", ()),
        ("60.0", "10.250", ()),  # compared as numbers
        (None, None, ()),  # states neither
        ("50", "10.25", (Misfit(FitField.QUANTITY, "60", "50"),)),
        ("60", "10.5", (Misfit(FitField.LIMIT_PRICE, "10.25", "10.5"),)),
        ("sixty", "10.25", (Misfit(FitField.QUANTITY, "60", "sixty"),)),
    ],
)
def test_a_confirmation_must_state_the_terms_the_modification_asked(
    quantity: str | None, limit_price: str | None, expected: tuple[Misfit, ...]
) -> None:
    claims = VenueClaims(quantity=quantity, limit_price=limit_price)
    assert misfits(LEG, claims, confirms_modification=True) == expected
    assert misfits(LEG, claims) == ()  # outside a confirmation, the order's terms are not in the rule


@pytest.mark.parametrize(
    ("key", "key_required", "answers"),
    [
        ("mod-1", True, True),
        ("mod-1", False, True),
        ("mod-0", False, False),  # an answer to another (an earlier) modification
        (None, False, True),  # the venue's answer naming none: the pending one
        (None, True, False),  # any other report must name it to answer it
    ],
)
def test_an_answer_is_about_the_pending_modification_when_it_names_its_key_or_none(
    key: str | None, key_required: bool, answers: bool
) -> None:
    claims = VenueClaims(modification_key=key)
    assert answers_pending(LEG, claims, key_required=key_required) is answers
    assert not answers_pending(KnownLeg("ord_1", "ACME", "BUY", "USD", D(100)), claims, key_required=False)


def test_a_broker_order_states_its_terms_and_its_latest_modification() -> None:
    order = {
        "id": "ord_1",
        "quantity": "60",
        "limit_price": "10.25",
        "modification": {"idempotency_key": "mod-1", "status": "rejected", "reason": "the book moved"},
    }
    claims = claims_from_order(order)
    assert (claims.quantity, claims.limit_price) == ("60", "10.25")
    assert (claims.modification_key, claims.modification_status, claims.modification_reason) == (
        "mod-1",
        "rejected",
        "the book moved",
    )
    assert claims_from_order({"modification": "not an object"}).modification_key is None


def test_the_venues_words_for_a_modifications_status_map_to_its_answer() -> None:
    assert modification_answer_for("simulator", "confirmed") is VenueReport.MODIFIED
    assert modification_answer_for("simulator", " Rejected ") is VenueReport.MODIFY_REFUSED
    for unanswered in ("pending", "canceled", "replaced?"):
        assert modification_answer_for("simulator", unanswered) is None
    assert modification_answer_for("another venue", "confirmed") is None
