"""Each request fault does what it says, profiles switch at run time, and a seed replays a run."""

from __future__ import annotations

import json
import time

import aiohttp
import pytest

from tests.simulator.conftest import Sim, StartSim


async def test_fixed_latency_delays_every_request(start_sim: StartSim) -> None:
    sim = await start_sim(latency="fixed", latency_ms=150)
    started = time.monotonic()
    assert (await sim.pay("slow")).status == 200
    assert time.monotonic() - started >= 0.15


async def test_a_finite_hang_answers_late_and_an_endless_one_leaves_nothing(start_sim: StartSim) -> None:
    sim = await start_sim()
    started = time.monotonic()
    assert (await sim.pay("late", fault="hang=200")).status == 200
    assert time.monotonic() - started >= 0.2
    with pytest.raises(TimeoutError):
        await sim.pay("never", fault="hang", timeout_s=0.2)
    keys = [payment["idempotency_key"] for payment in (await sim.truth())["payments"]]
    assert keys == ["late"]  # the abandoned hang processed nothing


async def test_5xx_and_429_refuse_without_recording(start_sim: StartSim) -> None:
    sim = await start_sim()
    error = await sim.pay("e", fault="error=502")
    assert error.status == 502
    assert error.json()["error"]["type"] == "api_error"
    limited = await sim.pay("r", fault="rate-limit=7")
    assert limited.status == 429
    assert limited.headers["Retry-After"] == "7"
    assert (await sim.truth())["payments"] == []


async def test_profile_rates_inject_faults_without_a_header(start_sim: StartSim) -> None:
    sim = await start_sim(error_5xx_rate=1.0)
    assert (await sim.pay("a")).status in (500, 502, 503)
    async with sim.http.put(f"{sim.url}/_sim/profile", json={"settings": {"error_5xx_rate": 0.0}}) as response:
        assert response.status == 200
    assert (await sim.pay("a")).status == 200


async def test_malformed_json_is_truncated_but_the_payment_exists(start_sim: StartSim) -> None:
    sim = await start_sim()
    reply = await sim.pay("garbled", fault="malformed")
    assert reply.status == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(reply.body)
    status, _ = await sim.get("/v1/payments?idempotency_key=garbled")
    assert status == 200


async def test_connection_reset_closes_the_socket_and_records_nothing(start_sim: StartSim) -> None:
    sim = await start_sim()
    with pytest.raises(aiohttp.ClientConnectionError):
        await sim.pay("reset", fault="reset")
    assert (await sim.truth())["payments"] == []
    assert (await sim.pay("after")).status == 200  # the server itself is fine


async def test_profiles_switch_at_run_time_and_bad_ones_are_refused(start_sim: StartSim) -> None:
    sim = await start_sim()
    async with sim.http.put(f"{sim.url}/_sim/profile", json={"name": "monday-morning", "seed": 9}) as response:
        assert response.status == 200
        body = await response.json()
    assert body["name"] == "monday-morning"
    assert body["seed"] == 9
    assert body["settings"]["accept_then_timeout_rate"] > 0
    for bad in ({"name": "tuesday"}, {"settings": {"latency_ms": -1}}, {"settings": {"nope": 1}}, {"seed": "x"}):
        async with sim.http.put(f"{sim.url}/_sim/profile", json=bad) as response:
            assert response.status == 400, bad
    assert (await sim.get("/_sim/profile"))[1]["name"] == "monday-morning"


async def _fault_sequence(sim: Sim, requests: int) -> list[str]:
    """What happened to each of `requests` payments: a status code, "reset" or "malformed"."""
    seen: list[str] = []
    for n in range(requests):
        try:
            reply = await sim.pay(f"seq-{n}")
        except aiohttp.ClientConnectionError:
            seen.append("reset")
            continue
        try:
            reply.json()
            seen.append(str(reply.status))
        except json.JSONDecodeError:
            seen.append("malformed")
    return seen


async def test_the_same_seed_replays_the_same_faults(start_sim: StartSim) -> None:
    rates = {"error_5xx_rate": 0.15, "rate_limit_rate": 0.15, "malformed_rate": 0.15, "reset_rate": 0.15}
    sim = await start_sim(seed=7, latency="uniform", latency_ms=0, latency_max_ms=3, **rates)
    first = await _fault_sequence(sim, 40)
    async with sim.http.post(f"{sim.url}/_sim/reset", json={}) as response:
        assert response.status == 200
    assert (await sim.truth())["payments"] == []
    second = await _fault_sequence(sim, 40)
    assert first == second
    assert {"200", "429", "malformed", "reset"} <= set(first)
    assert any(code.startswith("5") for code in first)
    async with sim.http.post(f"{sim.url}/_sim/reset", json={"seed": 8}) as response:
        assert (await response.json())["seed"] == 8
    assert await _fault_sequence(sim, 40) != first
