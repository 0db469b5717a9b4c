from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.domain.money import AMOUNT_MAX, MINOR_UNITS, Money, MoneyError, parse_amount, parse_currency, quantize


def parse_money(value: str, currency_code: str) -> Money:
    """A money field as a request's validation reads it: the currency first, then the amount in it."""
    return Money(parse_amount(value, parse_currency(currency_code)), currency_code)


def test_amounts_are_quantized_to_the_currency_minor_unit() -> None:
    assert parse_money("12.3", "EUR").to_decimal_string() == "12.30"
    assert parse_money("500", "JPY").to_decimal_string() == "500"
    assert parse_money("1.25", "KWD").to_decimal_string() == "1.250"


@pytest.mark.parametrize(
    ("value", "currency"),
    [
        ("12.345", "EUR"),  # more fraction digits than EUR has
        ("12.340", "EUR"),  # even when the extra digit is zero
        ("1.5", "JPY"),
        ("1.0001", "KWD"),
    ],
)
def test_more_fraction_digits_than_the_currency_allows_are_refused(value: str, currency: str) -> None:
    with pytest.raises(MoneyError, match="fraction digits"):
        parse_amount(value, currency)


@pytest.mark.parametrize(
    "value",
    ["", "-1", "+1", "1e3", " 1", "1 ", "1,000", "01", ".5", "5.", "NaN", "Infinity", "0x10", "١٢", "10\n", "10.5\n"],
)
def test_anything_but_a_plain_decimal_string_is_refused(value: str) -> None:
    with pytest.raises(MoneyError):
        parse_amount(value, "EUR")


@pytest.mark.parametrize("code", ["XXX", "eur", "EURO", "", "XAU"])
def test_unknown_currencies_are_refused(code: str) -> None:
    with pytest.raises(MoneyError):
        parse_money("1", code)


def test_amounts_over_the_maximum_are_refused() -> None:
    with pytest.raises(MoneyError, match="maximum"):
        parse_amount(str(AMOUNT_MAX + 1), "EUR")


def test_money_refuses_a_float() -> None:
    with pytest.raises(TypeError):
        Money(12.34, "EUR")  # type: ignore[arg-type]


def test_quantize_refuses_to_round() -> None:
    with pytest.raises(MoneyError):
        quantize(Decimal("1.005"), "EUR")


@given(
    currency=st.sampled_from(sorted(MINOR_UNITS)),
    minor=st.integers(min_value=0, max_value=10**15),
)
def test_every_representable_amount_round_trips_exactly(currency: str, minor: int) -> None:
    digits = MINOR_UNITS[currency]
    amount = Decimal(minor).scaleb(-digits)
    if amount > AMOUNT_MAX:
        return
    text = format(amount, "f")
    parsed = parse_money(text, currency)
    assert parsed.amount == amount
    assert parse_money(parsed.to_decimal_string(), currency) == parsed
    assert parsed.amount.as_tuple().exponent == -digits


def test_error_messages_echo_only_a_short_prefix_of_the_input() -> None:
    with pytest.raises(MoneyError) as caught:
        parse_money("1", "Q" * 100_000)
    assert len(str(caught.value)) < 200


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("007.00", "leading zeros"),
        ("1" * 41, "at most 40"),
        ("-1.00", "a sign"),
        ("+1.00", "a sign"),
        ("1e2", "an exponent"),
        (" 1.00", "spaces"),
        ("1.", "both sides of one decimal point"),
        ("1.2.3", "both sides of one decimal point"),
        ("12,50", "only digits and one decimal point"),
    ],
)
def test_a_refused_amount_is_told_what_is_wrong_with_it(value: str, says: str) -> None:
    with pytest.raises(MoneyError) as refused:
        parse_amount(value, "EUR")
    assert says in str(refused.value)
    wrong_words = {"a sign", "an exponent", "spaces", "leading zeros"} - {says}
    assert not any(word in str(refused.value) for word in wrong_words)  # never blamed for what it lacks
