"""Refunds over real HTTP: full and partial, keyed, pending then succeeded or failed, faulty like payments."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.simulator.conftest import Receiver, Sim, StartSim, eventually
from tests.simulator.test_journal import running

#: Long enough that no refund settles during a test unless the test waits for it.
STAYS_PENDING = {"refund_settle_min_ms": 600_000, "refund_settle_max_ms": 600_000}


async def _paid(sim: Sim, key: str = "pay", amount: str = "12.34", currency: str = "EUR") -> str:
    """A payment that has succeeded, by id."""
    body = {"amount": amount, "currency": currency, "reference": f"order-{key}"}
    reply = await sim.post("/v1/payments", body, key=key, fault="none")
    assert reply.status == 200, reply.body
    payment_id: str = reply.json()["id"]

    async def succeeded() -> bool:  # asks the truth: a /v1/ request would draw from the seeded RNG
        return any(p["id"] == payment_id and p["status"] == "succeeded" for p in (await sim.truth())["payments"])

    await eventually(succeeded, what="the payment to succeed")
    return payment_id


async def _payment(sim: Sim, payment_id: str) -> dict[str, Any]:
    status, body = await sim.get(f"/v1/payments/{payment_id}")
    assert status == 200
    result: dict[str, Any] = body
    return result


async def _refunds(sim: Sim) -> dict[str, dict[str, Any]]:
    return {refund["id"]: refund for refund in (await sim.truth())["refunds"]}


async def _settings(sim: Sim, **settings: Any) -> None:
    async with sim.http.put(f"{sim.url}/_sim/profile", json={"settings": settings}) as response:
        assert response.status == 200, await response.text()


async def test_partial_refunds_add_up_and_the_payment_is_refunded_only_when_they_reach_it(start_sim: StartSim) -> None:
    sim = await start_sim(success_rate=1.0)
    payment_id = await _paid(sim)
    first = await sim.refund(payment_id, "part-1", "5.00", reason="requested_by_customer", metadata={"case": "7"})
    assert first.status == 200
    refund = first.json()
    assert refund["id"].startswith("re_")
    assert {k: refund[k] for k in ("object", "payment", "amount", "currency", "status", "reason", "metadata")} == {
        "object": "refund",
        "payment": payment_id,
        "amount": "5.00",
        "currency": "EUR",
        "status": "pending",
        "reason": "requested_by_customer",
        "metadata": {"case": "7"},
    }
    assert refund["idempotency_key"] == "part-1"
    assert isinstance(refund["created"], int)
    assert (await _payment(sim, payment_id))["amount_refunded"] == "0.00"  # pending refunds are not refunded yet
    await eventually(sim.settled, what="the first refund to succeed")
    partly = await _payment(sim, payment_id)
    assert (partly["status"], partly["amount_refunded"]) == ("succeeded", "5.00")

    rest = await sim.refund(payment_id, "the-rest")  # no amount: what is left
    assert (rest.status, rest.json()["amount"]) == (200, "7.34")
    await eventually(sim.settled, what="the second refund to succeed")
    whole = await _payment(sim, payment_id)
    assert (whole["status"], whole["amount_refunded"]) == ("refunded", "12.34")
    [payment] = (await sim.truth())["payments"]
    assert payment["history"] == ["pending", "succeeded", "refunded"]
    status, body = await sim.get(f"/v1/refunds/{rest.json()['id']}")
    assert (status, body["status"]) == (200, "succeeded")


async def test_bad_parameters_and_an_over_refund_are_refused_naming_the_parameter(start_sim: StartSim) -> None:
    sim = await start_sim(success_rate=1.0, **STAYS_PENDING)
    payment_id = await _paid(sim)

    async def refused(status: int, param: str, reply_coroutine: Any) -> dict[str, Any]:
        reply = await reply_coroutine
        assert (reply.status, reply.json()["error"]["param"]) == (status, param), reply.body
        error: dict[str, Any] = reply.json()["error"]
        return error

    too_much = await refused(400, "amount", sim.refund(payment_id, "k1", "12.35"))
    assert (too_much["type"], too_much["code"]) == ("invalid_request_error", "amount_too_large")
    await refused(400, "amount", sim.refund(payment_id, "k2", "1.001"))  # EUR has two decimal places
    await refused(400, "amount", sim.refund(payment_id, "k3", "0"))
    await refused(400, "amount", sim.refund(payment_id, "k4", 1.5))  # type: ignore[arg-type]
    await refused(400, "currency", sim.refund(payment_id, "k5", "1.00", currency="USD"))
    await refused(400, "currency", sim.refund(payment_id, "k6", "1.00", currency="XXX"))
    await refused(400, "metadata", sim.refund(payment_id, "k7", "1.00", metadata=["no"]))
    await refused(400, "color", sim.refund(payment_id, "k8", "1.00", color="red"))
    await refused(404, "id", sim.refund("pay_nope", "k9", "1.00"))
    missing_key = await sim.post(f"/v1/payments/{payment_id}/refunds", {"currency": "EUR"})
    assert (missing_key.status, missing_key.json()["error"]["param"]) == (400, "Idempotency-Key")
    assert (await sim.truth())["refunds"] == []

    # a pending refund counts against what is left: 10.00 pending leaves 2.34
    assert (await sim.refund(payment_id, "ten", "10.00")).status == 200
    await refused(400, "amount", sim.refund(payment_id, "k10", "2.35"))
    assert (await sim.refund(payment_id, "last", "2.34")).status == 200
    nothing_left = await refused(400, "amount", sim.refund(payment_id, "k11"))
    assert "nothing is left" in nothing_left["message"]
    assert [r["amount"] for r in (await sim.truth())["refunds"]] == ["10.00", "2.34"]
    # a refused key was not kept: the same key is judged anew
    assert (await sim.refund(payment_id, "k1", "12.35")).status == 400


async def test_only_a_succeeded_payment_can_be_refunded(start_sim: StartSim) -> None:
    sim = await start_sim(success_rate=0.0)
    reply = await sim.pay("declined")
    await eventually(sim.settled, what="the payment to fail")
    refused = await sim.refund(reply.json()["id"], "r")
    assert refused.status == 409
    assert (refused.json()["error"]["param"], refused.json()["error"]["code"]) == ("id", "payment_not_refundable")
    assert (await sim.truth())["refunds"] == []


async def test_twenty_concurrent_refunds_never_add_up_to_more_than_the_payment(start_sim: StartSim) -> None:
    sim = await start_sim(success_rate=1.0, latency="uniform", latency_ms=0, latency_max_ms=20)
    payment_id = await _paid(sim, amount="10.00")
    replies = await asyncio.gather(*(sim.refund(payment_id, f"concurrent-{n}", "1.50") for n in range(20)))
    accepted = [reply for reply in replies if reply.status == 200]
    refused = [reply for reply in replies if reply.status != 200]
    assert len(accepted) == 6  # 6 x 1.50 = 9.00; a seventh would be 10.50
    assert {(reply.status, reply.json()["error"]["param"]) for reply in refused} == {(400, "amount")}
    await eventually(sim.settled, what="the refunds to succeed")
    refunds = (await sim.truth())["refunds"]
    assert sum(Decimal(refund["amount"]) for refund in refunds) == Decimal("9.00")
    assert (await _payment(sim, payment_id))["amount_refunded"] == "9.00"
    # the rest, asked for by 20 at once without an amount: one gets it
    rests = await asyncio.gather(*(sim.refund(payment_id, f"rest-{n}") for n in range(20)))
    assert [reply.json()["amount"] for reply in rests if reply.status == 200] == ["1.00"]
    await eventually(sim.settled, what="the last refund to succeed")
    assert (await _payment(sim, payment_id))["status"] == "refunded"


async def test_a_key_replays_its_first_answer_and_refuses_other_parameters(start_sim: StartSim) -> None:
    sim = await start_sim(success_rate=1.0)
    payment_id = await _paid(sim)
    other_payment = await _paid(sim, "other")
    first = await sim.refund(payment_id, "refund-key", "3.00", metadata={"a": "1", "b": "2"})
    await eventually(sim.settled, what="the refund to succeed")
    again = await sim.refund(payment_id, "refund-key", "3.00", metadata={"b": "2", "a": "1"})
    assert (again.status, again.json()) == (first.status, first.json())  # the first answer: pending
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    for conflicting in (
        sim.refund(payment_id, "refund-key", "3.01"),
        sim.refund(payment_id, "refund-key"),
        sim.refund(other_payment, "refund-key", "3.00"),
    ):
        reply = await conflicting
        assert reply.status == 409
        error = reply.json()["error"]
        assert (error["type"], error["param"]) == ("idempotency_error", "Idempotency-Key")
        assert "refund-key" in error["message"]
    assert len((await sim.truth())["refunds"]) == 1

    status, found = await sim.get("/v1/refunds?idempotency_key=refund-key")
    assert (status, found["id"], found["status"]) == (200, first.json()["id"], "succeeded")
    status, unknown = await sim.get("/v1/refunds?idempotency_key=never-sent")
    assert (status, unknown["error"]["param"]) == (404, "idempotency_key")
    assert (await sim.get("/v1/refunds/re_nope"))[0] == 404


async def test_a_failed_refund_moves_no_money_and_frees_its_amount(start_sim: StartSim) -> None:
    sim = await start_sim(success_rate=1.0, refund_fail_rate=1.0)
    payment_id = await _paid(sim)
    failing = (await sim.refund(payment_id, "fails")).json()
    assert failing["status"] == "pending"
    assert (await _refunds(sim))[failing["id"]]["will_become"] == "failed"
    await eventually(sim.settled, what="the refund to fail")
    [refund] = (await sim.truth())["refunds"]
    assert (refund["final_status"], refund["history"]) == ("failed", ["pending", "failed"])
    payment = await _payment(sim, payment_id)
    assert (payment["status"], payment["amount_refunded"]) == ("succeeded", "0.00")
    assert (await sim.get(f"/v1/refunds/{failing['id']}"))[1]["status"] == "failed"

    await _settings(sim, refund_fail_rate=0.0)
    retried = await sim.refund(payment_id, "retried")
    assert (retried.status, retried.json()["amount"]) == (200, "12.34")
    await eventually(sim.settled, what="the second refund to succeed")
    assert (await _payment(sim, payment_id))["status"] == "refunded"
    assert [line["type"] for line in (await sim.get("/v1/reports/settlement"))[1]["lines"]] == ["charge", "refund"]


async def test_a_stuck_refund_stays_pending_for_its_long_delay(start_sim: StartSim) -> None:
    sim = await start_sim(success_rate=1.0, refund_stuck_rate=1.0, refund_stuck_ms=600_000)
    payment_id = await _paid(sim)
    refund_id = (await sim.refund(payment_id, "stuck")).json()["id"]
    await asyncio.sleep(0.2)  # far beyond the short delay
    assert (await sim.get(f"/v1/refunds/{refund_id}"))[1]["status"] == "pending"
    assert sim.simulator.refunds.objects[refund_id].settle_after_ms == 600_000


async def test_refund_webhooks_tell_pending_then_the_outcome_and_the_payment_is_refunded(
    start_sim: StartSim, receiver: Receiver
) -> None:
    sim = await start_sim(webhook_url=receiver.url, success_rate=1.0)
    payment_id = await _paid(sim)
    refund_id = (await sim.refund(payment_id, "hooks")).json()["id"]
    await eventually(sim.settled, what="every webhook delivered")
    events = receiver.events(refund_id)
    assert [(e["type"], e["sequence"], e["data"]["object"]["status"]) for e in events] == [
        ("refund.pending", 1, "pending"),
        ("refund.succeeded", 2, "succeeded"),
    ]
    assert events[1]["data"]["object"]["object"] == "refund"
    assert events[1]["data"]["object"]["payment"] == payment_id
    payment_events = receiver.events(payment_id)
    assert [e["type"] for e in payment_events] == ["payment.pending", "payment.succeeded", "payment.refunded"]
    assert payment_events[-1]["data"]["object"]["amount_refunded"] == "12.34"
    [refund] = (await sim.truth())["refunds"]
    assert [(w["type"], w["outcome"]) for w in refund["webhooks"]] == [
        ("refund.pending", "delivered"),
        ("refund.succeeded", "delivered"),
    ]

    await _settings(sim, refund_fail_rate=1.0)
    other = await _paid(sim, "other")
    failed_id = (await sim.refund(other, "fails", "1.00")).json()["id"]
    await eventually(sim.settled, what="every webhook delivered")
    assert [e["type"] for e in receiver.events(failed_id)] == ["refund.pending", "refund.failed"]
    assert [e["type"] for e in receiver.events(other)] == ["payment.pending", "payment.succeeded"]


async def test_a_webhook_storm_duplicates_and_contradicts_refund_events_as_configured(
    start_sim: StartSim, receiver: Receiver
) -> None:
    storm = {
        "webhook_duplicate_rate": 1.0,
        "webhook_contradict_rate": 1.0,
        "webhook_reorder_rate": 0.0,
        "webhook_drop_rate": 0.0,
        "webhook_delay_rate": 0.0,
    }
    sim = await start_sim("webhook-storm", webhook_url=receiver.url, success_rate=1.0, **storm)
    payment_id = await _paid(sim)
    refund_id = (await sim.refund(payment_id, "storm", "2.00")).json()["id"]
    await eventually(sim.settled, what="the storm to pass")
    events = receiver.events(refund_id)
    assert [(e["type"], e["sequence"]) for e in events] == [
        ("refund.pending", 1),
        ("refund.pending", 1),
        ("refund.failed", 2),  # the contradiction: the opposite outcome, claimed first
        ("refund.failed", 2),
        ("refund.succeeded", 3),
        ("refund.succeeded", 3),
    ]
    [refund] = (await sim.truth())["refunds"]
    assert refund["final_status"] == "succeeded"
    assert [w["contradictory"] for w in refund["webhooks"]] == [False, True, False]
    assert all(w["duplicated"] and w["delivered_copies"] == 2 for w in refund["webhooks"])

    # reordered and dropped, named on the request like a payment's
    reordered = (await sim.refund(payment_id, "reorder", "1.00", fault="webhook-reorder")).json()["id"]
    dropped = (await sim.refund(payment_id, "drop", "1.00", fault="webhook-drop")).json()["id"]
    await eventually(sim.settled, what="the storm to pass")
    assert [e["sequence"] for e in receiver.events(reordered)] == [2, 1]
    assert receiver.events(dropped) == []
    assert {w["outcome"] for w in (await _refunds(sim))[dropped]["webhooks"]} == {"dropped"}


async def test_accept_then_timeout_creates_the_refund_and_never_answers(start_sim: StartSim) -> None:
    sim = await start_sim(success_rate=1.0)
    payment_id = await _paid(sim)
    with pytest.raises(TimeoutError):
        await sim.refund(payment_id, "lost-answer", "4.00", fault="accept-then-timeout", timeout_s=0.3)
    [refund] = (await sim.truth())["refunds"]
    assert (refund["idempotency_key"], refund["amount"], refund["create_fault"]) == (
        "lost-answer",
        "4.00",
        "accept-then-timeout",
    )
    status, found = await sim.get("/v1/refunds?idempotency_key=lost-answer")
    assert (status, found["id"]) == (200, refund["id"])
    retry = await sim.refund(payment_id, "lost-answer", "4.00", fault="none")
    assert (retry.json()["id"], retry.headers["Idempotent-Replayed"]) == (refund["id"], "true")
    # and it counts: 8.34 is what is left
    assert (await sim.refund(payment_id, "too-much", "8.35", fault="none")).status == 400


async def test_request_faults_hit_the_refund_endpoint_like_payment_creation(start_sim: StartSim) -> None:
    sim = await start_sim(success_rate=1.0)
    payment_id = await _paid(sim)
    assert (await sim.refund(payment_id, "e", "1.00", fault="error=502")).status == 502
    limited = await sim.refund(payment_id, "r", "1.00", fault="rate-limit=7")
    assert (limited.status, limited.headers["Retry-After"]) == (429, "7")
    with pytest.raises(aiohttp.ClientConnectionError):
        await sim.refund(payment_id, "reset", "1.00", fault="reset")
    with pytest.raises(TimeoutError):
        await sim.refund(payment_id, "hang", "1.00", fault="hang", timeout_s=0.2)
    assert (await sim.truth())["refunds"] == []  # none of those processed anything

    garbled = await sim.refund(payment_id, "garbled", "1.00", fault="malformed")
    assert garbled.status == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(garbled.body)
    assert [r["create_fault"] for r in (await sim.truth())["refunds"]] == ["malformed"]

    await _settings(sim, error_5xx_rate=1.0)  # drawn from the profile, without a header
    assert (await sim.refund(payment_id, "drawn", "1.00")).status in (500, 502, 503)
    await _settings(sim, error_5xx_rate=0.0, accept_then_timeout_rate=1.0)
    with pytest.raises(TimeoutError):
        await sim.refund(payment_id, "drawn-timeout", "1.00", timeout_s=0.3)
    assert [r["idempotency_key"] for r in (await sim.truth())["refunds"]] == ["garbled", "drawn-timeout"]


async def test_the_truth_lists_every_refund_with_its_webhooks(start_sim: StartSim, receiver: Receiver) -> None:
    sim = await start_sim(webhook_url=receiver.url, success_rate=1.0, **STAYS_PENDING)
    payment_id = await _paid(sim)
    created = (await sim.refund(payment_id, "in-truth", "1.00")).json()
    await eventually(lambda: _delivered(sim), what="the pending event delivered")
    [refund] = (await sim.truth())["refunds"]
    assert {k: refund[k] for k in ("id", "payment", "idempotency_key", "amount", "currency", "final_status")} == {
        "id": created["id"],
        "payment": payment_id,
        "idempotency_key": "in-truth",
        "amount": "1.00",
        "currency": "EUR",
        "final_status": "pending",
    }
    assert refund["will_become"] == "succeeded"
    [event] = refund["webhooks"]
    assert (event["type"], event["outcome"], event["deliveries"][0]["status"]) == ("refund.pending", "delivered", 200)


async def _delivered(sim: Sim) -> bool:
    refunds = (await sim.truth())["refunds"]
    return bool(refunds) and all(w["outcome"] == "delivered" for r in refunds for w in r["webhooks"])


async def test_a_succeeded_refund_is_a_negative_settlement_line_with_the_refund_fee(start_sim: StartSim) -> None:
    sim = await start_sim(success_rate=1.0, fee_bps=290, fee_fixed_minor_units=30, refund_fee_fixed_minor_units=25)
    payment_id = await _paid(sim, amount="20.00")
    refund_id = (await sim.refund(payment_id, "part", "5.00")).json()["id"]
    await eventually(sim.settled, what="the refund to succeed")
    await _settings(sim, refund_fail_rate=1.0)
    await sim.refund(payment_id, "fails", "1.00")  # a failed refund books nothing
    await eventually(sim.settled, what="the refund to fail")
    lines = (await sim.get("/v1/reports/settlement"))[1]["lines"]
    summary = [(line["type"], line["source_id"], line["gross"], line["fee"], line["net"]) for line in lines]
    assert summary == [
        ("charge", payment_id, "20.00", "0.88", "19.12"),
        ("refund", refund_id, "-5.00", "0.25", "-5.25"),
    ]
    assert lines[1]["reference"] == "order-pay"
    assert lines[1]["payout_id"] == lines[0]["payout_id"]

    await _settings(sim, refund_fail_rate=0.0, report_amount_rate=1.0)  # drift applies to refund lines too
    drifted_id = (await sim.refund(payment_id, "drifts", "2.00")).json()["id"]
    await eventually(sim.settled, what="the refund to succeed")
    [booking] = [b for b in (await sim.truth())["settlement"] if b["true"] and b["true"]["source_id"] == drifted_id]
    assert booking["drift"] == ["amount"]
    assert booking["true"]["gross"] == "-2.00"
    assert booking["reported"][0]["gross"] != "-2.00"


async def test_a_pending_refund_and_its_key_survive_a_restart_and_it_settles_after(
    tmp_path: Path, receiver: Receiver
) -> None:
    state = tmp_path / "simulator.sqlite3"
    slow = {"success_rate": 1.0, "refund_settle_min_ms": 1000, "refund_settle_max_ms": 1000}
    async with running(state, receiver.url, **slow) as sim:
        payment_id = await _paid(sim)
        first = await sim.refund(payment_id, "survives")
        refund_id = first.json()["id"]
        await eventually(lambda: _received(receiver, refund_id, 1), what="the pending event")
    async with running(state, receiver.url) as sim:
        assert (await sim.get(f"/v1/refunds/{refund_id}"))[1]["status"] == "pending"
        replayed = await sim.refund(payment_id, "survives")
        assert (replayed.json(), replayed.headers["Idempotent-Replayed"]) == (first.json(), "true")
        assert (await sim.refund(payment_id, "more", "0.01")).status == 400  # still counts against the payment
        await eventually(sim.settled, what="the refund to settle after the restart")
        assert (await sim.get(f"/v1/refunds/{refund_id}"))[1]["status"] == "succeeded"
        payment = await _payment(sim, payment_id)
        assert (payment["status"], payment["amount_refunded"]) == ("refunded", "12.34")
        assert [line["type"] for line in (await sim.get("/v1/reports/settlement"))[1]["lines"]] == ["charge", "refund"]
    assert [(e["type"], e["sequence"]) for e in receiver.events(refund_id)] == [
        ("refund.pending", 1),
        ("refund.succeeded", 2),
    ]
    async with running(state) as sim:  # and what settled is kept as it was
        assert (await sim.get(f"/v1/refunds/{refund_id}"))[1]["status"] == "succeeded"
        assert (await _payment(sim, payment_id))["amount_refunded"] == "12.34"


async def _received(receiver: Receiver, object_id: str, count: int) -> bool:
    return len(receiver.events(object_id)) >= count


async def test_the_same_seed_and_requests_give_the_same_refund_outcomes(start_sim: StartSim) -> None:
    runs = []
    for _ in range(2):
        sim = await start_sim(seed=5, success_rate=1.0, refund_fail_rate=0.5, **STAYS_PENDING)
        payment_id = await _paid(sim, amount="10.00")
        for n in range(8):
            assert (await sim.refund(payment_id, f"r-{n}", "1.00")).status == 200
        runs.append([refund["will_become"] for refund in (await sim.truth())["refunds"]])
    assert runs[0] == runs[1]
    assert set(runs[0]) == {"succeeded", "failed"}
