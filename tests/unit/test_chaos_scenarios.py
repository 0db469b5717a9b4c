"""The chaos scenarios (chaos/scenarios.py): the issue's named stories exist, every fault is one the
proxies and the run can apply, every fault heals before the load ends, and a seed replays the same
faults in the same order while another seed moves them."""

from __future__ import annotations

import pytest

from chaos.load import REFUND_PLANS, third
from chaos.scenarios import (
    PROXIES,
    SCENARIOS,
    Down,
    Fault,
    Kill,
    Load,
    ProviderFaults,
    Reconcile,
    Scenario,
    Toxic,
    kill_stage,
    plan,
    scenario,
    smoke,
)
from chaos.toxiproxy.toxics import ATTRIBUTES, toxic_from_body
from simulator.profiles import PROFILES
from simulator.settings import FaultSettings

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
    "refund-storm",
    "report-drift",
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


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_every_provider_fault_names_settings_the_simulator_has_and_a_profile_it_knows(name: str) -> None:
    item = SCENARIOS[name]
    assert item.profile in PROFILES
    for fault in item.faults:
        if isinstance(fault.what, ProviderFaults):
            FaultSettings().with_overrides(dict(fault.what.settings))  # unknown names raise


def test_the_refund_storm_refunds_under_accept_then_timeout_a_killed_server_and_a_webhook_storm() -> None:
    item = SCENARIOS["refund-storm"]
    assert item.load.refund_share > 0.5
    assert item.profile == "webhook-storm"
    assert PROFILES[item.profile].webhook_contradict_rate > 0 and PROFILES[item.profile].webhook_duplicate_rate > 0
    kinds = [fault.what for fault in item.faults]
    assert Kill("server", 0) in kinds
    assert any(isinstance(what, ProviderFaults) and what.settings.get("accept_then_timeout_rate") for what in kinds)
    assert any(isinstance(what, Toxic) and what.type == "timeout" and what.proxy == "provider" for what in kinds)
    assert not item.smoke
    assert all(plan_[-1] == "rest" or len(plan_) == 1 for plan_ in REFUND_PLANS)


@pytest.mark.parametrize(
    ("value", "currency", "expected"),
    [
        ("10.00", "EUR", "3.33"),
        ("100", "EUR", "33.33"),
        ("0.02", "EUR", None),
        ("700", "JPY", "233"),
        ("2", "JPY", None),
    ],
)
def test_a_refund_of_a_third_is_rounded_down_to_the_currencys_minor_unit(
    value: str, currency: str, expected: str | None
) -> None:
    assert third(value, currency) == expected


def test_the_report_drift_plants_every_kind_of_drift_often_and_kills_the_reconciling_server_mid_stage() -> None:
    item = SCENARIOS["report-drift"]
    assert item.reconcile is not None and item.profile == "report-drift"
    drift = item.reconcile.drift
    # every kind the simulator plants, at least as often as its profile plants it: a run of a few hundred
    # payments plants each several times
    assert set(drift) == {name for name in vars(FaultSettings()) if name.startswith("report_")}
    assert all(rate >= getattr(PROFILES["report-drift"], name) and rate >= 0.05 for name, rate in drift.items())
    FaultSettings().with_overrides(dict(drift))  # the simulator takes them
    assert item.load.refund_share == 0  # a refund's row is not reconciled yet
    assert any(
        isinstance(f.what, Toxic) and f.what.proxy == "provider" and f.what.type == "latency" for f in item.faults
    )
    assert 0 <= item.reconcile.server < item.servers and item.reconcile.slow_postgres_ms > 0
    # the seed aims the kill at each stage in turn, the same one every time for a seed
    assert {kill_stage(item, seed) for seed in range(4)} == {"NORMALIZING", "MATCHING"}
    assert kill_stage(item, 3) == kill_stage(item, 3)
    assert not item.smoke


def test_a_reconciling_scenario_that_names_what_it_cannot_do_is_refused() -> None:
    drift = {"report_fee_rate": 0.1}
    with pytest.raises(ValueError, match="not report drift settings"):
        Scenario("x", "", (), reconcile=Reconcile({"hang_rate": 0.1}))
    with pytest.raises(ValueError, match="server-1, a server it does not have"):
        Scenario("x", "", (), reconcile=Reconcile(drift, server=1))
    with pytest.raises(ValueError, match="not at"):
        Scenario("x", "", (), reconcile=Reconcile(drift, kill_in=("COMPLETED",)))
    with pytest.raises(ValueError, match="ProviderFaults do not mix"):
        Scenario("x", "", (Fault(ProviderFaults({"hang_rate": 0.1}), 1.0, 1.0),), reconcile=Reconcile(drift))
    with pytest.raises(ValueError, match="does not reconcile"):
        kill_stage(SCENARIOS["provider-hang"], 1)
