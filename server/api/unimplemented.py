"""Servicers for the declared parts of the API that the server does not answer yet.

Each method aborts with UNIMPLEMENTED naming itself, so clients see the whole surface (through
reflection too) and get an honest answer for what is still to come.
"""

from __future__ import annotations

import inspect
from typing import Any

import grpc


def _unimplemented(service: str, method: str) -> Any:
    async def handler(self: Any, request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{service}.{method} is not implemented yet")

    handler.__name__ = method
    return handler


def unimplemented_servicer(base: type) -> Any:
    """An instance of `base` (a generated *Servicer class) whose every RPC answers UNIMPLEMENTED."""
    service = base.__name__.removesuffix("Servicer")
    methods = {
        name: _unimplemented(service, name)
        for name, _ in inspect.getmembers(base, inspect.isfunction)
        if not name.startswith("_")
    }
    return type(f"Unimplemented{base.__name__}", (base,), methods)()


#: (generated servicer base, the add_*_to_server function) for every service not implemented yet: none.
PENDING_SERVICES: tuple[tuple[type, Any], ...] = ()
