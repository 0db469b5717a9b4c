from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.domain.errors import InvalidArgument
from server.domain.payments import validate_create_payment


def _valid(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "idempotency_key": "order-1",
        "amount_value": "10.00",
        "currency_code": "EUR",
        "description": "",
        "merchant_reference": "",
        "metadata": {},
    }
    return fields | overrides


def _violated_fields(**overrides: Any) -> set[str]:
    with pytest.raises(InvalidArgument) as caught:
        validate_create_payment(**_valid(**overrides))
    return {violation.field for violation in caught.value.violations}


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"amount_value": "0"}, "amount.value"),
        ({"amount_value": "0.00"}, "amount.value"),
        ({"amount_value": "-5"}, "amount.value"),
        ({"amount_value": "1.001"}, "amount.value"),
        ({"amount_value": ""}, "amount.value"),
        ({"currency_code": "ABC"}, "amount.currency_code"),
        ({"currency_code": ""}, "amount.currency_code"),
        ({"has_amount": False}, "amount"),
        ({"idempotency_key": ""}, "idempotency_key"),
        ({"idempotency_key": "k" * 256}, "idempotency_key"),
        ({"idempotency_key": "line\nbreak"}, "idempotency_key"),
        ({"idempotency_key": "   "}, "idempotency_key"),
        ({"description": "d" * 1001}, "description"),
        ({"description": "nul\x00"}, "description"),
        ({"merchant_reference": "r" * 256}, "merchant_reference"),
        ({"metadata": {f"k{i}": "v" for i in range(51)}}, "metadata"),
        ({"metadata": {"k" * 41: "v"}}, "metadata"),
        ({"metadata": {"note": "v" * 501}}, "metadata[note]"),
    ],
)
def test_each_bad_field_is_named(overrides: dict[str, Any], field: str) -> None:
    assert field in _violated_fields(**overrides)


def test_every_problem_is_reported_at_once() -> None:
    assert _violated_fields(idempotency_key="", amount_value="-1", description="d" * 1001) == {
        "idempotency_key",
        "amount.value",
        "description",
    }


def test_limits_are_inclusive() -> None:
    request = validate_create_payment(
        **_valid(idempotency_key="k" * 255, description="d" * 1000, merchant_reference="r" * 255)
    )
    assert len(request.idempotency_key) == 255


def test_the_same_parameters_give_the_same_fingerprint_whatever_their_spelling() -> None:
    first = validate_create_payment(**_valid(amount_value="10.5", metadata={"a": "1", "b": "2"}))
    second = validate_create_payment(**_valid(amount_value="10.50", metadata={"b": "2", "a": "1"}))
    assert first.fingerprint() == second.fingerprint()


@pytest.mark.parametrize(
    "overrides",
    [
        {"amount_value": "10.01"},
        {"currency_code": "USD"},
        {"description": "other"},
        {"merchant_reference": "other"},
        {"metadata": {"a": "1"}},
    ],
)
def test_any_different_parameter_gives_a_different_fingerprint(overrides: dict[str, Any]) -> None:
    assert (
        validate_create_payment(**_valid()).fingerprint()
        != validate_create_payment(**_valid(**overrides)).fingerprint()
    )


def test_the_idempotency_key_is_not_part_of_the_fingerprint() -> None:
    assert (
        validate_create_payment(**_valid(idempotency_key="a")).fingerprint()
        == validate_create_payment(**_valid(idempotency_key="b")).fingerprint()
    )


@given(description=st.text(max_size=1000).filter(lambda text: "\x00" not in text))
def test_any_description_within_limits_is_accepted(description: str) -> None:
    assert validate_create_payment(**_valid(description=description)).description == description
