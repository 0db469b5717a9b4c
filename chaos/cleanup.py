"""What killed chaos runs left behind, found and removed.

A run ended by `kill -9` cannot clean up after itself: its scratch database (`chaos_<run_id>_<12 hex>`,
chaos/topology.py), its NATS streams (`CHAOS_<RUN_ID>` and `CHAOS_<RUN_ID>_DEAD`, its deployment's) and
its Toxiproxy proxies (`chaos_<run_id>_<role>`) stay. A run is dead when its database has no session:
a live run always has its servers' and relays' pools connected to it. Streams and proxies belong to a
dead run when their run id has no database at all, or a dead one. Nothing whose name does not match
these patterns exactly is ever touched, and a database is dropped without FORCE, so a session that
arrives in between keeps it (and its run's streams and proxies).

Every step is bounded: POSTGRES_TIMEOUT_S per connection and statement, NATS_TIMEOUT_S per connection
and JetStream request, and Toxiproxy's chaos.faults.PROBE_TIMEOUT_S to find it, then
chaos.faults.REQUEST_TIMEOUT_S per call.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass

import asyncpg
import nats
from nats.js.errors import NotFoundError

from chaos.faults import Faults, toxiproxy_version
from server.db.engine import asyncpg_dsn
from server.messaging.names import DeploymentNames

#: A run's scratch database: scratch_database(server_url, f"chaos_{run_id}"), run_id 10 hex characters.
DATABASE_PATTERN = re.compile(r"chaos_(?P<run_id>[0-9a-f]{10})_[0-9a-f]{12}")
#: A run's proxies, one per role (chaos/topology.py).
PROXY_ROLES = ("provider", "webhooks", "postgres", "nats")
PROXY_PATTERN = re.compile(rf"chaos_(?P<run_id>[0-9a-f]{{10}})_(?:{'|'.join(PROXY_ROLES)})")
#: A run's streams: DeploymentNames(f"chaos_{run_id}").stream, and that name with _DEAD.
STREAM_PATTERN = re.compile(r"CHAOS_(?P<run_id>[0-9A-F]{10})(?:_DEAD)?")
#: Connecting to PostgreSQL, and each statement, waits this long at most.
POSTGRES_TIMEOUT_S = 10.0
#: Connecting to NATS, and each JetStream request, waits this long at most.
NATS_TIMEOUT_S = 5.0
#: Pages of the stream listing read at most (the server sends up to 256 streams a page).
STREAM_PAGES_MAX = 100


@dataclass(frozen=True)
class Leftovers:
    """Names of what dead runs left, each list sorted."""

    databases: list[str]
    streams: list[str]
    proxies: list[str]

    def __bool__(self) -> bool:
        return bool(self.databases or self.streams or self.proxies)


async def find_leftovers(
    server_database_url: str,
    nats_url: str | None,
    toxiproxy_url: str | None,
    *,
    run_ids: Collection[str] | None = None,
) -> Leftovers:
    """The databases, streams and proxies dead runs left on these servers (only `run_ids`' when given).
    Proxies are skipped when `toxiproxy_url` is None or nothing answers there."""
    databases, live = await _databases(server_database_url)
    wanted = _wanted(run_ids)
    return Leftovers(
        databases=sorted(name for name, run_id in databases.items() if run_id not in live and wanted(run_id)),
        streams=sorted(
            name for name, run_id in (await _streams(nats_url)).items() if run_id not in live and wanted(run_id)
        ),
        proxies=sorted(
            name for name, run_id in (await _proxies(toxiproxy_url)).items() if run_id not in live and wanted(run_id)
        ),
    )


async def remove_leftovers(
    server_database_url: str,
    nats_url: str | None,
    toxiproxy_url: str | None,
    *,
    run_ids: Collection[str] | None = None,
) -> Leftovers:
    """Remove what find_leftovers finds; what was removed. A database that gained a session in between
    stays, and so do its run's streams and proxies."""
    found = await find_leftovers(server_database_url, nats_url, toxiproxy_url, run_ids=run_ids)
    dropped, kept = await _drop_databases(server_database_url, found.databases)
    spared = {_run_id(DATABASE_PATTERN, name) for name in kept}
    streams = await _delete_streams(
        nats_url, [name for name in found.streams if _run_id(STREAM_PATTERN, name) not in spared]
    )
    proxies = await _destroy_proxies(
        toxiproxy_url, [name for name in found.proxies if _run_id(PROXY_PATTERN, name) not in spared]
    )
    return Leftovers(databases=dropped, streams=streams, proxies=proxies)


def _wanted(run_ids: Collection[str] | None) -> Callable[[str], bool]:
    chosen = None if run_ids is None else {run_id.lower() for run_id in run_ids}
    return lambda run_id: chosen is None or run_id in chosen


def _run_id(pattern: re.Pattern[str], name: str) -> str:
    match = pattern.fullmatch(name)
    assert match is not None, f"{name!r} was listed as a leftover without matching {pattern.pattern}"
    return match["run_id"].lower()


async def _connect_postgres(server_database_url: str) -> asyncpg.Connection:
    return await asyncpg.connect(
        asyncpg_dsn(server_database_url), timeout=POSTGRES_TIMEOUT_S, command_timeout=POSTGRES_TIMEOUT_S
    )


async def _databases(server_database_url: str) -> tuple[dict[str, str], set[str]]:
    """The runs' databases (name -> run id), and the ids of the runs whose database has a session."""
    connection = await _connect_postgres(server_database_url)
    try:
        rows = await connection.fetch(
            """
            SELECT d.datname AS name,
                   EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.datid = d.oid AND a.pid <> pg_backend_pid())
                       AS has_session
              FROM pg_database d
             WHERE d.datname LIKE 'chaos\\_%'
            """
        )
    finally:
        await connection.close()
    databases: dict[str, str] = {}
    live: set[str] = set()
    for row in rows:
        match = DATABASE_PATTERN.fullmatch(row["name"])
        if match is None:
            continue  # not a run's: never touched
        databases[row["name"]] = match["run_id"]
        if row["has_session"]:
            live.add(match["run_id"])
    return databases, live


async def _drop_databases(server_database_url: str, names: list[str]) -> tuple[list[str], list[str]]:
    """Drop each database unless a session holds it; (dropped, kept)."""
    if not names:
        return [], []
    dropped, kept = [], []
    connection = await _connect_postgres(server_database_url)
    try:
        for name in names:
            assert DATABASE_PATTERN.fullmatch(name), name  # the name is quoted below as it is
            try:
                # no FORCE: a session that arrived since the look means the run is alive after all
                await connection.execute(f'DROP DATABASE "{name}"')
            except asyncpg.ObjectInUseError:
                kept.append(name)
            except asyncpg.InvalidCatalogNameError:
                pass  # dropped by someone else in between
            else:
                dropped.append(name)
    finally:
        await connection.close()
    return dropped, kept


def _stream_run_id(name: str) -> str | None:
    match = STREAM_PATTERN.fullmatch(name)
    if match is None:
        return None
    run_id = match["run_id"].lower()
    stream = DeploymentNames(f"chaos_{run_id}").stream
    return run_id if name in (stream, f"{stream}_DEAD") else None


async def _streams(nats_url: str | None) -> dict[str, str]:
    """The runs' streams on NATS: name -> run id (none without a NATS: each run's embedded one went with it)."""
    if nats_url is None:
        return {}
    connection = await nats.connect(
        nats_url, connect_timeout=NATS_TIMEOUT_S, allow_reconnect=False, max_reconnect_attempts=0
    )
    try:
        js = connection.jetstream(timeout=NATS_TIMEOUT_S)
        names: list[str] = []
        for _ in range(STREAM_PAGES_MAX):
            page = await js.streams_info(offset=len(names))
            if not page:
                break
            names.extend(info.config.name for info in page if info.config.name)
    finally:
        await connection.close()
    return {name: run_id for name in names if (run_id := _stream_run_id(name)) is not None}


async def _delete_streams(nats_url: str | None, names: list[str]) -> list[str]:
    if not names or nats_url is None:
        return []
    deleted = []
    connection = await nats.connect(
        nats_url, connect_timeout=NATS_TIMEOUT_S, allow_reconnect=False, max_reconnect_attempts=0
    )
    try:
        js = connection.jetstream(timeout=NATS_TIMEOUT_S)
        for name in names:
            assert _stream_run_id(name) is not None, name
            try:
                await js.delete_stream(name)
            except NotFoundError:
                continue  # deleted by someone else in between
            deleted.append(name)
    finally:
        await connection.close()
    return deleted


async def _faults(toxiproxy_url: str | None) -> Faults | None:
    """The Toxiproxy at `toxiproxy_url`, None when there is no URL or nothing answers there."""
    if toxiproxy_url is None:
        return None
    if await asyncio.to_thread(toxiproxy_version, toxiproxy_url) is None:
        return None
    return Faults(toxiproxy_url)


async def _proxies(toxiproxy_url: str | None) -> dict[str, str]:
    """The runs' proxies on Toxiproxy: name -> run id."""
    faults = await _faults(toxiproxy_url)
    if faults is None:
        return {}
    names = await asyncio.to_thread(faults.proxies)
    return {name: match["run_id"] for name in names if (match := PROXY_PATTERN.fullmatch(name)) is not None}


async def _destroy_proxies(toxiproxy_url: str | None, names: list[str]) -> list[str]:
    faults = await _faults(toxiproxy_url) if names else None
    if faults is None:
        return []
    for name in names:
        assert PROXY_PATTERN.fullmatch(name), name
        await asyncio.to_thread(faults.destroy, name)
    return list(names)
