"""Fine-grained fault settings: every probability and duration a profile can set.

One frozen dataclass, so a profile is a value that can be logged, compared and returned by the
control API as it is. Units are in the field names (`_ms`, `_s`, `_rate`) because a bare `delay=5`
has caused enough outages.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, get_args

LatencyMode = Literal["none", "fixed", "uniform", "long_tail"]
LATENCY_MODES: tuple[str, ...] = get_args(LatencyMode)


@dataclass(frozen=True)
class FaultSettings:
    """What the provider does, in probabilities per request / per webhook event and durations."""

    # outcomes: a payment succeeds with success_rate, else fails or is declined (even odds)
    success_rate: float = 0.95
    settle_min_ms: int = 20  # a pending payment moves on after a delay drawn in [min, max]
    settle_max_ms: int = 200
    # latency added to every API request
    latency: LatencyMode = "none"
    latency_ms: int = 0  # fixed: the delay; uniform: the lower bound; long_tail: the median
    latency_max_ms: int = 0  # uniform: the upper bound; long_tail: the cap
    # request faults: at most one per request, drawn in this order
    hang_rate: float = 0.0
    hang_ms: int = 0  # 0: hang until the client disconnects
    error_5xx_rate: float = 0.0
    rate_limit_rate: float = 0.0
    retry_after_s: int = 1
    malformed_rate: float = 0.0
    reset_rate: float = 0.0
    accept_then_timeout_rate: float = 0.0
    # webhook faults, drawn per event
    webhook_delay_rate: float = 0.0
    webhook_delay_ms: int = 0
    webhook_duplicate_rate: float = 0.0
    webhook_reorder_rate: float = 0.0  # only a pending event: it is delivered after the final one
    webhook_contradict_rate: float = 0.0  # only a final event: the opposite outcome is sent first
    webhook_drop_rate: float = 0.0
    # refunds: a refund stays pending for a delay drawn in [min, max], or, at refund_stuck_rate, for
    # refund_stuck_ms (a long pending); then it fails at refund_fail_rate, else it succeeds
    refund_settle_min_ms: int = 20
    refund_settle_max_ms: int = 200
    refund_stuck_rate: float = 0.0
    refund_stuck_ms: int = 30_000
    refund_fail_rate: float = 0.0
    # broker orders: rejected; else resting (working until canceled); else filled in 1..parts_max fills
    # spaced like a payment's settle delay; a modification is refused at modify_reject_rate
    order_reject_rate: float = 0.02
    order_rest_rate: float = 0.0
    order_fill_parts_max: int = 3
    modify_reject_rate: float = 0.05
    # settlement: fees (basis points of the amount plus a fixed fee in minor units), payout delay
    fee_bps: int = 290
    fee_fixed_minor_units: int = 30
    settlement_delay_days: int = 1
    # the fee the provider books on a succeeded refund, fixed per refund in minor units; the original
    # charge's fee is not returned (a refund line's fee is this, never a share of the charge's)
    refund_fee_fixed_minor_units: int = 0
    # settlement-report drift, drawn per booked transaction
    report_missing_rate: float = 0.0  # the line is not in the report
    report_extra_rate: float = 0.0  # a line for a charge nobody made is added
    report_amount_rate: float = 0.0  # the reported gross differs
    report_fee_rate: float = 0.0  # the reported fee differs from the schedule
    report_fx_rate: float = 0.0  # an fx adjustment line follows it
    report_late_rate: float = 0.0  # it settles a day later than it should
    # webhook delivery
    webhook_max_attempts: int = 5
    webhook_retry_base_ms: int = 200  # backoff: base, 2*base, 4*base, ...
    webhook_timeout_ms: int = 5000

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name.endswith("_rate") and not (isinstance(value, int | float) and 0.0 <= value <= 1.0):
                raise ValueError(f"{field.name} must be a number from 0 to 1, not {value!r}")
            if field.name.endswith(("_ms", "_s", "_days", "_bps", "_units", "_max")) and not (
                isinstance(value, int) and not isinstance(value, bool) and value >= 0
            ):
                raise ValueError(f"{field.name} must be a whole number >= 0, not {value!r}")
        if self.latency not in LATENCY_MODES:
            raise ValueError(f"latency must be one of {', '.join(LATENCY_MODES)}, not {self.latency!r}")
        if self.settle_max_ms < self.settle_min_ms:
            raise ValueError("settle_max_ms must be >= settle_min_ms")
        if self.refund_settle_max_ms < self.refund_settle_min_ms:
            raise ValueError("refund_settle_max_ms must be >= refund_settle_min_ms")
        if self.webhook_max_attempts < 1:
            raise ValueError("webhook_max_attempts must be >= 1")
        if self.order_fill_parts_max < 1:
            raise ValueError("order_fill_parts_max must be >= 1")
        request_faults = (
            self.hang_rate
            + self.error_5xx_rate
            + self.rate_limit_rate
            + self.malformed_rate
            + self.reset_rate
            + self.accept_then_timeout_rate
        )
        if request_faults > 1.0:
            raise ValueError(f"the request fault rates add up to {request_faults}, more than 1")

    def with_overrides(self, overrides: dict[str, Any]) -> FaultSettings:
        """A copy with some fields replaced; unknown names are an error, not silently ignored."""
        known = {field.name for field in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown setting(s): {', '.join(unknown)}")
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
