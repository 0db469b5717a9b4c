"""Venue evidence that does not fit never moves an order leg (real HTTP intake, real PostgreSQL).

A correctly signed report about a leg whose venue order id, symbol, side or filled quantity
contradicts what Ballast knows of it is kept, moves nothing, records nothing on the leg (not even
the venue's order id) and opens one EVIDENCE_MISMATCH case for the leg naming the differing fields;
later misfits join that case. The leg resolver holds the venue's inquiry answer to the same rule. A
report that fits applies as before.

The venue's answer to a modification is evidence like any other. It answers the leg's pending
modification, named by the key Ballast sent it under: a confirmation stating other terms than asked
is a misfit (a case, nothing moves), an answer to another modification is late (nothing moves, no
case), and a fill made under the new terms that overtakes the `replaced` report confirms the
modification first. Fills made under the old terms still apply while the venue has not answered.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from server.db.database import Budget, Database
from server.domain.identity import Principal
from server.domain.orders import LegSpec, validate_modify_leg
from server.providers.breaker import Breaker, BreakerSettings
from server.providers.http import NotSent
from server.providers.venue import VenueClient, VenueExecution, VenueOrder
from server.services import execution
from server.services.leg_resolver import LegResolver, LegResolverSettings
from server.services.order_submission import submit_and_send
from tests.support.requests import leg_terms, submit_order_command, submitted_leg
from tests.support.webhooks import PROVIDER, event, webhook_endpoint

SECRET = "whsec_venue_evidence_fit"  # noqa: S105 - a test secret
MISMATCH = "EVIDENCE_MISMATCH"

Post = Callable[[bytes], Awaitable[dict[str, Any]]]


def _order(leg_id: uuid.UUID, exec_type: str, venue_order_id: str, **fields: Any) -> dict[str, Any]:
    """The broker venue's order object as its webhooks and its inquiry carry it, for a 100 ACME buy."""
    return {
        "id": venue_order_id,
        "object": "order",
        "symbol": "ACME",
        "side": "buy",
        "type": "market",
        "quantity": "100",
        "currency": "USD",
        "status": "new",
        "filled_quantity": "0",
        "exec_type": exec_type,
        "idempotency_key": str(leg_id),
        "execution": None,
    } | fields


def _fill(order: dict[str, Any], quantity: str, cumulative: str, price: str = "10.5") -> dict[str, Any]:
    execution = {
        "id": f"exec_{uuid.uuid4().hex}",
        "order_id": order["id"],
        "exec_type": order["exec_type"],
        "quantity": quantity,
        "price": price,
        "cumulative_quantity": cumulative,
        "leaves_quantity": str(Decimal(order["quantity"]) - Decimal(cumulative)),
        "time": int(time.time()),
    }
    return order | {"execution": execution, "filled_quantity": cumulative, "status": "partially_filled"}


def _event(order: dict[str, Any], event_id: str | None = None) -> bytes:
    return event(f"order.{order['exec_type']}", order, event_id)


@pytest.fixture
async def post(database: Database) -> AsyncIterator[Post]:
    async with webhook_endpoint(database, SECRET) as endpoint:

        async def send(body: bytes) -> dict[str, Any]:
            status, reply = await endpoint.post(body)
            assert status == 200, reply
            return reply

        yield send


#: The leg these specs trade: 100 ACME bought at market, in USD.
ACME_BUY = leg_terms("100", "ACME")


async def _pending_leg(post: Post, database: Database, principal: Principal, venue_order_id: str) -> uuid.UUID:
    """The same leg, acknowledged by the venue under `venue_order_id` (PENDING)."""
    leg_id = await submitted_leg(database, principal)
    assert (await post(_event(_order(leg_id, "new", venue_order_id))))["outcome"] == "applied"
    return leg_id


async def _leg(pool: asyncpg.Pool, leg_id: uuid.UUID) -> dict[str, Any]:
    """Everything a report could have moved or recorded on a leg."""
    row = await pool.fetchrow(
        """
        SELECT l.state, l.filled_quantity, l.fill_notional, l.venue_order_id, l.quantity,
               (SELECT count(*) FROM leg_fills f WHERE f.leg_id = l.id) AS fills,
               (SELECT count(*) FROM leg_transitions t WHERE t.leg_id = l.id) AS transitions,
               (SELECT count(*) FROM outbox o WHERE o.message_key = l.id::text AND o.topic <> 'cases.opened')
                   AS leg_events
        FROM legs l WHERE l.id = $1
        """,
        leg_id,
    )
    assert row is not None
    return dict(row)


async def _cases(pool: asyncpg.Pool, leg_id: uuid.UUID) -> list[dict[str, Any]]:
    rows = await pool.fetch("SELECT kind, status, summary, evidence FROM cases WHERE leg_id = $1", leg_id)
    return [dict(row) for row in rows]


def _named(piece: dict[str, Any]) -> list[tuple[str, str | None, str]]:
    return [(misfit["field"], misfit["ballast"], misfit["venue"]) for misfit in piece["misfits"]]


async def test_a_fill_naming_another_venue_order_moves_nothing_and_a_second_misfit_joins_its_case(
    post: Post, database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    leg_id = await _pending_leg(post, database, principal, "ord_ours")
    before = await _leg(pool, leg_id)

    other_order = _fill(_order(leg_id, "partial_fill", "ord_theirs"), "10", "10")
    first_id = f"evt_{uuid.uuid4().hex}"
    assert (await post(_event(other_order, first_id)))["outcome"] == "misfit"

    assert await _leg(pool, leg_id) == before  # no fill, no transition, no event, the venue order id kept
    assert before["venue_order_id"] == "ord_ours" and before["state"] == "PENDING"
    kept = await pool.fetchval("SELECT count(*) FROM webhook_deliveries WHERE event_id = $1", first_id)
    assert kept == 1  # the delivery is the evidence, kept as received
    (case,) = await _cases(pool, leg_id)
    assert (case["kind"], case["status"]) == (MISMATCH, "OPEN")
    (piece,) = case["evidence"]
    assert piece["claim"] == "FILL" and piece["evidence_ref"] == f"{PROVIDER}:{first_id}"
    assert _named(piece) == [
        ("venue_order_id", "ord_ours", "ord_theirs"),
        ("execution.order_id", "ord_ours", "ord_theirs"),
    ]
    assert piece["fill"]["quantity"] == "10"
    assert "venue_order_id" in case["summary"] and "ord_theirs" in case["summary"]

    # our venue order id, another instrument and side: a second misfit joins the open case
    other_symbol = _fill(_order(leg_id, "partial_fill", "ord_ours", symbol="OTHER", side="sell"), "10", "10")
    assert (await post(_event(other_symbol)))["outcome"] == "misfit"

    assert await _leg(pool, leg_id) == before
    (case,) = await _cases(pool, leg_id)
    assert [_named(piece) for piece in case["evidence"]] == [
        [("venue_order_id", "ord_ours", "ord_theirs"), ("execution.order_id", "ord_ours", "ord_theirs")],
        [("symbol", "ACME", "OTHER"), ("side", "BUY", "sell")],
    ]


async def test_a_misfit_records_no_venue_order_id_and_a_fitting_report_then_records_its_own(
    post: Post, database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    leg_id = await submitted_leg(database, principal)
    before = await _leg(pool, leg_id)
    assert before["venue_order_id"] is None

    assert (await post(_event(_order(leg_id, "new", "ord_elsewhere", symbol="OTHER"))))["outcome"] == "misfit"
    assert await _leg(pool, leg_id) == before  # still SUBMITTED, and the other order's id is not the leg's
    (case,) = await _cases(pool, leg_id)
    assert [_named(piece) for piece in case["evidence"]] == [[("symbol", "ACME", "OTHER")]]

    assert (await post(_event(_order(leg_id, "new", "ord_ours"))))["outcome"] == "applied"
    after = await _leg(pool, leg_id)
    assert (after["state"], after["venue_order_id"]) == ("PENDING", "ord_ours")


async def test_a_venue_stating_more_filled_than_the_leg_holds_moves_nothing(
    post: Post, database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    leg_id = await _pending_leg(post, database, principal, "ord_ours")
    before = await _leg(pool, leg_id)
    # the fill itself would fit (10 of 100), but the venue says 150 of this order have filled
    report = _fill(_order(leg_id, "partial_fill", "ord_ours"), "10", "150")
    assert (await post(_event(report)))["outcome"] == "misfit"
    assert await _leg(pool, leg_id) == before
    (case,) = await _cases(pool, leg_id)
    assert [_named(piece) for piece in case["evidence"]] == [[("filled_quantity", "100", "150")]]
    assert case["evidence"][0]["misfits"][0]["rule"] == "at_most"


async def test_reports_that_fit_apply_as_before(
    post: Post, database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    leg_id = await _pending_leg(post, database, principal, "ord_ours")
    first = _fill(_order(leg_id, "partial_fill", "ord_ours"), "40", "40", price="10")
    assert (await post(_event(first)))["outcome"] == "applied"
    rest = _fill(_order(leg_id, "fill", "ord_ours"), "60", "100", price="11")
    assert (await post(_event(rest)))["outcome"] == "applied"

    after = await _leg(pool, leg_id)
    assert (after["state"], after["filled_quantity"], after["fill_notional"], after["fills"]) == (
        "FILLED",
        Decimal("100"),
        Decimal("1060"),
        2,
    )
    assert after["venue_order_id"] == "ord_ours"
    assert await _cases(pool, leg_id) == []


async def test_a_report_stating_none_of_the_fields_still_applies(
    post: Post, database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    """A venue that states only its order id and the execution is not held to what it did not say."""
    leg_id = await _pending_leg(post, database, principal, "ord_ours")
    execution = {"id": f"exec_{uuid.uuid4().hex}", "quantity": "5", "price": "9", "time": int(time.time())}
    bare = {"id": "ord_ours", "exec_type": "partial_fill", "idempotency_key": str(leg_id), "execution": execution}
    assert (await post(_event(bare)))["outcome"] == "applied"
    assert (await _leg(pool, leg_id))["filled_quantity"] == Decimal("5")


# ------------------------------------------------------------------------------------------ the resolver


class _Venue:
    """A venue whose inquiry answers about one leg with `order` and lists `executions`; every other
    leg the resolver claims from the shared database is 'not sent' (it is checked again later)."""

    provider = PROVIDER

    def __init__(self, leg_id: uuid.UUID, order: dict[str, Any], executions: list[VenueExecution]) -> None:
        self.leg_id = str(leg_id)
        self.order = order
        self.listed = executions
        self.asked_executions: list[str] = []

    async def find_leg(self, idempotency_key: str, timeout_s: float) -> VenueOrder | None:
        if idempotency_key != self.leg_id:
            raise NotSent("another test's leg", 0)
        return VenueOrder(self.order["id"], self.order["status"], json.dumps(self.order).encode())

    async def executions(self, venue_order_id: str, timeout_s: float) -> list[VenueExecution]:
        self.asked_executions.append(venue_order_id)
        return self.listed

    async def submit_leg(self, idempotency_key: str, leg: LegSpec, reference: str, timeout_s: float) -> VenueOrder:
        raise NotSent("this venue takes no orders", 0)


async def _check(pool: asyncpg.Pool, database: Database, venue: _Venue, leg_id: uuid.UUID) -> None:
    """Run the resolver until it has checked the leg once (other tests' legs may be due as well)."""
    resolver = LegResolver(database, venue, LegResolverSettings(batch_size=200))  # type: ignore[arg-type]
    attempts = await pool.fetchval("SELECT check_attempts FROM legs WHERE id = $1", leg_id)
    deadline = time.monotonic() + 20
    while await pool.fetchval("SELECT check_attempts FROM legs WHERE id = $1", leg_id) == attempts:
        assert time.monotonic() < deadline, "the resolver never checked the leg"
        await pool.execute("UPDATE legs SET next_check_at = '-infinity' WHERE id = $1", leg_id)
        await resolver.run_once()


async def test_an_inquiry_answer_naming_another_order_moves_nothing_and_is_kept_in_the_case(
    post: Post, database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    leg_id = await _pending_leg(post, database, principal, "ord_ours")
    before = await _leg(pool, leg_id)
    answer = _order(leg_id, "", "ord_theirs", status="partially_filled", filled_quantity="30")
    listed = [VenueExecution(f"exec_{uuid.uuid4().hex}", Decimal("30"), Decimal("10"), datetime.now(UTC))]
    venue = _Venue(leg_id, answer, listed)

    await _check(pool, database, venue, leg_id)

    assert await _leg(pool, leg_id) == before  # its fills were not applied either
    (case,) = await _cases(pool, leg_id)
    assert case["kind"] == MISMATCH
    (piece,) = case["evidence"]
    assert _named(piece) == [("venue_order_id", "ord_ours", "ord_theirs")]
    assert piece["evidence_ref"] == f"{PROVIDER}:ord_theirs"
    assert json.loads(piece["venue_answer"]) == answer  # an inquiry's answer is kept nowhere else


async def test_an_inquiry_answer_that_fits_recovers_its_fills_as_before(
    post: Post, database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    leg_id = await _pending_leg(post, database, principal, "ord_ours")
    answer = _order(leg_id, "", "ord_ours", status="partially_filled", filled_quantity="30")
    listed = [VenueExecution(f"exec_{uuid.uuid4().hex}", Decimal("30"), Decimal("10"), datetime.now(UTC))]
    venue = _Venue(leg_id, answer, listed)

    await _check(pool, database, venue, leg_id)

    after = await _leg(pool, leg_id)
    assert (after["state"], after["filled_quantity"], after["fills"]) == ("PARTIALLY_FILLED", Decimal("30"), 1)
    assert venue.asked_executions == ["ord_ours"]
    assert await _cases(pool, leg_id) == []


async def test_a_submission_answer_naming_another_symbol_acknowledges_nothing_and_opens_a_case(
    database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    async def accept(request: web.Request) -> web.Response:  # a venue that answers about another order
        return web.json_response({"id": "ord_1", "status": "new", "symbol": "EVIL", "side": "buy"})

    app = web.Application()
    app.router.add_post("/v1/orders", accept)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        async with aiohttp.ClientSession() as session:
            venue = VenueClient(
                PROVIDER,
                f"http://127.0.0.1:{runner.addresses[0][1]}",
                session,
                Breaker("venue", BreakerSettings()),
            )
            request = submit_order_command([ACME_BUY], reference="fit")
            order = (await submit_and_send(database, venue, principal, request, Budget.within(5))).order
    finally:
        await runner.cleanup()
    leg_id = order.legs[0].id
    leg = await _leg(pool, leg_id)
    assert (leg["state"], leg["venue_order_id"]) == ("SUBMITTED", None)
    [case] = await _cases(pool, leg_id)
    assert case["kind"] == "EVIDENCE_MISMATCH"
    assert [field for field, _, _ in _named(case["evidence"][-1])] == ["symbol"]


# ------------------------------------------------------------------------------- answers to a modification


async def _modifying(
    database: Database, principal: Principal, pool: asyncpg.Pool, leg_id: uuid.UUID, quantity: str
) -> str:
    """Ask the leg for a new quantity (nothing is sent: no venue); the modification's id, its key at the venue."""
    order_id = await pool.fetchval("SELECT order_id FROM legs WHERE id = $1", leg_id)
    request = validate_modify_leg(f"m-{uuid.uuid4()}", str(order_id), str(leg_id), quantity, "")
    leg = (await execution.modify_leg(database, principal, request, Budget.within(5))).leg
    assert leg.state.value == "MODIFYING" and leg.modification is not None
    return str(leg.modification.id)


def _answer(leg_id: uuid.UUID, exec_type: str, key: str, status: str, **fields: Any) -> dict[str, Any]:
    modification = {"id": "mod_1", "idempotency_key": key, "status": status, "reason": fields.pop("reason", None)}
    return _order(leg_id, exec_type, "ord_1", modification=modification, **fields)


async def _modification(pool: asyncpg.Pool, leg_id: uuid.UUID) -> tuple[str, str]:
    row = await pool.fetchrow("SELECT modification_status, modification_reason FROM legs WHERE id = $1", leg_id)
    return row["modification_status"], row["modification_reason"]


async def test_a_confirmation_stating_other_terms_than_asked_moves_nothing_and_opens_a_case(
    post: Post, database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    leg_id = await _pending_leg(post, database, principal, "ord_1")
    key = await _modifying(database, principal, pool, leg_id, "60")
    before = await _leg(pool, leg_id)

    wrong = await post(_event(_answer(leg_id, "replaced", key, "confirmed", quantity="50")))
    assert wrong["outcome"] == "misfit"
    assert await _leg(pool, leg_id) == before
    assert await _modification(pool, leg_id) == ("PENDING", "")
    (case,) = await _cases(pool, leg_id)
    assert (case["kind"], _named(case["evidence"][0])) == (MISMATCH, [("quantity", "60", "50")])

    right = await post(_event(_answer(leg_id, "replaced", key, "confirmed", quantity="60")))
    assert right["outcome"] == "applied"
    after = await _leg(pool, leg_id)
    assert (after["state"], after["quantity"]) == ("PENDING", 60)
    assert await _modification(pool, leg_id) == ("CONFIRMED", "")


async def test_an_answer_to_another_modification_or_to_none_is_late_and_changes_nothing(
    post: Post, database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    leg_id = await _pending_leg(post, database, principal, "ord_1")
    key = await _modifying(database, principal, pool, leg_id, "60")
    before = await _leg(pool, leg_id)
    earlier = await post(_event(_answer(leg_id, "replaced", "an-earlier-one", "confirmed", quantity="40")))
    assert earlier["outcome"] == "stale"
    assert await _leg(pool, leg_id) == before

    assert (await post(_event(_answer(leg_id, "modify_rejected", key, "rejected", reason="no")))).get("outcome") == (
        "applied"
    )
    answered = await _leg(pool, leg_id)
    assert (answered["state"], answered["quantity"]) == ("PENDING", 100)  # refused: the leg as it was
    assert await _modification(pool, leg_id) == ("REFUSED", "no")
    again = await post(_event(_answer(leg_id, "replaced", key, "confirmed", quantity="60")))  # none is pending now
    assert again["outcome"] == "stale"
    assert await _leg(pool, leg_id) == answered
    assert await _cases(pool, leg_id) == []


async def test_a_fill_under_the_new_terms_that_overtakes_the_replace_confirms_it_first(
    post: Post, database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    leg_id = await _pending_leg(post, database, principal, "ord_1")
    assert (await post(_event(_fill(_order(leg_id, "fill", "ord_1"), "100", "100"))))["outcome"] == "applied"
    key = await _modifying(database, principal, pool, leg_id, "150")  # a filled leg, grown

    refill = _fill(_answer(leg_id, "partial_fill", key, "confirmed", quantity="150"), "20", "120")
    assert (await post(_event(refill)))["outcome"] == "applied"
    leg = await _leg(pool, leg_id)
    assert (leg["state"], leg["quantity"], leg["filled_quantity"], leg["fills"]) == ("PARTIALLY_FILLED", 150, 120, 2)
    causes = await pool.fetch(
        "SELECT from_state, to_state, cause FROM leg_transitions WHERE leg_id = $1 ORDER BY id DESC LIMIT 2", leg_id
    )
    assert [tuple(row) for row in reversed(causes)] == [
        ("MODIFYING", "PARTIALLY_FILLED", "venue.modification_confirmed"),
        ("PARTIALLY_FILLED", "PARTIALLY_FILLED", "venue.fill"),
    ]
    late = await post(_event(_answer(leg_id, "replaced", key, "confirmed", quantity="150", filled_quantity="100")))
    assert late["outcome"] == "stale"
    assert await _leg(pool, leg_id) == leg


async def test_fills_made_under_the_old_terms_apply_while_the_venue_has_not_answered(
    post: Post, database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    leg_id = await _pending_leg(post, database, principal, "ord_1")
    key = await _modifying(database, principal, pool, leg_id, "60")
    old_terms = _fill(_answer(leg_id, "partial_fill", key, "pending"), "30", "30")
    assert (await post(_event(old_terms)))["outcome"] == "applied"
    leg = await _leg(pool, leg_id)
    assert (leg["state"], leg["quantity"], leg["filled_quantity"]) == ("MODIFYING", 100, 30)

    refused = await post(_event(_answer(leg_id, "modify_rejected", key, "rejected", reason="book moved")))
    assert refused["outcome"] == "applied"
    leg = await _leg(pool, leg_id)
    assert (leg["state"], leg["quantity"], leg["filled_quantity"]) == ("PARTIALLY_FILLED", 100, 30)
    assert await _modification(pool, leg_id) == ("REFUSED", "book moved")
