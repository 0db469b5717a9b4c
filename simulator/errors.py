"""Stripe-shaped error bodies, so a client's error handling is exercised as it would be in production."""

from __future__ import annotations

from aiohttp import web


def error_response(
    status: int,
    message: str,
    *,
    kind: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> web.Response:
    error: dict[str, object] = {"type": kind, "message": message}
    if param is not None:
        error["param"] = param
    if code is not None:
        error["code"] = code
    return web.json_response({"error": error}, status=status)
