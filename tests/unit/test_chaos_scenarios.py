"""The chaos scenarios (chaos/scenarios.py): the issue's named stories exist, every fault is one the
proxies and the run can apply, every fault heals before the load ends, and a seed replays the same
faults in the same order while another seed moves them."""

from __future__ import annotations

import pytest

from chaos.scenarios import (
    PROXIES,
    SCENARIOS,
    Down,
    Fault,
    Kill,
    Load,
    Scenario,
    Toxic,
    plan,
    scenario,
    smoke,
)
from chaos.toxiproxy.toxics import ATTRIBUTES, toxic_from_body

REQUIRED = {
    "provider-hang",
    "accept-then-timeout",
    "provider-flapping",
    "webhook-storm",
    "db-latency",
    "db-reset",
    "broker-down",
    "server-kill-9",
    "relay-kill",
    "two-replicas",
    "monday-morning",
}


def test_every_story_the_harness_promises_is_a_scenario_and_the_smoke_run_is_a_few_of_them() -> None:
    assert set(SCENARIOS) >= REQUIRED
    assert 1 <= len(smoke()) <= 4
    assert {item.name for item in smoke()} <= set(SCENARIOS)


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_every_toxic_is_one_toxiproxy_takes_on_a_proxy_the_run_has(name: str) -> None:
    for fault in SCENARIOS[name].faults:
        if isinstance(fault.what, Toxic):
            toxic = fault.what
            assert toxic.proxy in PROXIES
            assert set(toxic.attributes) <= set(ATTRIBUTES[toxic.type])
            # what the Toxiproxy API would be sent is accepted as it is
            toxic_from_body(
                {
                    "name": "t",
                    "type": toxic.type,
                    "stream": toxic.stream,
                    "toxicity": toxic.toxicity,
                    "attributes": dict(toxic.attributes),
                }
            )
        elif isinstance(fault.what, Down):
            assert fault.what.proxy in PROXIES


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_every_fault_heals_before_the_load_ends_whatever_the_seed(name: str) -> None:
    item = SCENARIOS[name]
    for seed in range(50):
        for fault in plan(item, seed):
            assert 0 <= fault.at_s < fault.heals_at_s <= item.load.duration_s


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_the_same_seed_replays_the_same_faults_in_the_same_order(name: str) -> None:
    item = SCENARIOS[name]
    first = plan(item, 7)
    assert plan(item, 7) == first
    assert [fault.at_s for fault in first] == sorted(fault.at_s for fault in first)
    assert len({fault.name for fault in first}) == len(first)


def test_another_seed_moves_the_faults_within_their_jitter() -> None:
    item = SCENARIOS["provider-hang"]
    (fault,) = item.faults
    times = {plan(item, seed)[0].at_s for seed in range(20)}
    assert len(times) > 1
    assert all(fault.at_s - fault.jitter_s <= at_s <= fault.at_s + fault.jitter_s for at_s in times)


def test_a_scenario_that_kills_a_process_the_run_does_not_have_is_refused() -> None:
    with pytest.raises(ValueError, match="kill -9 server-1"):
        Scenario("x", "", (Fault(Kill("server", 1), 1.0, 1.0),), Load(), servers=1)
    with pytest.raises(ValueError, match="unknown expectations"):
        Scenario("x", "", (), expect=frozenset({"breaker_sang"}))


def test_an_unknown_scenario_names_the_command_that_lists_them() -> None:
    with pytest.raises(ValueError, match="python -m chaos list"):
        scenario("provider-hangs")
