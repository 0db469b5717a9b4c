"""The ceiling for webhook intake: an aiohttp endpoint that verifies the HMAC and inserts one row.

`python -m bench.bare_webhook --port P` with DATABASE_URL set. It does what any webhook receiver
must do at the least (read the raw body, check a Stripe-style signature, store the event once) and
nothing of Ballast's: no evidence table, no insert-first guard, no state machine, no ledger.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
from collections.abc import AsyncIterator

import asyncpg
from aiohttp import web

from server.db.engine import asyncpg_dsn

SECRET = "whsec_bench"  # noqa: S105 - the benchmark's own secret
POOL_SIZE = 20


def _verified(body: bytes, header: str) -> bool:
    parts = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    expected = hmac.new(SECRET.encode(), f"{parts.get('t', '')}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, parts.get("v1", ""))


async def receive(request: web.Request) -> web.Response:
    body = await request.read()
    if not _verified(body, request.headers.get("Simulator-Signature", "")):
        return web.Response(status=401)
    event_id = json.loads(body)["id"]
    await request.app[POOL].execute(
        "INSERT INTO bare_webhooks (event_id, body) VALUES ($1, $2) ON CONFLICT DO NOTHING", event_id, body
    )
    return web.json_response({"received": True})


POOL = web.AppKey("pool", asyncpg.Pool)


async def healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _pool(app: web.Application) -> AsyncIterator[None]:
    pool = await asyncpg.create_pool(asyncpg_dsn(os.environ["DATABASE_URL"]), min_size=POOL_SIZE, max_size=POOL_SIZE)
    await pool.execute("CREATE TABLE IF NOT EXISTS bare_webhooks (event_id text PRIMARY KEY, body bytea NOT NULL)")
    app[POOL] = pool
    yield
    await pool.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bare_webhook")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = web.Application()
    app.cleanup_ctx.append(_pool)
    app.router.add_post("/webhooks/simulator", receive)
    app.router.add_get("/healthz", healthz)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
