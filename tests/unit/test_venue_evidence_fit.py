"""The fit rule for order legs: every cell of its table (server/domain/venue_evidence.py).

For each field: the venue's value matching Ballast's, differing, absent on the venue's side, and
(for the venue order id, the one thing Ballast may not know yet) absent on Ballast's side.
"""

from __future__ import annotations

import json
from dataclasses import replace
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.domain.stated import STATED_LENGTH_MAX, stated
from server.domain.venue_evidence import (
    FitField,
    KnownLeg,
    Misfit,
    Rule,
    VenueClaims,
    claims_from_order,
    misfits,
)

F = FitField
LEG = KnownLeg(venue_order_id="ord_1", symbol="ACME", side="BUY", currency="USD", quantity_max=Decimal("100"))
NEW_LEG = replace(LEG, venue_order_id=None)  # no fitting report has named the venue's order yet


# -------------------------------------------------------------------------------- venue_order_id


@pytest.mark.parametrize(
    ("known", "venue", "expected"),
    [
        ("ord_1", "ord_1", ()),  # equal
        ("ord_1", "ord_2", (Misfit(F.VENUE_ORDER_ID, "ord_1", "ord_2"),)),  # differs
        ("ord_1", "ORD_1", (Misfit(F.VENUE_ORDER_ID, "ord_1", "ORD_1"),)),  # an id is compared exactly
        ("ord_1", None, ()),  # the venue states none
        (None, "ord_2", ()),  # Ballast knows none: the report's id is the one to record
        (None, None, ()),  # neither
    ],
)
def test_the_venue_order_id_fits_when_equal_or_unknown_to_either_side(
    known: str | None, venue: str | None, expected: tuple[Misfit, ...]
) -> None:
    assert misfits(replace(LEG, venue_order_id=known), VenueClaims(venue_order_id=venue)) == expected


# -------------------------------------------------------------------------------- execution.order_id


@pytest.mark.parametrize(
    ("known", "report_id", "execution_id", "expected"),
    [
        ("ord_1", None, "ord_1", ()),  # equal to the id Ballast recorded
        ("ord_1", None, "ord_2", (Misfit(F.EXECUTION_ORDER_ID, "ord_1", "ord_2"),)),  # differs from it
        ("ord_1", "ord_1", None, ()),  # the execution states none
        (None, "ord_2", "ord_2", ()),  # Ballast knows none: held against the report's own id, equal
        (None, "ord_2", "ord_3", (Misfit(F.EXECUTION_ORDER_ID, "ord_2", "ord_3"),)),  # ...and differing
        (None, None, "ord_3", ()),  # no id on the other side to differ from
    ],
)
def test_an_executions_order_id_must_name_the_legs_order(
    known: str | None, report_id: str | None, execution_id: str | None, expected: tuple[Misfit, ...]
) -> None:
    claims = VenueClaims(venue_order_id=report_id, execution_order_id=execution_id)
    assert misfits(replace(LEG, venue_order_id=known), claims) == expected


def test_a_report_and_its_execution_naming_another_order_than_the_legs_are_both_named() -> None:
    claims = VenueClaims(venue_order_id="ord_2", execution_order_id="ord_2")
    assert misfits(LEG, claims) == (
        Misfit(F.VENUE_ORDER_ID, "ord_1", "ord_2"),
        Misfit(F.EXECUTION_ORDER_ID, "ord_1", "ord_2"),
    )


# -------------------------------------------------------------------------------- symbol, side, currency


@pytest.mark.parametrize(
    ("field", "ours", "theirs", "fits"),
    [
        (F.SYMBOL, "ACME", "ACME", True),
        (F.SYMBOL, "ACME", "acme", True),  # case aside
        (F.SYMBOL, "ACME", "ACMF", False),
        (F.SYMBOL, "ACME", " ACME", False),  # text around it is not the same symbol
        (F.SYMBOL, "ACME", None, True),  # the venue states none
        (F.SIDE, "BUY", "buy", True),  # the venue's words are lower case
        (F.SIDE, "BUY", "BUY", True),
        (F.SIDE, "BUY", "sell", False),
        (F.SIDE, "BUY", "short", False),  # a side Ballast has no word for differs too
        (F.SIDE, "BUY", None, True),
        (F.CURRENCY, "USD", "USD", True),
        (F.CURRENCY, "USD", "usd", True),
        (F.CURRENCY, "USD", "EUR", False),
        (F.CURRENCY, "USD", None, True),
    ],
)
def test_symbol_side_and_currency_fit_when_equal_case_aside_or_not_stated(
    field: FitField, ours: str, theirs: str | None, fits: bool
) -> None:
    known = replace(LEG, **{field.value: ours})
    found = misfits(known, VenueClaims(**{field.value: theirs}))
    assert found == (() if fits else (Misfit(field, ours, str(theirs)),))


# -------------------------------------------------------------------------------- filled_quantity


@pytest.mark.parametrize(
    ("quantity_max", "filled", "fits"),
    [
        ("100", "0", True),
        ("100", "40", True),  # below: an earlier report, or fills Ballast has not heard of yet
        ("100", "100", True),  # the whole leg
        ("100", "100.000", True),
        ("100", "100.000000000001", False),  # more than the leg holds
        ("100", "150", False),
        ("150", "150", True),  # a larger quantity asked in a pending modification bounds it
        ("100", "-1", False),  # not a quantity a leg can have filled
        ("100", "NaN", False),
        ("100", "Infinity", False),
        ("100", "1E+400", False),
        ("100", "lots", False),  # unreadable: cannot be a leg's filled quantity
        ("100", "", False),
        ("100", None, True),  # the venue states none
    ],
)
def test_the_venues_filled_quantity_fits_from_zero_to_what_the_leg_may_fill(
    quantity_max: str, filled: str | None, fits: bool
) -> None:
    known = replace(LEG, quantity_max=Decimal(quantity_max))
    found = misfits(known, VenueClaims(filled_quantity=filled))
    assert found == (() if fits else (Misfit(F.FILLED_QUANTITY, quantity_max, str(filled), Rule.AT_MOST),))


# -------------------------------------------------------------------------------- the rule as a whole


def test_a_report_stating_nothing_fits_any_leg() -> None:
    assert misfits(LEG, VenueClaims()) == ()
    assert misfits(NEW_LEG, VenueClaims()) == ()


def test_every_differing_field_is_named_in_the_tables_order_with_both_values() -> None:
    claims = VenueClaims(
        venue_order_id="ord_9",
        execution_order_id="ord_8",
        symbol="OTHER",
        side="sell",
        currency="EUR",
        filled_quantity="101",
    )
    assert [m.as_evidence() for m in misfits(LEG, claims)] == [
        {"field": "venue_order_id", "ballast": "ord_1", "venue": "ord_9", "rule": "equal"},
        {"field": "execution.order_id", "ballast": "ord_1", "venue": "ord_8", "rule": "equal"},
        {"field": "symbol", "ballast": "ACME", "venue": "OTHER", "rule": "equal"},
        {"field": "side", "ballast": "BUY", "venue": "sell", "rule": "equal"},
        {"field": "currency", "ballast": "USD", "venue": "EUR", "rule": "equal"},
        {"field": "filled_quantity", "ballast": "100", "venue": "101", "rule": "at_most"},
    ]


_TEXT = st.one_of(st.none(), st.sampled_from(["ord_1", "ord_2", "ACME", "acme", "BUY", "sell", "USD", "EUR"]))


@given(_TEXT, _TEXT, _TEXT, _TEXT, _TEXT, st.one_of(st.none(), st.sampled_from(["0", "50", "100", "101", "x"])))
def test_a_field_the_venue_does_not_state_is_never_named(
    order_id: str | None,
    execution_id: str | None,
    symbol: str | None,
    side: str | None,
    currency: str | None,
    filled: str | None,
) -> None:
    claims = VenueClaims(order_id, execution_id, symbol, side, currency, filled)
    found = misfits(LEG, claims)
    named = {m.field.value for m in found}
    unstated = {
        name
        for name, value in [
            ("venue_order_id", order_id),
            ("execution.order_id", execution_id),
            ("symbol", symbol),
            ("side", side),
            ("currency", currency),
            ("filled_quantity", filled),
        ]
        if value is None
    }
    assert not named & unstated
    assert all(m.venue is not None and m.ballast is not None for m in found)


# -------------------------------------------------------------------------------- what a venue's order states


def _order(**fields: Any) -> dict[str, Any]:
    return {"id": "ord_1", "symbol": "ACME", "side": "buy", "currency": "USD", "filled_quantity": "40"} | fields


def test_a_broker_order_object_states_its_id_symbol_side_currency_and_filled_quantity() -> None:
    assert claims_from_order(_order()) == VenueClaims("ord_1", None, "ACME", "buy", "USD", "40")
    assert misfits(LEG, claims_from_order(_order())) == ()


def test_an_executions_cumulative_quantity_and_order_id_are_what_a_fill_states() -> None:
    execution = {"id": "exec_1", "order_id": "ord_1", "quantity": "10", "cumulative_quantity": "50"}
    assert claims_from_order(_order(execution=execution)) == VenueClaims("ord_1", "ord_1", "ACME", "buy", "USD", "50")


def test_an_order_object_that_states_nothing_of_the_fields_claims_nothing() -> None:
    assert claims_from_order({}) == VenueClaims()
    assert claims_from_order({"id": None, "execution": None, "symbol": None}) == VenueClaims()
    assert claims_from_order({"execution": "not an object"}) == VenueClaims()


def test_numbers_are_stated_as_their_decimal_text_and_odd_values_as_json() -> None:
    claims = claims_from_order(_order(filled_quantity=Decimal("150.5"), id=123, symbol={"s": "ACME"}, side=True))
    assert (claims.filled_quantity, claims.venue_order_id, claims.symbol, claims.side) == (
        "150.5",
        "123",
        '{"s": "ACME"}',
        "true",
    )
    assert {m.field for m in misfits(LEG, claims)} == {F.VENUE_ORDER_ID, F.SYMBOL, F.SIDE, F.FILLED_QUANTITY}


def test_stated_text_is_fit_to_store_nul_and_lone_surrogates_replaced_and_cut() -> None:
    text = stated("ord_\x00\ud800" + "x" * 1000)
    assert text is not None
    assert "\x00" not in text and len(text) == STATED_LENGTH_MAX
    json.dumps(text).encode("utf-8")  # storable: no lone surrogate left
    assert text.startswith("ord_\ufffd?")
    assert stated(None) is None


def test_claims_as_evidence_hold_only_what_was_stated() -> None:
    assert VenueClaims(symbol="ACME", filled_quantity="3").as_evidence() == {"symbol": "ACME", "filled_quantity": "3"}
