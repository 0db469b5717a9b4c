"""JetStream publishing with pipelined acknowledgements, cheap enough per message for the relay.

A JetStream publish is a plain NATS publish whose reply subject receives the stream's
acknowledgement. nats-py's `publish_async` wraps each one in a semaphore, a token, a done-callback
and a parsed `PubAck`; at relay rates that bookkeeping, not the broker, is the limit. Here one
wildcard inbox subscription receives every acknowledgement, each message's reply subject is its
own inbox token, and an acknowledgement is parsed only when it reports an error.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

MESSAGE_ID_HEADER = "Nats-Msg-Id"
#: Acknowledgements the inbox subscription may hold before the client drops them: above any batch.
PENDING_ACKS_MAX = 1_000_000


@dataclass(frozen=True)
class Outgoing:
    subject: str
    payload: bytes
    #: the broker drops a second message with the same id within the stream's duplicate window
    message_id: str


class AckedPublisher:
    """Publishes batches to JetStream; per message, None once stored (or known duplicate), else why not."""

    def __init__(self, connection: NatsClient) -> None:
        self._connection = connection
        self._inbox: str | None = None
        self._tokens = itertools.count()
        self._waiting: dict[str, asyncio.Future[str | None]] = {}

    async def publish(self, messages: Sequence[Outgoing], timeout_s: float) -> list[str | None]:
        """Publish every message, then wait at most `timeout_s` for their acknowledgements."""
        inbox = await self._subscribed()
        loop = asyncio.get_running_loop()
        outcomes: list[asyncio.Future[str | None]] = []
        for message in messages:
            reply = f"{inbox}.{next(self._tokens)}"
            outcome: asyncio.Future[str | None] = loop.create_future()
            outcomes.append(outcome)
            self._waiting[reply] = outcome
            try:
                await self._connection.publish(
                    message.subject, message.payload, reply=reply, headers={MESSAGE_ID_HEADER: message.message_id}
                )
            except Exception as error:  # disconnected, buffer full...: this message is retried later
                self._waiting.pop(reply, None)
                outcome.set_result(f"{type(error).__name__}: {error}"[:500])
        pending = [outcome for outcome in outcomes if not outcome.done()]
        if pending:
            await asyncio.wait(pending, timeout=timeout_s)
        results = []
        for outcome in outcomes:
            if outcome.done():
                results.append(outcome.result())
            else:
                outcome.cancel()
                results.append(f"TimeoutError: no acknowledgement within {timeout_s}s")
        self._forget_cancelled()
        return results

    async def _subscribed(self) -> str:
        if self._inbox is None:
            inbox = self._connection.new_inbox()
            await self._connection.subscribe(f"{inbox}.*", cb=self._acknowledged, pending_msgs_limit=PENDING_ACKS_MAX)
            self._inbox = inbox
        return self._inbox

    async def _acknowledged(self, message: Msg) -> None:
        outcome = self._waiting.pop(message.subject, None)
        if outcome is not None and not outcome.done():
            outcome.set_result(ack_error(message))

    def _forget_cancelled(self) -> None:
        """Drop the waits of timed-out messages: a late acknowledgement then finds nothing."""
        for reply in [reply for reply, outcome in self._waiting.items() if outcome.cancelled()]:
            del self._waiting[reply]


def ack_error(message: Msg) -> str | None:
    """None when the stream stored the message (or had it already), else the broker's reason."""
    if message.headers and message.headers.get("Status") == "503":
        return "NoRespondersError: no stream takes this subject"
    if b'"error"' not in message.data:
        return None
    try:
        error = json.loads(message.data).get("error") or {}
    except ValueError:
        return f"APIError: unreadable acknowledgement {message.data[:200]!r}"
    return f"APIError: {error.get('description')} (code {error.get('code')}, err_code {error.get('err_code')})"[:500]
