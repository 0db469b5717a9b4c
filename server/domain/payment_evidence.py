"""Judging evidence about a payment before anything is written: does it fit the payment, and what does it mean?

A piece of evidence names a payment's terms (misfits: another amount, currency or provider object
moves nothing and opens a case) and claims an outcome, which `judge` sorts by who says it (the order
of witnesses, Witness), the machine (payment_states.py) and the correction table (corrections.py):
the verdict (Verdict). server/services/payment_events.py applies it.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from server.domain.corrections import CORRECTIONS, Approval
from server.domain.payment_states import (
    EVENT_TARGETS,
    MONEY_OUTCOMES,
    REFUND_MOVES,
    REFUNDED_STATES,
    UNDECIDED_STATES,
    PaymentEvent,
    PaymentState,
    Verdict,
    Witness,
    event_towards,
)


def judge(current: PaymentState, event: PaymentEvent, witness: Witness, *, refunds_hold_all: bool = False) -> Verdict:
    """Sort evidence by what it claims and who says it (the evidence-judging table).

    - The claim names the current state: REPEAT.
    - A webhook may move a payment to PENDING where the machine allows (the provider has it;
      nothing is decided).
      Any other claim of a webhook is CONFIRMed with the API first when the API's word could change
      something (a move, or a correction the table lists); else it is a REPEAT when the payment is
      decided with the same money outcome (failed for REJECTED), and STALE otherwise (pending after
      succeeded, succeeded after refunded).
    - The API's word applies wherever the machine has a move to the state it claims (APPLY). Where it
      has none: the same money outcome is a REPEAT (REJECTED vs failed), a contradiction the
      correction table lists is CORRECTed or HELD for a person, and anything else is STALE (pending
      after succeeded: a slower answer from before the decision).
    - Ballast's own conclusions apply only where the machine allows them, else they are STALE.
    - A settlement report's row (money paid out) decides an undecided payment SUCCEEDED; to a decided
      one it is a REPEAT (the same money outcome) or STALE, and reconciliation opens a case for a
      person where it differs.
    - The machine's refund moves (REFUND_MOVES) are made by the payment's own refunds only, from
      their evidence (server/services/refund_events.py): evidence about the payment claiming one is
      judged as if the machine had no such move (a refund Ballast never asked for is a correction
      for a person).
      When those refunds hold all of the payment (`refunds_hold_all`), a provider's word that it is
      refunded is theirs seen from the payment's side: a REPEAT (the refunds' checks settle them).
    """
    target = EVENT_TARGETS[event]
    if target is current:
        return Verdict.REPEAT
    if refunds_hold_all and witness is not Witness.BALLAST and target in REFUNDED_STATES:
        return Verdict.REPEAT
    moves = event_towards(current, target) is not None and (current, target) not in REFUND_MOVES
    if witness is Witness.BALLAST:
        return Verdict.APPLY if moves else Verdict.STALE
    if witness is Witness.REPORT:  # decides an undecided payment only; a decided one is a person's case
        if moves and current in UNDECIDED_STATES and target is PaymentState.SUCCEEDED:
            return Verdict.APPLY
        same_outcome = current in MONEY_OUTCOMES and MONEY_OUTCOMES.get(target) is MONEY_OUTCOMES[current]
        return Verdict.REPEAT if same_outcome else Verdict.STALE
    correction = CORRECTIONS.get((current, target))
    if witness is Witness.WEBHOOK:
        if target in UNDECIDED_STATES and moves:
            return Verdict.APPLY
        if moves or correction is not None:  # what the API would say could change something: ask it
            return Verdict.CONFIRM
    elif moves:
        return Verdict.APPLY
    if current in MONEY_OUTCOMES and MONEY_OUTCOMES.get(target) is MONEY_OUTCOMES[current]:
        return Verdict.REPEAT
    if correction is None or witness is Witness.WEBHOOK:
        return Verdict.STALE
    return Verdict.CORRECT if correction.approval is Approval.AUTOMATIC else Verdict.HOLD


@dataclass(frozen=True)
class Misfit:
    """A term the evidence names differently from the payment Ballast holds."""

    field: str
    ballast: str
    provider: str


def _same_amount(amount: Decimal, claimed: str) -> bool:
    try:
        return Decimal(claimed.strip()) == amount
    except ArithmeticError:  # not a number at all: it cannot be this payment's amount
        return False


def misfits(
    *,
    amount: Decimal,
    currency_code: str,
    provider_payment_id: str | None,
    claimed_amount: str | None,
    claimed_currency_code: str | None,
    claimed_provider_payment_id: str | None,
) -> list[Misfit]:
    """The terms in which provider evidence contradicts the payment; empty when it fits.

    Amounts compare by value ("12.3" is 12.30); a term the evidence does not state is not compared,
    nor a provider id Ballast has not recorded yet (the first one named is kept).
    """
    found: list[Misfit] = []
    if claimed_amount is not None and not _same_amount(amount, claimed_amount):
        found.append(Misfit("amount", format(amount, "f"), claimed_amount[:64]))
    if claimed_currency_code is not None and claimed_currency_code.strip().upper() != currency_code:
        found.append(Misfit("currency_code", currency_code, claimed_currency_code[:64]))
    differing_id = id_misfit("provider_payment_id", provider_payment_id, claimed_provider_payment_id)
    if differing_id is not None:
        found.append(differing_id)
    return found


def id_misfit(field: str, known: str | None, claimed: str | None) -> Misfit | None:
    """A provider id the evidence names differently from the one Ballast recorded; None when either is
    unknown (the first one named is kept) or they are the same."""
    if claimed is None or known is None or claimed == known:
        return None
    return Misfit(field, known, claimed[:255])
