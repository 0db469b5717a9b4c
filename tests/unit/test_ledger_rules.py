"""Postings: every one sums to zero per currency; payment moves post what the rules say."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.domain.ledger import (
    PROVIDER_CLEARING,
    LedgerLine,
    Posting,
    UnbalancedPosting,
    merchant_payable,
    payment_postings,
)
from server.domain.payment_states import PAYMENT_MACHINE, REFUND_MOVES, PaymentState

P = PaymentState


def test_unbalanced_lines_are_refused() -> None:
    with pytest.raises(UnbalancedPosting, match="sum to zero"):
        Posting("e", (LedgerLine("a", Decimal("1.00"), "EUR"), LedgerLine("b", Decimal("-0.99"), "EUR")))


def test_balance_is_per_currency() -> None:
    with pytest.raises(UnbalancedPosting):
        Posting("e", (LedgerLine("a", Decimal("1.00"), "EUR"), LedgerLine("b", Decimal("-1.00"), "USD")))


@pytest.mark.parametrize(
    "lines",
    [
        (LedgerLine("a", Decimal("1.00"), "EUR"),),
        (LedgerLine("a", Decimal("0"), "EUR"), LedgerLine("b", Decimal("0"), "EUR")),
        (LedgerLine("a", Decimal("1.001"), "EUR"), LedgerLine("b", Decimal("-1.001"), "EUR")),
        (LedgerLine("Bad Account", Decimal("1"), "EUR"), LedgerLine("b", Decimal("-1"), "EUR")),
    ],
)
def test_malformed_postings_are_refused(lines: tuple[LedgerLine, ...]) -> None:
    with pytest.raises(UnbalancedPosting):
        Posting("e", lines)


def test_a_float_amount_is_refused() -> None:
    with pytest.raises(TypeError):
        Posting("e", (LedgerLine("a", 1.0, "EUR"), LedgerLine("b", -1.0, "EUR")))  # type: ignore[arg-type]


amounts = st.decimals(min_value=Decimal("0.01"), max_value=Decimal("1000000000"), places=2)


@given(amount=amounts, path=st.lists(st.sampled_from(list(P)), max_size=20))
def test_every_posting_a_payment_produces_sums_to_zero_and_the_net_follows_the_state(
    amount: Decimal, path: list[PaymentState]
) -> None:
    payment_id = uuid.uuid4()
    state = PAYMENT_MACHINE.initial
    balances: dict[str, Decimal] = {}
    keys: set[str] = set()
    reached_by_refunds = False
    for wanted in path:
        if not PAYMENT_MACHINE.allows(state, wanted):
            continue
        reached_by_refunds = (state, wanted) in REFUND_MOVES
        for posting in payment_postings(payment_id, "shop", amount, "EUR", state, wanted):
            assert sum(line.amount for line in posting.lines) == 0
            assert posting.event_key not in keys, "one business event posted twice"
            keys.add(posting.event_key)
            for line in posting.lines:
                balances[line.account] = balances.get(line.account, Decimal(0)) + line.amount
        state = wanted
    owed = balances.get(merchant_payable("shop"), Decimal(0))
    # the moves a payment's own refunds make post nothing (each refund posts its own reversal), so a
    # payment they left PARTIALLY_REFUNDED or REFUNDED still owes the capture in its own entries
    returned_by_refunds = state is P.PARTIALLY_REFUNDED or (state is P.REFUNDED and reached_by_refunds)
    expected = -amount if state in (P.SUCCEEDED, P.REFUND_PENDING) or returned_by_refunds else Decimal(0)
    assert owed == expected
    assert balances.get(PROVIDER_CLEARING, Decimal(0)) == -owed
