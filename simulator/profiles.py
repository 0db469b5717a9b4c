"""The named fault profiles: a vocabulary for "how bad is the provider today"."""

from __future__ import annotations

from simulator.settings import FaultSettings

PROFILES: dict[str, FaultSettings] = {
    # a provider on a good day: answers quickly, delivers every webhook once, in order; refunds
    # succeed after a short delay
    "calm": FaultSettings(),
    # an everyday unreliable provider: a little of every request fault, some slow webhooks, a few
    # refunds that fail or stay pending for long
    "flaky": FaultSettings(
        latency="uniform",
        latency_ms=20,
        latency_max_ms=300,
        hang_rate=0.02,
        hang_ms=5000,
        error_5xx_rate=0.05,
        rate_limit_rate=0.05,
        malformed_rate=0.03,
        reset_rate=0.03,
        accept_then_timeout_rate=0.03,
        webhook_delay_rate=0.1,
        webhook_delay_ms=1000,
        webhook_duplicate_rate=0.05,
        refund_fail_rate=0.05,
        refund_stuck_rate=0.05,
        refund_stuck_ms=10_000,
    ),
    # peak load: slow with a long tail, it often takes the payment (or refund) and never answers, and
    # refunds are slow, often pending for long, sometimes failed
    "monday-morning": FaultSettings(
        latency="long_tail",
        latency_ms=400,
        latency_max_ms=10_000,
        hang_rate=0.05,
        error_5xx_rate=0.05,
        rate_limit_rate=0.1,
        retry_after_s=2,
        accept_then_timeout_rate=0.15,
        webhook_delay_rate=0.3,
        webhook_delay_ms=2000,
        refund_settle_min_ms=200,
        refund_settle_max_ms=2000,
        refund_fail_rate=0.1,
        refund_stuck_rate=0.15,
        refund_stuck_ms=30_000,
    ),
    # the API behaves; the webhooks arrive twice, out of order, contradicting each other, or not at all
    "webhook-storm": FaultSettings(
        webhook_delay_rate=0.2,
        webhook_delay_ms=500,
        webhook_duplicate_rate=0.3,
        webhook_reorder_rate=0.3,
        webhook_contradict_rate=0.3,
        webhook_drop_rate=0.05,
    ),
    # the API and webhooks behave; the settlement reports do not agree with what happened
    "report-drift": FaultSettings(
        report_missing_rate=0.05,
        report_extra_rate=0.03,
        report_amount_rate=0.05,
        report_fee_rate=0.05,
        report_fx_rate=0.05,
        report_late_rate=0.05,
    ),
}


def profile(name: str) -> FaultSettings:
    """The settings of a named profile; the error lists the names there are."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}: choose one of {', '.join(PROFILES)}") from None
