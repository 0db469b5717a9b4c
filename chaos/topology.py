"""A chaos run's world: one PostgreSQL and one NATS, the provider simulator, Ballast's server replicas
and outbox relays as real processes, and a Toxiproxy proxy on every network path that can fail.

    clients --gRPC--> server-0..n --[provider]--> simulator --[webhooks]--> server-0's intake
                      server-*, relay-* --[postgres]--> PostgreSQL
                      relay-* --[nats]--> NATS

PostgreSQL and NATS are DATABASE_URL's and NATS_URL's when set, embedded ones otherwise (as
`make run` starts them). The run gets a scratch database of its own, migrated before anything starts,
and a deployment name of its own on NATS (its stream, subjects and consumers), both removed at the
end. The checker reads both directly, around the proxies. `World.close` (an ExitStack) stops every
process and proxy the run started, whether it ends, fails or is interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import nats
from sqlalchemy.engine import make_url

from chaos.bridge import tcp_to_unix
from chaos.faults import Faults, toxiproxy_server
from chaos.processes import ROOT, Child, Server, Simulator, clean_environment, free_port, relay, server, simulator
from chaos.scenarios import Scenario
from server.db.engine import asyncpg_dsn
from server.db.scratch import scratch_database
from server.domain.backoff import backoff_s
from server.messaging.names import DeploymentNames
from server.services.check_loop import CheckSettings
from server.services.payment_resolver import PaymentResolverSettings

#: The secret the run's simulator signs its webhooks with.
WEBHOOK_SECRET = "whsec_chaos_run"  # noqa: S105 - the run's own simulator and servers share it
MIGRATE_TIMEOUT_S = 120.0
#: Connections each server replica keeps to PostgreSQL.
SERVER_POOL_SIZE = 20
CLIENT_ID = "chaos"
#: The operator who uploads the provider's reports (IngestReport) and reads their runs.
OPERATOR_ID = "chaos-operator"
POSTGRES_PORT = 5432


@dataclass(frozen=True)
class Timings:
    """Short server settings, so that a run heals and converges in seconds, not minutes."""

    #: below the load's call deadline, so a hang has all of its time and counts against the breaker
    provider_timeout_ms: int = 1_500
    payment_expiry_ms: int = 15_000
    pending_overdue_ms: int = 3_000
    breaker_failures: int = 5
    breaker_open_ms: int = 2_000
    resolver_backoff_max_ms: int = 4_000

    @property
    def resolver_worst_case_s(self) -> float:
        """The longest the resolver takes to resolve an UNKNOWN, or give up and open a case, while the
        provider answers nothing: its grace, then every check's wait for the provider and the backoff
        after it. Checks an open breaker did not let through do not count (server/services/
        payment_resolver.py), so time under a fault comes on top."""
        checks = CheckSettings()
        grace_s = PaymentResolverSettings().unknown_grace_s
        backoff_max_s = self.resolver_backoff_max_ms / 1000
        waits_s = sum(backoff_s(attempt, checks.backoff_base_s, backoff_max_s) for attempt in range(checks.checks_max))
        return grace_s + waits_s + checks.checks_max * self.provider_timeout_ms / 1000

    def environment(self) -> dict[str, str]:
        return {
            "BALLAST_PROVIDER_TIMEOUT_MS": str(self.provider_timeout_ms),
            "BALLAST_PAYMENT_EXPIRY_MS": str(self.payment_expiry_ms),
            "BALLAST_PENDING_OVERDUE_MS": str(self.pending_overdue_ms),
            "BALLAST_PROVIDER_BREAKER_FAILURES": str(self.breaker_failures),
            "BALLAST_PROVIDER_BREAKER_OPEN_MS": str(self.breaker_open_ms),
            "BALLAST_RESOLVER_BACKOFF_MAX_MS": str(self.resolver_backoff_max_ms),
        }


@dataclass
class World:
    run_id: str
    work_dir: Path
    faults: Faults
    #: proxy role -> its name on the Toxiproxy server (unique to the run)
    proxy_names: dict[str, str]
    #: the run's database, reached directly (not through the postgres proxy)
    database_url: str
    #: NATS, reached directly
    nats_url: str
    names: DeploymentNames
    simulator: Simulator
    servers: list[Server] = field(default_factory=list)
    relays: list[Child] = field(default_factory=list)
    toxiproxy_origin: str = ""
    #: the operator's token on every server (role operator: IngestReport, GetReportRun)
    operator_token: str = field(default="", repr=False)

    @property
    def operator_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.operator_token}"),)

    def process(self, role: str, index: int) -> Child:
        return self.servers[index].child if role == "server" else self.relays[index]

    def restart(self, role: str, index: int) -> None:
        if role == "server":
            self.servers[index].start()
        else:
            self.relays[index].start()


@contextlib.contextmanager
def postgres_server_url() -> Iterator[str]:
    """DATABASE_URL's PostgreSQL, or the embedded one (started, or joined, for this process)."""
    url = os.environ.get("DATABASE_URL", "").strip()
    if url:
        yield url
        return
    from server.db.embedded import start_embedded_postgres  # started, or joined, for this process

    yield start_embedded_postgres(ROOT / ".data", database="postgres")


@contextlib.contextmanager
def _nats(work_dir: Path) -> Iterator[str]:
    url = os.environ.get("NATS_URL", "").strip()
    if url:
        yield url
        return
    from server.messaging.embedded_nats import start_nats_process

    url, broker = start_nats_process(work_dir / "nats")
    try:
        yield url
    finally:
        broker.terminate()
        try:
            broker.wait(10)
        except subprocess.TimeoutExpired:
            broker.kill()


@contextlib.contextmanager
def _session_held(database_url: str) -> Iterator[None]:
    """One idle session on the run's database for as long as the run lives: `python -m chaos clean`
    takes a chaos database without a session for a dead run's, and a run between its steps (migrating,
    starting its servers) must not look dead."""
    loop = asyncio.new_event_loop()
    connection = loop.run_until_complete(asyncpg.connect(asyncpg_dsn(database_url)))
    try:
        yield
    finally:
        with contextlib.suppress(Exception):  # the database is dropped next, with FORCE
            loop.run_until_complete(connection.close(timeout=5))
        loop.close()


def _migrate(database_url: str, log_path: Path) -> None:
    env = clean_environment() | {"DATABASE_URL": database_url}
    result = subprocess.run(
        [sys.executable, "-m", "server", "migrate"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=MIGRATE_TIMEOUT_S,
        check=False,
    )
    log_path.write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise RuntimeError(f"migrate exited with {result.returncode}:\n{(result.stdout + result.stderr)[-2000:]}")


async def _delete_stream(nats_url: str, names: DeploymentNames) -> None:
    connection = await nats.connect(nats_url, connect_timeout=2, max_reconnect_attempts=0)
    try:
        js = connection.jetstream()
        for stream in (names.stream, f"{names.stream}_DEAD"):
            with contextlib.suppress(Exception):  # never created, or gone already
                await js.delete_stream(stream)
    finally:
        await connection.close()


@contextlib.contextmanager
def _postgres_address(database_url: str) -> Iterator[str]:
    """PostgreSQL's TCP address, host:port; a Unix socket (the embedded server's) behind a bridge."""
    url = make_url(database_url)
    socket_dir = url.query.get("host")
    if url.host is None and isinstance(socket_dir, str) and socket_dir.startswith("/"):
        with tcp_to_unix(f"{socket_dir}/.s.PGSQL.{url.port or POSTGRES_PORT}") as address:
            yield address
        return
    yield f"{url.host or 'localhost'}:{url.port or POSTGRES_PORT}"


def _postgres_through(database_url: str, listen: str) -> str:
    """The database's URL with PostgreSQL reached at `listen` (the proxy) over TCP."""
    host, _, port = listen.rpartition(":")
    url = make_url(database_url)
    query = {key: value for key, value in url.query.items() if key != "host"}
    proxied: str = url.set(host=host, port=int(port), query=query).render_as_string(hide_password=False)
    return proxied


def _host_port(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}"


def _through(url: str, listen: str) -> str:
    """`url` with its host and port replaced by the proxy's."""
    parts = urlsplit(url)
    netloc = listen if "@" not in parts.netloc else f"{parts.netloc.rpartition('@')[0]}@{listen}"
    return parts._replace(netloc=netloc).geturl()


@contextlib.contextmanager
def world(scenario: Scenario, seed: int, work_dir: Path, timings: Timings) -> Iterator[World]:
    """Everything the scenario needs, serving; stopped and removed on exit, however the run ends."""
    run_id = uuid.uuid4().hex[:10]
    work_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        toxiproxy = stack.enter_context(toxiproxy_server(log_path=work_dir / "toxiproxy.log"))
        faults = Faults(toxiproxy.url)
        names = {role: f"chaos_{run_id}_{role}" for role in ("provider", "webhooks", "postgres", "nats")}

        def destroy_proxies() -> None:
            for name in names.values():
                with contextlib.suppress(Exception):  # a proxy never made, or the server gone
                    faults.destroy(name)

        stack.callback(destroy_proxies)
        postgres_url = stack.enter_context(postgres_server_url())
        nats_url = stack.enter_context(_nats(work_dir))
        database_url = stack.enter_context(scratch_database(postgres_url, f"chaos_{run_id}"))
        stack.enter_context(_session_held(database_url))
        _migrate(database_url, work_dir / "migrate.log")
        deployment = DeploymentNames(f"chaos_{run_id}")
        stack.callback(lambda: asyncio.run(_delete_stream(nats_url, deployment)))

        postgres_address = stack.enter_context(_postgres_address(database_url))
        postgres_proxy = faults.create_proxy(names["postgres"], postgres_address)
        nats_proxy = faults.create_proxy(names["nats"], _host_port(nats_url))
        intake_port = free_port()  # the first server's HTTP port, known before the simulator starts
        webhooks_proxy = faults.create_proxy(names["webhooks"], f"127.0.0.1:{intake_port}")
        sim = simulator(
            work_dir / "simulator.log",
            profile=scenario.profile,
            seed=seed,
            webhook_url=f"http://{webhooks_proxy}/webhooks/simulator",
            webhook_secret=WEBHOOK_SECRET,
        )
        stack.callback(sim.child.stop)
        sim.start()
        provider_proxy = faults.create_proxy(names["provider"], _host_port(sim.url))

        token = f"chaos-{secrets.token_urlsafe(24)}"
        operator_token = f"chaos-ops-{secrets.token_urlsafe(24)}"
        env = clean_environment() | timings.environment()
        env.update(
            BALLAST_DEPLOYMENT=deployment.deployment,
            DATABASE_URL=_postgres_through(database_url, postgres_proxy),
            NATS_URL=_through(nats_url, nats_proxy),
            BALLAST_PROVIDER_URL=f"http://{provider_proxy}",
            BALLAST_PROVIDER_WEBHOOK_SECRET=WEBHOOK_SECRET,
            BALLAST_API_TOKENS=f"{token}={CLIENT_ID}:service,{operator_token}={OPERATOR_ID}:operator",
            BALLAST_RELAY_WORKERS="0",
            BALLAST_DB_POOL_SIZE=str(SERVER_POOL_SIZE),
            BALLAST_METRICS_PORT="0",
            BALLAST_SHUTDOWN_GRACE_MS="10000",
        )
        the_world = World(
            run_id=run_id,
            work_dir=work_dir,
            faults=faults,
            proxy_names=names,
            database_url=database_url,
            nats_url=nats_url,
            names=deployment,
            simulator=sim,
            toxiproxy_origin=toxiproxy.origin,
            operator_token=operator_token,
        )
        for index in range(scenario.servers):
            http_port = intake_port if index == 0 else free_port()
            replica = server(index, env, work_dir, token=token, client_id=CLIENT_ID, http_port=http_port)
            the_world.servers.append(replica)
            stack.callback(replica.child.stop)
            replica.start()
        for index in range(scenario.relays):
            process = relay(index, env, work_dir)
            the_world.relays.append(process)
            stack.callback(process.stop)
            process.start()
        yield the_world
