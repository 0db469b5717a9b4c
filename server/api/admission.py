"""Admission: whether the server takes new calls, and how many of the calls it took are still in flight.

When the server stops, it first closes admission: each new call is refused at once with UNAVAILABLE
("the server is stopping"; nothing was done, so repeating it with the same idempotency key, on another
replica or after the restart, is safe), while the calls in flight run to their end. Only then does
gRPC itself stop, which would otherwise cancel the calls that had arrived but not yet begun, and a
cancelled call (CANCELLED) tells its caller nothing about what happened.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import duration_pb2

from server.api.errors import STATUS_DETAILS_METADATA_KEY, retry_status
from server.api.handlers import refusing

#: Services answered even while the server stops: health (so that balancers see NOT_SERVING) and reflection.
ALWAYS_ADMITTED = ("/grpc.health.v1.Health/", "/grpc.reflection.")
STOPPING_MESSAGE = (
    "the server is stopping and did not begin this call: nothing was done; repeat it with the same"
    " idempotency key (another replica, or this one once restarted, answers it)"
)
#: Stopping waits until no call has arrived for this long: the calls gRPC had queued were all refused.
QUIET_S = 0.1
#: What a refused caller is told to wait before repeating the call.
STOPPING_RETRY_DELAY = duration_pb2.Duration(nanos=200_000_000)


class Admission:
    def __init__(self) -> None:
        self._open = True
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.refused = 0
        self._last_arrival = time.monotonic()

    @property
    def open(self) -> bool:
        return self._open

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def close(self) -> None:
        """From now on every new call is refused UNAVAILABLE."""
        self._open = False

    async def drained(self, timeout_s: float) -> bool:
        """Wait (up to `timeout_s`) until no admitted call is in flight; whether that happened."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=max(timeout_s, 0))
        except TimeoutError:
            return False
        return True

    async def quiet(self, timeout_s: float) -> bool:
        """Wait (up to `timeout_s`) until no call has arrived for QUIET_S; whether that happened.

        gRPC queues calls that arrived until the server takes them, one at a time, and stopping it cancels
        those still queued: refusing them first tells each caller, honestly, that nothing was done."""
        give_up = time.monotonic() + max(timeout_s, 0)
        while (silent_s := time.monotonic() - self._last_arrival) < QUIET_S:
            if time.monotonic() >= give_up:
                return False
            await asyncio.sleep(min(QUIET_S - silent_s, max(give_up - time.monotonic(), 0)) + 0.001)
        return True

    def arrived(self) -> None:
        self._last_arrival = time.monotonic()

    def _entered(self) -> None:
        self._in_flight += 1
        self._idle.clear()

    def _left(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0:
            self._idle.set()

    def counted(self, behaviour: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]) -> Callable[..., Any]:
        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            self._entered()
            try:
                return await behaviour(request, context)
            finally:
                self._left()

        return unary


class AdmissionInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, admission: Admission) -> None:
        self._admission = admission

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(ALWAYS_ADMITTED):
            return handler
        self._admission.arrived()
        if not self._admission.open:
            self._admission.refused += 1
            trailing = ((STATUS_DETAILS_METADATA_KEY, retry_status(STOPPING_MESSAGE, STOPPING_RETRY_DELAY)),)
            return refusing(handler, grpc.StatusCode.UNAVAILABLE, STOPPING_MESSAGE, trailing)
        if handler.unary_unary is None:  # Ballast's own methods are all unary
            return handler
        admitted: grpc.RpcMethodHandler = handler._replace(unary_unary=self._admission.counted(handler.unary_unary))
        return admitted
