"""Double-entry ledger rules: a posting's lines sum to zero per currency, and which events post what."""

from __future__ import annotations

import re
import uuid
from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal

from server.domain.errors import Defect
from server.domain.money import EXACT, MoneyError, quantize
from server.domain.payment_states import PaymentState

ACCOUNT_PATTERN = re.compile(r"[a-z][a-z0-9_]*(:[A-Za-z0-9_.@-]{1,128})*")
ACCOUNT_LENGTH_MAX = 200
EVENT_KEY_LENGTH_MAX = 200
ENTRY_DESCRIPTION_LENGTH_MAX = 500

#: Money the provider owes us for captured payments, until it settles them.
PROVIDER_CLEARING = "provider_clearing"


def settlement_bank(provider: str) -> str:
    """The bank account a provider pays its payouts into."""
    return f"bank:{provider}"


def fee_expense(provider: str) -> str:
    """What a provider's fees cost."""
    return f"fee_expense:{provider}"


def fx_adjustments(provider: str) -> str:
    """What a provider's FX adjustments gained (credit) or cost (debit)."""
    return f"fx_adjustment:{provider}"


def merchant_payable(client_id: str) -> str:
    """What Ballast owes the client (merchant) whose payment it took."""
    return f"merchant_payable:{client_id}"


class UnbalancedPosting(Defect):
    """Lines that do not make a valid double entry, built by Ballast's own code (a bug); nothing was written."""


@dataclass(frozen=True)
class LedgerLine:
    account: str
    #: signed: debits positive, credits negative; never zero
    amount: Decimal
    currency_code: str


@dataclass(frozen=True)
class Posting:
    """The lines one business event produces. `event_key` names the event; it can post once only."""

    event_key: str
    lines: tuple[LedgerLine, ...]
    description: str = ""
    payment_id: uuid.UUID | None = None

    def __post_init__(self) -> None:
        check_balanced(self)


def check_balanced(posting: Posting) -> None:
    """Raise UnbalancedPosting unless the posting is a valid double entry (checked again by PostgreSQL)."""
    if not posting.event_key or len(posting.event_key) > EVENT_KEY_LENGTH_MAX:
        raise UnbalancedPosting(f"event key must be 1 to {EVENT_KEY_LENGTH_MAX} characters")
    if len(posting.lines) < 2:
        raise UnbalancedPosting(f"{posting.event_key}: a posting needs at least two lines")
    totals: dict[str, Decimal] = defaultdict(Decimal)
    for line in posting.lines:
        if not isinstance(line.amount, Decimal):
            raise TypeError(f"{posting.event_key}: ledger amounts are Decimal, not {type(line.amount).__name__}")
        if len(line.account) > ACCOUNT_LENGTH_MAX or not ACCOUNT_PATTERN.fullmatch(line.account):
            raise UnbalancedPosting(f"{posting.event_key}: {line.account[:64]!r} is not an account name")
        if line.amount == 0:
            raise UnbalancedPosting(f"{posting.event_key}: a line of zero on {line.account}")
        try:
            quantize(line.amount.copy_abs(), line.currency_code)
        except MoneyError as error:
            raise UnbalancedPosting(f"{posting.event_key}: {error}") from None
        totals[line.currency_code] = EXACT.add(totals[line.currency_code], line.amount)
    unbalanced = {currency: total for currency, total in totals.items() if total != 0}
    if unbalanced:
        raise UnbalancedPosting(f"{posting.event_key}: lines do not sum to zero per currency: {unbalanced}")


def _transfer(
    event_key: str, debit: str, credit: str, amount: Decimal, currency_code: str, **fields: object
) -> Posting:
    return Posting(
        event_key=event_key,
        lines=(LedgerLine(debit, amount, currency_code), LedgerLine(credit, amount.copy_negate(), currency_code)),
        **fields,  # type: ignore[arg-type]
    )


def payment_postings(
    payment_id: uuid.UUID,
    client_id: str,
    amount: Decimal,
    currency_code: str,
    from_state: PaymentState,
    to_state: PaymentState,
) -> list[Posting]:
    """What the ledger records when a payment moves from_state -> to_state (often nothing).

    Money is recognised when the payment succeeds, and reversed when the provider's refund of the
    whole payment succeeds (REFUND_PENDING -> REFUNDED). A refund that fails returns to SUCCEEDED
    without posting: nothing had been reversed. The refunds Ballast asks for post their own reversals
    (refund_postings), so the payment's moves they cause (REFUND_MOVES) post nothing.
    """
    if to_state is PaymentState.SUCCEEDED and from_state is not PaymentState.REFUND_PENDING:
        return [
            _transfer(
                f"payment:{payment_id}:captured",
                PROVIDER_CLEARING,
                merchant_payable(client_id),
                amount,
                currency_code,
                description="payment captured",
                payment_id=payment_id,
            )
        ]
    if to_state is PaymentState.REFUNDED and from_state is PaymentState.REFUND_PENDING:
        return [
            _transfer(
                f"payment:{payment_id}:refunded",
                merchant_payable(client_id),
                PROVIDER_CLEARING,
                amount,
                currency_code,
                description="payment refunded",
                payment_id=payment_id,
            )
        ]
    return []


def refund_postings(
    refund_id: uuid.UUID, payment_id: uuid.UUID, client_id: str, amount: Decimal, currency_code: str
) -> list[Posting]:
    """What a refund Ballast asked for posts when the provider confirms it: the refunded amount taken
    back from the merchant and owed back by the provider's clearing, once per refund (its event key)."""
    return [
        _transfer(
            f"refund:{refund_id}:succeeded",
            merchant_payable(client_id),
            PROVIDER_CLEARING,
            amount,
            currency_code,
            description="refund succeeded",
            payment_id=payment_id,
        )
    ]


#: The entries each payment state implies, in posting order: a correction adds what the new state
#: implies and the old one lacks, and reverses what the old one had and the new one does not.
_CAPTURED, _REFUNDED = "captured", "refunded"
_ENTRIES_BY_STATE: dict[PaymentState, tuple[str, ...]] = {
    PaymentState.SUCCEEDED: (_CAPTURED,),
    PaymentState.REFUND_PENDING: (_CAPTURED,),
    PaymentState.REFUNDED: (_CAPTURED, _REFUNDED),
}


def correction_postings(
    payment_id: uuid.UUID,
    client_id: str,
    amount: Decimal,
    currency_code: str,
    from_state: PaymentState,
    to_state: PaymentState,
    correction_number: int,
) -> list[Posting]:
    """The compensating entries of the payment's `correction_number`-th correction, from_state -> to_state.

    Each has an event key of its own (`payment:<id>:correction:<n>:<entry>`), so a correction posts once
    and never collides with the payment's ordinary entries or an earlier correction's.
    """
    before, after = _ENTRIES_BY_STATE.get(from_state, ()), _ENTRIES_BY_STATE.get(to_state, ())
    payable, key = merchant_payable(client_id), f"payment:{payment_id}:correction:{correction_number}"
    directions = {_CAPTURED: (PROVIDER_CLEARING, payable), _REFUNDED: (payable, PROVIDER_CLEARING)}
    postings = []
    for entry in after:
        if entry not in before:
            debit, credit = directions[entry]
            postings.append(
                _transfer(
                    f"{key}:{entry}",
                    debit,
                    credit,
                    amount,
                    currency_code,
                    description=f"correction: payment {entry}",
                    payment_id=payment_id,
                )
            )
    for entry in reversed(before):
        if entry not in after:
            credit, debit = directions[entry]
            postings.append(
                _transfer(
                    f"{key}:{entry}_reversed",
                    debit,
                    credit,
                    amount,
                    currency_code,
                    description=f"correction: payment {entry} reversed",
                    payment_id=payment_id,
                )
            )
    return postings


def payout_postings(
    provider: str,
    payout_id: str,
    currency_code: str,
    *,
    cleared: Decimal,
    fees: Decimal,
    adjustments: Decimal,
    net: Decimal,
) -> list[Posting]:
    """What a payout the provider paid, and reconciliation matched, posts: once per payout (its event key
    `payout:<provider>:<payout id>`). The provider's clearing is credited with the gross of the charges
    and refunds it settles (what the provider owed for them), its bank account debited with the net
    paid, its fees debited to fee expense and its FX adjustments credited to their account (a gain; a
    negative one is a cost). The lines balance because net = gross - fee for every line."""
    lines = [
        LedgerLine(settlement_bank(provider), net, currency_code),
        LedgerLine(fee_expense(provider), fees, currency_code),
        LedgerLine(PROVIDER_CLEARING, cleared.copy_negate(), currency_code),
        LedgerLine(fx_adjustments(provider), adjustments.copy_negate(), currency_code),
    ]
    kept = tuple(line for line in lines if line.amount != 0)
    if len(kept) < 2:
        return []
    return [
        Posting(
            event_key=f"payout:{provider}:{payout_id}",
            lines=kept,
            description=f"payout {payout_id} settled"[:ENTRY_DESCRIPTION_LENGTH_MAX],
        )
    ]


def case_postings(case_id: uuid.UUID, account: str, difference: Decimal, currency_code: str) -> list[Posting]:
    """What a person's decision on a case posts for a difference (the provider's amount less Ballast's,
    signed), once per case: the provider's clearing moved by the difference, against `account`
    (reconciliation_adjustment:<provider>, write_off:<provider>)."""
    return [
        Posting(
            event_key=f"case:{case_id}:{account.split(':', 1)[0]}",
            lines=(
                LedgerLine(PROVIDER_CLEARING, difference, currency_code),
                LedgerLine(account, difference.copy_negate(), currency_code),
            ),
            description=f"case {case_id} resolved",
        )
    ]
