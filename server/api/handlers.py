"""What every gRPC handler shares: turning named errors into statuses, and the request's time budget."""

from __future__ import annotations

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
from server.domain.errors import BallastError

if TYPE_CHECKING:
    from server.api.auth import TokenAuthenticator

log = structlog.get_logger(__name__)

#: Kept back from the caller's deadline so that our own answer (even DEADLINE_EXCEEDED) reaches it in time.
DEADLINE_MARGIN_S = 0.02

Response = TypeVar("Response")
Handler = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[Response]]


HANDLER_KINDS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")


def handler_kind(handler: grpc.RpcMethodHandler) -> str:
    """Which of the four behaviours a method handler carries (a handler has exactly one)."""
    return next(kind for kind in HANDLER_KINDS if getattr(handler, kind))


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


def translate_errors(handler: Handler[Response]) -> Handler[Response]:
    """Abort with the mapped status for a BallastError; log anything else and answer INTERNAL."""

    @functools.wraps(handler)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Response:
        try:
            return await handler(self, request, context)
        except BallastError as error:
            code, message, trailing = status_for(error)
            log.info("rpc.rejected", method=handler.__name__, code=code.name, reason=message)
            await context.abort(code, message, trailing_metadata=trailing)
            raise  # unreachable: abort raises
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("rpc.failed", method=handler.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error; it has been logged")
            raise

    return wrapper
