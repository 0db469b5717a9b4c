"""chaos/cleanup.py against the real PostgreSQL and NATS and a Toxiproxy of the spec's own: what a killed
run left (its database with no session, its two streams, its proxies) is removed and reported; a live
run's (its database has a session), and anything not named as a run's, stays."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator, Iterator

import asyncpg
import nats
import pytest
from nats.js.api import StreamConfig
from nats.js.errors import NotFoundError
from sqlalchemy.engine import make_url

from chaos.cleanup import PROXY_ROLES, Leftovers, find_leftovers, remove_leftovers
from chaos.faults import Faults, toxiproxy_server
from server.db.engine import asyncpg_dsn
from server.messaging.names import DeploymentNames
from tests.chaos.conftest import free_port

#: Where the spec's proxies forward to: never connected to.
UPSTREAM = "127.0.0.1:9"


@pytest.fixture
def toxiproxy_url() -> Iterator[str]:
    with toxiproxy_server(f"http://127.0.0.1:{free_port()}") as server:
        yield server.url


class Made:
    """Everything the spec created, removed at the end whatever the cleanup did."""

    def __init__(self, server_database_url: str, nats_url: str, toxiproxy_url: str) -> None:
        self.server_database_url, self.nats_url = server_database_url, nats_url
        self.faults = Faults(toxiproxy_url)
        self.databases: list[str] = []
        self.streams: list[str] = []
        self.proxies: list[str] = []

    async def admin(self, sql: str) -> None:
        connection = await asyncpg.connect(asyncpg_dsn(self.server_database_url), timeout=30)
        try:
            await connection.execute(sql, timeout=30)
        finally:
            await connection.close()

    async def database(self, name: str) -> str:
        await self.admin(f'CREATE DATABASE "{name}"')
        self.databases.append(name)
        return name

    async def stream(self, name: str) -> str:
        connection = await nats.connect(self.nats_url, connect_timeout=5, max_reconnect_attempts=0)
        try:
            await connection.jetstream().add_stream(StreamConfig(name=name, subjects=[f"spec.cleanup.{name}.>"]))
        finally:
            await connection.close()
        self.streams.append(name)
        return name

    def proxy(self, name: str) -> str:
        self.faults.create_proxy(name, UPSTREAM)
        self.proxies.append(name)
        return name

    async def run(self, run_id: str, *, database: bool = True) -> tuple[list[str], list[str], list[str]]:
        """A run's leftovers as topology.py names them: (databases, streams, proxies)."""
        databases = [await self.database(f"chaos_{run_id}_{secrets.token_hex(6)}")] if database else []
        stream = DeploymentNames(f"chaos_{run_id}").stream
        streams = [await self.stream(stream), await self.stream(f"{stream}_DEAD")]
        proxies = [self.proxy(f"chaos_{run_id}_{role}") for role in PROXY_ROLES]
        return databases, sorted(streams), sorted(proxies)

    async def close(self) -> None:
        for name in self.databases:
            await self.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        connection = await nats.connect(self.nats_url, connect_timeout=5, max_reconnect_attempts=0)
        try:
            js = connection.jetstream()
            for name in self.streams:
                with contextlib.suppress(NotFoundError):  # removed by the cleanup
                    await js.delete_stream(name)
        finally:
            await connection.close()
        for name in self.proxies:
            self.faults.destroy(name)


@pytest.fixture
async def made(server_database_url: str, nats_url: str, toxiproxy_url: str) -> AsyncIterator[Made]:
    created = Made(server_database_url, nats_url, toxiproxy_url)
    try:
        yield created
    finally:
        await created.close()


async def names(made: Made) -> tuple[set[str], set[str], set[str]]:
    """What exists now on the three servers: databases, streams and proxies."""
    connection = await asyncpg.connect(asyncpg_dsn(made.server_database_url), timeout=30)
    try:
        databases = {row["datname"] for row in await connection.fetch("SELECT datname FROM pg_database")}
    finally:
        await connection.close()
    broker = await nats.connect(made.nats_url, connect_timeout=5, max_reconnect_attempts=0)
    try:
        streams = {info.config.name or "" for info in await broker.jetstream().streams_info()}
    finally:
        await broker.close()
    return databases, streams, set(made.faults.proxies())


async def test_remove_leftovers_removes_exactly_the_dead_runs_and_says_so(
    made: Made, server_database_url: str, nats_url: str, toxiproxy_url: str
) -> None:
    dead, orphan, live = (secrets.token_hex(5) for _ in range(3))
    dead_databases, dead_streams, dead_proxies = await made.run(dead)
    # a run killed before its database was made, or whose database is gone: its streams and proxies alone
    _, orphan_streams, orphan_proxies = await made.run(orphan, database=False)
    live_databases, live_streams, live_proxies = await made.run(live)
    live_url = make_url(asyncpg_dsn(server_database_url)).set(database=live_databases[0])
    # the live run's pools, as far as PostgreSQL can tell
    held = await asyncpg.connect(live_url.render_as_string(hide_password=False), timeout=30)
    try:
        # not a run's, though some look close: never touched
        unrelated_databases = [await made.database("chaos_other"), await made.database(f"chaos_{dead}_backup")]
        unrelated_streams = [await made.stream("OTHER"), await made.stream(f"CHAOS_{dead.upper()}_OLD")]
        unrelated_proxies = [made.proxy("mine"), made.proxy(f"chaos_{dead}_provider_copy")]

        ours = {dead, orphan, live}  # other runs may share these servers: only this spec's are judged
        expected = Leftovers(
            databases=dead_databases,
            streams=sorted(dead_streams + orphan_streams),
            proxies=sorted(dead_proxies + orphan_proxies),
        )
        found = await find_leftovers(server_database_url, nats_url, toxiproxy_url)
        assert _only(found, ours) == expected
        assert not set(found.databases) & set(unrelated_databases + live_databases)

        removed = await remove_leftovers(server_database_url, nats_url, toxiproxy_url, run_ids=ours)
        assert removed == expected

        databases, streams, proxies = await names(made)
        assert not databases & set(dead_databases)
        assert not streams & set(dead_streams + orphan_streams)
        assert not proxies & set(dead_proxies + orphan_proxies)
        assert set(live_databases + unrelated_databases) <= databases
        assert set(live_streams + unrelated_streams) <= streams
        assert set(live_proxies + unrelated_proxies) <= proxies

        again = await find_leftovers(server_database_url, nats_url, toxiproxy_url, run_ids=ours)
        assert again == Leftovers([], [], [])
        assert not again
    finally:
        await held.close()

    # the live run dies: now its leftovers are found, and proxies are skipped where no Toxiproxy answers
    found = await find_leftovers(server_database_url, nats_url, None, run_ids={live})
    assert found == Leftovers(live_databases, live_streams, [])
    nowhere = f"http://127.0.0.1:{free_port()}"
    assert await find_leftovers(server_database_url, nats_url, nowhere, run_ids={live}) == found


def _only(leftovers: Leftovers, run_ids: set[str]) -> Leftovers:
    def ours(name: str) -> bool:
        return any(run_id in name.lower() for run_id in run_ids)

    return Leftovers(
        databases=[name for name in leftovers.databases if ours(name)],
        streams=[name for name in leftovers.streams if ours(name)],
        proxies=[name for name in leftovers.proxies if ours(name)],
    )
