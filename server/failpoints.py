"""Failpoints: named lines on a money path where a crash test kills the server, for real.

`BALLAST_FAILPOINTS=submission.after_provider_answer` makes the process SIGKILL itself the first
time it reaches that line, so a test can prove that nothing accepted is lost and that Ballast ends
equal to the provider's truth without any client retry, whichever line the crash hits. Development
only: settings refuse the variable in production. Unarmed, a failpoint costs one set lookup.
"""

from __future__ import annotations

import os
import signal
import sys

FAILPOINTS_ENV = "BALLAST_FAILPOINTS"

#: Every failpoint in the code, by name: where a crash test may stop the process.
FAILPOINTS = frozenset(
    {
        # the payment's submission is marked, the provider not yet asked
        "submission.before_provider_call",
        # the provider answered; nothing of its answer is written yet
        "submission.after_provider_answer",
        # the answer's transaction has done its work and not committed
        "submission.before_outcome_commit",
        # the same three lines of a refund's submission (server/services/refunds.py)
        "refund.before_provider_call",
        "refund.after_provider_answer",
        "refund.before_outcome_commit",
    }
)


def parse(raw: str) -> frozenset[str]:
    """The armed failpoints of a comma-separated list; ValueError names an unknown one."""
    names = frozenset(name.strip() for name in raw.split(",") if name.strip())
    unknown = sorted(names - FAILPOINTS)
    if unknown:
        raise ValueError(f"unknown failpoint {unknown[0]!r}: choose from {', '.join(sorted(FAILPOINTS))}")
    return names


_armed: frozenset[str] = frozenset()


def arm(names: frozenset[str]) -> None:
    """Arm these failpoints in this process (the server does it from its settings at start-up)."""
    global _armed
    _armed = names


def failpoint(name: str) -> None:
    """Kill this process here if `name` is armed: no cleanup, no flush, as a power cut would."""
    if name in _armed:
        print(f"failpoint {name}: killing the process", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
