"""The venue's order API: submit a leg, read it and its execution reports, modify it, cancel it."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from simulator.api import IDEMPOTENCY_HEADER, answer_response, by_id_response, by_key_response, idempotency_key
from simulator.broker import Conflict
from simulator.errors import error_response
from simulator.faults import RequestFaults
from simulator.keys import FAULTS, SIMULATOR
from simulator.orders import OrderRequest
from simulator.payments import InvalidRequest
from simulator.store import Answer, IdempotencyConflict

routes = web.RouteTableDef()


async def _body(request: web.Request) -> Any:
    raw = await request.read()
    return json.loads(raw) if raw.strip() else {}


@routes.post("/v1/orders")
async def submit_order(request: web.Request) -> web.Response:
    key = idempotency_key(request)
    if key is None:
        return error_response(400, f"the {IDEMPOTENCY_HEADER} header is required (1-255 characters)")
    try:
        order_request = OrderRequest.parse(await _body(request))
        # no await between here and the answer: the key check and the insert are one step
        answer = request.app[SIMULATOR].broker.submit(key, order_request, request.get(FAULTS, RequestFaults()))
    except json.JSONDecodeError:
        return error_response(400, "the body is not valid JSON")
    except InvalidRequest as error:
        return error_response(400, str(error), param=error.param)
    except IdempotencyConflict as error:
        return error_response(409, str(error), kind="idempotency_error", param=IDEMPOTENCY_HEADER)
    return answer_response(answer)


@routes.get("/v1/orders")
async def find_by_idempotency_key(request: web.Request) -> web.Response:
    return by_key_response(request, request.app[SIMULATOR].broker.store, "order")


@routes.get("/v1/orders/{id}")
async def get_order(request: web.Request) -> web.Response:
    return by_id_response(request, request.app[SIMULATOR].broker.store, "order")


@routes.get("/v1/orders/{id}/executions")
async def list_executions(request: web.Request) -> web.Response:
    """Every fill of the order, oldest first: how a client recovers fills whose webhooks it missed."""
    try:
        executions = request.app[SIMULATOR].broker.executions(request.match_info["id"])
    except LookupError:
        return error_response(404, f"no order {request.match_info['id']!r}", param="id")
    return web.json_response({"object": "list", "data": [execution.to_json() for execution in executions]})


async def _act(request: web.Request, act: Any) -> web.Response:
    order_id = request.match_info["id"]
    try:
        answer: Answer = act(order_id, idempotency_key(request))
    except json.JSONDecodeError:
        return error_response(400, "the body is not valid JSON")
    except LookupError:
        return error_response(404, f"no order {order_id!r}", param="id")
    except Conflict as error:
        return error_response(409, str(error))
    except InvalidRequest as error:
        return error_response(400, str(error), param=error.param)
    except IdempotencyConflict as error:
        return error_response(409, str(error), kind="idempotency_error", param=IDEMPOTENCY_HEADER)
    return answer_response(answer)


@routes.post("/v1/orders/{id}/modify")
async def modify_order(request: web.Request) -> web.Response:
    """Body {"quantity": "150"} and/or {"limit_price": "101.5"}; 202, answered later by webhook."""
    body = await _body(request)
    broker = request.app[SIMULATOR].broker
    return await _act(request, lambda order_id, key: broker.modify(order_id, body, key))


@routes.post("/v1/orders/{id}/cancel")
async def cancel_order(request: web.Request) -> web.Response:
    broker = request.app[SIMULATOR].broker
    return await _act(request, broker.cancel)
