"""Ballast's HTTP side: provider webhooks at POST /webhooks/<provider>, and a liveness probe.

Thin: read the raw body, hand it to the webhook use case, map its outcome to a status code. A 2xx
goes out only after the event's transaction committed; anything else makes the provider retry.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

import structlog
from aiohttp import web

from server.db.database import Budget, Database
from server.domain.errors import BallastError, Defect
from server.providers.simulator_events import Unreadable
from server.services import webhooks
from server.services.webhook_application import WebhookSource

log = structlog.get_logger(__name__)

#: A webhook must be handled well within a provider's own delivery timeout (often 10 to 30 s).
WEBHOOK_BUDGET_S = 5.0

INTAKE = web.AppKey("intake", webhooks.Intake)
SOURCES = web.AppKey("sources", dict)


async def receive_webhook(request: web.Request) -> web.Response:
    provider = request.match_info["provider"]
    source: WebhookSource | None = request.app[SOURCES].get(provider)
    if source is None:
        return web.json_response({"error": f"no webhook source named {provider!r}"}, status=404)
    body = await request.read()
    if len(body) > webhooks.BODY_BYTES_MAX:
        return web.json_response({"error": "the body is larger than 1 MiB"}, status=413)
    try:
        outcome = await request.app[INTAKE].receive(source, request.headers, body, Budget.within(WEBHOOK_BUDGET_S))
    except webhooks.Unauthentic as error:
        return web.json_response({"error": str(error)}, status=401)
    except Unreadable as error:
        return web.json_response({"error": str(error)}, status=400)
    except webhooks.IntakeFull as error:  # nothing stored: the provider delivers it again after Retry-After
        return web.json_response({"error": str(error)}, status=503, headers={"Retry-After": str(error.retry_after_s)})
    except BallastError as error:  # the database was busy or away: the provider will deliver it again
        log.warning("webhook.not_applied", provider=provider, error=str(error))
        return web.json_response({"error": str(error)}, status=503)
    except Defect:  # a bug Ballast detected in itself: everything rolled back, the redelivery retries it
        log.exception("webhook.defect", provider=provider)
        return web.json_response({"error": "the event was not applied; it has been logged"}, status=500)
    except Exception:  # a bug or a refusal by PostgreSQL: everything rolled back, the redelivery retries it
        log.exception("webhook.failed", provider=provider)
        return web.json_response({"error": "the event was not applied; it has been logged"}, status=500)
    return web.json_response({"received": True, "outcome": outcome.value})


async def healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def build_http_app(
    database: Database, sources: Mapping[str, WebhookSource], intake: webhooks.Intake | None = None
) -> web.Application:
    """The webhook endpoints; `intake` (default: one with the standard bounds) applies what they receive."""
    app = web.Application(client_max_size=webhooks.BODY_BYTES_MAX + 1)
    intake = app[INTAKE] = intake or webhooks.Intake(database)

    async def intake_running(_: web.Application) -> AsyncIterator[None]:
        # torn down after the server stopped taking requests and the ones in flight were answered
        await intake.start()
        yield
        await intake.stop()

    app.cleanup_ctx.append(intake_running)
    app[SOURCES] = dict(sources)
    app.router.add_post("/webhooks/{provider}", receive_webhook)
    app.router.add_get("/healthz", healthz)
    return app
