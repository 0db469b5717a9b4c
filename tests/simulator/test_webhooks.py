"""Webhooks: signed like Stripe, retried after failures, and misbehaving exactly as /_sim/truth says."""

from __future__ import annotations

import hashlib
import hmac
from collections import Counter
from typing import Any

from simulator.signing import SIGNATURE_HEADER, sign, verify
from tests.simulator.conftest import SECRET, Receiver, StartSim, eventually


async def _one_payment(truth: dict[str, Any]) -> dict[str, Any]:
    [payment] = truth["payments"]
    result: dict[str, Any] = payment
    return result


async def test_events_are_signed_and_a_tampered_body_fails(start_sim: StartSim, receiver: Receiver) -> None:
    sim = await start_sim(webhook_url=receiver.url, success_rate=1.0)
    await sim.pay("signed", fault="none")
    await eventually(sim.settled, what="webhooks delivered")
    assert len(receiver.received) == 2
    for item in receiver.received:
        header = item.headers[SIGNATURE_HEADER]
        assert verify(item.body, header, SECRET)
        # the scheme, computed without the simulator's code: t=<unix>,v1=hex(HMAC-SHA256("<t>.<body>"))
        t, v1 = (part.split("=", 1)[1] for part in header.split(","))
        expected = hmac.new(SECRET.encode(), f"{t}.".encode() + item.body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(v1, expected)
        assert not verify(item.body.replace(b"succeeded", b"failed").replace(b"pending", b"pendinG"), header, SECRET)
        assert not verify(item.body, header, "another-secret")
    assert not verify(b"{}", sign(b"{}", SECRET, timestamp=1), SECRET)  # too old


async def test_events_carry_the_object_and_a_per_object_sequence(start_sim: StartSim, receiver: Receiver) -> None:
    sim = await start_sim(webhook_url=receiver.url, success_rate=1.0)
    payment_id = (await sim.pay("seq")).json()["id"]
    await eventually(sim.settled, what="webhooks delivered")
    events = receiver.events(payment_id)
    assert [(e["type"], e["sequence"]) for e in events] == [("payment.pending", 1), ("payment.succeeded", 2)]
    assert events[1]["data"]["object"]["status"] == "succeeded"
    assert events[1]["data"]["object"]["amount"] == "12.34"
    assert len({e["id"] for e in events}) == 2
    truth_events = (await _one_payment(await sim.truth()))["webhooks"]
    assert [e["id"] for e in truth_events] == [e["id"] for e in events]


async def test_a_failed_delivery_is_retried_with_the_same_event(start_sim: StartSim, receiver: Receiver) -> None:
    receiver.fail_next = 2
    sim = await start_sim(webhook_url=receiver.url, success_rate=1.0)
    await sim.pay("retry", fault="none")
    await eventually(sim.settled, what="webhooks delivered")
    assert len(receiver.received) == 4  # two 500s, then the pending event, then the final one
    assert receiver.received[0].body == receiver.received[1].body == receiver.received[2].body
    pending = (await _one_payment(await sim.truth()))["webhooks"][0]
    assert [d["status"] for d in pending["deliveries"]] == [500, 500, 200]
    assert pending["outcome"] == "delivered"


async def test_delivery_gives_up_after_the_last_attempt(start_sim: StartSim, receiver: Receiver) -> None:
    receiver.fail_next = 100
    sim = await start_sim(webhook_url=receiver.url, webhook_max_attempts=3)
    await sim.pay("hopeless", fault="webhook-drop")  # drop the events...
    await sim.pay("unreachable", fault="none")  # ...of this one they all fail
    await eventually(sim.settled, what="delivery to give up")
    truth = await sim.truth()
    events = truth["payments"][1]["webhooks"]
    assert {e["outcome"] for e in events} == {"gave-up"}
    assert all(len(e["deliveries"]) == 3 for e in events)
    assert {e["outcome"] for e in truth["payments"][0]["webhooks"]} == {"dropped"}


async def test_forced_webhook_faults_match_the_truth(start_sim: StartSim, receiver: Receiver) -> None:
    sim = await start_sim(webhook_url=receiver.url, success_rate=1.0)
    ids = {
        name: (await sim.pay(name, fault=f"webhook-{name}")).json()["id"]
        for name in ("duplicate", "reorder", "contradict", "drop")
    }
    delayed = (await sim.pay("delayed", fault="webhook-delay=100")).json()["id"]
    await eventually(sim.settled, what="every webhook done")
    truth = {payment["id"]: payment for payment in (await sim.truth())["payments"]}

    duplicates = receiver.events(ids["duplicate"])
    assert [e["sequence"] for e in duplicates] == [1, 1, 2, 2]
    assert all(e["duplicated"] for e in truth[ids["duplicate"]]["webhooks"])

    assert [e["sequence"] for e in receiver.events(ids["reorder"])] == [2, 1]
    assert [e["reordered"] for e in truth[ids["reorder"]]["webhooks"]] == [True, False]

    contradicted = receiver.events(ids["contradict"])
    assert [e["data"]["object"]["status"] for e in contradicted] == ["pending", "failed", "succeeded"]
    assert [e["sequence"] for e in contradicted] == [1, 2, 3]
    assert [e["contradictory"] for e in truth[ids["contradict"]]["webhooks"]] == [False, True, False]
    assert truth[ids["contradict"]]["final_status"] == "succeeded"

    assert receiver.events(ids["drop"]) == []
    assert all(e["dropped"] for e in truth[ids["drop"]]["webhooks"])
    assert len(truth[ids["drop"]]["webhooks"]) == 2  # what would have been sent

    assert {e["delay_ms"] for e in truth[delayed]["webhooks"]} == {100}
    assert len(receiver.events(delayed)) == 2


async def test_a_webhook_storm_delivers_exactly_what_the_truth_records(start_sim: StartSim, receiver: Receiver) -> None:
    sim = await start_sim("webhook-storm", seed=3, webhook_url=receiver.url, webhook_delay_ms=20)
    for n in range(15):
        await sim.pay(f"storm-{n}")
    await eventually(sim.settled, timeout_s=10, what="the storm to pass")
    received = Counter(e["id"] for e in receiver.events())
    flags: Counter[str] = Counter()
    for payment in (await sim.truth())["payments"]:
        arrived = [e["sequence"] for e in receiver.events(payment["id"])]
        for event in payment["webhooks"]:
            expected_copies = 0 if event["dropped"] else 2 if event["duplicated"] else 1
            assert received[event["id"]] == expected_copies, event
            flags.update(name for name in ("dropped", "duplicated", "reordered", "contradictory") if event[name])
            if event["reordered"] and not event["dropped"]:
                # held back until the next status: it arrives after that one (unless that one was dropped)
                later = [s for s in arrived if s > event["sequence"]]
                if later:
                    assert arrived.index(event["sequence"]) > arrived.index(later[0])
                    flags["visibly reordered"] += 1
            if event["contradictory"]:
                assert event["status"] != payment["final_status"]
    assert {"duplicated", "reordered", "visibly reordered", "contradictory", "dropped"} <= set(flags)
