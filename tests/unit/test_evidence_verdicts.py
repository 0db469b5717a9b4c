"""Provider evidence is judged before it is applied: by what it claims, and by who says it.

The order of witnesses: the provider's API decides; a webhook only makes Ballast ask the API; Ballast
concludes only what it knows. Every cell of the evidence-judging table is pinned below.
"""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.domain.corrections import CORRECTIONS, Approval, approval_needed
from server.domain.ledger import PROVIDER_CLEARING, correction_postings, merchant_payable
from server.domain.payment_evidence import judge, misfits
from server.domain.payment_states import (
    EVENT_TARGETS,
    PAYMENT_EVENTS,
    REFUND_MOVES,
    UNDECIDED_STATES,
    PaymentEvent,
    PaymentState,
    Verdict,
    Witness,
    event_towards,
)

P, E, W = PaymentState, PaymentEvent, Witness

#: The events in the order of each row's letters below.
EVENTS = (
    E.ACCEPTED,
    E.OUTCOME_UNKNOWN,
    E.SUCCEEDED,
    E.FAILED,
    E.REJECTED,
    E.REFUND_REQUESTED,
    E.REFUND_SUCCEEDED,
    E.REFUND_FAILED,
    E.EXPIRED,
    E.REFUNDED_IN_PART,
)
LETTERS = {
    "A": Verdict.APPLY,
    "R": Verdict.REPEAT,
    "S": Verdict.STALE,
    "C": Verdict.CONFIRM,
    "X": Verdict.CORRECT,
    "H": Verdict.HOLD,
}

# witness -> current state -> one letter per event in EVENTS
TABLE: dict[Witness, dict[PaymentState, str]] = {
    W.API: {
        P.RECORDED: "AAAAAHHAAS",
        P.PENDING: "RSAAAHHASS",
        P.UNKNOWN: "ARAAAHHASS",
        P.SUCCEEDED: "SSRHHAHRSR",
        P.FAILED: "SSXRRHHXRS",
        P.REJECTED: "SSXRRHHXRS",
        P.REFUND_PENDING: "SSAHHRAASR",
        P.REFUNDED: "SSSSSSRSSS",
        P.PARTIALLY_REFUNDED: "SSRSSRSRSR",
        P.EXPIRED: "HSHRRHHHRS",
    },
    W.WEBHOOK: {
        P.RECORDED: "AACCCCCCCS",
        P.PENDING: "RSCCCCCCSS",
        P.UNKNOWN: "ARCCCCCCSS",
        P.SUCCEEDED: "SSRCCCCRSR",
        P.FAILED: "SSCRRCCCRS",
        P.REJECTED: "SSCRRCCCRS",
        P.REFUND_PENDING: "SSCCCRCCSR",
        P.REFUNDED: "SSSSSSRSSS",
        P.PARTIALLY_REFUNDED: "SSRSSRSRSR",
        P.EXPIRED: "CSCRRCCCRS",
    },
    W.BALLAST: {
        P.RECORDED: "AAAAASSAAS",
        P.PENDING: "RSAAASSASS",
        P.UNKNOWN: "ARAAASSASS",
        P.SUCCEEDED: "SSRSSASRSS",
        P.FAILED: "SSSRSSSSSS",
        P.REJECTED: "SSSSRSSSSS",
        P.REFUND_PENDING: "SSASSRAASS",
        P.REFUNDED: "SSSSSSRSSS",
        P.PARTIALLY_REFUNDED: "SSSSSSSSSR",
        P.EXPIRED: "SSSSSSSSRS",
    },
    # a settlement report's row: money paid out decides an undecided payment, and nothing else
    W.REPORT: {
        P.RECORDED: "SSASSSSASS",
        P.PENDING: "RSASSSSASS",
        P.UNKNOWN: "SRASSSSASS",
        P.SUCCEEDED: "SSRSSRSRSR",
        P.FAILED: "SSSRRSSSRS",
        P.REJECTED: "SSSRRSSSRS",
        P.REFUND_PENDING: "SSRSSRSRSR",
        P.REFUNDED: "SSSSSSRSSS",
        P.PARTIALLY_REFUNDED: "SSRSSRSRSR",
        P.EXPIRED: "SSSRRSSSRS",
    },
}

CELLS = [
    (witness, state, event, LETTERS[row[n]])
    for witness, rows in TABLE.items()
    for state, row in rows.items()
    for n, event in enumerate(EVENTS)
]


def test_the_table_covers_every_state_event_and_witness() -> None:
    assert set(EVENTS) == set(PaymentEvent)
    assert {(w, s) for w, rows in TABLE.items() for s in rows} == {(w, s) for w in Witness for s in PaymentState}


@pytest.mark.parametrize(("witness", "state", "event", "verdict"), CELLS, ids=lambda v: str(v))
def test_every_cell_of_the_evidence_judging_table(
    witness: Witness, state: PaymentState, event: PaymentEvent, verdict: Verdict
) -> None:
    assert judge(state, event, witness) is verdict


def test_the_seeds_story_a_webhook_never_decides_a_payment_the_api_does() -> None:
    # hang, then PENDING, FAILED, SUCCEEDED webhooks: the failed one makes Ballast ask, nothing moves
    assert judge(P.UNKNOWN, E.ACCEPTED, W.WEBHOOK) is Verdict.APPLY
    assert judge(P.PENDING, E.FAILED, W.WEBHOOK) is Verdict.CONFIRM
    assert judge(P.PENDING, E.SUCCEEDED, W.WEBHOOK) is Verdict.CONFIRM
    # the API, asked, says succeeded: that decides it
    assert judge(P.PENDING, E.SUCCEEDED, W.API) is Verdict.APPLY


def test_a_providers_word_never_makes_the_moves_a_payments_own_refunds_make() -> None:
    # the payment's refunds move it from their own evidence (server/services/refund_events.py)
    for witness in Witness:
        assert judge(P.SUCCEEDED, E.REFUNDED_IN_PART, witness) is not Verdict.APPLY
        assert judge(P.PARTIALLY_REFUNDED, E.REFUND_SUCCEEDED, witness) is not Verdict.APPLY
    # a refund Ballast never asked for still waits for a person
    assert judge(P.SUCCEEDED, E.REFUND_SUCCEEDED, W.API) is Verdict.HOLD


def test_a_refunded_word_is_a_repeat_when_the_payments_own_refunds_hold_all_of_it() -> None:
    assert judge(P.SUCCEEDED, E.REFUND_SUCCEEDED, W.API, refunds_hold_all=True) is Verdict.REPEAT
    assert judge(P.SUCCEEDED, E.REFUND_SUCCEEDED, W.WEBHOOK, refunds_hold_all=True) is Verdict.REPEAT
    assert judge(P.PARTIALLY_REFUNDED, E.REFUND_REQUESTED, W.API, refunds_hold_all=True) is Verdict.REPEAT
    # the rest of what is judged does not change
    assert judge(P.SUCCEEDED, E.FAILED, W.API, refunds_hold_all=True) is Verdict.HOLD


def test_a_refund_claim_about_an_undecided_payment_is_news_not_stale() -> None:
    assert judge(P.PENDING, E.REFUND_SUCCEEDED, W.WEBHOOK) is Verdict.CONFIRM
    assert judge(P.PENDING, E.REFUND_SUCCEEDED, W.API) is Verdict.HOLD


def test_the_api_contradicting_a_failure_with_a_success_corrects_it_automatically() -> None:
    assert judge(P.FAILED, E.SUCCEEDED, W.API) is Verdict.CORRECT
    assert judge(P.SUCCEEDED, E.FAILED, W.API) is Verdict.HOLD  # taking money back needs a person


@given(st.sampled_from(list(P)), st.sampled_from(list(E)), st.sampled_from(list(W)))
def test_the_verdict_agrees_with_the_machine_and_the_correction_table(
    current: PaymentState, event: PaymentEvent, witness: Witness
) -> None:
    verdict = judge(current, event, witness)
    target = EVENT_TARGETS[event]
    if verdict is Verdict.APPLY:
        towards = event_towards(current, target)
        assert towards is not None
        assert PAYMENT_EVENTS[current][towards] is target
        if witness is W.REPORT:  # money paid out decides an undecided payment, and makes no other move
            assert target is P.SUCCEEDED and current in UNDECIDED_STATES
    elif verdict in (Verdict.CORRECT, Verdict.HOLD):
        assert witness is W.API
        assert (CORRECTIONS[(current, target)].approval is Approval.AUTOMATIC) is (verdict is Verdict.CORRECT)
    elif verdict is Verdict.CONFIRM:
        assert witness is W.WEBHOOK
        assert event_towards(current, target) is not None or (current, target) in CORRECTIONS
    elif verdict is Verdict.STALE:  # older news: never a move evidence may make (a report makes one only)
        assert witness is W.REPORT or event_towards(current, target) is None or (current, target) in REFUND_MOVES


def test_a_payment_corrected_once_needs_a_person_for_any_further_correction() -> None:
    assert approval_needed(P.FAILED, P.SUCCEEDED, corrected_before=False) is Approval.AUTOMATIC
    assert approval_needed(P.FAILED, P.SUCCEEDED, corrected_before=True) is Approval.PERSON
    assert approval_needed(P.SUCCEEDED, P.FAILED, corrected_before=False) is Approval.PERSON


def test_the_correction_table_never_corrects_between_states_of_one_money_outcome() -> None:
    for (current, says), correction in CORRECTIONS.items():
        assert correction.to_state is says
        assert current is not says


# -- evidence that does not fit ---------------------------------------------------------------------

_TERMS = {"amount": Decimal("12.34"), "currency_code": "EUR", "provider_payment_id": "pay_1"}


@pytest.mark.parametrize(
    ("claimed", "differing"),
    [
        ({}, set()),  # states nothing: nothing to compare
        ({"claimed_amount": "12.34", "claimed_currency_code": "EUR", "claimed_provider_payment_id": "pay_1"}, set()),
        ({"claimed_amount": "12.340"}, set()),  # by value
        ({"claimed_currency_code": "eur"}, set()),
        ({"claimed_amount": "99999.00"}, {"amount"}),
        ({"claimed_amount": "twelve"}, {"amount"}),
        ({"claimed_amount": "NaN"}, {"amount"}),
        ({"claimed_currency_code": "USD"}, {"currency_code"}),
        ({"claimed_provider_payment_id": "pay_2"}, {"provider_payment_id"}),
        (
            {"claimed_amount": "99999.00", "claimed_currency_code": "USD", "claimed_provider_payment_id": "pay_2"},
            {"amount", "currency_code", "provider_payment_id"},
        ),
    ],
)
def test_evidence_that_names_other_terms_does_not_fit(claimed: dict[str, str], differing: set[str]) -> None:
    arguments = {"claimed_amount": None, "claimed_currency_code": None, "claimed_provider_payment_id": None}
    found = misfits(**_TERMS, **(arguments | claimed))  # type: ignore[arg-type]
    assert {misfit.field for misfit in found} == differing


def test_a_provider_id_is_compared_only_once_ballast_recorded_one() -> None:
    terms = _TERMS | {"provider_payment_id": None}
    assert (
        misfits(
            **terms,  # type: ignore[arg-type]
            claimed_amount=None,
            claimed_currency_code=None,
            claimed_provider_payment_id="pay_9",
        )
        == []
    )


# -- the ledger of a correction ---------------------------------------------------------------------


def _net(postings: list, account: str) -> Decimal:  # type: ignore[type-arg]
    return sum((line.amount for p in postings for line in p.lines if line.account == account), Decimal(0))


@pytest.mark.parametrize(
    ("from_state", "to_state", "clearing"),
    [
        (P.FAILED, P.SUCCEEDED, Decimal("10.00")),  # the capture posted
        (P.SUCCEEDED, P.FAILED, Decimal("-10.00")),  # the capture reversed
        (P.PENDING, P.REFUNDED, Decimal(0)),  # captured and refunded: both posted
        (P.SUCCEEDED, P.REFUNDED, Decimal("-10.00")),  # the refund posted
        (P.EXPIRED, P.PENDING, Decimal(0)),  # nothing yet
    ],
)
def test_a_correction_posts_what_the_new_state_implies_and_reverses_what_the_old_one_had(
    from_state: PaymentState, to_state: PaymentState, clearing: Decimal
) -> None:
    payment_id = uuid.uuid4()
    postings = correction_postings(payment_id, "shop", Decimal("10.00"), "EUR", from_state, to_state, 1)
    assert _net(postings, PROVIDER_CLEARING) == clearing
    assert _net(postings, merchant_payable("shop")) == -clearing
    assert all(p.event_key.startswith(f"payment:{payment_id}:correction:1:") for p in postings)
    assert len({p.event_key for p in postings}) == len(postings)
