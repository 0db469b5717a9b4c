"""Webhook signatures: only a recent HMAC over the exact body with the shared secret passes."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from server.providers.signatures import TOLERANCE_S, signature_problem

SECRET = "whsec_unit"  # noqa: S105 - a test secret
BODY = b'{"id": "evt_1"}'
NOW = 1_800_000_000


def _v1(body: bytes, t: int | str, secret: str = SECRET) -> str:
    return hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()


def test_a_recent_signature_over_the_body_passes() -> None:
    assert signature_problem(BODY, f"t={NOW},v1={_v1(BODY, NOW)}", SECRET, NOW) is None
    # several v1 entries, one of them right: a secret being rotated
    assert signature_problem(BODY, f"t={NOW},v1={'0' * 64},v1={_v1(BODY, NOW)}", SECRET, NOW) is None


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        (None, "missing"),
        ("", "missing"),
        ("v1=abc", "malformed"),
        (f"t={NOW},t={NOW},v1={_v1(BODY, NOW)}", "malformed"),
        ("t=\u00b2,v1=00", "malformed"),  # a digit to str.isdigit(), not to int()
        (f"t={'9' * 5000},v1=00", "malformed"),  # more digits than int() will read
        (f"t={NOW - TOLERANCE_S - 1},v1={_v1(BODY, NOW - TOLERANCE_S - 1)}", "stale"),
        (f"t={NOW + TOLERANCE_S + 1},v1={_v1(BODY, NOW + TOLERANCE_S + 1)}", "stale"),
        (f"t={NOW},v1={_v1(BODY + b' ', NOW)}", "mismatch"),
        (f"t={NOW},v1={_v1(BODY, NOW, 'whsec_other')}", "mismatch"),  # another secret
    ],
)
def test_anything_else_is_refused_with_its_reason(header: str | None, problem: str) -> None:
    assert signature_problem(BODY, header, SECRET, NOW) == problem
