"""Toxics measured on real bytes through a proxy to an echo server: ours always, the real binary when
TOXIPROXY_SERVER_BIN is set, so a toxic does here what it does there."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from tests.chaos.conftest import Toxiproxy

#: Every read waits at most this long: a toxic that never acts fails the spec instead of hanging it.
DEADLINE_S = 5.0


async def _proxy(toxiproxy: Toxiproxy, upstream: str, *toxics: dict[str, Any]) -> tuple[str, int]:
    status, created = await toxiproxy.call(
        "POST", "/proxies", {"name": "p", "listen": "127.0.0.1:0", "upstream": upstream}
    )
    assert status == 201 and isinstance(created, dict)
    for toxic in toxics:
        status, answer = await toxiproxy.call("POST", "/proxies/p/toxics", toxic)
        assert status == 200, answer
    host, port = created["listen"].rsplit(":", 1)
    return host, int(port)


@asynccontextmanager
async def _connected(address: tuple[str, int]) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection(*address)
    try:
        yield reader, writer
    finally:
        writer.close()


async def _round_trip(address: tuple[str, int], payload: bytes = b"ping") -> float:
    async with _connected(address) as (reader, writer):
        started = time.monotonic()
        writer.write(payload)
        assert await asyncio.wait_for(reader.readexactly(len(payload)), DEADLINE_S) == payload
        return time.monotonic() - started


async def test_latency_delays_each_direction_by_its_milliseconds(toxiproxy: Toxiproxy, echo_server: str) -> None:
    address = await _proxy(
        toxiproxy,
        echo_server,
        {"type": "latency", "stream": "upstream", "attributes": {"latency": 100}},
        {"type": "latency", "stream": "downstream", "attributes": {"latency": 50, "jitter": 10}},
    )
    elapsed = await _round_trip(address)
    assert 0.14 <= elapsed < 0.14 + 0.5, elapsed


async def test_a_toxic_with_toxicity_zero_never_applies(toxiproxy: Toxiproxy, echo_server: str) -> None:
    address = await _proxy(toxiproxy, echo_server, {"type": "latency", "toxicity": 0, "attributes": {"latency": 1000}})
    assert await _round_trip(address) < 0.5


async def test_reset_peer_arrives_as_econnreset(toxiproxy: Toxiproxy, echo_server: str) -> None:
    address = await _proxy(toxiproxy, echo_server, {"type": "reset_peer", "stream": "upstream"})
    async with _connected(address) as (reader, writer):
        writer.write(b"ping")
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(4), DEADLINE_S)


async def test_timeout_drops_the_bytes_then_closes(toxiproxy: Toxiproxy, echo_server: str) -> None:
    address = await _proxy(toxiproxy, echo_server, {"type": "timeout", "attributes": {"timeout": 100}})
    async with _connected(address) as (reader, writer):
        started = time.monotonic()
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.read(4), DEADLINE_S) == b""
        assert time.monotonic() - started >= 0.09


async def test_limit_data_passes_its_bytes_then_closes(toxiproxy: Toxiproxy, echo_server: str) -> None:
    address = await _proxy(toxiproxy, echo_server, {"type": "limit_data", "attributes": {"bytes": 6}})
    async with _connected(address) as (reader, writer):
        writer.write(b"0123456789")
        assert await asyncio.wait_for(reader.read(), DEADLINE_S) == b"012345"


async def test_bandwidth_limits_the_rate_in_kilobytes_per_second(toxiproxy: Toxiproxy, echo_server: str) -> None:
    address = await _proxy(toxiproxy, echo_server, {"type": "bandwidth", "attributes": {"rate": 100}})
    elapsed = await _round_trip(address, b"x" * 20_000)
    assert 0.15 <= elapsed < 0.2 + 0.5, elapsed


async def test_slicer_hands_the_bytes_over_in_small_pieces(toxiproxy: Toxiproxy, echo_server: str) -> None:
    address = await _proxy(
        toxiproxy,
        echo_server,
        {"type": "slicer", "attributes": {"average_size": 1, "size_variation": 0, "delay": 20_000}},
    )
    async with _connected(address) as (reader, writer):
        started = time.monotonic()
        writer.write(b"abcde")
        assert await asyncio.wait_for(reader.readexactly(5), DEADLINE_S) == b"abcde"
        assert time.monotonic() - started >= 0.075


async def test_slow_close_delays_the_close(toxiproxy: Toxiproxy, echo_server: str) -> None:
    address = await _proxy(toxiproxy, echo_server, {"type": "slow_close", "attributes": {"delay": 150}})
    async with _connected(address) as (reader, writer):
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.readexactly(4), DEADLINE_S) == b"ping"
        # The echo server closes once the client has; the client's half close is not forwarded by
        # Toxiproxy (it closes the upstream side), so the downstream EOF arrives after the delay.
        started = time.monotonic()
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), DEADLINE_S) == b""
        assert time.monotonic() - started >= 0.14


async def test_a_toxic_added_later_reaches_an_open_connection(toxiproxy: Toxiproxy, echo_server: str) -> None:
    address = await _proxy(toxiproxy, echo_server)
    async with _connected(address) as (reader, writer):
        writer.write(b"a")
        assert await asyncio.wait_for(reader.readexactly(1), DEADLINE_S) == b"a"
        status, _ = await toxiproxy.call(
            "POST", "/proxies/p/toxics", {"type": "latency", "attributes": {"latency": 150}}
        )
        assert status == 200
        started = time.monotonic()
        writer.write(b"b")
        assert await asyncio.wait_for(reader.readexactly(1), DEADLINE_S) == b"b"
        assert time.monotonic() - started >= 0.14


async def test_a_disabled_proxy_refuses_connections(toxiproxy: Toxiproxy, echo_server: str) -> None:
    address = await _proxy(toxiproxy, echo_server)
    status, _ = await toxiproxy.call("POST", "/proxies/p", {"enabled": False})
    assert status == 200
    with pytest.raises(ConnectionRefusedError):
        await asyncio.wait_for(asyncio.open_connection(*address), DEADLINE_S)


async def test_reset_peer_downstream_resets_once_the_server_answers(toxiproxy: Toxiproxy, echo_server: str) -> None:
    address = await _proxy(toxiproxy, echo_server, {"type": "reset_peer", "attributes": {"timeout": 50}})
    async with _connected(address) as (reader, writer):
        writer.write(b"ping")
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(4), DEADLINE_S)


async def test_toxicity_is_rolled_once_per_connection(toxiproxy: Toxiproxy, echo_server: str) -> None:
    address = await _proxy(toxiproxy, echo_server, {"type": "latency", "toxicity": 0.5, "attributes": {"latency": 200}})

    async def slow_on_both_trips() -> tuple[bool, bool]:
        async with _connected(address) as (reader, writer):
            trips = []
            for payload in (b"a", b"b"):
                started = time.monotonic()
                writer.write(payload)
                assert await asyncio.wait_for(reader.readexactly(1), DEADLINE_S) == payload
                trips.append(time.monotonic() - started >= 0.19)
            return trips[0], trips[1]

    rolls = await asyncio.gather(*(slow_on_both_trips() for _ in range(24)))
    # A connection is slow on both of its trips or on neither; with 24 rolls at 0.5 both kinds occur
    # (each is missing with probability 2**-24).
    assert all(first == second for first, second in rolls), rolls
    assert {first for first, _ in rolls} == {True, False}, rolls
