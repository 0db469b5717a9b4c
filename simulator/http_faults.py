"""The middleware that does to an API request what its fault plan says.

Faults before the handler (latency, hang, 5xx, 429, reset) leave no trace in the provider; faults
after it (malformed, accept-then-timeout) happen to a request the provider really processed, which
is exactly the case a client cannot tell apart from the first kind.
"""

from __future__ import annotations

import asyncio
import socket
import struct

from aiohttp import web
from aiohttp.typedefs import Handler

from simulator.errors import error_response
from simulator.faults import FAULT_HEADER, parse_fault_header
from simulator.keys import FAULTS, SIMULATOR

POLL_S = 0.01


async def wait_for_disconnect(request: web.Request, limit_ms: int) -> bool:
    """Wait until the client goes away (True) or `limit_ms` passes (False; 0 waits forever)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_ms / 1000 if limit_ms else None
    while deadline is None or loop.time() < deadline:
        transport = request.transport
        if transport is None or transport.is_closing():
            return True
        await asyncio.sleep(POLL_S)
    return False


def reset_connection(request: web.Request) -> None:
    """Close the TCP connection with a RST (SO_LINGER 0), as a crashing load balancer would."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


@web.middleware
async def fault_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.path.startswith("/v1/"):
        return await handler(request)
    simulator = request.app[SIMULATOR]
    header = request.headers.get(FAULT_HEADER)
    try:
        faults = parse_fault_header(header) if header is not None else simulator.draw_request_faults()
    except ValueError as error:
        return error_response(400, str(error), param=FAULT_HEADER)
    request[FAULTS] = faults
    if faults.latency_ms:
        await asyncio.sleep(faults.latency_ms / 1000)
    if faults.fault == "hang" and await wait_for_disconnect(request, faults.hang_ms):
        return web.Response(status=499)  # nobody is listening; nothing was processed
    if faults.fault == "error":
        return error_response(faults.status, "the provider had an internal error", kind="api_error")
    if faults.fault == "rate-limit":
        limited = error_response(429, "too many requests", kind="rate_limit_error")
        limited.headers["Retry-After"] = str(faults.retry_after_s)
        return limited
    if faults.fault == "reset":
        reset_connection(request)
        return web.Response(status=499)
    response = await handler(request)
    if faults.fault == "accept-then-timeout":
        await wait_for_disconnect(request, 0)
        return web.Response(status=499)
    if faults.fault == "malformed" and isinstance(response, web.Response) and response.body is not None:
        body = bytes(response.body)  # type: ignore[arg-type]
        truncated = web.Response(status=response.status, body=body[: len(body) // 2], content_type="application/json")
        for name in ("Idempotent-Replayed",):
            if name in response.headers:
                truncated.headers[name] = response.headers[name]
        return truncated
    return response
