"""Provider evidence is sorted before it is applied: news, repeats, late news, and contradictions."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from server.domain.payment_states import PaymentEvent, Verdict, decide, judge
from server.domain.payments import PaymentState
from server.domain.state_machine import IllegalTransition

P, E = PaymentState, PaymentEvent


def test_a_late_pending_after_success_is_stale() -> None:
    assert judge(P.SUCCEEDED, E.ACCEPTED) is Verdict.STALE
    assert judge(P.FAILED, E.OUTCOME_UNKNOWN) is Verdict.STALE


def test_the_opposite_outcome_after_a_decided_one_is_a_contradiction() -> None:
    assert judge(P.FAILED, E.SUCCEEDED) is Verdict.CONTRADICTION
    assert judge(P.SUCCEEDED, E.FAILED) is Verdict.CONTRADICTION
    assert judge(P.REFUNDED, E.REJECTED) is Verdict.CONTRADICTION
    assert judge(P.REJECTED, E.REFUND_SUCCEEDED) is Verdict.CONTRADICTION


def test_news_and_repeats() -> None:
    assert judge(P.PENDING, E.SUCCEEDED) is Verdict.APPLY
    assert judge(P.UNKNOWN, E.FAILED) is Verdict.APPLY
    assert judge(P.SUCCEEDED, E.SUCCEEDED) is Verdict.REPEAT


@given(st.sampled_from(list(P)), st.sampled_from(list(E)))
def test_the_verdict_agrees_with_the_state_machine(current: PaymentState, event: PaymentEvent) -> None:
    verdict = judge(current, event)
    try:
        decision = decide(current, event)
    except IllegalTransition:
        assert verdict in (Verdict.STALE, Verdict.CONTRADICTION)
    else:
        assert verdict is (Verdict.APPLY if decision.changes else Verdict.REPEAT)
