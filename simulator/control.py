"""The control API under /_sim/: switch faults at run time, start over, and read the ground truth."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from simulator.engine import Simulator
from simulator.errors import error_response
from simulator.keys import SIMULATOR

routes = web.RouteTableDef()


async def _json_object(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        return {}
    body = json.loads(raw)
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    return body


def _seed(body: dict[str, Any]) -> int | None:
    seed = body.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise ValueError("seed must be an integer")
    return seed


def _profile(simulator: Simulator) -> web.Response:
    return web.json_response(
        {"name": simulator.profile_name, "seed": simulator.seed, "settings": simulator.settings.to_dict()}
    )


@routes.get("/_sim/profile")
async def get_profile(request: web.Request) -> web.Response:
    return _profile(request.app[SIMULATOR])


@routes.put("/_sim/profile")
async def put_profile(request: web.Request) -> web.Response:
    """Body: {"name": "flaky"} and/or {"settings": {"hang_rate": 0.5}}, optionally "seed": 42."""
    simulator = request.app[SIMULATOR]
    try:
        body = await _json_object(request)
        unknown = sorted(set(body) - {"name", "settings", "seed"})
        if unknown:
            raise ValueError(f"unknown field(s): {', '.join(unknown)}")
        name, settings = body.get("name"), body.get("settings", {})
        if name is not None and not isinstance(name, str):
            raise ValueError("name must be a string")
        if not isinstance(settings, dict):
            raise ValueError("settings must be an object")
        simulator.set_profile(name, settings, _seed(body))
    except (ValueError, TypeError) as error:
        return error_response(400, str(error))
    return _profile(simulator)


@routes.post("/_sim/reset")
async def reset(request: web.Request) -> web.Response:
    """Forget everything; body {"seed": N} optionally restarts from another seed."""
    simulator = request.app[SIMULATOR]
    try:
        seed = _seed(await _json_object(request))
    except ValueError as error:
        return error_response(400, str(error))
    await simulator.reset(seed)
    return web.json_response({"seed": simulator.seed, "profile": simulator.profile_name})


@routes.get("/_sim/truth")
async def truth(request: web.Request) -> web.Response:
    return web.json_response(request.app[SIMULATOR].truth())
