"""Webhook intake in group commits (server/services/webhooks.py, class Intake), pushed hard.

Concurrent deliveries share one PostgreSQL transaction and are answered only after its commit; a
failed batch is applied again one delivery at a time. These specs try to break what that must keep:
each event applied once per consumer, in arrival order within a batch, every payment moving only as
its machine and the order of witnesses allow, a bad event failing alone, every caller answered (in
time, or on stopping) and nothing half applied. (A server killed mid-storm: tests/e2e.)

A webhook is a signal, not the deciding witness: a `pending` moves a RECORDED payment to PENDING, but
a claimed outcome (succeeded, failed, refunded...) only notes the provider's status and makes the
payment due for a check with the provider's API (`confirming`). Where a spec needs the outcome, the
resolver asks a provider API the spec sets up, whose answer decides, once, with one ledger entry.

Batches are made on purpose where their shape matters: a first delivery is held up behind a row lock
the spec holds (pg_blocking_pids tells when the writer waits for it), so the deliveries sent
meanwhile queue up and reach PostgreSQL together.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from decimal import Decimal
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from prometheus_client import REGISTRY

from server.api.http_app import INTAKE, SOURCES, build_http_app, receive_webhook
from server.db.database import Budget, Database
from server.domain.errors import DeadlineExceeded, Unavailable
from server.domain.events import CASE_OPENED, PAYMENT_STATE_CHANGED
from server.domain.identity import Principal
from server.services.webhook_application import Outcome, WebhookSource
from server.services.webhooks import Intake
from tests.support import until
from tests.support.faults import ConflictsNoted, Held, allow_inserts, hold_row, holding, refuse_inserts
from tests.support.probes import (
    allowed_payment_moves,
    claim_waits,
    count_rows,
    due_for_check,
    kept_deliveries,
    ledger_entries_of,
    payment_moves,
    payment_state,
    processed_events,
    provider_statuses,
)
from tests.support.providers import decided_by_the_api
from tests.support.requests import leg_terms, new_payments, submitted_legs
from tests.support.webhooks import (
    PROVIDER,
    event_id_of,
    fill_execution,
    new_event_id,
    order_event,
    payment_event,
    sign,
    signed_headers,
    until_queued,
)

SECRET = "whsec_adversarial_group_commit"  # noqa: S105 - a test secret
SOURCE = WebhookSource(PROVIDER, SECRET)
GROUP = SOURCE.consumer_group


#: the outcomes, short, so that a batch's expected answers read as one line (Q: confirming, the
#: provider's API is queried; C: a leg's contradiction)
A, D, S, C = Outcome.APPLIED, Outcome.DUPLICATE, Outcome.STALE, Outcome.CONTRADICTION
Q, R = Outcome.CONFIRMING, Outcome.REPEAT
#: what every payment here is for, as the provider's API states it
AMOUNT, CURRENCY = "12.50", "EUR"


# --------------------------------------------------------------------------------------------- events


def _order_event(
    leg_id: uuid.UUID,
    exec_type: str,
    event_id: str | None = None,
    quantity: str | None = None,
    execution_id: str | None = None,
) -> bytes:
    """The venue's report about a leg, with an execution of `quantity` when given."""
    fill = None if quantity is None else fill_execution(quantity, execution_id=execution_id)
    return order_event(leg_id, exec_type, event_id, execution=fill)


# --------------------------------------------------------------------------------------------- subjects


async def _legs(database: Database, principal: Principal, count: int, quantity: str = "100") -> list[uuid.UUID]:
    """`count` SUBMITTED legs, two to an order (legs of one order share its row)."""
    legs: list[uuid.UUID] = []
    while len(legs) < count:
        legs += await submitted_legs(database, principal, [leg_terms(quantity), leg_terms(quantity)])
    return legs[:count]


# --------------------------------------------------------------------------------------------- database probes


async def _causes(pool: asyncpg.Pool, payment_id: uuid.UUID) -> list[str]:
    rows = await pool.fetch("SELECT cause FROM payment_transitions WHERE payment_id = $1 ORDER BY id", payment_id)
    return [row["cause"] for row in rows]


async def _leg(pool: asyncpg.Pool, leg_id: uuid.UUID) -> tuple[str, Decimal, int]:
    row = await pool.fetchrow("SELECT state, filled_quantity FROM legs WHERE id = $1", leg_id)
    assert row is not None
    fills = await count_rows(pool, "SELECT count(*) FROM leg_fills WHERE leg_id = $1", leg_id)
    return row["state"], row["filled_quantity"], fills


def _sample(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


BATCHES = "ballast_webhook_batch_deliveries_count"
SPLIT = "ballast_webhook_batches_split_total"


# --------------------------------------------------------------------------------------------- batches on purpose


async def _hold_claim(pool: asyncpg.Pool, event_id: str) -> Held:
    """An insert-first claim of `event_id`, made and not yet committed by a transaction of the test's own."""
    statement = "INSERT INTO processed_events (consumer_group, event_id) VALUES ($1, $2)"
    return await holding(pool, statement, GROUP, event_id)


def _send(intake: Intake, body: bytes, budget_s: float = 10) -> asyncio.Task[Outcome]:
    return asyncio.create_task(intake.receive(SOURCE, signed_headers(body, SECRET), body, Budget.within(budget_s)))


async def _results(tasks: Iterable[asyncio.Task[Outcome]], timeout_s: float = 15) -> list[Any]:
    """Every task's outcome or exception; fails (instead of hanging) if one is never answered."""
    async with asyncio.timeout(timeout_s):
        return list(await asyncio.gather(*tasks, return_exceptions=True))


async def _sent_as_one_batch(
    pool: asyncpg.Pool, intake: Intake, blocker: uuid.UUID, bodies: list[bytes]
) -> list[asyncio.Task[Outcome]]:
    """`bodies` sent while a first delivery (about `blocker`) is held up behind a row lock, so that
    they reach PostgreSQL together once it is released; the first one must then apply."""
    held = await hold_row(pool, "payments", blocker)
    try:
        first = _send(intake, payment_event(blocker, "pending"))
        await held.waited_for("the first delivery waits for the blocker's row")
        tasks = [_send(intake, body) for body in bodies]
        await until_queued(intake, len(bodies))
    finally:
        await held.release()
    assert await _results([first]) == [A]
    return tasks


@pytest.fixture
async def one_writer(database: Database) -> AsyncIterator[Intake]:
    """An intake with one writer: a held-up batch holds up the next one, which then gathers."""
    intake = Intake(database, writers=1)
    await intake.start()
    yield intake
    await intake.stop()


# --------------------------------------------------------------------------------------------- the provider's API


# --------------------------------------------------------------------------------------------- invariants


async def _assert_payment_consistent(
    pool: asyncpg.Pool, payment_id: uuid.UUID, outcomes: list[Outcome], allowed: set[tuple[str, str]]
) -> None:
    """What the non-duplicate outcomes of a payment's webhooks imply, whatever order they were applied in:
    a webhook moves a payment only to PENDING (once); a claimed outcome moves nothing, posts nothing and
    makes the payment due for a check with the provider's API; every event's status is kept once."""
    assert set(outcomes) <= {A, Q, R, S}, (payment_id, outcomes)
    moves = await payment_moves(pool, payment_id)
    state = await payment_state(pool, payment_id)
    chain = "RECORDED"
    for from_state, to_state in moves:
        assert from_state == chain and (from_state, to_state) in allowed, (payment_id, moves)
        chain = to_state
    assert state == chain, (payment_id, state, moves)
    assert len(moves) == outcomes.count(A), (payment_id, moves, outcomes)  # one move per applied event, no more
    assert moves in ([], [("RECORDED", "PENDING")]), (payment_id, moves)  # nothing decided on a webhook's word
    assert await ledger_entries_of(pool, payment_id) == 0, (payment_id, moves)
    assert len(await provider_statuses(pool, payment_id)) == len(outcomes), payment_id
    if Q not in outcomes:
        assert not await due_for_check(pool, payment_id), (payment_id, outcomes)
    elif await claim_waits(pool, payment_id):
        assert await due_for_check(pool, payment_id), (payment_id, outcomes, await provider_statuses(pool, payment_id))
    for table, column in (("audit_log", "aggregate_id"), ("outbox", "message_key")):
        kind = f"action = '{PAYMENT_STATE_CHANGED}'" if table == "audit_log" else f"topic = '{PAYMENT_STATE_CHANGED}'"
        assert await count_rows(
            pool, f"SELECT count(*) FROM {table} WHERE {column} = $1 AND {kind}", str(payment_id)
        ) == len(moves)
    cases = await pool.fetch("SELECT status, evidence FROM cases WHERE payment_id = $1", payment_id)
    assert cases == [], (payment_id, cases)  # webhooks contradicting each other are settled by asking the API


async def _both_blocked(pool: asyncpg.Pool, held: Held) -> None:
    """Until the held row has a waiter, and one more session waits for a lock (the other batch)."""

    async def blocked() -> bool:
        waiting = await count_rows(
            pool,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND cardinality(pg_blocking_pids(pid)) > 0",
        )
        return await held.waiters() >= 1 and waiting >= 2

    await until(blocked, "both batches wait for a lock")


# ============================================================================================= specs


async def test_a_storm_of_mixed_deliveries_applies_each_event_once_and_moves_every_payment_and_leg_legally(
    database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    """Over HTTP, with the server's own intake (two writers, batches of up to 64): duplicates of one
    event, several events about one payment, refunds, unknown payments, legs with fills and an overfill,
    unreadable and forged deliveries, all in flight at once in a shuffled order."""
    rng = random.Random(20261130)  # noqa: S311 - a reproducible shuffle, not a secret
    payments = await new_payments(database, principal, 40, AMOUNT, CURRENCY)
    legs = await _legs(database, principal, 8)
    sequences = [
        ("pending", "succeeded"),
        ("pending", "failed"),
        ("succeeded", "failed"),
        ("failed", "succeeded", "pending"),
        ("pending", "succeeded", "refund_pending", "refunded"),
        ("succeeded", "refund_pending", "refund_failed", "refund_pending", "refunded"),
        ("rejected", "succeeded"),
        ("pending", "processing", "captured", "settled"),
    ]
    # (body, expected HTTP status, subject): payment id, leg id or None
    deliveries: list[tuple[bytes, int, uuid.UUID | None]] = []
    for n, payment_id in enumerate(payments):
        for status in sequences[n % len(sequences)]:
            body = payment_event(payment_id, status)
            deliveries += [(body, 200, payment_id)] * rng.choice((1, 1, 2, 3))
    leg_events: dict[uuid.UUID, list[bytes]] = {}
    for leg_id in legs:
        events = [_order_event(leg_id, "new")] + [_order_event(leg_id, "partial_fill", quantity="30") for _ in range(4)]
        leg_events[leg_id] = events
        for body in events:  # 4 x 30 of 100: exactly one fill overfills, whichever comes last
            deliveries += [(body, 200, leg_id)] * rng.choice((1, 2))
    unknown = [payment_event(uuid.uuid4(), "succeeded") for _ in range(5)]
    deliveries += [(body, 200, None) for body in unknown for _ in range(2)]
    unreadable = [payment_event(payments[n], "succeeded!") for n in range(4)]
    deliveries += [(body, 400, None) for body in unreadable]
    deliveries += [(b"{not json", 400, None)]
    forged = [payment_event(payments[n], "failed") for n in range(4)]
    rng.shuffle(deliveries)

    batches_before, split_before = _sample(BATCHES), _sample(SPLIT)
    sum_before = _sample("ballast_webhook_batch_deliveries_sum")
    app = build_http_app(database, {PROVIDER: SOURCE})
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    url = f"http://127.0.0.1:{port}/webhooks/{PROVIDER}"
    try:
        async with aiohttp.ClientSession() as session:

            async def post(body: bytes, secret: str = SECRET) -> tuple[int, dict[str, Any]]:
                async with session.post(url, data=body, headers=signed_headers(body, secret)) as response:
                    return response.status, await response.json()

            replies = await asyncio.gather(
                *(post(body) for body, _, _ in deliveries),
                *(post(body, "whsec_forger") for body in forged),
            )
    finally:
        await runner.cleanup()

    batches = _sample(BATCHES) - batches_before
    assert batches < _sample("ballast_webhook_batch_deliveries_sum") - sum_before, "no delivery shared a commit"
    assert _sample(SPLIT) == split_before, "a batch failed"
    for (body, expected, _), (code, reply) in zip(deliveries, replies, strict=False):
        assert code == expected, (body, code, reply)
    assert [code for code, _ in replies[len(deliveries) :]] == [401] * len(forged)

    # every event: one delivery decided it, the others were duplicates
    by_event: dict[str, list[Outcome]] = {}
    subject_of: dict[str, uuid.UUID | None] = {}
    for (body, expected, subject), (_, reply) in zip(deliveries, replies, strict=False):
        if expected == 200:
            by_event.setdefault(event_id_of(body), []).append(Outcome(reply["outcome"]))
            subject_of[event_id_of(body)] = subject
    decided: dict[str, Outcome] = {}
    for event_id, outcomes in by_event.items():
        others = [outcome for outcome in outcomes if outcome is not D]
        assert len(others) == 1, (event_id, outcomes)
        decided[event_id] = others[0]
    assert {decided[event_id_of(body)] for body in unknown} == {Outcome.IGNORED}

    # one processed row per event applied, none for unreadable or forged ones; every delivery kept but forgeries
    all_ids = set(by_event) | {event_id_of(body) for body in unreadable + forged}
    assert await processed_events(pool, GROUP, all_ids) == Counter(dict.fromkeys(by_event, 1))
    kept = Counter(event_id_of(body) for body, _, _ in deliveries if body != b"{not json")
    assert await kept_deliveries(pool, PROVIDER, all_ids) == kept

    allowed = await allowed_payment_moves(pool)
    for payment_id in payments:
        outcomes = [outcome for event_id, outcome in decided.items() if subject_of[event_id] == payment_id]
        await _assert_payment_consistent(pool, payment_id, outcomes, allowed)
    for leg_id, (ack, *fill_events) in leg_events.items():
        fill_outcomes = sorted(decided[event_id_of(body)] for body in fill_events)
        assert fill_outcomes == sorted([A, A, A, C]), (leg_id, fill_outcomes)  # three fills fit, one overfills
        assert decided[event_id_of(ack)] in (A, S)  # stale when a fill acknowledged the leg first
        state, filled, fills = await _leg(pool, leg_id)
        assert (state, filled, fills) == ("PARTIALLY_FILLED", Decimal("90"), 3), leg_id
        assert await count_rows(pool, "SELECT count(*) FROM cases WHERE leg_id = $1", leg_id) == 1
        moves = await pool.fetch(
            "SELECT from_state, to_state FROM leg_transitions WHERE leg_id = $1 ORDER BY id", leg_id
        )
        chain = "SUBMITTED"
        for move in moves:
            assert move["from_state"] == chain, (leg_id, moves)
            chain = move["to_state"]
        assert chain == state


async def test_succeeded_then_failed_in_one_batch_decides_nothing_till_the_api_does_and_neighbours_keep_arrival_order(
    one_writer: Intake, database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    """Webhooks contradicting each other in one batch decide nothing and open no case: each claim is kept,
    in arrival order (one round per event of a payment), and makes its payment due for a check; the
    provider's API, asked once about each payment after the commit, decides it."""
    blocker, contradicted, two_steps, refund_first = await new_payments(database, principal, 4, AMOUNT, CURRENCY)
    first_word = payment_event(contradicted, "succeeded")
    pending = payment_event(two_steps, "pending")
    bodies = [
        first_word,
        pending,
        payment_event(contradicted, "failed"),
        payment_event(two_steps, "succeeded"),
        payment_event(contradicted, "declined"),
        payment_event(refund_first, "refunded"),
        payment_event(refund_first, "succeeded"),
        payment_event(uuid.uuid4(), "succeeded"),
        first_word,
    ]
    batches_before, split_before = _sample(BATCHES), _sample(SPLIT)
    tasks = await _sent_as_one_batch(pool, one_writer, blocker, bodies)
    assert await _results(tasks) == [Q, A, Q, Q, Q, Q, Q, Outcome.IGNORED, D]
    assert _sample(BATCHES) - batches_before == 2  # the held-up one, then all the rest in one transaction
    assert _sample(SPLIT) == split_before

    claimed = {
        contradicted: ["succeeded", "failed", "declined"],
        two_steps: ["pending", "succeeded"],
        refund_first: ["refunded", "succeeded"],
    }
    for payment_id, statuses in claimed.items():
        assert await provider_statuses(pool, payment_id) == statuses  # each event in its own round, in arrival order
        assert await pool.fetchval("SELECT provider_status FROM payments WHERE id = $1", payment_id) == statuses[-1]
        assert await due_for_check(pool, payment_id), payment_id
        assert await ledger_entries_of(pool, payment_id) == 0
        assert await count_rows(pool, "SELECT count(*) FROM cases WHERE payment_id = $1", payment_id) == 0
    assert await payment_moves(pool, contradicted) == []
    assert await payment_moves(pool, refund_first) == []
    assert await payment_moves(pool, two_steps) == [("RECORDED", "PENDING")]
    assert (
        await pool.fetchval("SELECT evidence_ref FROM payment_transitions WHERE payment_id = $1", two_steps)
        == f"{PROVIDER}:{event_id_of(pending)}"
    )
    assert not await due_for_check(pool, blocker)  # a pending moved it: there is nothing to ask the API
    for topic in (CASE_OPENED, PAYMENT_STATE_CHANGED):
        assert (
            await count_rows(
                pool, "SELECT count(*) FROM outbox WHERE topic = $1 AND message_key = $2", topic, str(contradicted)
            )
            == 0
        )
    assert await kept_deliveries(pool, PROVIDER, [event_id_of(first_word)]) == Counter({event_id_of(first_word): 2})

    # the provider's API decides, whichever webhook came first: one move each, the ledger posted once
    await decided_by_the_api(
        database, {contradicted: "declined", two_steps: "succeeded", refund_first: "succeeded"}, AMOUNT, CURRENCY
    )
    assert await payment_moves(pool, contradicted) == [("RECORDED", "FAILED")]
    assert await payment_moves(pool, two_steps) == [("RECORDED", "PENDING"), ("PENDING", "SUCCEEDED")]
    assert await payment_moves(pool, refund_first) == [("RECORDED", "SUCCEEDED")]
    for payment_id, entries in ((contradicted, 0), (two_steps, 1), (refund_first, 1)):
        assert (await _causes(pool, payment_id))[-1] == "resolver.inquiry"
        assert await ledger_entries_of(pool, payment_id) == entries
        assert await count_rows(pool, "SELECT count(*) FROM cases WHERE payment_id = $1", payment_id) == 0


async def test_a_payments_refund_chain_and_interleaved_leg_reports_in_one_batch_apply_in_arrival_order(
    one_writer: Intake, database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    """Four events about one payment take four rounds of one transaction, each seeing the one before: a
    refund chain's claims are kept in arrival order and make the payment due, a pending after them
    still moves it, two words for one step apply the first and repeat the second. Legs (two of one
    order, sent in the opposite of their id order) are applied in leg order, each leg's reports in
    arrival order."""
    blocker, forward, backward, accepted = await new_payments(database, principal, 4, AMOUNT, CURRENCY)
    low, high = sorted(await _legs(database, principal, 2))
    first_word, last_word = payment_event(accepted, "processing"), payment_event(backward, "pending")
    bodies = [
        payment_event(forward, "pending"),
        _order_event(high, "partial_fill", quantity="40"),  # overtakes the acknowledgement
        payment_event(forward, "succeeded"),
        payment_event(backward, "refunded"),
        first_word,
        _order_event(low, "new"),
        payment_event(forward, "refund_pending"),
        _order_event(high, "new"),  # late: the fill already acknowledged it
        payment_event(backward, "refund_pending"),
        payment_event(accepted, "pending"),  # the same step in other words: a repeat
        _order_event(low, "fill", quantity="100"),
        payment_event(forward, "refunded"),
        _order_event(high, "fill", quantity="60"),
        payment_event(backward, "succeeded"),
        _order_event(low, "partial_fill", quantity="1"),  # overfills a filled leg
        last_word,  # after three claims that moved nothing: it still moves the payment
    ]
    batches_before, split_before = _sample(BATCHES), _sample(SPLIT)
    tasks = await _sent_as_one_batch(pool, one_writer, blocker, bodies)
    assert await _results(tasks) == [A, A, Q, Q, A, A, Q, S, Q, R, A, Q, A, Q, C, A]
    assert (_sample(BATCHES) - batches_before, _sample(SPLIT) - split_before) == (2, 0)

    for payment_id, statuses in (
        (forward, ["pending", "succeeded", "refund_pending", "refunded"]),
        (backward, ["refunded", "refund_pending", "succeeded", "pending"]),
        (accepted, ["processing", "pending"]),
    ):
        assert await provider_statuses(pool, payment_id) == statuses, payment_id
        assert await pool.fetchval("SELECT provider_status FROM payments WHERE id = $1", payment_id) == statuses[-1]
        assert await payment_moves(pool, payment_id) == [("RECORDED", "PENDING")]
        assert await ledger_entries_of(pool, payment_id) == 0  # nothing decided on a webhook's word
    assert await due_for_check(pool, forward)  # its claims came after its move: the provider's API is asked
    assert not await due_for_check(pool, accepted)  # nothing claimed: nothing to ask
    moved_by = {
        row["payment_id"]: row["evidence_ref"]
        for row in await pool.fetch(
            "SELECT payment_id, evidence_ref FROM payment_transitions WHERE payment_id = ANY($1::uuid[])",
            [backward, accepted],
        )
    }
    assert moved_by == {
        backward: f"{PROVIDER}:{event_id_of(last_word)}",
        accepted: f"{PROVIDER}:{event_id_of(first_word)}",
    }
    assert await _leg(pool, high) == ("FILLED", Decimal("100"), 2)
    assert await _leg(pool, low) == ("FILLED", Decimal("100"), 1)
    for leg_id, expected in (
        (high, [("SUBMITTED", "PENDING"), ("PENDING", "PARTIALLY_FILLED"), ("PARTIALLY_FILLED", "FILLED")]),
        (low, [("SUBMITTED", "PENDING"), ("PENDING", "FILLED")]),
    ):
        moves = await pool.fetch(
            "SELECT from_state, to_state FROM leg_transitions WHERE leg_id = $1 ORDER BY id", leg_id
        )
        assert [(m["from_state"], m["to_state"]) for m in moves] == expected
    assert await count_rows(pool, "SELECT count(*) FROM cases WHERE leg_id = $1", low) == 1
    assert await count_rows(pool, "SELECT count(*) FROM cases WHERE leg_id = $1", high) == 0


async def test_one_event_id_reused_with_other_bodies_in_one_batch_applies_only_its_first_arrival(
    one_writer: Intake, database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    """A provider (or a bug) reusing an event id for a contradicting body, and for a leg's fill: the id
    is what is applied once, whatever the body says; every body is kept as evidence."""
    blocker, payment_id, claimed = await new_payments(database, principal, 3, AMOUNT, CURRENCY)
    (leg_id,) = await _legs(database, principal, 1)
    event_id, claim_id = new_event_id(), new_event_id()
    bodies = [
        payment_event(payment_id, "pending", event_id),
        payment_event(claimed, "failed", claim_id),
        payment_event(payment_id, "failed", event_id),
        _order_event(leg_id, "fill", event_id, quantity="100"),
        payment_event(claimed, "pending", claim_id),
        payment_event(payment_id, "succeeded", event_id),
    ]
    batches_before, split_before = _sample(BATCHES), _sample(SPLIT)
    tasks = await _sent_as_one_batch(pool, one_writer, blocker, bodies)
    assert await _results(tasks) == [A, Q, D, D, D, D]
    assert (_sample(BATCHES) - batches_before, _sample(SPLIT) - split_before) == (2, 0)
    # only each id's first arrival was applied: the later bodies' claims made nothing due, the later
    # pending moved nothing
    assert await payment_moves(pool, payment_id) == [("RECORDED", "PENDING")]
    assert (await provider_statuses(pool, payment_id), await due_for_check(pool, payment_id)) == (["pending"], False)
    assert await payment_moves(pool, claimed) == []
    assert (await provider_statuses(pool, claimed), await due_for_check(pool, claimed)) == (["failed"], True)
    for subject in (payment_id, claimed):
        assert await count_rows(pool, "SELECT count(*) FROM cases WHERE payment_id = $1", subject) == 0
        assert await ledger_entries_of(pool, subject) == 0
    assert await _leg(pool, leg_id) == ("SUBMITTED", Decimal("0"), 0)
    assert await processed_events(pool, GROUP, [event_id, claim_id]) == Counter({event_id: 1, claim_id: 1})
    for reused in (event_id, claim_id):
        kept = await pool.fetch("SELECT body FROM webhook_deliveries WHERE event_id = $1", reused)
        assert sorted(bytes(row["body"]) for row in kept) == sorted(
            body for body in bodies if event_id_of(body) == reused
        )


async def test_a_fill_failing_after_the_batchs_payments_moved_fails_alone_and_nothing_is_posted_twice(
    one_writer: Intake, database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    """The failure comes last in the batch's transaction, after its payments moved, their providers'
    claims were kept and the payments made due for a check: all of it rolls back, each delivery is
    applied again alone, once; the provider's API then decides each payment once, one ledger entry."""
    blocker, once, twice = await new_payments(database, principal, 3, AMOUNT, CURRENCY)
    bad_leg, good_leg = await _legs(database, principal, 2)
    for leg_id in (bad_leg, good_leg):
        assert await _results([_send(one_writer, _order_event(leg_id, "new"))]) == [A]
    repeated = payment_event(once, "succeeded")
    bad_fill = _order_event(bad_leg, "partial_fill", quantity="10")
    bodies = [
        repeated,
        bad_fill,
        payment_event(twice, "pending"),
        payment_event(twice, "succeeded"),
        _order_event(good_leg, "partial_fill", quantity="10"),
        repeated,
        bad_fill,
    ]
    trigger = await refuse_inserts(pool, "leg_fills", "leg_id", bad_leg)
    split_before = _sample(SPLIT)
    try:
        tasks = await _sent_as_one_batch(pool, one_writer, blocker, bodies)
        results = await _results(tasks)
    finally:
        await allow_inserts(pool, trigger, "leg_fills")
    assert _sample(SPLIT) - split_before == 1
    for n in (1, 6):
        assert isinstance(results[n], asyncpg.PostgresError) and "injected failure" in str(results[n]), results
    assert [results[n] for n in (0, 2, 3, 4, 5)] == [Q, A, Q, A, D]

    assert await payment_moves(pool, once) == []
    assert await payment_moves(pool, twice) == [("RECORDED", "PENDING")]
    assert await provider_statuses(pool, once) == ["succeeded"]  # kept once: the failed batch's rows rolled back
    assert await provider_statuses(pool, twice) == ["pending", "succeeded"]
    for payment_id in (once, twice):
        assert await due_for_check(pool, payment_id)
        assert await ledger_entries_of(pool, payment_id) == 0
        assert await count_rows(
            pool,
            "SELECT count(*) FROM outbox WHERE topic = $1 AND message_key = $2",
            PAYMENT_STATE_CHANGED,
            str(payment_id),
        ) == len(await payment_moves(pool, payment_id))
    assert await _leg(pool, good_leg) == ("PARTIALLY_FILLED", Decimal("10"), 1)
    assert await _leg(pool, bad_leg) == ("PENDING", Decimal("0"), 0)
    assert await processed_events(pool, GROUP, [event_id_of(bad_fill)]) == Counter()
    assert await kept_deliveries(pool, PROVIDER, [event_id_of(bad_fill), event_id_of(repeated)]) == Counter(
        {event_id_of(repeated): 2}
    )

    assert await _results([_send(one_writer, bad_fill)]) == [A]  # the provider delivers it again
    assert await _results([_send(one_writer, bad_fill)]) == [D]
    assert await _leg(pool, bad_leg) == ("PARTIALLY_FILLED", Decimal("10"), 1)

    await decided_by_the_api(database, {once: "succeeded", twice: "succeeded"}, AMOUNT, CURRENCY)
    assert await payment_moves(pool, once) == [("RECORDED", "SUCCEEDED")]
    assert await payment_moves(pool, twice) == [("RECORDED", "PENDING"), ("PENDING", "SUCCEEDED")]
    for payment_id in (once, twice):
        assert await ledger_entries_of(pool, payment_id) == 1


async def test_a_signed_delivery_with_a_non_utf8_user_agent_is_kept_and_applied_and_does_not_fail_its_batch(
    one_writer: Intake, database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    """aiohttp hands header bytes that are not UTF-8 over as lone surrogates (surrogateescape). The
    User-Agent is kept as evidence beside the body, so it must be stored as safely as the body's text."""
    blocker, odd, neighbour = await new_payments(database, principal, 3, AMOUNT, CURRENCY)
    app = web.Application()
    app[INTAKE] = one_writer
    app[SOURCES] = {PROVIDER: SOURCE}
    app.router.add_post("/webhooks/{provider}", receive_webhook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]

    async def raw_post(body: bytes, user_agent: bytes) -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head = (
            f"POST /webhooks/{PROVIDER} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nSimulator-Signature: {sign(body, SECRET)}\r\nConnection: close\r\n"
        ).encode()
        writer.write(head + b"User-Agent: " + user_agent + b"\r\n\r\n" + body)
        await writer.drain()
        response = await reader.read()
        writer.close()
        return int(response.split(b" ", 2)[1])

    odd_body = payment_event(odd, "pending")
    neighbour_body = payment_event(neighbour, "pending")
    split_before = _sample(SPLIT)
    try:
        held = await hold_row(pool, "payments", blocker)
        try:
            first = _send(one_writer, payment_event(blocker, "pending"))
            await held.waited_for("the first delivery waits for the blocker's row")
            posted = asyncio.create_task(raw_post(odd_body, b"provider/1.0 \xff\xfe"))
            await until_queued(one_writer, 1)
            neighbour_task = _send(one_writer, neighbour_body)
            await until_queued(one_writer, 2)
        finally:
            await held.release()
        assert await _results([first, neighbour_task]) == [A, A]
        status = await posted
    finally:
        await runner.cleanup()
    assert await payment_state(pool, neighbour) == "PENDING"
    assert status == 200, "an authentic event with an odd User-Agent byte was refused; every redelivery will be too"
    assert await payment_state(pool, odd) == "PENDING"
    assert await provider_statuses(pool, odd) == ["pending"]
    assert await kept_deliveries(pool, PROVIDER, [event_id_of(odd_body)]) == Counter({event_id_of(odd_body): 1})
    assert _sample(SPLIT) == split_before


async def test_two_intakes_taking_the_same_rows_in_opposite_orders_never_deadlock_and_apply_each_event_once(
    principal: Principal, pool: asyncpg.Pool
) -> None:
    """Two server processes on one database, each given a batch that wants the same rows as the other's,
    in the opposite arrival order, while the test holds one of those rows so that both batches are
    caught mid-statement: the same events (their insert-first claims), then other events about the same
    legs, then about the same payments (claims that lock each payment, keep the provider's status and
    make it due). Afterwards each process gets the other's events. No batch may lose a deadlock (the
    transaction retry would hide it from callers), no caller may see an error; the provider's API then
    decides each payment once."""
    database = ConflictsNoted(pool)
    payments = sorted(await new_payments(database, principal, 40, AMOUNT, CURRENCY))
    legs = sorted(await _legs(database, principal, 6))
    intakes = (Intake(database), Intake(database))
    for intake in intakes:
        await intake.start()
    for leg_id in legs:
        assert await _results([_send(intakes[0], _order_event(leg_id, "new"))]) == [A]
    sent: list[tuple[bytes, Any]] = []
    split_before = _sample(SPLIT)

    async def race(first: list[bytes], second: list[bytes], held: Held) -> None:
        """`first` to one intake and `second` to the other, both caught behind the held row, then released."""
        try:
            tasks = [_send(intakes[0], body) for body in first] + [_send(intakes[1], body) for body in second]
            await _both_blocked(pool, held)
        finally:
            await held.release()
        sent.extend(zip(first + second, await _results(tasks), strict=True))

    try:
        # the same events: each batch inserts its claims while the other holds some of them
        claims = sorted((payment_event(p, "pending") for p in payments), key=event_id_of)
        held_claim = await _hold_claim(pool, event_id_of(claims[len(claims) // 2]))
        await race(claims, claims[::-1], held_claim)
        # other events about the same legs: fills of other executions, sent in opposite leg orders
        fills = [[_order_event(leg_id, "partial_fill", quantity="10") for leg_id in legs] for _ in range(2)]
        await race(fills[0], fills[1][::-1], await hold_row(pool, "legs", legs[len(legs) // 2]))
        # other events about the same payments, in opposite payment orders
        decided = [[payment_event(p, "succeeded") for p in payments] for _ in range(2)]
        await race(decided[0], decided[1][::-1], await hold_row(pool, "payments", payments[len(payments) // 2]))
        # and each process gets what the other had, all at once
        again = fills[1] + decided[1] + claims
        tasks = [_send(intakes[0], body) for body in again] + [
            _send(intakes[1], body) for body in fills[0] + decided[0]
        ]
        sent.extend(zip(again + fills[0] + decided[0], await _results(tasks), strict=True))
    finally:
        for intake in intakes:
            await intake.stop()
    assert [result for _, result in sent if not isinstance(result, Outcome)] == []
    assert database.conflicts == [], "batches waited for each other's rows in opposite orders"
    assert _sample(SPLIT) == split_before
    outcomes: dict[str, list[Outcome]] = {}
    for body, result in sent:
        outcomes.setdefault(event_id_of(body), []).append(result)
    for event_id, seen in outcomes.items():
        assert len(seen) in (2, 3) and seen.count(D) == len(seen) - 1, (event_id, seen)
    assert await processed_events(pool, GROUP, outcomes) == Counter(dict.fromkeys(outcomes, 1))
    assert await kept_deliveries(pool, PROVIDER, outcomes) == Counter(
        {event_id: len(seen) for event_id, seen in outcomes.items()}
    )
    assert {result for _, result in sent if result is not D} == {A, Q}
    for payment_id in payments:
        assert await payment_moves(pool, payment_id) == [("RECORDED", "PENDING")]
        assert await provider_statuses(pool, payment_id) == ["pending", "succeeded", "succeeded"]
        assert await due_for_check(pool, payment_id)
        assert await ledger_entries_of(pool, payment_id) == 0
    for leg_id in legs:
        assert await _leg(pool, leg_id) == ("PARTIALLY_FILLED", Decimal("20"), 2)
    await decided_by_the_api(database, dict.fromkeys(payments, "succeeded"), AMOUNT, CURRENCY)
    for payment_id in payments:
        assert await payment_moves(pool, payment_id) == [("RECORDED", "PENDING"), ("PENDING", "SUCCEEDED")]
        assert await ledger_entries_of(pool, payment_id) == 1


async def test_a_caller_out_of_time_while_queued_is_told_so_its_delivery_is_skipped_and_the_redelivery_applies_it(
    one_writer: Intake, database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    blocker, late = await new_payments(database, principal, 2, AMOUNT, CURRENCY)
    body = payment_event(late, "succeeded")
    held = await hold_row(pool, "payments", blocker)
    try:
        first = _send(one_writer, payment_event(blocker, "pending"))
        await held.waited_for("the first delivery waits for the blocker's row")
        started = time.monotonic()
        (result,) = await _results([_send(one_writer, body, budget_s=0.3)])
        assert isinstance(result, DeadlineExceeded), result
        assert time.monotonic() - started < 2, "the caller was not answered within its budget"
    finally:
        await held.release()
    assert await _results([first]) == [A]
    sentinel = payment_event(blocker, "pending")  # the writer went past the abandoned delivery
    assert await _results([_send(one_writer, sentinel)]) == [R]
    assert await payment_state(pool, late) == "RECORDED"
    assert await provider_statuses(pool, late) == []
    assert not await due_for_check(pool, late)
    assert await processed_events(pool, GROUP, [event_id_of(body)]) == Counter()
    assert await kept_deliveries(pool, PROVIDER, [event_id_of(body)]) == Counter()

    assert await _results([_send(one_writer, body)]) == [Q]  # the provider delivers it again
    assert await _results([_send(one_writer, body)]) == [D]
    assert await provider_statuses(pool, late) == ["succeeded"]
    assert await payment_moves(pool, late) == []
    await decided_by_the_api(database, {late: "succeeded"}, AMOUNT, CURRENCY)
    assert await payment_moves(pool, late) == [("RECORDED", "SUCCEEDED")]
    assert await ledger_entries_of(pool, late) == 1


async def test_a_caller_out_of_time_while_its_batch_waits_is_told_so_and_the_redelivery_is_a_duplicate(
    one_writer: Intake, database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    """The writer had taken the delivery when its caller gave up: it is applied (not half, not twice)."""
    blocker, slow, neighbour = await new_payments(database, principal, 3, AMOUNT, CURRENCY)
    body = payment_event(slow, "succeeded")
    held = await hold_row(pool, "payments", blocker)
    held_slow = await hold_row(pool, "payments", slow)
    try:
        first = _send(one_writer, payment_event(blocker, "pending"))
        await held.waited_for("the first delivery waits for the blocker's row")
        impatient = _send(one_writer, body, budget_s=1.5)
        patient = _send(one_writer, payment_event(neighbour, "pending"))
        await until_queued(one_writer, 2)
        await held.release()
        await held_slow.waited_for("the second batch waits for the slow payment's row")
        assert not impatient.done()
        (result,) = await _results([impatient])
        assert isinstance(result, DeadlineExceeded), result
        assert not patient.done()
    finally:
        await held.release()
        await held_slow.release()
    assert await _results([first, patient]) == [A, A]
    assert await payment_state(pool, neighbour) == "PENDING"
    assert await provider_statuses(pool, slow) == ["succeeded"]  # its claim was kept, and the payment made due
    assert await due_for_check(pool, slow)
    assert await processed_events(pool, GROUP, [event_id_of(body)]) == Counter({event_id_of(body): 1})

    assert await _results([_send(one_writer, body)]) == [D]  # the provider delivers it again
    assert await provider_statuses(pool, slow) == ["succeeded"]
    assert await kept_deliveries(pool, PROVIDER, [event_id_of(body)]) == Counter({event_id_of(body): 2})
    await decided_by_the_api(database, {slow: "succeeded"}, AMOUNT, CURRENCY)
    assert await payment_moves(pool, slow) == [("RECORDED", "SUCCEEDED")]
    assert await ledger_entries_of(pool, slow) == 1


async def test_stopping_with_both_writers_mid_transaction_and_more_queued_answers_every_caller_and_applies_nothing(
    database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    first_blocked, second_blocked, *others = await new_payments(database, principal, 12, AMOUNT, CURRENCY)
    (leg_id,) = await _legs(database, principal, 1)
    intake = Intake(database)  # as the server runs it: two writers
    await intake.start()
    queued_bodies = [payment_event(p, status) for p in others for status in ("pending", "succeeded")]
    queued_bodies += [_order_event(leg_id, "new"), queued_bodies[0]]
    held = [await hold_row(pool, "payments", first_blocked), await hold_row(pool, "payments", second_blocked)]
    blocked_bodies = [payment_event(first_blocked, "succeeded"), payment_event(second_blocked, "succeeded")]
    try:
        blocked = []
        for holder, body in zip(held, blocked_bodies, strict=True):
            blocked.append(_send(intake, body))
            await holder.waited_for("a writer waits for a held row")
        queued = [_send(intake, body) for body in queued_bodies]
        await until_queued(intake, len(queued_bodies))
        started = time.monotonic()
        async with asyncio.timeout(10):
            await intake.stop()
        results = await _results(blocked + queued, timeout_s=5)
        assert time.monotonic() - started < 5
    finally:
        for holder in held:
            await holder.release()
    assert all(isinstance(result, Unavailable) for result in results), results
    every_id = [event_id_of(body) for body in blocked_bodies + queued_bodies]
    assert await processed_events(pool, GROUP, every_id) == Counter()
    assert await kept_deliveries(pool, PROVIDER, every_id) == Counter()
    for payment_id in (first_blocked, second_blocked, *others):
        assert await payment_state(pool, payment_id) == "RECORDED"
        assert await provider_statuses(pool, payment_id) == []
        assert not await due_for_check(pool, payment_id)
    assert await _leg(pool, leg_id) == ("SUBMITTED", Decimal("0"), 0)

    restarted = Intake(database)  # the provider delivers everything again to the next process
    await restarted.start()
    try:
        again = await _results([_send(restarted, body) for body in blocked_bodies + queued_bodies])
    finally:
        await restarted.stop()
    claims = [Q, Q] + [A if status == "pending" else Q for _ in others for status in ("pending", "succeeded")]
    assert again == [*claims, A, D], again
    for payment_id in (first_blocked, second_blocked):
        assert (await payment_moves(pool, payment_id), await provider_statuses(pool, payment_id)) == ([], ["succeeded"])
    for payment_id in others:
        assert await payment_moves(pool, payment_id) == [("RECORDED", "PENDING")]
        assert sorted(await provider_statuses(pool, payment_id)) == ["pending", "succeeded"]
    await decided_by_the_api(
        database, dict.fromkeys((first_blocked, second_blocked, *others), "succeeded"), AMOUNT, CURRENCY
    )
    for payment_id in (first_blocked, second_blocked):
        assert await payment_moves(pool, payment_id) == [("RECORDED", "SUCCEEDED")]
        assert await ledger_entries_of(pool, payment_id) == 1
    for payment_id in others:
        assert await payment_moves(pool, payment_id) == [("RECORDED", "PENDING"), ("PENDING", "SUCCEEDED")]
        assert await ledger_entries_of(pool, payment_id) == 1


async def test_stopping_during_the_one_at_a_time_retry_of_a_failed_batch_answers_the_rest_as_not_confirmed(
    one_writer: Intake, database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    blocker, good, bad, after = await new_payments(database, principal, 4, AMOUNT, CURRENCY)
    (leg_id,) = await _legs(database, principal, 1)
    bodies = [
        payment_event(good, "succeeded"),
        payment_event(bad, "pending"),  # its move is refused
        _order_event(leg_id, "new"),  # alone, it will wait for the leg the test holds
        payment_event(after, "succeeded"),
    ]
    trigger = await refuse_inserts(pool, "payment_transitions", "payment_id", bad)
    held_leg = await hold_row(pool, "legs", leg_id)
    try:
        tasks = await _sent_as_one_batch(pool, one_writer, blocker, bodies)
        await held_leg.waited_for("the leg report, retried alone, waits for the held leg")
        assert [task.done() for task in tasks] == [True, True, False, False]
        async with asyncio.timeout(10):
            await one_writer.stop()
        results = await _results(tasks, timeout_s=5)
    finally:
        await held_leg.release()
        await allow_inserts(pool, trigger, "payment_transitions")
    assert results[0] == Q
    assert isinstance(results[1], asyncpg.PostgresError), results
    assert all(isinstance(result, Unavailable) for result in results[2:]), results
    assert await _leg(pool, leg_id) == ("SUBMITTED", Decimal("0"), 0)
    assert (await provider_statuses(pool, good), await due_for_check(pool, good)) == (["succeeded"], True)
    for payment_id in (bad, after):
        assert await payment_state(pool, payment_id) == "RECORDED"
        assert (await provider_statuses(pool, payment_id), await due_for_check(pool, payment_id)) == ([], False)
    assert await processed_events(pool, GROUP, [event_id_of(body) for body in bodies]) == Counter(
        {event_id_of(bodies[0]): 1}
    )

    restarted = Intake(database)
    await restarted.start()
    try:
        again = await _results([_send(restarted, body) for body in bodies])
    finally:
        await restarted.stop()
    assert again == [D, A, A, Q]
    assert (await _leg(pool, leg_id))[0] == "PENDING"
    assert await payment_moves(pool, bad) == [("RECORDED", "PENDING")]
    assert (await provider_statuses(pool, bad), await due_for_check(pool, bad)) == (["pending"], False)
    await decided_by_the_api(database, dict.fromkeys((good, after), "succeeded"), AMOUNT, CURRENCY)
    for payment_id in (good, after):
        assert await payment_moves(pool, payment_id) == [("RECORDED", "SUCCEEDED")]
        assert await provider_statuses(pool, payment_id) == ["succeeded", "succeeded"]  # the webhook's, then the API's
        assert await ledger_entries_of(pool, payment_id) == 1
