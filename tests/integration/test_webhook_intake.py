"""Webhook intake over real HTTP against PostgreSQL: authentic events applied once, evidence kept,
forgeries and replays refused, contradictions sent to a person, failures redelivered."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from server.api.http_app import build_http_app
from server.db.database import Budget, Database
from server.domain.identity import Principal
from server.domain.payments import validate_create_payment
from server.services.payments import create_payment
from server.services.webhooks import WebhookSource

SECRET = "whsec_intake_test"  # noqa: S105 - a test secret
PROVIDER = "simulator"

Post = Callable[..., Awaitable[tuple[int, dict[str, Any]]]]


def _sign(body: bytes, secret: str = SECRET, timestamp: int | None = None) -> str:
    t = int(time.time()) if timestamp is None else timestamp
    return f"t={t},v1={hmac.new(secret.encode(), f'{t}.'.encode() + body, hashlib.sha256).hexdigest()}"


def _event(payment_id: uuid.UUID, status: str, event_id: str | None = None, sequence: int = 1) -> bytes:
    event = {
        "id": event_id or f"evt_{uuid.uuid4().hex[:24]}",
        "type": f"payment.{status}",
        "sequence": sequence,
        "data": {"object": {"id": "pay_test", "status": status, "idempotency_key": str(payment_id)}},
    }
    return json.dumps(event).encode()


@pytest.fixture
async def post(database: Database) -> AsyncIterator[Post]:
    runner = web.AppRunner(build_http_app(database, {PROVIDER: WebhookSource(PROVIDER, SECRET)}), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    async with aiohttp.ClientSession() as session:

        async def send(
            body: bytes, signature: str | None = None, provider: str = PROVIDER
        ) -> tuple[int, dict[str, Any]]:
            headers = {"Simulator-Signature": signature if signature is not None else _sign(body)}
            async with session.post(f"http://127.0.0.1:{port}/webhooks/{provider}", data=body, headers=headers) as r:
                return r.status, await r.json()

        yield send
    await runner.cleanup()


async def _payment(database: Database, principal: Principal) -> uuid.UUID:
    request = validate_create_payment(
        idempotency_key=str(uuid.uuid4()),
        amount_value="25.00",
        currency_code="EUR",
        description="",
        merchant_reference="",
        metadata={},
    )
    return (await create_payment(database, principal, request, Budget.within(10))).payment.id


async def _count(pool: asyncpg.Pool, sql: str, *arguments: object) -> int:
    return int(await pool.fetchval(sql, *arguments))


async def test_a_hundred_concurrent_deliveries_of_one_event_apply_it_once(
    post: Post, database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    payment_id = await _payment(database, principal)
    body = _event(payment_id, "succeeded", event_id=f"evt_{uuid.uuid4().hex}")
    replies = await asyncio.gather(*(post(body) for _ in range(100)))
    assert {status for status, _ in replies} == {200}
    outcomes = sorted(reply["outcome"] for _, reply in replies)
    assert outcomes.count("applied") == 1 and outcomes.count("duplicate") == 99
    assert await pool.fetchval("SELECT state FROM payments WHERE id = $1", payment_id) == "SUCCEEDED"
    assert await _count(pool, "SELECT count(*) FROM payment_transitions WHERE payment_id = $1", payment_id) == 1
    assert await _count(pool, "SELECT count(*) FROM ledger_entries WHERE payment_id = $1", payment_id) == 1
    event_id = json.loads(body)["id"]
    assert await _count(pool, "SELECT count(*) FROM webhook_deliveries WHERE event_id = $1", event_id) == 100


async def test_a_forged_or_replayed_webhook_is_refused_and_stores_nothing(
    post: Post, database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    payment_id = await _payment(database, principal)
    body = _event(payment_id, "succeeded")
    before = await _count(
        pool,
        "SELECT count(*) FROM webhook_deliveries WHERE position(convert_to($1, 'UTF8') IN body) > 0",
        str(payment_id),
    )
    for signature in (
        "",
        "t=1,v1=00",
        _sign(body, secret="whsec_wrong"),  # noqa: S106 - a wrong secret on purpose
        _sign(body, timestamp=int(time.time()) - 3600),
    ):
        status, _ = await post(body, signature=signature)
        assert status == 401, signature
    tampered = body.replace(b"succeeded", b"failed")
    assert (await post(tampered, signature=_sign(body)))[0] == 401
    assert (
        await _count(
            pool,
            "SELECT count(*) FROM webhook_deliveries WHERE position(convert_to($1, 'UTF8') IN body) > 0",
            str(payment_id),
        )
        == before
    )
    assert await pool.fetchval("SELECT state FROM payments WHERE id = $1", payment_id) == "RECORDED"
    assert (await post(body, provider="nobody"))[0] == 404


async def test_pending_failed_succeeded_leaves_the_payment_failed_and_opens_one_case(
    post: Post, database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    payment_id = await _payment(database, principal)
    outcomes = []
    for sequence, status in enumerate(("pending", "failed", "succeeded", "succeeded", "pending"), start=1):
        _, reply = await post(_event(payment_id, status, sequence=sequence))
        outcomes.append(reply["outcome"])
    assert outcomes == ["applied", "applied", "contradiction", "contradiction", "stale"]
    assert await pool.fetchval("SELECT state FROM payments WHERE id = $1", payment_id) == "FAILED"
    cases = await pool.fetch("SELECT kind, status, evidence FROM cases WHERE payment_id = $1", payment_id)
    assert len(cases) == 1
    assert (cases[0]["kind"], cases[0]["status"]) == ("CONTRADICTORY_EVIDENCE", "OPEN")
    claims = [piece["claim"] for piece in cases[0]["evidence"]]
    assert claims == ["FAILED", "SUCCEEDED", "SUCCEEDED"]  # what decided it, then each contradiction
    assert await _count(pool, "SELECT count(*) FROM ledger_entries WHERE payment_id = $1", payment_id) == 0
    assert (
        await _count(
            pool, "SELECT count(*) FROM outbox WHERE topic = 'cases.opened' AND message_key = $1", str(payment_id)
        )
        == 2
    )


async def test_a_failing_handler_leaves_no_processed_row_and_the_redelivery_applies_it(
    post: Post, database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    payment_id = await _payment(database, principal)
    body = _event(payment_id, "succeeded", event_id=f"evt_{uuid.uuid4().hex}")
    event_id = json.loads(body)["id"]
    # PostgreSQL itself fails the handler's work, once, for this payment (a sequence survives the rollback)
    name = f"fail_once_{payment_id.hex}"
    await pool.execute(f"CREATE SEQUENCE {name}")
    await pool.execute(
        f"""
        CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.payment_id = '{payment_id}' AND nextval('{name}') = 1 THEN
                RAISE EXCEPTION 'injected failure' USING ERRCODE = 'internal_error';
            END IF;
            RETURN NEW;
        END $$
        """
    )
    await pool.execute(
        f"CREATE TRIGGER {name} BEFORE INSERT ON payment_transitions FOR EACH ROW EXECUTE FUNCTION {name}()"
    )
    try:
        status, _ = await post(body)
        assert status >= 500
        processed = "SELECT count(*) FROM processed_events WHERE event_id = $1"
        assert await _count(pool, processed, event_id) == 0
        assert await pool.fetchval("SELECT state FROM payments WHERE id = $1", payment_id) == "RECORDED"
        status, reply = await post(body)  # the provider delivers it again
        assert (status, reply["outcome"]) == (200, "applied")
        assert await _count(pool, processed, event_id) == 1
        assert await pool.fetchval("SELECT state FROM payments WHERE id = $1", payment_id) == "SUCCEEDED"
    finally:
        await pool.execute(f"DROP TRIGGER {name} ON payment_transitions")
        await pool.execute(f"DROP FUNCTION {name}()")
        await pool.execute(f"DROP SEQUENCE {name}")


async def test_an_event_about_nothing_of_ours_is_kept_and_acknowledged(post: Post, pool: asyncpg.Pool) -> None:
    body = _event(uuid.uuid4(), "succeeded")
    status, reply = await post(body)
    assert (status, reply["outcome"]) == (200, "ignored")
    assert (
        await _count(pool, "SELECT count(*) FROM webhook_deliveries WHERE event_id = $1", json.loads(body)["id"]) == 1
    )
    status, _ = await post(b"not json")
    assert status == 400
