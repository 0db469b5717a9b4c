"""Prometheus metrics for every RPC (count by method and status code, latency by method)."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from prometheus_client import Counter, Histogram

from server.api.handlers import ANSWER_MARGIN_S, handler_kind

RPCS = Counter("ballast_grpc_requests", "gRPC calls handled, by method and status code", ["method", "code"])
#: Calls Ballast began, by method: begun less handled is the calls in flight. A call whose deadline passed
#: while it still waited in gRPC to be taken is never begun (its caller hears gRPC's own DEADLINE_EXCEEDED).
RPCS_STARTED = Counter("ballast_grpc_requests_started", "gRPC calls begun, by method", ["method"])
RPC_SECONDS = Histogram(
    "ballast_grpc_request_duration_seconds",
    "Time from a call's arrival to its answer, by method",
    ["method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
#: How much of its caller's deadline a call had left when Ballast began it: calls that waited in gRPC to be
#: taken (the server is saturated) show up in the low buckets. One bucket ends at ANSWER_MARGIN_S: a call
#: begun with less left than that may be cut by its caller's deadline before Ballast's answer reaches it.
RPC_SLACK_SECONDS = Histogram(
    "ballast_grpc_request_slack_seconds",
    "Time left of the caller's deadline when Ballast began the call, by method (calls with a deadline)",
    ["method"],
    buckets=(ANSWER_MARGIN_S, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


def _code_of(context: grpc.aio.ServicerContext, error: BaseException | None) -> str:
    """The status the call ended with. gRPC cancels the handler of a call its caller cancelled, or whose
    deadline passed before Ballast answered: that is CANCELLED (Ballast's own DEADLINE_EXCEEDED answers
    are aborts, with their code set), never UNKNOWN."""
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return str(code.name)
    if isinstance(error, asyncio.CancelledError):
        return "CANCELLED"
    return "OK" if error is None else "UNKNOWN"


def _observed(method: str, behaviour: Callable[..., Any]) -> Callable[..., Any]:
    def record(context: grpc.aio.ServicerContext, started: float, error: BaseException | None) -> None:
        RPCS.labels(method, _code_of(context, error)).inc()
        RPC_SECONDS.labels(method).observe(time.perf_counter() - started)

    begun, slack = RPCS_STARTED.labels(method), RPC_SLACK_SECONDS.labels(method)

    def begin(context: grpc.aio.ServicerContext) -> None:
        begun.inc()
        remaining = context.time_remaining()
        if remaining is not None:
            slack.observe(remaining)

    if inspect.isasyncgenfunction(behaviour):

        async def streaming(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            started, error = time.perf_counter(), None
            begin(context)
            try:
                async for response in behaviour(request, context):
                    yield response
            except BaseException as raised:
                error = raised
                raise
            finally:
                record(context, started, error)

        return streaming

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        started, error = time.perf_counter(), None
        begin(context)
        try:
            return await behaviour(request, context)
        except BaseException as raised:
            error = raised
            raise
        finally:
            record(context, started, error)

    return unary


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        kind = handler_kind(handler)
        observed: grpc.RpcMethodHandler = handler._replace(
            **{kind: _observed(handler_call_details.method, getattr(handler, kind))}
        )
        return observed
