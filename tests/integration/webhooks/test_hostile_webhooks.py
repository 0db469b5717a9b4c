"""A hostile or broken provider's webhooks against Ballast's promises (README, "Calling Ballast"), over real
HTTP against PostgreSQL.

Webhooks applied once per consumer, the ledger posted once per payment, no illegal moves, bodies that
are too big, not UTF-8, nested too deep or hold a NUL, signatures that cannot be bent, and fills applied
once per execution id whatever the venue's order events say. A payment's webhook is a signal, never the
deciding witness: a claimed outcome only makes Ballast ask the provider's API (the simulator, or a
provider that answers as the test tells it), whose answer decides.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from server.db.database import Budget, Database
from server.domain.identity import Principal
from server.providers.breaker import Breaker, BreakerSettings
from server.providers.gateway import GatewayClient
from server.providers.venue import VenueClient
from server.services.leg_resolver import LegResolver, LegResolverSettings
from server.services.order_submission import submit_and_send
from server.services.payment_resolver import PaymentResolver, PaymentResolverSettings
from server.services.submission import create_and_submit
from tests.support import AnsweringProvider, answering_provider, until
from tests.support.probes import count_rows, due_for_check, ledger_entries_of, payment_state
from tests.support.requests import create_payment_command, leg_terms, new_payment, submit_order_command, submitted_leg
from tests.support.simulator import simulated_provider, simulator_truth, until_webhooks_sent
from tests.support.webhooks import PROVIDER, fill_execution, mac, order_event, payment_event, sign, webhook_endpoint

SECRET = "whsec_adversarial_test"  # noqa: S105 - a test secret
MIB = 1024 * 1024
#: the provider's own id for the payments in these events (its API must name the same one)
OBJECT_ID = "pay_adv"


Post = Callable[..., Awaitable[tuple[int, dict[str, Any]]]]


def _payment_event(payment_id: uuid.UUID, status: str, event_id: str | None = None) -> bytes:
    return payment_event(payment_id, status, event_id, object_id=OBJECT_ID)


def _order_event(
    leg_id: uuid.UUID,
    exec_type: str,
    event_id: str | None = None,
    execution: dict[str, Any] | None = None,
    **extra: Any,
) -> bytes:
    return order_event(leg_id, exec_type, event_id, object_id="ord_adv", execution=execution, **extra)


@pytest.fixture
async def post(database: Database) -> AsyncIterator[Post]:
    async with webhook_endpoint(database, SECRET) as endpoint:
        yield endpoint.post


async def _pending_leg(post: Post, database: Database, principal: Principal, quantity: str = "100") -> uuid.UUID:
    leg_id = await submitted_leg(database, principal, quantity)
    status, reply = await post(_order_event(leg_id, "new"))
    assert (status, reply.get("outcome")) == (200, "applied"), reply
    return leg_id


async def _leg(pool: asyncpg.Pool, leg_id: uuid.UUID) -> asyncpg.Record:
    row = await pool.fetchrow("SELECT state, filled_quantity, fill_notional FROM legs WHERE id = $1", leg_id)
    assert row is not None
    return row


async def _untouched(pool: asyncpg.Pool, payment_id: uuid.UUID) -> None:
    """Nothing a provider said about the payment was taken: RECORDED, no evidence, no check asked for."""
    row = await pool.fetchrow("SELECT state, next_check_at FROM payments WHERE id = $1", payment_id)
    assert (row["state"], row["next_check_at"]) == ("RECORDED", None)
    assert not await count_rows(pool, "SELECT count(*) FROM provider_statuses WHERE payment_id = $1", payment_id)


def _says(provider: AnsweringProvider, payment_id: uuid.UUID, status: str, amount: str = "25.00") -> None:
    """The provider's API says `status` about the payment, naming its terms and its id as the events do."""
    provider.says(payment_id, status, amount=amount, currency="EUR", provider_payment_id=OBJECT_ID)


async def _moves(pool: asyncpg.Pool, payment_id: uuid.UUID) -> list[tuple[str, str, str]]:
    rows = await pool.fetch(
        "SELECT from_state, to_state, cause FROM payment_transitions WHERE payment_id = $1 ORDER BY id", payment_id
    )
    return [(row["from_state"], row["to_state"], row["cause"]) for row in rows]


# --------------------------------------------------------------------------------------------------
# A webhook applied once per consumer
# --------------------------------------------------------------------------------------------------


async def test_concurrent_deliveries_of_one_fill_event_apply_the_fill_once(
    post: Post, database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    leg_id = await _pending_leg(post, database, principal)
    body = _order_event(leg_id, "partial_fill", execution=fill_execution("10"))
    replies = await asyncio.gather(*(post(body) for _ in range(40)))
    assert {status for status, _ in replies} == {200}
    outcomes = [reply["outcome"] for _, reply in replies]
    assert outcomes.count("applied") == 1 and outcomes.count("duplicate") == 39
    leg = await _leg(pool, leg_id)
    assert (leg["state"], leg["filled_quantity"]) == ("PARTIALLY_FILLED", Decimal("10"))
    assert await count_rows(pool, "SELECT count(*) FROM leg_fills WHERE leg_id = $1", leg_id) == 1


async def test_one_event_id_used_for_a_payment_and_for_a_leg_is_applied_once_per_consumer(
    post: Post, database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    payment_id = await new_payment(database, principal)
    leg_id = await _pending_leg(post, database, principal)
    event_id = f"evt_{uuid.uuid4().hex}"
    first = await post(_payment_event(payment_id, "pending", event_id))  # news a webhook applies itself
    second = await post(_order_event(leg_id, "fill", event_id, execution=fill_execution("100")))
    assert first == (200, {"received": True, "outcome": "applied"})
    assert second == (200, {"received": True, "outcome": "duplicate"})
    assert await payment_state(pool, payment_id) == "PENDING"
    assert (await _leg(pool, leg_id))["state"] == "PENDING"
    assert await count_rows(pool, "SELECT count(*) FROM leg_fills WHERE leg_id = $1", leg_id) == 0


async def test_event_ids_differing_only_in_case_or_whitespace_never_apply_one_fill_twice(
    post: Post, database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    leg_id = await _pending_leg(post, database, principal)
    execution = fill_execution("30")
    base = f"evt_{uuid.uuid4().hex}"
    for event_id in (base, base.upper(), f" {base}", f"{base} ", f"{base}\t"):
        status, _ = await post(_order_event(leg_id, "partial_fill", event_id, execution=execution))
        assert status == 200
    leg = await _leg(pool, leg_id)
    assert leg["filled_quantity"] == Decimal("30")
    assert await count_rows(pool, "SELECT count(*) FROM leg_fills WHERE leg_id = $1", leg_id) == 1
    # and a payment: the same "succeeded" under five spellings of one id only makes Ballast ask, and
    # the provider's answer posts the ledger once; the five again change nothing
    payment_id = await new_payment(database, principal)
    bodies = [
        _payment_event(payment_id, "succeeded", event_id + "p")
        for event_id in (base, base.upper(), f" {base}", f"{base} ", f"{base}\t")
    ]
    outcomes = [(await post(body))[1]["outcome"] for body in bodies]
    assert outcomes[0] == "confirming" and set(outcomes) <= {"confirming", "duplicate"}, outcomes
    assert (await payment_state(pool, payment_id), await ledger_entries_of(pool, payment_id)) == ("RECORDED", 0)
    assert await due_for_check(pool, payment_id)
    async with answering_provider() as provider:
        _says(provider, payment_id, "succeeded")
        await provider.settle(database, [payment_id])
        outcomes = [(await post(body))[1]["outcome"] for body in bodies]
        assert set(outcomes) == {"duplicate"}, outcomes
        await provider.settle(database, [payment_id])
        assert provider.times_asked(payment_id) == 1
    assert await payment_state(pool, payment_id) == "SUCCEEDED"
    assert await ledger_entries_of(pool, payment_id) == 1
    assert await _moves(pool, payment_id) == [("RECORDED", "SUCCEEDED", "resolver.inquiry")]


# --------------------------------------------------------------------------------------------------
# The ledger posted once per payment
# --------------------------------------------------------------------------------------------------


async def test_fifty_concurrent_succeeded_events_with_different_ids_post_the_ledger_once(
    post: Post, database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    """Fifty claims of success at once only make Ballast ask. While the provider's answers are held back,
    more claims make the payment due again, until five checks of it are in flight at once; their
    answers, released together, post the ledger once."""
    payment_id = await new_payment(database, principal)
    replies = await asyncio.gather(*(post(_payment_event(payment_id, "succeeded")) for _ in range(50)))
    assert {status for status, _ in replies} == {200}, replies
    outcomes = [reply["outcome"] for _, reply in replies]
    assert outcomes == ["confirming"] * 50, outcomes
    assert (await payment_state(pool, payment_id), await ledger_entries_of(pool, payment_id)) == ("RECORDED", 0)
    assert await _moves(pool, payment_id) == []
    assert await count_rows(pool, "SELECT count(*) FROM provider_statuses WHERE payment_id = $1", payment_id) == 50
    assert await due_for_check(pool, payment_id)
    async with answering_provider() as provider:
        _says(provider, payment_id, "succeeded")
        provider.hold(payment_id)
        checks: list[asyncio.Task[int]] = []
        for n in range(1, 6):
            if n > 1:  # ten more claims while the earlier checks wait for the provider: due again
                more = await asyncio.gather(*(post(_payment_event(payment_id, "succeeded")) for _ in range(10)))
                assert {reply["outcome"] for _, reply in more} == {"confirming"}, more
                assert await due_for_check(pool, payment_id)
            checks.append(asyncio.create_task(provider.resolver(database).run_once()))
            await provider.until_asked(payment_id, n)
        assert (await payment_state(pool, payment_id), await ledger_entries_of(pool, payment_id)) == ("RECORDED", 0)
        provider.release()
        await asyncio.gather(*checks)
        assert provider.times_asked(payment_id) == 5
    assert await payment_state(pool, payment_id) == "SUCCEEDED"
    assert await ledger_entries_of(pool, payment_id) == 1
    assert await _moves(pool, payment_id) == [("RECORDED", "SUCCEEDED", "resolver.inquiry")]
    assert not await due_for_check(pool, payment_id)
    assert await count_rows(pool, "SELECT count(*) FROM cases WHERE payment_id = $1", payment_id) == 0
    # fifty more, now: each repeats what the payment is, and asks for nothing
    replies = await asyncio.gather(*(post(_payment_event(payment_id, "succeeded")) for _ in range(50)))
    assert {reply["outcome"] for _, reply in replies} == {"repeat"}, replies
    assert not await due_for_check(pool, payment_id)
    assert await ledger_entries_of(pool, payment_id) == 1


async def test_response_webhooks_and_resolver_racing_post_the_ledger_once_and_charge_once(
    tmp_path: Path, database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    # every webhook twice, a claim of failure before each final one, the pending one after the final
    # one: each claim of an outcome makes the payment due for a check, and three resolvers keep asking
    # meanwhile, racing CreatePayment's own answers and each other
    settings = {
        "settle_min_ms": 1,
        "settle_max_ms": 20,
        "webhook_retry_base_ms": 20,
        "success_rate": 1.0,
        "webhook_duplicate_rate": 1.0,
        "webhook_reorder_rate": 1.0,
        "webhook_contradict_rate": 1.0,
    }
    async with simulated_provider(tmp_path, database, "calm", **settings) as url, aiohttp.ClientSession() as session:
        gateway = GatewayClient("simulator", url, session, Breaker("adv.payments", BreakerSettings(failures_max=1000)))
        resolvers = [
            PaymentResolver(
                database,
                gateway,
                PaymentResolverSettings(unknown_grace_s=0, pending_overdue_s=0, backoff_base_s=0, batch_size=200),
            )
            for _ in range(3)
        ]
        keys = [f"race-{uuid.uuid4()}" for _ in range(20)]
        stop = asyncio.Event()

        async def resolve() -> None:
            while not stop.is_set():
                await pool.execute(
                    "UPDATE payments SET next_check_at = '-infinity' WHERE id IN (SELECT id FROM payments"
                    " WHERE client_id = $1 AND state IN ('PENDING', 'UNKNOWN') FOR UPDATE SKIP LOCKED)",
                    principal.client_id,
                )
                await asyncio.gather(*(resolver.run_once() for resolver in resolvers))
                await asyncio.sleep(0.01)

        resolving = asyncio.create_task(resolve())
        try:
            results = await asyncio.gather(
                *(
                    create_and_submit(
                        database, gateway, principal, create_payment_command(key, "31.00"), Budget.within(5)
                    )
                    for key in keys
                    for _ in range(2)  # the caller retries at once with the same key
                )
            )
            deadline = time.monotonic() + 20
            while await count_rows(
                pool,
                "SELECT count(*) FROM payments WHERE client_id = $1 AND state <> 'SUCCEEDED'",
                principal.client_id,
            ):
                assert time.monotonic() < deadline, "payments never reached SUCCEEDED"
                await asyncio.sleep(0.05)
            # every payment's webhooks came, the false claim of failure among them, and were kept
            while await count_rows(
                pool,
                "SELECT count(*) FROM payments p WHERE p.client_id = $1 AND NOT EXISTS (SELECT 1 FROM"
                " provider_statuses s WHERE s.payment_id = p.id AND s.status = 'failed'"
                " AND s.evidence_ref LIKE 'simulator:evt\\_%')",
                principal.client_id,
            ):
                assert time.monotonic() < deadline, "the webhooks claiming failure never came"
                await asyncio.sleep(0.05)
            # late duplicates, and the checks they ask for: all of them sent, and every check done
            await until_webhooks_sent(url, [str(result.payment.id) for result in results], timeout_s=20)

            async def checked() -> bool:
                return not await count_rows(
                    pool,
                    "SELECT count(*) FROM payments WHERE client_id = $1 AND next_check_at <= now()",
                    principal.client_id,
                )

            await until(checked, "every check the late webhooks asked for was made")
        finally:
            stop.set()
            await resolving
        truth = await simulator_truth(url)
    ids = {result.payment.id for result in results}
    assert len(ids) == 20
    provider_keys = [p["idempotency_key"] for p in truth["payments"] if uuid.UUID(p["idempotency_key"]) in ids]
    assert sorted(provider_keys) == sorted(str(i) for i in ids)  # one provider payment per key
    for payment_id in ids:
        assert await payment_state(pool, payment_id) == "SUCCEEDED"  # the claims of failure never decided it
        assert await ledger_entries_of(pool, payment_id) == 1
        moves = await pool.fetch(
            "SELECT to_state, event, cause FROM payment_transitions WHERE payment_id = $1", payment_id
        )
        decided = [move for move in moves if move["to_state"] == "SUCCEEDED"]
        assert len(decided) == 1, moves
        assert decided[0]["cause"] in ("provider.response", "resolver.inquiry"), moves  # the API's word
        assert all(move["event"] != "CORRECTION" for move in moves), moves
        assert all(move["to_state"] == "PENDING" for move in moves if move["cause"].startswith("webhook.")), moves
    assert not await count_rows(pool, "SELECT count(*) FROM cases WHERE payment_id = ANY($1::uuid[])", list(ids))


# --------------------------------------------------------------------------------------------------
# No illegal moves through webhooks
# --------------------------------------------------------------------------------------------------


#: What a webhook's word means for a payment in each state: news a webhook applies itself (pending
#: while undecided), a claim the provider's API is asked about, or nothing to do.
_WEBHOOK_OUTCOMES = {
    "PENDING": {"pending": "repeat", "failed": "confirming", "succeeded": "confirming", "refunded": "confirming"},
    "FAILED": {"pending": "stale", "failed": "repeat", "succeeded": "confirming", "refunded": "confirming"},
    "SUCCEEDED": {"pending": "stale", "failed": "confirming", "succeeded": "repeat", "refunded": "confirming"},
}
#: Where the provider's API answer leaves a PENDING payment: refunded (a refund Ballast never asked for)
#: waits for a person.
_DECIDED_BY = {"pending": "PENDING", "failed": "FAILED", "succeeded": "SUCCEEDED", "refunded": "PENDING"}
_ORDERS = list(itertools.permutations(("pending", "failed", "succeeded", "refunded")))


@pytest.mark.parametrize("order", _ORDERS)
async def test_any_order_of_pending_failed_succeeded_refunded_leaves_the_decision_to_the_providers_api(
    post: Post, database: Database, principal: Principal, pool: asyncpg.Pool, order: tuple[str, ...]
) -> None:
    payment_id = await new_payment(database, principal)
    outcomes = []
    for status in order:
        code, reply = await post(_payment_event(payment_id, status))
        assert code == 200, reply
        outcomes.append(reply["outcome"])
    # whatever came first, only pending moved the payment; every claim of an outcome made Ballast ask
    assert outcomes == ["applied" if status == "pending" else "confirming" for status in order]
    assert (await payment_state(pool, payment_id), await ledger_entries_of(pool, payment_id)) == ("PENDING", 0)
    assert await due_for_check(pool, payment_id)
    # the provider's truth is one of the words it sent (the first one here: each of the four over the orders)
    truth = order[0]
    expected = _DECIDED_BY[truth]
    async with answering_provider() as provider:
        _says(provider, payment_id, truth)
        await provider.settle(database, [payment_id])
        assert await payment_state(pool, payment_id) == expected
        # the same words again, in the same order: claims are asked about again, and nothing more moves
        outcomes = [(await post(_payment_event(payment_id, status)))[1]["outcome"] for status in order]
        assert outcomes == [_WEBHOOK_OUTCOMES[expected][status] for status in order]
        await provider.settle(database, [payment_id])
        assert provider.times_asked(payment_id) == 2
    assert await payment_state(pool, payment_id) == expected
    assert await ledger_entries_of(pool, payment_id) == (1 if expected == "SUCCEEDED" else 0)
    # every move it made is one the table allows: pending on the webhook's word, the outcome on the API's
    moves = await _moves(pool, payment_id)
    decided = [] if expected == "PENDING" else [("PENDING", expected, "resolver.inquiry")]
    assert moves == [("RECORDED", "PENDING", "webhook.simulator"), *decided]
    cases = await pool.fetch("SELECT kind, status, evidence FROM cases WHERE payment_id = $1", payment_id)
    if truth == "refunded":  # a refund Ballast never asked for: held for a person, once, with each answer
        assert [(case["kind"], case["status"]) for case in cases] == [("CORRECTION_NEEDS_APPROVAL", "OPEN")]
        pieces = cases[0]["evidence"]
        assert [(piece["claim"], piece["witness"]) for piece in pieces] == [("REFUNDED", "api")] * 2
        assert pieces[0]["proposed_correction"] == {"from_state": "PENDING", "to_state": "REFUNDED"}
    else:
        assert cases == []  # webhooks that contradict each other open no case: the provider's API decides


@pytest.mark.parametrize("truth", ["succeeded", "refunded"])
async def test_refunded_before_succeeded_does_not_refund_or_skip_states(
    post: Post, database: Database, principal: Principal, pool: asyncpg.Pool, truth: str
) -> None:
    payment_id = await new_payment(database, principal)
    assert (await post(_payment_event(payment_id, "refunded"))) == (200, {"received": True, "outcome": "confirming"})
    assert (await payment_state(pool, payment_id), await ledger_entries_of(pool, payment_id)) == ("RECORDED", 0)
    assert await due_for_check(pool, payment_id)
    async with answering_provider() as provider:
        _says(provider, payment_id, truth)
        await provider.settle(database, [payment_id])
        if truth == "succeeded":  # the provider never refunded it: it took it, and that is all
            assert await payment_state(pool, payment_id) == "SUCCEEDED"
            assert (await post(_payment_event(payment_id, "succeeded")))[1]["outcome"] == "repeat"
            assert await _moves(pool, payment_id) == [("RECORDED", "SUCCEEDED", "resolver.inquiry")]
            assert await ledger_entries_of(pool, payment_id) == 1
            assert await count_rows(pool, "SELECT count(*) FROM cases WHERE payment_id = $1", payment_id) == 0
            return
        # even the provider's API saying refunded does not refund a payment Ballast never took: a person decides
        assert (await post(_payment_event(payment_id, "succeeded")))[1]["outcome"] == "confirming"
        await provider.settle(database, [payment_id])
    assert await payment_state(pool, payment_id) == "RECORDED"
    assert await _moves(pool, payment_id) == []
    assert await ledger_entries_of(pool, payment_id) == 0
    cases = await pool.fetch("SELECT kind, evidence FROM cases WHERE payment_id = $1", payment_id)
    assert [case["kind"] for case in cases] == ["CORRECTION_NEEDS_APPROVAL"]
    proposals = {(p["proposed_correction"]["to_state"], p["approval"]) for p in cases[0]["evidence"]}
    assert proposals == {("REFUNDED", "PERSON")}


async def test_odd_casing_maps_and_unknown_status_words_are_kept_and_refused(
    post: Post, database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    payment_id = await new_payment(database, principal)
    for word in ("succeeded!", "SUCCEEDEDX", "succ\u0435eded", "", "null"):  # \u0435: a Cyrillic e
        body = _payment_event(payment_id, word)
        status, _ = await post(body)
        assert status in (200, 400), (word, status)
    await _untouched(pool, payment_id)  # no word was taken for a claim: nothing to ask about
    status, reply = await post(_payment_event(payment_id, "  SuCcEeDeD\t"))
    assert (status, reply["outcome"]) == (200, "confirming")  # read as a claim of success
    assert await due_for_check(pool, payment_id)
    observed = await pool.fetch("SELECT status FROM provider_statuses WHERE payment_id = $1", payment_id)
    assert [row["status"] for row in observed] == ["  SuCcEeDeD\t"]  # kept verbatim
    async with answering_provider() as provider:
        _says(provider, payment_id, "succeeded")
        await provider.settle(database, [payment_id])
        assert await payment_state(pool, payment_id) == "SUCCEEDED"
        # a status that is not a string at all
        body = json.dumps(
            {"id": f"evt_{uuid.uuid4().hex}", "type": "payment.failed",
             "data": {"object": {"status": ["failed"], "idempotency_key": str(payment_id)}}}
        ).encode()  # fmt: skip
        status, _ = await post(body)
        assert status in (200, 400)
        assert not await due_for_check(pool, payment_id)  # not taken for a claim of failure
        assert provider.times_asked(payment_id) == 1
    assert await payment_state(pool, payment_id) == "SUCCEEDED"
    assert await ledger_entries_of(pool, payment_id) == 1


async def test_bodies_at_and_over_one_mebibyte(
    post: Post, database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    payment_id = await new_payment(database, principal)
    event_id = f"evt_{uuid.uuid4().hex}"
    base = json.loads(_payment_event(payment_id, "succeeded", event_id))
    base["padding"] = ""
    empty = len(json.dumps(base).encode())
    base["padding"] = "x" * (MIB - empty)
    exactly = json.dumps(base).encode()
    assert len(exactly) == MIB
    status, reply = await post(exactly)
    assert (status, reply.get("outcome")) == (200, "confirming"), reply
    observed = "SELECT count(*) FROM provider_statuses WHERE payment_id = $1 AND evidence_ref = $2"
    assert await count_rows(pool, observed, payment_id, f"{PROVIDER}:{event_id}") == 1
    async with answering_provider() as provider:  # the claim it carried is confirmed by the provider's API
        _says(provider, payment_id, "succeeded")
        await provider.settle(database, [payment_id])
    assert await ledger_entries_of(pool, payment_id) == 1
    before = await count_rows(
        pool,
        "SELECT count(*) FROM webhook_deliveries WHERE position(convert_to($1, 'UTF8') IN body) > 0",
        str(payment_id),
    )
    for size in (MIB + 1, 5 * MIB):
        other = json.loads(_payment_event(payment_id, "failed"))
        other["padding"] = ""
        other["padding"] = "x" * (size - len(json.dumps(other).encode()))
        status, _ = await post(json.dumps(other).encode())
        assert status == 413, size
    assert not await due_for_check(pool, payment_id)  # the oversized claims of failure asked for nothing
    assert await count_rows(pool, "SELECT count(*) FROM provider_statuses WHERE payment_id = $1", payment_id) == 2
    assert (
        await count_rows(
            pool,
            "SELECT count(*) FROM webhook_deliveries WHERE position(convert_to($1, 'UTF8') IN body) > 0",
            str(payment_id),
        )
        == before
    )
    assert await payment_state(pool, payment_id) == "SUCCEEDED"


async def test_non_utf8_and_duplicate_key_bodies(
    post: Post, database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    payment_id = await new_payment(database, principal)
    status, _ = await post(b'{"id": "evt_\xff\xfe", "type": "payment.succeeded"}')
    assert status == 400
    # duplicate keys: what is applied must be what is stored and signed, read one way
    event_id = f"evt_{uuid.uuid4().hex}"
    body = (
        f'{{"id": "{event_id}", "type": "payment.failed", "data": {{"object": {{"status": "failed",'
        f' "status": "pending", "idempotency_key": "{payment_id}"}}}}, "type": "payment.pending"}}'
    ).encode()
    status, reply = await post(body)
    assert (status, reply["outcome"]) == (200, "applied")  # read as pending: a claim of failure would ask
    assert await payment_state(pool, payment_id) == "PENDING"  # json's last-key-wins, consistently
    observed = await pool.fetch("SELECT status FROM provider_statuses WHERE payment_id = $1", payment_id)
    assert [row["status"] for row in observed] == ["pending"]
    assert not await due_for_check(pool, payment_id)
    assert await count_rows(pool, "SELECT count(*) FROM webhook_deliveries WHERE event_id = $1", event_id) == 1


@pytest.mark.parametrize(
    "where",
    ["event_id", "provider_object_id", "reject_reason"],
)
async def test_a_signed_event_with_a_nul_character_is_kept_and_answered_not_500(
    post: Post, database: Database, principal: Principal, pool: asyncpg.Pool, where: str
) -> None:
    """A signed delivery is kept as evidence; one Ballast cannot read is a 400 (the provider keeps it),
    never a 500 that makes the provider redeliver a poison message forever with nothing stored."""
    leg_id = await _pending_leg(post, database, principal)
    event_id = f"evt_{uuid.uuid4().hex}"
    extra: dict[str, Any] = {}
    if where == "event_id":
        event_id += "\u0000"
    elif where == "provider_object_id":
        extra["id"] = "ord_\u0000"
    else:
        extra["reject_reason"] = "bad\u0000reason"
    data = {"id": "ord_adv", "exec_type": "rejected", "idempotency_key": str(leg_id), **extra}
    body = json.dumps({"id": event_id, "type": "order.rejected", "data": {"object": data}}).encode()
    before = await count_rows(
        pool, "SELECT count(*) FROM webhook_deliveries WHERE position(convert_to($1, 'UTF8') IN body) > 0", str(leg_id)
    )
    status, reply = await post(body)
    assert status < 500, (status, reply)
    assert (
        await count_rows(
            pool,
            "SELECT count(*) FROM webhook_deliveries WHERE position(convert_to($1, 'UTF8') IN body) > 0",
            str(leg_id),
        )
        == before + 1
    )


@pytest.mark.parametrize("depth", [33, 5_000, 200_000])
@pytest.mark.parametrize("where", ["top", "inside the payment"])
async def test_a_signed_event_nested_too_deep_is_kept_and_answered_400_not_500(
    post: Post, database: Database, principal: Principal, pool: asyncpg.Pool, depth: int, where: str
) -> None:
    """Nesting beyond what an event needs (or the parser can go) is refused with 400, the delivery kept
    as evidence; the same delivery again is answered the same, never a 500 the provider retries forever."""
    payment_id = await new_payment(database, principal)
    nested = "[" * depth + "]" * depth
    event_id = f"evt_{uuid.uuid4().hex}"
    if where == "top":
        body = f'{{"id": "{event_id}", "type": "payment.succeeded", "deep": {nested}}}'.encode()
    else:
        data = f'{{"id": "pay_x", "status": "succeeded", "idempotency_key": "{payment_id}", "meta": {nested}}}'
        body = f'{{"id": "{event_id}", "type": "payment.succeeded", "data": {{"object": {data}}}}}'.encode()
    kept = "SELECT count(*) FROM webhook_deliveries WHERE event_id = $1 OR (event_id IS NULL AND body = $2)"
    for attempt in (1, 2):
        status, reply = await post(body)
        assert (status, reply["error"]) == (400, "the body nests deeper than 32 levels"), (status, reply)
        assert await count_rows(pool, kept, event_id, body) == attempt
    assert await payment_state(pool, payment_id) == "RECORDED"


# --------------------------------------------------------------------------------------------------
# Order events: odd numbers, bad fills, overfills, one execution id twice
# --------------------------------------------------------------------------------------------------


async def test_numbers_instead_of_strings_for_quantity_and_price_fill_exactly(
    post: Post, database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    leg_id = await _pending_leg(post, database, principal)
    status, reply = await post(_order_event(leg_id, "partial_fill", execution=fill_execution(25, 10.1)))
    assert (status, reply["outcome"]) == (200, "applied")
    status, reply = await post(_order_event(leg_id, "partial_fill", execution=fill_execution(0.1, 3)))
    assert (status, reply["outcome"]) == (200, "applied")
    leg = await _leg(pool, leg_id)
    assert leg["filled_quantity"] == Decimal("25.1")
    assert leg["fill_notional"] == Decimal("25") * Decimal("10.1") + Decimal("0.1") * Decimal("3")


@pytest.mark.parametrize("quantity", ["0", "-5", 0, -1, "NaN", "Infinity", "1e400", "0.0000000000001", True, None])
async def test_zero_negative_or_unreadable_fill_quantities_change_nothing(
    post: Post, database: Database, principal: Principal, pool: asyncpg.Pool, quantity: Any
) -> None:
    leg_id = await _pending_leg(post, database, principal)
    status, reply = await post(_order_event(leg_id, "partial_fill", execution=fill_execution(quantity)))
    assert status in (200, 400), (status, reply)
    assert reply.get("outcome") != "applied", reply
    leg = await _leg(pool, leg_id)
    assert (leg["state"], leg["filled_quantity"]) == ("PENDING", Decimal(0))
    assert await count_rows(pool, "SELECT count(*) FROM leg_fills WHERE leg_id = $1", leg_id) == 0


async def test_fills_exceeding_the_leg_quantity_are_refused_and_open_a_case(
    post: Post, database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    leg_id = await _pending_leg(post, database, principal, quantity="100")
    assert (await post(_order_event(leg_id, "partial_fill", execution=fill_execution("60"))))[1]["outcome"] == "applied"
    # two concurrent fills of 60 each: at most one fits (and neither does after 60 filled)
    replies = await asyncio.gather(
        post(_order_event(leg_id, "partial_fill", execution=fill_execution("40.000000000001"))),
        post(_order_event(leg_id, "fill", execution=fill_execution("60"))),
        post(_order_event(leg_id, "fill", execution=fill_execution("41"))),
    )
    assert all(status == 200 for status, _ in replies), replies
    leg = await _leg(pool, leg_id)
    assert leg["filled_quantity"] == Decimal("60")
    assert leg["state"] == "PARTIALLY_FILLED"
    assert await count_rows(pool, "SELECT count(*) FROM cases WHERE leg_id = $1", leg_id) == 1
    # the exact remainder still fills it
    assert (await post(_order_event(leg_id, "fill", execution=fill_execution("40"))))[1]["outcome"] == "applied"
    assert (await _leg(pool, leg_id))["state"] == "FILLED"


async def test_concurrent_fills_with_distinct_execution_ids_never_overfill(
    post: Post, database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    leg_id = await _pending_leg(post, database, principal, quantity="100")
    replies = await asyncio.gather(
        *(post(_order_event(leg_id, "partial_fill", execution=fill_execution("7"))) for _ in range(30))
    )
    assert all(status == 200 for status, _ in replies), replies
    leg = await _leg(pool, leg_id)
    fills = await pool.fetch("SELECT quantity FROM leg_fills WHERE leg_id = $1", leg_id)
    assert sum(fill["quantity"] for fill in fills) == leg["filled_quantity"] <= Decimal("100")
    assert len(fills) == 14


async def test_the_same_execution_id_with_a_different_quantity_is_applied_once(
    post: Post, database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    leg_id = await _pending_leg(post, database, principal)
    execution_id = f"exec_{uuid.uuid4().hex}"
    first = await post(_order_event(leg_id, "partial_fill", execution=fill_execution("10", execution_id=execution_id)))
    assert first[1]["outcome"] == "applied"
    replies = await asyncio.gather(
        *(
            post(_order_event(leg_id, "partial_fill", execution=fill_execution(q, execution_id=execution_id)))
            for q in ("20", "10", "90", "100", "5")
        )
    )
    assert all(status == 200 for status, _ in replies)
    leg = await _leg(pool, leg_id)
    assert leg["filled_quantity"] == Decimal("10")
    assert await count_rows(pool, "SELECT count(*) FROM leg_fills WHERE leg_id = $1", leg_id) == 1


async def test_a_fill_that_overtakes_the_acknowledgement_is_applied_not_sent_to_a_person(
    post: Post, database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    """Webhooks come out of order (README): a fill for a leg still SUBMITTED (its submit answer not yet
    written) is not a venue contradicting itself; the fill must be applied once, not parked in a case."""
    leg_id = await submitted_leg(database, principal)
    status, reply = await post(_order_event(leg_id, "partial_fill", execution=fill_execution("10")))
    assert status == 200
    leg = await _leg(pool, leg_id)
    cases = await count_rows(pool, "SELECT count(*) FROM cases WHERE leg_id = $1", leg_id)
    assert (reply["outcome"], leg["filled_quantity"], cases) == ("applied", Decimal("10"), 0), (reply, dict(leg))


# --------------------------------------------------------------------------------------------------
# Signatures
# --------------------------------------------------------------------------------------------------


async def test_signature_attacks_are_refused_with_401_and_store_nothing(
    post: Post, database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    payment_id = await new_payment(database, principal)
    body = _payment_event(payment_id, "succeeded")
    other = _payment_event(payment_id, "failed")
    now = int(time.time())
    before = await count_rows(
        pool,
        "SELECT count(*) FROM webhook_deliveries WHERE position(convert_to($1, 'UTF8') IN body) > 0",
        str(payment_id),
    )
    attacks = {
        "replayed old": sign(body, SECRET, timestamp=now - 301),
        # 30 s beyond: the spec's own calls take seconds, and the server reads its clock when each arrives
        # (the exact boundary is specified with a fixed clock in tests/unit/test_signatures.py)
        "future beyond tolerance": sign(body, SECRET, timestamp=now + 330),
        "far future": sign(body, SECRET, timestamp=now + 10**9),
        "signature over another body": sign(other, SECRET),
        "v1 only of garbage": f"t={now},v1=deadbeef,v1=",
        "two timestamps": f"t={now},t={now - 1000},v1={mac(body, SECRET, now)}",
        "old t with a current v1 injected": f"t={now - 3600},v1={mac(body, SECRET, now)}",
        "v0 scheme only": f"t={now},v0={mac(body, SECRET, now)}",
        "wrong secret": sign(body, "whsec_other"),
        "empty": "",
        "header injection in value": f"t={now},v1={mac(other, SECRET, now)}; v1={mac(body, SECRET, now - 1)}",
        "uppercase hex": f"t={now},v1={mac(body, SECRET, now).upper()}",
        "negative t": f"t=-{now},v1={mac(body, SECRET, now)}",
    }
    for name, signature in attacks.items():
        status, _ = await post(body, signature=signature)
        assert status == 401, name
    # a tampered body with a valid signature of the original
    assert (await post(other, signature=sign(body, SECRET)))[0] == 401
    assert (
        await count_rows(
            pool,
            "SELECT count(*) FROM webhook_deliveries WHERE position(convert_to($1, 'UTF8') IN body) > 0",
            str(payment_id),
        )
        == before
    )
    await _untouched(pool, payment_id)
    # multiple v1 entries where one is genuine: accepted as Stripe does (secret rotation)
    status, reply = await post(body, signature=f"t={now},v1={'0' * 64},v1={mac(body, SECRET, now)}")
    assert (status, reply["outcome"]) == (200, "confirming")
    assert await due_for_check(pool, payment_id)


@pytest.mark.parametrize(
    "timestamp",
    ["9" * 5000, "\u00b2", "\u0661\u0662\u0663"],  # too many digits for int(); a superscript two; Arabic digits
    ids=["5000-digits", "superscript-digit", "arabic-indic-digits"],
)
async def test_a_forged_signature_with_a_weird_timestamp_is_401_not_a_server_error(
    post: Post, database: Database, principal: Principal, pool: asyncpg.Pool, timestamp: str
) -> None:
    payment_id = await new_payment(database, principal)
    body = _payment_event(payment_id, "succeeded")
    header = f"t={timestamp},v1={'ab' * 32}"
    status, reply = await post(body, headers={"Simulator-Signature": header})
    assert status == 401, (status, reply)
    await _untouched(pool, payment_id)


async def test_two_signature_headers_cannot_smuggle_a_forgery(
    post: Post, database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    payment_id = await new_payment(database, principal)
    genuine = _payment_event(payment_id, "failed")
    forged = _payment_event(payment_id, "succeeded")
    headers = [
        ("Simulator-Signature", f"t={int(time.time())},v1={'00' * 32}"),
        ("Simulator-Signature", sign(genuine, SECRET)),
    ]
    status, _ = await post(forged, headers=headers)
    assert status == 401
    await _untouched(pool, payment_id)


# --------------------------------------------------------------------------------------------------
# The venue: duplicates, resolver racing webhooks
# --------------------------------------------------------------------------------------------------


async def test_fills_are_applied_once_per_execution_while_the_leg_resolver_races_duplicate_webhooks(
    tmp_path: Path, database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    settings = {
        "settle_min_ms": 5,
        "settle_max_ms": 40,
        "webhook_retry_base_ms": 20,
        "order_reject_rate": 0.0,
        "order_fill_parts_max": 5,
        "webhook_duplicate_rate": 1.0,
        "webhook_reorder_rate": 1.0,
    }
    async with simulated_provider(tmp_path, database, "calm", **settings) as url, aiohttp.ClientSession() as http:
        venue = VenueClient("simulator", url, http, Breaker("adv.orders", BreakerSettings(failures_max=10_000)))
        resolver = LegResolver(
            database,
            venue,
            LegResolverSettings(submitted_grace_s=0, working_check_s=0, backoff_base_s=0, batch_size=200),
        )
        orders = []
        stop = asyncio.Event()

        async def resolve() -> None:
            while not stop.is_set():
                await pool.execute(
                    "UPDATE legs SET next_check_at = '-infinity' WHERE id IN"
                    " (SELECT id FROM legs WHERE order_id = ANY($1::uuid[]) FOR UPDATE SKIP LOCKED)",
                    [o for o in orders],
                )
                await resolver.run_once()
                await asyncio.sleep(0.005)

        resolving = asyncio.create_task(resolve())
        try:
            for _ in range(5):
                request = submit_order_command([leg_terms("100"), leg_terms("33.5")], reference="adv")
                # half recorded without sending (the resolver sends them), half sent at once
                sender = venue if len(orders) % 2 else None
                orders.append((await submit_and_send(database, sender, principal, request, Budget.within(5))).order.id)
            deadline = time.monotonic() + 30
            while await count_rows(
                pool, "SELECT count(*) FROM legs WHERE order_id = ANY($1::uuid[]) AND state <> 'FILLED'", orders
            ):
                assert time.monotonic() < deadline, await pool.fetch(
                    "SELECT id, state, filled_quantity FROM legs WHERE order_id = ANY($1::uuid[])", orders
                )
                await asyncio.sleep(0.05)
            # late and duplicated fills, raced by the resolver: all of them sent
            legs = await pool.fetch("SELECT id FROM legs WHERE order_id = ANY($1::uuid[])", orders)
            await until_webhooks_sent(url, [str(leg["id"]) for leg in legs], timeout_s=20)
        finally:
            stop.set()
            await resolving
        truth = {o["idempotency_key"]: o for o in (await simulator_truth(url))["orders"]}
    legs = await pool.fetch(
        "SELECT id, state, filled_quantity, fill_notional, quantity FROM legs WHERE order_id = ANY($1::uuid[])", orders
    )
    assert len(legs) == 10
    for leg in legs:
        venue_order = truth[str(leg["id"])]
        fills = await pool.fetch("SELECT execution_id, quantity FROM leg_fills WHERE leg_id = $1", leg["id"])
        assert sorted(f["execution_id"] for f in fills) == sorted(e["id"] for e in venue_order["executions"])
        assert leg["filled_quantity"] == leg["quantity"] == Decimal(venue_order["quantity"])
        assert sum(f["quantity"] for f in fills) == leg["filled_quantity"]
        assert not await count_rows(pool, "SELECT count(*) FROM cases WHERE leg_id = $1", leg["id"])
