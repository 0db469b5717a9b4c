"""`python -m server [serve|migrate|token]`: the Ballast server process.

serve         (default) gRPC server; stops accepting calls on SIGTERM/SIGINT and drains those in flight
migrate       apply database migrations up to head, then exit
token         print the development bearer token (development only)
verify-audit  recompute every audit chain; exit 1 and name the first broken link of each broken chain
relay         run outbox relays only (no gRPC server), until SIGTERM
dead-letters  list the outbox events parked after too many failed publishes
redrive       make every dead-lettered event due again (the relays publish them, in order)
republish     publish again the events of an aggregate (--key) and/or since a time (--since)
"""

from __future__ import annotations

import os

# Set before gRPC is imported below: the process forks only to exec (pg_ctl for the embedded
# PostgreSQL), so gRPC's fork handlers are not needed.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")

import argparse
import asyncio
import contextlib
import signal
import sys
import time
import uuid
from datetime import datetime

import aiohttp
import asyncpg
import prometheus_client
import structlog
from aiohttp import web

from server import recon_cli
from server.api.admission import Admission
from server.api.grpc_server import CannotListen, build_server, set_component_serving, set_serving
from server.api.http_app import build_http_app
from server.db.database import Budget, Database
from server.db.engine import asyncpg_dsn, create_pool
from server.db.migrate import PreBaselineDatabase, migrate_to_head, pending_revision
from server.domain.errors import BallastError
from server.domain.payment_states import PaymentState
from server.domain.reconciliation import MAPPINGS
from server.failpoints import arm as arm_failpoints
from server.messaging.consumer import ConsumerGroup
from server.observability import configure_logging
from server.outbox import admin
from server.outbox.supervisor import RelayConfig, run_relays
from server.ownership import ComponentInUse
from server.providers.breaker import Breaker, BreakerSettings
from server.providers.embedded_simulator import embedded_simulator
from server.providers.gateway import GatewayClient
from server.providers.venue import VenueClient
from server.services import audit, exposures, outliving
from server.services.case_checks import CaseChecker
from server.services.check_loop import CheckSettings
from server.services.corrections import approve_correction
from server.services.leg_resolver import LegResolver, LegResolverSettings
from server.services.payment_resolver import PaymentResolver, PaymentResolverSettings
from server.services.provider_health import breaker_announcer
from server.services.reconciliation import ReportPuller, ReportWorker
from server.services.refund_resolver import RefundResolver
from server.services.submission import OUTCOME_WRITE_TIMEOUT_S
from server.services.venue_instructions import InstructionSender
from server.services.webhook_application import WebhookSource
from server.settings import Settings, SettingsError, load_settings

log = structlog.get_logger("server")

#: The one provider Ballast talks to for now: the simulator's card gateway (or a gateway speaking like it).
SIMULATOR = "simulator"
#: Pooled connections to the provider: enough for the calls in flight, bounded so a slow provider
#: cannot take every socket.
PROVIDER_CONNECTIONS_MAX = 100

COMMANDS = (
    "serve",
    "migrate",
    "token",
    "verify-audit",
    "relay",
    "dead-letters",
    "redrive",
    "republish",
    "approve-correction",
    "recon",
)
#: Commands that take arguments of their own.
_WITH_ARGUMENTS = ("republish", "approve-correction", "recon")
USAGE = f"usage: python -m server [{'|'.join(COMMANDS)}]"


def _relay_config(settings: Settings, nats_url: str, workers_min: int = 0) -> RelayConfig:
    return RelayConfig(
        nats_url=nats_url,
        workers=max(settings.relay_workers, workers_min),
        batch_size=settings.relay_batch_size,
        names=settings.nats_names,
        consumers=(ConsumerGroup(exposures.CONSUMER_GROUP, exposures.apply_event),),
        retention_hours=settings.outbox_retention_hours,
    )


def _nats_url(settings: Settings) -> str:
    if settings.nats_url is not None:
        return settings.nats_url
    from server.messaging.embedded_nats import start_embedded_nats

    return start_embedded_nats(settings.data_dir / "nats")


def _database_url(settings: Settings) -> str:
    if settings.database_url is not None:
        return settings.database_url
    from server.db.embedded import start_embedded_postgres

    return start_embedded_postgres(settings.data_dir)


async def verify_audit(database_url: str) -> int:
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        entries = await audit.count_entries(connection)
        print(f"verifying {entries} audit entries...", file=sys.stderr, flush=True)
        broken = await audit.find_broken_links(connection)
    finally:
        await connection.close()
    for link in broken:
        print(link.describe())
    if broken:
        print(f"{len(broken)} broken chain(s): restore the entries from a backup and investigate who changed them")
        return 1
    print(f"all audit chains verify ({entries} entries)")
    return 0


async def manage_dead_letters(database_url: str, *, redrive: bool) -> int:
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        if redrive:
            print(f"{await admin.redrive_dead_letters(connection)} dead-lettered events are due again")
            return 0
        letters = await admin.dead_letters(connection)
    finally:
        await connection.close()
    for letter in letters:
        print(
            f"{letter.dead_lettered_at:%Y-%m-%dT%H:%M:%SZ} {letter.id} {letter.topic} key={letter.message_key}"
            f" attempts={letter.attempts} error={letter.last_error}"
        )
    print(f"{len(letters)} dead letters" + ("; fix the cause, then `python -m server redrive`" if letters else ""))
    return 0


async def _schema_is_current(pool: asyncpg.Pool) -> bool:
    async with pool.acquire() as connection:
        current, head = await pending_revision(connection)
    if current != head:
        log.error(
            "server.schema_not_current",
            database_revision=current,
            code_revision=head,
            hint="run `python -m server migrate` (make run does it for you)",
        )
    return current == head


def _stop_signal() -> asyncio.Event:
    """An event set by SIGTERM, SIGINT, or SIGHUP (the terminal closed): each stops the server cleanly."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(signum, stopping.set)
    return stopping


async def relay_only(settings: Settings, database_url: str, nats_url: str) -> int:
    """`python -m server relay`: relays without the gRPC server, for scaling them apart."""
    pool = await create_pool(database_url, size=settings.relay_workers + 2, statement_timeout_ms=30_000)
    try:
        if not await _schema_is_current(pool):
            return 1
        stopping = _stop_signal()
        await run_relays(pool, _relay_config(settings, nats_url, workers_min=1), stopping)
    finally:
        await pool.close()
    return 0


async def _start_http(stack: contextlib.AsyncExitStack, settings: Settings, database: Database) -> int:
    """Serve webhooks on BALLAST_HTTP_PORT; the bound port."""
    sources = {SIMULATOR: WebhookSource(SIMULATOR, settings.provider_webhook_secret)}
    runner = web.AppRunner(build_http_app(database, sources), access_log=None)
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    try:
        await web.TCPSite(runner, settings.grpc_host, settings.http_port).start()
    except OSError as error:
        raise CannotListen(
            f"cannot serve HTTP on {settings.grpc_host}:{settings.http_port} ({error.strerror}):"
            " set BALLAST_HTTP_PORT to a free port"
        ) from None
    port = int(runner.addresses[0][1])
    log.info("http.listening", address=f"http://{settings.grpc_host}:{port}", webhooks=f"/webhooks/{SIMULATOR}")
    return port


async def _providers(
    stack: contextlib.AsyncExitStack, settings: Settings, database: Database, http_port: int
) -> tuple[GatewayClient, VenueClient] | None:
    """The payment gateway and broker venue clients (one provider serves both), starting the simulator
    first when no provider URL is set; each kind of call has a breaker of its own."""
    if not settings.provider_enabled:
        log.warning("provider.off", hint="BALLAST_PROVIDER_URL=off: payments stay RECORDED")
        return None
    provider_url = settings.provider_url
    if provider_url is None:
        host = "127.0.0.1" if settings.grpc_host in ("0.0.0.0", "::") else settings.grpc_host  # noqa: S104
        provider_url = await stack.enter_async_context(
            embedded_simulator(
                settings.data_dir,
                webhook_url=f"http://{host}:{http_port}/webhooks/{SIMULATOR}",
                webhook_secret=settings.provider_webhook_secret,
                profile=settings.simulator_profile,
            )
        )
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=PROVIDER_CONNECTIONS_MAX))
    stack.push_async_callback(session.close)
    breaker_settings = BreakerSettings(
        failures_max=settings.breaker_failures_max, open_s=settings.breaker_open_ms / 1000
    )
    announce = breaker_announcer(database)
    log.info("provider.configured", provider=SIMULATOR, url=provider_url)
    # a timeout counts against the provider's breaker only when the provider had all of this
    call_timeout_s = settings.provider_timeout_ms / 1000
    payments = Breaker(f"{SIMULATOR}.payments", breaker_settings, announce)
    orders = Breaker(f"{SIMULATOR}.orders", breaker_settings, announce)
    return (
        GatewayClient(SIMULATOR, provider_url, session, payments, call_timeout_s),
        VenueClient(SIMULATOR, provider_url, session, orders, call_timeout_s),
    )


async def serve(settings: Settings, database_url: str, nats_url: str | None) -> int:
    arm_failpoints(settings.failpoints)
    async with contextlib.AsyncExitStack() as stack:
        pool = await create_pool(
            database_url, size=settings.db_pool_size, statement_timeout_ms=settings.db_statement_timeout_ms, warm=True
        )
        stack.push_async_callback(pool.close)
        if not await _schema_is_current(pool):
            return 1
        database = Database(pool)
        # the HTTP side first: a simulator started below sends its webhooks to this port
        http_port = await _start_http(stack, settings, database)
        providers = await _providers(stack, settings, database, http_port)
        gateway, venue = providers if providers is not None else (None, None)
        admission = Admission()
        server, health_servicer, port = build_server(settings, database, gateway, venue, admission)
        if settings.metrics_port:
            try:
                metrics_server, _ = prometheus_client.start_http_server(settings.metrics_port, addr=settings.grpc_host)
            except OSError as error:
                raise CannotListen(
                    f"cannot serve metrics on {settings.grpc_host}:{settings.metrics_port} ({error.strerror}):"
                    " set BALLAST_METRICS_PORT to a free port, or 0 to turn metrics off"
                ) from None
            stack.callback(metrics_server.shutdown)
            log.info("metrics.listening", address=f"http://{settings.grpc_host}:{settings.metrics_port}/metrics")
        await server.start()
        await set_serving(health_servicer, True)
        log.info("server.listening", address=f"{settings.grpc_host}:{port}", environment=settings.environment)
        if settings.development_token is not None:
            print(
                f"development token: {settings.development_token}  (send `authorization: Bearer <token>`)",
                file=sys.stderr,
                flush=True,
            )
        stopping = _stop_signal()
        relays_stopping = asyncio.Event()
        relaying = None
        if nats_url is not None:

            async def set_health(component: str, serving: bool) -> None:
                await set_component_serving(health_servicer, component, serving)

            relaying = asyncio.create_task(
                run_relays(pool, _relay_config(settings, nats_url), relays_stopping, set_health)
            )
        # reports are reconciled as they arrive, by this server or any replica (a run is leased)
        reconciling = [asyncio.create_task(ReportWorker(database).run(relays_stopping))]
        if gateway is not None and settings.report_pull_interval_ms > 0 and gateway.provider in MAPPINGS:
            puller = ReportPuller(database, gateway, settings.report_pull_interval_ms / 1000, settings.report_pull_days)
            reconciling.append(asyncio.create_task(puller.run(relays_stopping)))
        resolving = None
        if gateway is not None and venue is not None:
            provider_timeout_s = settings.provider_timeout_ms / 1000
            resolver_settings = PaymentResolverSettings(
                provider_timeout_s=provider_timeout_s,
                pending_overdue_s=settings.pending_overdue_ms / 1000,
                expiry_s=settings.payment_expiry_ms / 1000,
                backoff_max_s=settings.resolver_backoff_max_ms / 1000,
            )
            resolving = asyncio.gather(
                PaymentResolver(database, gateway, resolver_settings).run(relays_stopping),
                RefundResolver(database, gateway, resolver_settings).run(relays_stopping),
                LegResolver(database, venue, LegResolverSettings(provider_timeout_s=provider_timeout_s)).run(
                    relays_stopping
                ),
                InstructionSender(database, venue).run(relays_stopping),
                CaseChecker(database, gateway, CheckSettings(provider_timeout_s=provider_timeout_s)).run(
                    relays_stopping
                ),
            )
        await stopping.wait()

        grace_s = settings.shutdown_grace_ms / 1000
        drain_by = time.monotonic() + grace_s
        log.info("server.draining", grace_s=grace_s, in_flight=admission.in_flight)
        await set_serving(health_servicer, False)
        # New calls are refused UNAVAILABLE (safe to repeat) while those in flight finish; only then
        # does gRPC stop, which would cancel calls that had arrived and not begun.
        admission.close()
        drained = await admission.drained(grace_s)
        await admission.quiet(drain_by - time.monotonic())
        await server.stop(max(drain_by - time.monotonic(), 0))
        unfinished = await outliving.finish(OUTCOME_WRITE_TIMEOUT_S)
        log.info(
            "server.drained", calls_finished=drained, refused_while_stopping=admission.refused, unfinished=unfinished
        )
        relays_stopping.set()  # after the calls: their events go out with this relay or the next one
        if relaying is not None:
            await asyncio.wait_for(relaying, timeout=30)
        if resolving is not None:
            await asyncio.wait_for(resolving, timeout=30)
        # a stage under way is rolled back; its run is taken up again at that stage once its lease ends
        for task in reconciling:
            task.cancel()
        await asyncio.gather(*reconciling, return_exceptions=True)
        log.info("server.stopped")
    return 0


def _republish_options(arguments: list[str]) -> tuple[str | None, datetime | None] | None:
    """--key K and/or --since ISO-8601; None (after printing why) if they do not parse."""
    parser = argparse.ArgumentParser(prog="python -m server republish")
    parser.add_argument("--key", help="the aggregate (outbox message key), e.g. a payment id")
    parser.add_argument("--since", help="events created at or after this time, ISO 8601 with a zone")
    try:
        options = parser.parse_args(arguments)
        since = None if options.since is None else datetime.fromisoformat(options.since)
    except (SystemExit, ValueError):
        print("usage: python -m server republish [--key KEY] [--since 2026-11-25T00:00:00Z]", file=sys.stderr)
        return None
    if options.key is None and since is None:
        print("republish needs --key or --since (or both): everything is rarely what you mean", file=sys.stderr)
        return None
    if since is not None and since.tzinfo is None:
        print("--since needs a time zone, e.g. 2026-11-25T00:00:00Z", file=sys.stderr)
        return None
    return options.key, since


async def republish(database_url: str, key: str | None, since: datetime | None) -> int:
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        count = await admin.republish(connection, message_key=key, since=since)
    finally:
        await connection.close()
    print(f"{count} events are due for publishing again; the relays send them in order")
    return 0


def _approval_options(arguments: list[str]) -> tuple[uuid.UUID, PaymentState, str, str] | None:
    """CASE_ID --to STATE --by NAME --note TEXT; None (after printing why) if they do not parse."""
    parser = argparse.ArgumentParser(prog="python -m server approve-correction")
    parser.add_argument("case_id", help="the CORRECTION_NEEDS_APPROVAL case")
    parser.add_argument("--to", required=True, help="the state the case proposes and you approve, e.g. FAILED")
    parser.add_argument("--by", required=True, help="who approves (kept on the transition and the case)")
    parser.add_argument("--note", required=True, help="why: kept with the case's resolution")
    try:
        options = parser.parse_args(arguments)
        return uuid.UUID(options.case_id), PaymentState(options.to.upper()), options.by, options.note
    except (SystemExit, ValueError):
        print('usage: python -m server approve-correction CASE_ID --to STATE --by NAME --note "why"', file=sys.stderr)
        return None


#: An operator's approval from the command line: a person waits, and it locks one payment and its case.
APPROVAL_BUDGET_S = 30.0


async def approve(database_url: str, case_id: uuid.UUID, to_state: PaymentState, approved_by: str, note: str) -> int:
    """`python -m server approve-correction`: a person approves the correction a case proposes."""
    pool = await create_pool(database_url, size=1, statement_timeout_ms=30_000)
    try:
        approved = await approve_correction(
            Database(pool), case_id, to_state, approved_by, note, Budget.within(APPROVAL_BUDGET_S)
        )
    except BallastError as error:
        print(f"not approved: {error}", file=sys.stderr)
        return 1
    finally:
        await pool.close()
    outcome = approved.outcome
    print(
        f"payment {approved.payment_id}: corrected {outcome.from_state.value} -> "
        f"{outcome.to_state.value if outcome.to_state else outcome.from_state.value}"
        f" with {len(outcome.ledger_entry_ids)} ledger entries; case {case_id} resolved"
    )
    return 0


def main(argv: list[str]) -> int:
    try:
        return _main(argv)
    except ComponentInUse as error:  # a second server on a data directory whose embedded children run
        print(f"start-up error: {error}, or give this server another BALLAST_DATA_DIR", file=sys.stderr)
        return 1


def _main(argv: list[str]) -> int:
    command = argv[0] if argv else "serve"
    if command not in COMMANDS or (len(argv) > 1 and command not in _WITH_ARGUMENTS):
        print(USAGE, file=sys.stderr)
        return 2
    republish_options = _republish_options(argv[1:]) if command == "republish" else None
    if command == "republish" and republish_options is None:
        return 2
    approval = _approval_options(argv[1:]) if command == "approve-correction" else None
    if command == "approve-correction" and approval is None:
        return 2
    try:
        settings = load_settings()
    except SettingsError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    if command == "token":
        if settings.development_token is None:
            # the tokens in BALLAST_API_TOKENS are the only ones the server accepts: printing the
            # development token here would hand out one that is refused
            print(
                "there is no development token while BALLAST_API_TOKENS is set: use one of its tokens", file=sys.stderr
            )
            return 2
        print(settings.development_token)
        return 0
    database_url = _database_url(settings)
    nats_url = _nats_url(settings) if command == "serve" and settings.relay_workers else None
    if command == "relay":
        return asyncio.run(relay_only(settings, database_url, _nats_url(settings)))
    if command == "migrate":
        try:
            migrate_to_head(database_url)
        except PreBaselineDatabase as error:
            print(f"migrate: {error}", file=sys.stderr)
            return 1
        log.info("migrate.done")
        return 0
    if command == "verify-audit":
        return asyncio.run(verify_audit(database_url))
    if republish_options is not None:
        return asyncio.run(republish(database_url, *republish_options))
    if approval is not None:
        return asyncio.run(approve(database_url, *approval))
    if command == "recon":
        return recon_cli.main(database_url, argv[1:])
    if command in ("dead-letters", "redrive"):
        return asyncio.run(manage_dead_letters(database_url, redrive=command == "redrive"))
    try:
        return asyncio.run(serve(settings, database_url, nats_url))
    except CannotListen as error:
        print(f"start-up error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
