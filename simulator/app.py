"""Wiring: one aiohttp application around one Simulator, with request logging and fault injection."""

from __future__ import annotations

import time

from aiohttp import web
from aiohttp.typedefs import Handler

from simulator import api, broker_api, control, report_api
from simulator.engine import Simulator
from simulator.http_faults import fault_middleware
from simulator.keys import FAULTS, SIMULATOR
from simulator.logs import log


@web.middleware
async def log_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """One line per request, written when it ends: a request that never gets an answer shows 499."""
    started = time.perf_counter()
    status: int | str = "-"
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as error:
        status = error.status
        raise
    finally:
        faults = request.get(FAULTS)
        log(
            "request",
            method=request.method,
            path=request.path_qs,
            status=status,
            fault=faults.describe() if faults else "none",
            ms=round((time.perf_counter() - started) * 1000, 1),
        )


def build_app(simulator: Simulator) -> web.Application:
    app = web.Application(middlewares=[log_middleware, fault_middleware])
    app[SIMULATOR] = simulator
    app.add_routes(api.routes)
    app.add_routes(broker_api.routes)
    app.add_routes(report_api.routes)
    app.add_routes(control.routes)

    async def close(_: web.Application) -> None:
        await simulator.close()

    app.on_cleanup.append(close)
    return app
