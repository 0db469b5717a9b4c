"""The provider's payments and refunds API, shaped like a card gateway's (Stripe-like JSON, decimal strings)."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from simulator.errors import error_response
from simulator.faults import RequestFaults
from simulator.keys import FAULTS, SIMULATOR
from simulator.payments import InvalidRequest, PaymentRequest
from simulator.refunds import RefundRefused, RefundRequest
from simulator.store import Answer, IdempotencyConflict, Store

IDEMPOTENCY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"

routes = web.RouteTableDef()


def idempotency_key(request: web.Request) -> str | None:
    """The request's Idempotency-Key: 1-255 characters, or None when absent or out of bounds."""
    key = request.headers.get(IDEMPOTENCY_HEADER, "").strip()
    return key if 0 < len(key) <= 255 else None


def answer_response(answer: Answer) -> web.Response:
    headers = {REPLAYED_HEADER: "true"} if answer.replayed else {}
    return web.json_response(answer.body, status=answer.status, headers=headers)


@routes.post("/v1/payments")
async def create_payment(request: web.Request) -> web.Response:
    key = idempotency_key(request)
    if key is None:
        return error_response(400, f"the {IDEMPOTENCY_HEADER} header is required (1-255 characters)")
    try:
        body = json.loads(await request.read())
        payment_request = PaymentRequest.parse(body)
    except json.JSONDecodeError:
        return error_response(400, "the body is not valid JSON")
    except InvalidRequest as error:
        return error_response(400, str(error), param=error.param)
    try:
        # no await between here and the answer: the key check and the insert are one step
        answer = request.app[SIMULATOR].create_payment(key, payment_request, request.get(FAULTS, RequestFaults()))
    except IdempotencyConflict as error:
        return error_response(409, str(error), kind="idempotency_error", param=IDEMPOTENCY_HEADER)
    return answer_response(answer)


def by_key_response(request: web.Request, store: Store[Any], kind: str) -> web.Response:
    """The status inquiry after a timeout: did the provider ever see this key? 404 means no."""
    key = request.query.get("idempotency_key", "").strip()
    if not key:
        return error_response(400, "idempotency_key is required", param="idempotency_key")
    found = store.by_idempotency_key(key)
    if found is None:
        return error_response(404, f"no {kind} with idempotency key {key!r}", param="idempotency_key")
    return web.json_response(found.to_json())


def by_id_response(request: web.Request, store: Store[Any], kind: str) -> web.Response:
    found = store.get(request.match_info["id"])
    if found is None:
        return error_response(404, f"no {kind} {request.match_info['id']!r}", param="id")
    return web.json_response(found.to_json())


@routes.get("/v1/payments")
async def find_by_idempotency_key(request: web.Request) -> web.Response:
    return by_key_response(request, request.app[SIMULATOR].store, "payment")


@routes.get("/v1/payments/{id}")
async def get_payment(request: web.Request) -> web.Response:
    return by_id_response(request, request.app[SIMULATOR].store, "payment")


@routes.post("/v1/payments/{id}/refunds")
async def create_refund(request: web.Request) -> web.Response:
    """A full or partial refund of a succeeded payment, `pending` at first; keyed like payments."""
    payment_id = request.match_info["id"]
    key = idempotency_key(request)
    if key is None:
        return error_response(
            400, f"the {IDEMPOTENCY_HEADER} header is required (1-255 characters)", param=IDEMPOTENCY_HEADER
        )
    try:
        body = json.loads(await request.read())
        refund_request = RefundRequest.parse(payment_id, body)
    except json.JSONDecodeError:
        return error_response(400, "the body is not valid JSON")
    except InvalidRequest as error:
        return error_response(400, str(error), param=error.param)
    try:
        # no await between here and the answer: the key check, the amount left and the insert are one step
        answer = request.app[SIMULATOR].create_refund(key, refund_request, request.get(FAULTS, RequestFaults()))
    except IdempotencyConflict as error:
        return error_response(409, str(error), kind="idempotency_error", param=IDEMPOTENCY_HEADER)
    except LookupError:
        return error_response(404, f"no payment {payment_id!r}", param="id")
    except RefundRefused as error:
        return error_response(error.status, str(error), param=error.param, code=error.code)
    return answer_response(answer)


@routes.get("/v1/refunds")
async def find_refund_by_idempotency_key(request: web.Request) -> web.Response:
    return by_key_response(request, request.app[SIMULATOR].refunds, "refund")


@routes.get("/v1/refunds/{id}")
async def get_refund(request: web.Request) -> web.Response:
    return by_id_response(request, request.app[SIMULATOR].refunds, "refund")
