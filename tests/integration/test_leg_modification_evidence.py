"""The venue's answer to a modification is evidence like any other (real HTTP intake, real PostgreSQL).

It answers the leg's pending modification, named by the key Ballast sent it under: a confirmation
stating other terms than asked is a misfit (a case, nothing moves), an answer to another modification
is late (nothing moves, no case), and a fill made under the new terms that overtakes the `replaced`
report confirms the modification first. Fills made under the old terms still apply while the venue
has not answered.
"""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from server.db.database import Budget, Database
from server.domain.identity import Principal
from server.domain.orders import validate_modify_leg
from server.services import execution
from tests.integration.test_venue_evidence_fit import (
    MISMATCH,
    Post,
    _cases,
    _event,
    _fill,
    _leg,
    _named,
    _order,
    _pending_leg,
    post,
)

__all__ = ["post"]  # the intake fixture these specs post to


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
