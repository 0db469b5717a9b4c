"""Which faults hit a request or a webhook event: drawn from the seeded RNG or named in a header.

Drawing happens in one synchronous step when a request arrives (or a payment is created), so the
sequence of draws, and so the faults, depends only on the seed and the order of requests.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from simulator.settings import FaultSettings

FAULT_HEADER = "Simulator-Fault"

# request faults that need no number (the `error`, `rate-limit` and `hang` tokens may carry one)
REQUEST_FAULTS = ("hang", "error", "rate-limit", "malformed", "reset", "accept-then-timeout")
WEBHOOK_FAULTS = ("webhook-delay", "webhook-duplicate", "webhook-reorder", "webhook-contradict", "webhook-drop")


@dataclass(frozen=True)
class WebhookFaults:
    """Webhook faults forced on every event of one payment (from a request's fault header)."""

    delay_ms: int = 0
    duplicate: bool = False
    reorder: bool = False
    contradict: bool = False
    drop: bool = False


@dataclass(frozen=True)
class RequestFaults:
    """What to do to one API request: extra latency plus at most one fault."""

    latency_ms: int = 0
    fault: str | None = None  # one of REQUEST_FAULTS
    hang_ms: int = 0  # for "hang": 0 means until the client disconnects
    status: int = 503  # for "error"
    retry_after_s: int = 1  # for "rate-limit"
    # set only when the request named webhook faults: they replace the profile's for its payment
    webhooks: WebhookFaults | None = field(default=None)

    def describe(self) -> str:
        """A short label for logs and the truth record."""
        return self.fault or "none"


def draw_latency_ms(rng: random.Random, settings: FaultSettings) -> int:
    if settings.latency == "fixed":
        return settings.latency_ms
    if settings.latency == "uniform":
        return rng.randint(settings.latency_ms, max(settings.latency_ms, settings.latency_max_ms))
    if settings.latency == "long_tail":
        # log-normal around the median: most requests near it, a few many times slower
        median = max(settings.latency_ms, 1)
        drawn = rng.lognormvariate(math.log(median), 1.0)
        cap = settings.latency_max_ms or median * 20
        return int(min(drawn, cap))
    return 0


def draw_request_faults(rng: random.Random, settings: FaultSettings) -> RequestFaults:
    """Latency, then one uniform draw that picks at most one fault by cumulative probability."""
    latency_ms = draw_latency_ms(rng, settings)
    roll = rng.random()
    choices = (
        ("hang", settings.hang_rate),
        ("error", settings.error_5xx_rate),
        ("rate-limit", settings.rate_limit_rate),
        ("malformed", settings.malformed_rate),
        ("reset", settings.reset_rate),
        ("accept-then-timeout", settings.accept_then_timeout_rate),
    )
    threshold = 0.0
    for name, rate in choices:
        threshold += rate
        if roll < threshold:
            status = rng.choice((500, 502, 503)) if name == "error" else 503
            return RequestFaults(
                latency_ms=latency_ms,
                fault=name,
                hang_ms=settings.hang_ms,
                status=status,
                retry_after_s=settings.retry_after_s,
            )
    return RequestFaults(latency_ms=latency_ms)


def parse_fault_header(value: str) -> RequestFaults:
    """Parse `Simulator-Fault: hang=500, webhook-duplicate` into a plan; ValueError names a bad token.

    Tokens: none, latency=MS, hang[=MS], error[=5xx], rate-limit[=SECONDS], malformed, reset,
    accept-then-timeout, webhook-delay=MS, webhook-duplicate, webhook-reorder, webhook-contradict,
    webhook-drop.
    """
    latency_ms = 0
    fault: str | None = None
    hang_ms = 0
    status = 503
    retry_after_s = 1
    webhook_delay_ms = 0
    webhook_flags: set[str] = set()
    for raw in value.split(","):
        token = raw.strip().lower()
        if token in ("", "none"):
            continue
        name, _, argument = token.partition("=")
        number = _number(token, argument) if argument else None
        if name == "latency" and number is not None:
            latency_ms = number
        elif name in REQUEST_FAULTS:
            if fault is not None:
                raise ValueError(f"{FAULT_HEADER}: at most one request fault, got {fault!r} and {name!r}")
            fault = name
            if name == "hang":
                hang_ms = number or 0
            elif name == "error":
                status = number if number is not None else 503
                if not 500 <= status <= 599:
                    raise ValueError(f"{FAULT_HEADER}: {token!r} needs a 5xx status")
            elif name == "rate-limit":
                retry_after_s = number if number is not None else 1
            elif number is not None:
                raise ValueError(f"{FAULT_HEADER}: {name!r} takes no value")
        elif name == "webhook-delay" and number is not None:
            webhook_delay_ms = number
        elif name in WEBHOOK_FAULTS and number is None:
            webhook_flags.add(name)
        else:
            raise ValueError(f"{FAULT_HEADER}: unknown fault {token!r}")
    return RequestFaults(
        latency_ms=latency_ms,
        fault=fault,
        hang_ms=hang_ms,
        status=status,
        retry_after_s=retry_after_s,
        webhooks=WebhookFaults(
            delay_ms=webhook_delay_ms,
            duplicate="webhook-duplicate" in webhook_flags,
            reorder="webhook-reorder" in webhook_flags,
            contradict="webhook-contradict" in webhook_flags,
            drop="webhook-drop" in webhook_flags,
        ),
    )


def _number(token: str, argument: str) -> int:
    if not argument.isdigit():
        raise ValueError(f"{FAULT_HEADER}: {token!r} needs a whole number")
    return int(argument)


def draw_webhook_faults(rng: random.Random, settings: FaultSettings) -> WebhookFaults:
    """One event's webhook faults: a fixed number of draws, so later draws do not shift."""
    delayed = rng.random() < settings.webhook_delay_rate
    return WebhookFaults(
        delay_ms=settings.webhook_delay_ms if delayed else 0,
        duplicate=rng.random() < settings.webhook_duplicate_rate,
        reorder=rng.random() < settings.webhook_reorder_rate,
        contradict=rng.random() < settings.webhook_contradict_rate,
        drop=rng.random() < settings.webhook_drop_rate,
    )
