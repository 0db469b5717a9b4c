"""Webhook signatures in Stripe's scheme, so a receiver proves an event came from the provider.

Header `Simulator-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>">`. Signing
the timestamp with the body lets a receiver refuse old replays as well as forgeries.
"""

from __future__ import annotations

import hashlib
import hmac
import time

SIGNATURE_HEADER = "Simulator-Signature"


def sign(body: bytes, secret: str, timestamp: int | None = None) -> str:
    """The header value for `body` sent at `timestamp` (now by default)."""
    t = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={digest}"


def verify(body: bytes, header: str, secret: str, tolerance_s: int = 300, now: int | None = None) -> bool:
    """True when some v1 signature in `header` matches and its timestamp is within the tolerance."""
    parts = [part.split("=", 1) for part in header.split(",") if "=" in part]
    timestamps = [value for name, value in parts if name.strip() == "t"]
    signatures = [value for name, value in parts if name.strip() == "v1"]
    if len(timestamps) != 1 or not timestamps[0].isdigit() or not signatures:
        return False
    t = int(timestamps[0])
    if abs((int(time.time()) if now is None else now) - t) > tolerance_s:
        return False
    expected = sign(body, secret, t).split("v1=", 1)[1]
    return any(hmac.compare_digest(expected, candidate) for candidate in signatures)
