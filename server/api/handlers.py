"""What every gRPC handler shares: turning named errors into statuses, and the request's time budget."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import structlog
from google.protobuf.message import Message as ProtoMessage
from google.protobuf.timestamp_pb2 import Timestamp

from server.api.errors import status_for
from server.db.database import Budget, Database
from server.domain.errors import BallastError, DeadlineExceeded, Defect

if TYPE_CHECKING:
    from server.api.auth import TokenAuthenticator

log = structlog.get_logger(__name__)

#: Kept back from the caller's deadline for the work of a call: its waits (the pool, each statement, the
#: provider) end this long before the caller's deadline, each cleaning up after itself.
DEADLINE_MARGIN_S = 0.1
#: Kept back from the caller's deadline for the answer: a call whose work has not ended by then (its
#: clean-up, or a write that must outlive the call, took longer) is answered DEADLINE_EXCEEDED here, so
#: that Ballast's own answer reaches the caller on an event loop a burst of calls keeps busy.
ANSWER_MARGIN_S = 0.05

Response = TypeVar("Response")
Handler = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[Response]]


HANDLER_KINDS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")


def handler_kind(handler: grpc.RpcMethodHandler) -> str:
    """Which of the four behaviours a method handler carries (a handler has exactly one)."""
    return next(kind for kind in HANDLER_KINDS if getattr(handler, kind))


def refusing(
    handler: grpc.RpcMethodHandler,
    code: grpc.StatusCode,
    message: str,
    trailing_metadata: tuple[tuple[str, bytes], ...] = (),
) -> grpc.RpcMethodHandler:
    """The same handler shape (unary or streaming) with its behaviour replaced by an abort: for calls
    refused before any of Ballast's code runs (no credentials, the server stopping)."""

    async def abort(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, message, trailing_metadata=trailing_metadata)

    refused: grpc.RpcMethodHandler = handler._replace(**{handler_kind(handler): abort})
    return refused


def budget_for(context: grpc.aio.ServicerContext, request_timeout_s: float) -> Budget:
    """The caller's deadline (less a margin), capped by the server's own request timeout."""
    remaining = context.time_remaining()
    timeout_s = request_timeout_s if remaining is None else min(request_timeout_s, remaining - DEADLINE_MARGIN_S)
    return Budget.within(timeout_s)


#: A page stops short of page_size rather than outgrow this (the server sends at most 4 MiB a message).
PAGE_BYTES_MAX = 3 * 1024 * 1024

Record = TypeVar("Record")
Message = TypeVar("Message", bound=ProtoMessage)


def fit_page(
    records: Sequence[Record],
    to_proto: Callable[[Record], Message],
    token_after: Callable[[Record], str],
    next_page_token: str,
) -> tuple[list[Message], str]:
    """The leading records whose messages fit in PAGE_BYTES_MAX (always at least one), and the token
    to continue: after the last one sent when the page was cut short, else the page's own."""
    messages: list[Message] = []
    size_bytes = 0
    for record in records:
        message = to_proto(record)
        size_bytes += message.ByteSize()
        if size_bytes > PAGE_BYTES_MAX and messages:
            return messages, token_after(records[len(messages) - 1])
        messages.append(message)
    return messages, next_page_token


class ServicerBase:
    """What every Ballast servicer holds: the database, the authenticator and the default time budget."""

    def __init__(self, database: Database, authenticator: TokenAuthenticator, request_timeout_s: float) -> None:
        self._database = database
        self._authenticator = authenticator
        self._request_timeout_s = request_timeout_s

    def _budget(self, context: grpc.aio.ServicerContext) -> Budget:
        return budget_for(context, self._request_timeout_s)


def timestamp_of(value: datetime) -> Timestamp:
    timestamp = Timestamp()
    timestamp.FromDatetime(value)
    return timestamp


def _answer_within_s(context: grpc.aio.ServicerContext, request_timeout_s: float) -> float:
    """How long the call may take before Ballast answers it DEADLINE_EXCEEDED: its budget, plus the time
    between the margins for the work to clean up after its own time limit."""
    remaining = context.time_remaining()
    slack_s = DEADLINE_MARGIN_S - ANSWER_MARGIN_S
    return (
        request_timeout_s + slack_s
        if remaining is None
        else min(request_timeout_s + slack_s, remaining - ANSWER_MARGIN_S)
    )


#: What a caller hears about a bug: nothing of its internals, and that a repeat is safe.
INTERNAL_MESSAGE = (
    "internal error in Ballast; it has been logged. Repeating the call with the same idempotency key is safe"
)


async def _answer_defect(context: grpc.aio.ServicerContext, method: str, defect: Defect) -> None:
    """A defect is logged loudly, with its stack, and answered INTERNAL on purpose."""
    log.error("rpc.defect", method=method, defect=str(defect)[:500], exc_info=defect)
    await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)


def _keyed(request: Any) -> bool:
    """Whether the request carries an idempotency key (a write: repeating it with the key is how to learn
    an unknown outcome)."""
    descriptor = getattr(request, "DESCRIPTOR", None)  # a client stream's handler gets its iterator
    return descriptor is not None and "idempotency_key" in descriptor.fields_by_name


def _log_abandoned(method: str) -> Callable[[asyncio.Future[Any]], None]:
    def done(work: asyncio.Future[Any]) -> None:
        if not work.cancelled() and work.exception() is not None:
            log.info("rpc.abandoned_work_failed", method=method, error=repr(work.exception()))

    return done


def translate_errors(handler: Handler[Response]) -> Handler[Response]:
    """Answer within the caller's deadline; abort with the mapped status for a BallastError; log anything
    else and answer INTERNAL.

    The handler runs as a task of its own, and the answer does not wait for it past the caller's deadline
    less ANSWER_MARGIN_S (or the server's request timeout): when that passes first, the caller gets
    DEADLINE_EXCEEDED from Ballast, saying the outcome is unknown,
    and the work is cancelled behind the answer. What it already committed stays committed, and what
    must outlive the call (the provider's answer) is shielded by the use case; a repeat with the same
    idempotency key returns the outcome. A call the caller cancels cancels its work.
    """

    @functools.wraps(handler)
    async def wrapper(self: ServicerBase, request: Any, context: grpc.aio.ServicerContext) -> Response:
        try:
            timeout_s = _answer_within_s(context, self._request_timeout_s)
            if timeout_s <= 0:
                raise DeadlineExceeded("the call's deadline ran out before Ballast could begin it", begun=False)
            work = asyncio.ensure_future(handler(self, request, context))
            try:
                await asyncio.wait((work,), timeout=timeout_s)
            except asyncio.CancelledError:  # the caller cancelled the call, or its deadline passed
                work.cancel()
                raise
            if not work.done():
                work.cancel()
                work.add_done_callback(_log_abandoned(handler.__name__))
                raise DeadlineExceeded("the call's deadline ran out before Ballast could answer")
            return work.result()
        except BallastError as error:
            try:
                code, message, trailing = status_for(error, keyed=_keyed(request))
            except Defect as defect:  # a kind of error nobody gave a status code
                await _answer_defect(context, handler.__name__, defect)
                raise
            log.info("rpc.rejected", method=handler.__name__, code=code.name, reason=message)
            await context.abort(code, message, trailing_metadata=trailing)
            raise  # unreachable: abort raises
        except grpc.aio.AbortError:
            raise
        except Defect as defect:
            await _answer_defect(context, handler.__name__, defect)
            raise
        except Exception:  # neither an operating error nor a defect we detect: a bug all the same
            log.exception("rpc.failed", method=handler.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)
            raise

    return wrapper
