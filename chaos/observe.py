"""What a chaos run really left behind, read for the checker (chaos/checker.py): Ballast's database as a
`Snapshot`, and the broker's stream as `BrokerMessage`s.

A chaos run owns a scratch database and a deployment of its own on NATS, so nothing here filters by
client: everything in the database, everything on the stream, is the run's.

How the relay names what it publishes (server/outbox/relay.py, server/outbox/publisher.py): the subject
is `<deployment's subject prefix>.<outbox topic>` (`ballast.payments.state_changed`), and the one header
is `Nats-Msg-Id` = the outbox row's id, on which the broker de-duplicates. The outbox's message key (the
aggregate whose events must keep their order) does not travel: the checker joins a message to its
outbox row by the event id and takes the aggregate from the row. A `BrokerMessage`'s `message_key` is
therefore the subject, the only routing name a message carries.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence

import asyncpg
import nats
from nats.aio.client import Client as NatsClient
from nats.js.api import ConsumerConfig

from chaos.checker import (
    BrokerMessage,
    CaseRow,
    ExposureRow,
    LedgerLineRow,
    OutboxRow,
    PaymentRow,
    RefundRow,
    RefundTransitionRow,
    Snapshot,
    TransitionRow,
)
from server.outbox.publisher import MESSAGE_ID_HEADER

#: The most messages `read_stream` reads: a run's stream larger than this is refused, not cut short (a
#: stream read in part would make the checker report the rest as lost).
STREAM_MESSAGES_MAX = 1_000_000
#: How long `read_stream` may take by default, connecting included.
STREAM_READ_TIMEOUT_S = 30.0
#: How long the reader waits for the next message before it looks at its deadline again.
NEXT_MESSAGE_WAIT_S = 1.0
#: How long the broker keeps the reader's consumer once nobody reads it (a reader that died before deleting it).
CONSUMER_INACTIVE_S = 5.0

# One statement, so one round trip: each table as an array of anonymous rows (asyncpg decodes them as
# tuples, NUMERIC as Decimal), each in a stable order. Ids travel as text, times as epoch seconds.
_SNAPSHOT = """
SELECT
    extract(epoch FROM now())::float8 AS taken_at_s,
    ARRAY(
        SELECT ROW(p.id::text, p.idempotency_key, p.amount, p.currency_code, p.state, p.refunded, p.refund_held)
        FROM payments p ORDER BY p.created_at, p.id
    ) AS payments,
    ARRAY(
        SELECT ROW(t.payment_id::text, t.id, t.from_state, t.to_state, t.event, t.evidence_ref,
                   extract(epoch FROM t.occurred_at)::float8)
        FROM payment_transitions t ORDER BY t.id
    ) AS transitions,
    ARRAY(
        SELECT ROW(l.entry_id::text, e.payment_id::text, l.account, l.currency_code, l.amount, e.event_key)
        FROM ledger_lines l JOIN ledger_entries e ON e.id = l.entry_id
        ORDER BY e.posted_at, l.entry_id, l.line_number
    ) AS ledger_lines,
    ARRAY(
        SELECT ROW(o.id::text, o.message_key, o.position, o.published_at IS NOT NULL, o.dead_lettered_at IS NOT NULL,
                   o.topic)
        FROM outbox o ORDER BY o.position
    ) AS outbox,
    ARRAY(
        SELECT ROW(c.id::text, c.kind, c.status, c.payment_id::text, extract(epoch FROM c.opened_at)::float8)
        FROM cases c ORDER BY c.opened_at, c.id
    ) AS cases,
    ARRAY(
        SELECT ROW(x.account, x.currency_code, x.in_flight, x.settled)
        FROM exposures x ORDER BY x.account, x.currency_code
    ) AS exposures,
    ARRAY(
        SELECT ROW(r.id::text, r.payment_id::text, r.idempotency_key, r.amount, r.currency_code, r.state)
        FROM refunds r ORDER BY r.created_at, r.id
    ) AS refunds,
    ARRAY(
        SELECT ROW(t.refund_id::text, t.id, t.from_state, t.to_state, t.event)
        FROM refund_transitions t ORDER BY t.id
    ) AS refund_transitions
"""


async def read_snapshot(connection: asyncpg.Connection) -> Snapshot:
    """Everything in the run's database, read in one REPEATABLE READ, read-only transaction (one
    statement), so payments, their refunds (and the payments' refunded and refund_held), their moves,
    the ledger, the outbox and the cases agree; `taken_at_s` is
    the database's now() in epoch seconds, the clock of the rows' times."""
    async with connection.transaction(isolation="repeatable_read", readonly=True):
        row = await connection.fetchrow(_SNAPSHOT)
    assert row is not None  # a SELECT without FROM returns one row
    return Snapshot(
        payments=tuple(PaymentRow(*fields) for fields in row["payments"]),
        transitions=tuple(
            TransitionRow(
                payment_id=payment_id,
                sequence=sequence,
                from_state=from_state,
                to_state=to_state,
                event=event,
                evidence_ref=evidence_ref,
                occurred_at_s=occurred_at_s,
            )
            for payment_id, sequence, from_state, to_state, event, evidence_ref, occurred_at_s in row["transitions"]
        ),
        ledger_lines=tuple(LedgerLineRow(*fields) for fields in row["ledger_lines"]),
        outbox=tuple(OutboxRow(*fields) for fields in row["outbox"]),
        cases=tuple(CaseRow(*fields) for fields in row["cases"]),
        taken_at_s=row["taken_at_s"],
        exposures=tuple(ExposureRow(*fields) for fields in row["exposures"]),
        refunds=tuple(RefundRow(*fields) for fields in row["refunds"]),
        refund_transitions=tuple(RefundTransitionRow(*fields) for fields in row["refund_transitions"]),
    )


class StreamTooLarge(Exception):
    """The stream holds more messages than `read_stream` reads."""


async def read_stream(
    nats_url: str,
    stream: str,
    *,
    timeout_s: float = STREAM_READ_TIMEOUT_S,
    messages_max: int = STREAM_MESSAGES_MAX,
) -> list[BrokerMessage]:
    """Every message the stream held when the read began, in stream order, through an ephemeral ordered
    consumer (no durable one is left behind); its event id is its `Nats-Msg-Id` header (the outbox id),
    its key its subject. Raises TimeoutError after `timeout_s`, StreamTooLarge above `messages_max`."""
    deadline = time.monotonic() + timeout_s
    connection = await nats.connect(nats_url, connect_timeout=max(timeout_s, 0.1), allow_reconnect=False)
    try:
        async with asyncio.timeout(timeout_s):
            return await _read_all(connection, stream, messages_max, deadline)
    finally:
        await connection.close()


async def _read_all(connection: NatsClient, stream: str, messages_max: int, deadline: float) -> list[BrokerMessage]:
    js = connection.jetstream()
    info = await js.stream_info(stream)
    held, last = info.state.messages, info.state.last_seq
    if held > messages_max:
        raise StreamTooLarge(f"stream {stream} holds {held} messages, more than the {messages_max} a read takes")
    if held == 0:
        return []
    subjects: Sequence[str] = info.config.subjects or [">"]
    config = ConsumerConfig(filter_subjects=list(subjects)) if len(subjects) > 1 else None
    subscription = await js.subscribe(
        subjects[0], stream=stream, ordered_consumer=True, config=config, inactive_threshold=CONSUMER_INACTIVE_S
    )
    messages: list[BrokerMessage] = []
    try:
        while True:
            wait_s = min(NEXT_MESSAGE_WAIT_S, max(deadline - time.monotonic(), 0.001))
            try:
                message = await subscription.next_msg(timeout=wait_s)
            except nats.errors.TimeoutError:
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"stream {stream}: {len(messages)} of {held} messages read in time") from None
                continue
            sequence = message.metadata.sequence.stream
            if sequence > last:
                break  # published after the read began
            headers = message.headers or {}
            messages.append(BrokerMessage(headers.get(MESSAGE_ID_HEADER, ""), message.subject, sequence))
            if sequence >= last or len(messages) >= held:
                break
    finally:
        # deleted at once, not left to the broker's inactivity timer; what fails here that timer tidies
        with contextlib.suppress(nats.errors.Error):
            consumer = (await subscription.consumer_info()).name  # an ordered consumer may have been recreated
            await subscription.unsubscribe()
            await js.delete_consumer(stream, consumer)
    return messages
