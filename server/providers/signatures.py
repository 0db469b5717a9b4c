"""Webhook signatures, verified before anything is parsed or stored.

The scheme is Stripe's: a header `t=<unix seconds>,v1=<hex>` where `<hex>` is the HMAC-SHA256 of
`"<t>." + raw body`, keyed with the webhook secret. Verify over the raw bytes, compare in constant
time, and refuse timestamps outside the tolerance so a captured delivery cannot be replayed later.
"""

from __future__ import annotations

import hashlib
import hmac
import re

#: How far a signature's timestamp may be from now, either way.
TOLERANCE_S = 300
_TIMESTAMP = re.compile(r"[0-9]{1,12}")


def signature_problem(
    body: bytes, header: str | None, secret: str, now_s: int, tolerance_s: int = TOLERANCE_S
) -> str | None:
    """None when `header` signs `body` with `secret` recently enough; else why not, in a few words."""
    if not header:
        return "missing"
    parts = [part.split("=", 1) for part in header.split(",") if "=" in part]
    timestamps = [value.strip() for name, value in parts if name.strip() == "t"]
    signatures = [value.strip() for name, value in parts if name.strip() == "v1"]
    # ASCII digits only, and a bounded count: str.isdigit() takes "²" and int() refuses 5000 digits
    if len(timestamps) != 1 or not _TIMESTAMP.fullmatch(timestamps[0]) or not signatures:
        return "malformed"
    timestamp = int(timestamps[0])
    if abs(now_s - timestamp) > tolerance_s:
        return "stale"
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    if not any(hmac.compare_digest(expected, candidate) for candidate in signatures):
        return "mismatch"
    return None
