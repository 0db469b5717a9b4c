"""Ballast ends on the provider's truth: under each misbehaving simulator profile, a load of
payments whose clients retry and give up as the README tells them converges, and the database then
agrees with what the simulator really did (tests/convergence.py has the harness and the checker;
`make converge` runs the full-sized load)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.convergence import PROFILES, RunPlan, ServerTimings, run_profile

pytestmark = pytest.mark.e2e

#: A short run: every profile's faults still show at this size (the full run has 300 payments).
PAYMENTS = 40
IN_FLIGHT = 16
#: One seed per profile, so that a failure replays the same faults.
SEEDS = {"webhook-storm": 11, "monday-morning": 12, "flaky": 13}
#: Shorter than the command's 20 s so the three runs fit in CI: still more than twice the provider
#: timeout, and longer than any pause between one client's retries.
TIMINGS = ServerTimings(payment_expiry_ms=10_000)
CONVERGENCE_TIMEOUT_S = 90.0
DRAIN_TIMEOUT_S = 20.0
WITNESSES_SHOWN = 10


@pytest.mark.parametrize("profile", PROFILES)
def test_every_payment_ends_where_the_provider_is(
    profile: str, server_database_url: str, nats_url: str, tmp_path: Path
) -> None:
    plan = RunPlan(
        profile=profile,
        seed=SEEDS[profile],
        payments=PAYMENTS,
        in_flight=IN_FLIGHT,
        timings=TIMINGS,
        convergence_timeout_s=CONVERGENCE_TIMEOUT_S,
        drain_timeout_s=DRAIN_TIMEOUT_S,
    )
    report = run_profile(plan, server_database_url, nats_url, tmp_path)
    print(report.render(WITNESSES_SHOWN))
    assert report.ok, report.render(WITNESSES_SHOWN)
