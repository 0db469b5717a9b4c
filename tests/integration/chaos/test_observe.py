"""The chaos checker's eyes on a real run: payments taken over gRPC and decided by the provider's API,
their events relayed to a NATS deployment of the run's own, then read back by chaos/observe.py and judged
by chaos/checker.py. What the reader returns is what Ballast holds, and a stream broken behind the
relay's back is named by the checker, event by event."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import nats
import pytest
from nats.aio.client import Client as NatsClient

from ballast.payments.v1 import payments_pb2_grpc
from chaos.checker import BrokerMessage, check, outbox_published_once_in_order
from chaos.history import History
from chaos.observe import read_snapshot, read_stream
from server.db.database import Database
from server.db.engine import create_pool
from server.db.migrate import migrate_to_head
from server.domain.ledger import PROVIDER_CLEARING
from server.messaging.names import DeploymentNames
from server.outbox.publisher import MESSAGE_ID_HEADER
from server.outbox.relay import OutboxRelay, ensure_stream
from tests.support import answering_provider, scratch_database
from tests.support.requests import create_payment_request
from tests.support.servers import in_process_server, new_callers

#: What the run's payments ask, and what the provider's API says of each.
ASKED = (("10.00", "succeeded"), ("20.50", "succeeded"), ("7.25", "failed"))
CURRENCY = "EUR"
#: Far above the run's length: no payment of it is ever UNKNOWN.
UNKNOWN_SLA_S = 60.0
#: Invariants over what these specs do not run: the exposures consumer (a chaos run's relays run it).
NOT_RUN = frozenset({"exposures_match_ledger"})
#: Relay rounds a run's few events need, with room to spare.
RELAY_ROUNDS_MAX = 50


@dataclass(frozen=True)
class Run:
    pool: asyncpg.Pool
    broker: NatsClient
    names: DeploymentNames
    #: payment id -> the provider's final word
    decided: dict[str, str]
    history: History
    truth: dict[str, Any]


@pytest.fixture
def run_database_url(server_database_url: str) -> Iterator[str]:
    """The run's own database: the reader takes everything in it."""
    with scratch_database(server_database_url, "ballast_observe") as url:
        migrate_to_head(url)
        yield url


@pytest.fixture
async def run(run_database_url: str, nats_url: str, tmp_path: Path) -> AsyncIterator[Run]:
    """Three payments over gRPC, two the provider's API says succeeded and one failed, decided by the
    resolver; every event relayed to the run's own deployment on NATS."""
    pool = await create_pool(run_database_url, size=5, statement_timeout_ms=10_000)
    broker = await nats.connect(nats_url)
    names = DeploymentNames(f"observe-{uuid.uuid4().hex[:12]}")
    await ensure_stream(broker.jetstream(), names.stream, names.subject_prefix)
    try:
        history, decided, truth_payments = History(), {}, []
        merchant, _, _ = new_callers()
        # no gateway: each payment stays RECORDED until the resolver asks the provider's API about it
        async with (
            in_process_server(pool, [merchant], tmp_path) as address,
            grpc.aio.insecure_channel(address) as channel,
            answering_provider() as provider,
        ):
            stub = payments_pb2_grpc.PaymentServiceStub(channel)
            for amount, status in ASKED:
                request = create_payment_request(value=amount, currency=CURRENCY)
                history.invoke(merchant.client_id, request.idempotency_key, amount=amount, currency=CURRENCY)
                answer = await stub.CreatePayment(request, metadata=merchant.metadata, timeout=5)
                payment = answer.payment
                history.ok(merchant.client_id, request.idempotency_key, payment.id, "RECORDED")
                provider.says(uuid.UUID(payment.id), status, amount=amount, currency=CURRENCY)
                decided[payment.id] = status
                truth_payments.append(
                    {"idempotency_key": payment.id, "id": f"pay_{payment.id[:8]}", "final_status": status}
                    | {"amount": amount, "currency": CURRENCY}
                )
            await pool.execute("UPDATE payments SET next_check_at = '-infinity'")
            assert await provider.resolver(Database(pool), batch_size=len(ASKED)).run_once() == len(ASKED)
        relay = OutboxRelay(pool, broker, subject_prefix=names.subject_prefix)
        for _ in range(RELAY_ROUNDS_MAX):
            if (await relay.run_once()).claimed == 0:
                break
        assert await pool.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL") == 0
        yield Run(pool, broker, names, decided, history, {"payments": truth_payments})
    finally:
        await broker.jetstream().delete_stream(names.stream)
        await broker.close()
        await pool.close()


async def test_the_snapshot_and_the_stream_are_what_ballast_holds_and_the_checker_finds_nothing_wrong(
    run: Run, nats_url: str
) -> None:
    async with run.pool.acquire() as connection:
        snapshot = await read_snapshot(connection)
    states = {"succeeded": "SUCCEEDED", "failed": "FAILED"}
    assert {p.id: p.state for p in snapshot.payments} == {pid: states[s] for pid, s in run.decided.items()}
    assert {p.id: (p.amount, p.currency) for p in snapshot.payments} == {
        pid: (Decimal(amount), CURRENCY) for pid, (amount, _) in zip(run.decided, ASKED, strict=True)
    }
    keys = {operation.idempotency_key for operation in run.history}
    assert {p.idempotency_key for p in snapshot.payments} == keys
    for payment in snapshot.payments:
        moves = [t for t in snapshot.transitions if t.payment_id == payment.id]
        assert [(t.from_state, t.to_state) for t in moves] == [("RECORDED", payment.state)]
        assert all(t.event and t.evidence_ref for t in moves)
    assert snapshot.taken_at_s is not None
    assert all(t.occurred_at_s is not None and t.occurred_at_s <= snapshot.taken_at_s for t in snapshot.transitions)
    assert len({t.sequence for t in snapshot.transitions}) == len(snapshot.transitions)

    clearing = {line.payment_id: line.amount for line in snapshot.ledger_lines if line.account == PROVIDER_CLEARING}
    captured = {pid: Decimal(amount) for pid, (amount, status) in zip(run.decided, ASKED, strict=True)}
    assert clearing == {pid: amount for pid, amount in captured.items() if run.decided[pid] == "succeeded"}
    entries = {line.entry_id for line in snapshot.ledger_lines}
    for entry in entries:
        assert sum(line.amount for line in snapshot.ledger_lines if line.entry_id == entry) == 0

    # each payment: recorded, then its state change; each capture: its posting
    assert len(snapshot.outbox) == 2 * len(ASKED) + len(entries)
    assert all(row.published and not row.dead_lettered for row in snapshot.outbox)
    for payment_id in run.decided:
        assert [row.position for row in snapshot.outbox if row.message_key == payment_id] == sorted(
            row.position for row in snapshot.outbox if row.message_key == payment_id
        )
        assert len([row for row in snapshot.outbox if row.message_key == payment_id]) == 2

    stream = await read_stream(nats_url, run.names.stream)
    assert sorted(m.event_id for m in stream) == sorted(row.id for row in snapshot.outbox)
    assert [m.sequence for m in stream] == sorted(m.sequence for m in stream)
    assert all(m.message_key.startswith(f"{run.names.subject_prefix}.") for m in stream)
    assert (await run.broker.jetstream().stream_info(run.names.stream)).state.consumer_count == 0  # none left behind

    results = [r for r in check(run.history, run.truth, snapshot, stream, UNKNOWN_SLA_S) if r.name not in NOT_RUN]
    assert [result.name for result in results if not result.passed] == [], [
        str(w) for r in results for w in r.witnesses
    ]
    assert {result.name for result in results} >= {
        "no_backward_transition",
        "ledger_balanced",
        "outbox_published_once_in_order",
    }


async def test_a_message_taken_off_the_stream_and_a_stray_copy_put_on_it_are_named_by_their_event_ids(
    run: Run, nats_url: str
) -> None:
    js = run.broker.jetstream()
    before = await read_stream(nats_url, run.names.stream)
    lost, copied = before[1], before[2]
    assert await js.delete_msg(run.names.stream, lost.sequence)
    original = await js.get_msg(run.names.stream, copied.sequence)
    stray = str(uuid.uuid4())
    await js.publish(copied.message_key, original.data or b"", headers={MESSAGE_ID_HEADER: stray})

    after = await read_stream(nats_url, run.names.stream)
    assert [m.event_id for m in after] == [m.event_id for m in before if m != lost] + [stray]
    async with run.pool.acquire() as connection:
        snapshot = await read_snapshot(connection)
    broken = outbox_published_once_in_order(snapshot, after)
    assert sorted(broken.subjects) == sorted([lost.event_id, stray])
    evidence = {witness.subject: witness.evidence for witness in broken.witnesses}
    assert "marked published, never on the stream" in evidence[lost.event_id]
    assert evidence[stray] == ("on the stream, not in the outbox",)
    # the rest of the run is as sound as it was
    others = [
        r
        for r in check(run.history, run.truth, snapshot, after, UNKNOWN_SLA_S)
        if r.name not in {broken.name, *NOT_RUN}
    ]
    assert all(result.passed for result in others)
    # and the stream as it was keeps every invariant
    assert outbox_published_once_in_order(snapshot, before).passed
    assert BrokerMessage(stray, copied.message_key, after[-1].sequence) == after[-1]


async def test_the_snapshot_reads_each_payments_refund_totals_and_each_entrys_event_key(run: Run) -> None:
    async with run.pool.acquire() as connection:
        snapshot = await read_snapshot(connection)
    assert snapshot.refunds == () and snapshot.refund_transitions == ()
    assert {(p.refunded, p.refund_held) for p in snapshot.payments} == {(Decimal(0), Decimal(0))}
    succeeded = {pid for pid, status in run.decided.items() if status == "succeeded"}
    assert {line.event_key for line in snapshot.ledger_lines} == {f"payment:{pid}:captured" for pid in succeeded}
