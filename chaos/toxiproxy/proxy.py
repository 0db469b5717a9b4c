"""A proxy: an asyncio TCP listener that forwards each connection to its upstream through the proxy's toxics.

Each connection has two links, upstream (client to server) and downstream (server to client). A link's
reader timestamps chunks into a queue; its writer passes each chunk through the stream's toxics in order.
Toxics are looked at live (adding or removing one reaches open connections), and each toxic's toxicity is
rolled once per connection, the first time the connection meets it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

from chaos.toxiproxy.toxics import Toxic

CHUNK = 32 * 1024


def split_address(address: str) -> tuple[str, int]:
    """`host:port` (or `[v6]:port`) as a host and a port; ValueError when it is not one."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"address {address!r} is not host:port")
    return host.strip("[]"), int(port)


def join_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Proxy:
    def __init__(self, name: str, listen: str, upstream: str, enabled: bool) -> None:
        self.name = name
        self.listen = listen
        self.upstream = upstream
        self.enabled = enabled
        self.toxics: list[Toxic] = []
        self._server: asyncio.Server | None = None
        self._connections: set[Connection] = set()
        self._changed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "listen": self.listen,
            "upstream": self.upstream,
            "enabled": self.enabled,
            "Logger": {},
            "toxics": [toxic.to_json() for toxic in self.ordered_toxics()],
        }

    def ordered_toxics(self) -> list[Toxic]:
        """Upstream toxics first, then downstream, each in the order they were added (as the real server lists them)."""
        return [t for t in self.toxics if t.stream == "upstream"] + [t for t in self.toxics if t.stream == "downstream"]

    def toxic(self, name: str) -> Toxic | None:
        return next((t for t in self.toxics if t.name == name), None)

    def toxics_changed(self) -> None:
        """Wake every link so it looks at the toxics again."""
        previous, self._changed = self._changed, asyncio.get_running_loop().create_future()
        previous.set_result(None)

    def changed(self) -> asyncio.Future[None]:
        return self._changed

    async def start(self) -> None:
        if self._server is not None:
            return
        host, port = split_address(self.listen) if self.listen else ("::", 0)
        self._server = await asyncio.start_server(self._accept, host or None, port)
        bound = self._server.sockets[0].getsockname()
        self.listen = join_address(host or "::", bound[1])

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for connection in list(self._connections):
            connection.close()
        if server is not None:
            await server.wait_closed()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            host, port = split_address(self.upstream)
            server_reader, server_writer = await asyncio.open_connection(host, port)
        except (OSError, ValueError):
            client_writer.close()
            return
        connection = Connection(self, client_reader, client_writer, server_reader, server_writer)
        self._connections.add(connection)
        try:
            await connection.run()
        finally:
            self._connections.discard(connection)


def _set_reset_on_close(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class Connection:
    def __init__(
        self,
        proxy: Proxy,
        client_reader: asyncio.StreamReader,
        client_writer: asyncio.StreamWriter,
        server_reader: asyncio.StreamReader,
        server_writer: asyncio.StreamWriter,
    ) -> None:
        self.proxy = proxy
        self._client_writer = client_writer
        self._server_writer = server_writer
        self._rolls: dict[int, bool] = {}
        self._state: dict[int, int] = {}
        self._links = (
            Link(self, "upstream", client_reader, server_writer),
            Link(self, "downstream", server_reader, client_writer),
        )
        self._closed = asyncio.Event()

    def active(self, stream: str) -> list[Toxic]:
        """The stream's toxics that apply to this connection: each rolled once against its toxicity."""
        chosen = []
        for toxic in self.proxy.toxics:
            if toxic.stream != stream:
                continue
            if id(toxic) not in self._rolls:
                self._rolls[id(toxic)] = random.random() < toxic.toxicity
            if self._rolls[id(toxic)]:
                chosen.append(toxic)
        return chosen

    def counter(self, toxic: Toxic) -> int:
        return self._state.get(id(toxic), 0)

    def count(self, toxic: Toxic, n: int) -> None:
        self._state[id(toxic)] = self.counter(toxic) + n

    async def run(self) -> None:
        """Until both links have ended (each closes its destination, as the real server does, so an end
        travels on to the other side) or the connection is closed."""
        tasks = [asyncio.create_task(link.run()) for link in self._links]
        closed = asyncio.create_task(self._closed.wait())
        try:
            ending: list[asyncio.Future[Any]] = [closed, asyncio.gather(*tasks)]
            await asyncio.wait(ending, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closed.cancel()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._client_writer.close()
            self._server_writer.close()

    def close(self) -> None:
        self._closed.set()

    def reset(self) -> None:
        """Close both sockets with a TCP RST (SO_LINGER 0), as a peer resetting the connection would."""
        for writer in (self._client_writer, self._server_writer):
            _set_reset_on_close(writer)
            writer.transport.abort()
        self._closed.set()


class Link:
    def __init__(
        self, connection: Connection, stream: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.connection = connection
        self.stream = stream
        self._reader = reader
        self._writer = writer
        self._chunks: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(maxsize=64)

    async def run(self) -> None:
        reading = asyncio.create_task(self._read())
        try:
            await self._write()
        finally:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading
            self._writer.close()

    async def _read(self) -> None:
        while True:
            try:
                data = await self._reader.read(CHUNK)
            except OSError:
                data = b""
            await self._chunks.put((time.monotonic(), data))
            if not data:
                return

    async def _next(self) -> tuple[float, bytes] | None:
        """The next chunk, or None when the stream's timeout toxic ran out (the connection is then closed).

        While a timeout toxic applies, chunks are dropped; its timer starts again with each one."""
        started = time.monotonic()
        while True:
            timeouts = [t for t in self.connection.active(self.stream) if t.type == "timeout"]
            getting = asyncio.ensure_future(self._chunks.get())
            changed: asyncio.Future[Any] = self.connection.proxy.changed()
            wait: float | None = None
            if timeouts and timeouts[0].attributes["timeout"] > 0:
                wait = max(0.0, started + timeouts[0].attributes["timeout"] / 1000 - time.monotonic())
            waiting: set[asyncio.Future[Any]] = {getting, changed}
            done, _ = await asyncio.wait(waiting, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            if getting not in done:
                getting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await getting
                if not done:
                    return None
                continue
            chunk = getting.result()
            if timeouts and chunk[1]:
                started = time.monotonic()
                continue
            return chunk

    async def _write(self) -> None:
        while True:
            chunk = await self._next()
            if chunk is None:
                return
            arrived, data = chunk
            toxics = self.connection.active(self.stream)
            if not data:
                for toxic in toxics:
                    if toxic.type == "slow_close":
                        await asyncio.sleep(toxic.attributes["delay"] / 1000)
                return
            if not await self._through(toxics, arrived, data):
                return

    async def _through(self, toxics: list[Toxic], arrived: float, data: bytes) -> bool:
        """Pass one chunk through the toxics and out; False when a toxic ended the connection."""
        sink: Callable[[bytes], Awaitable[bool]] = self._send
        for toxic in reversed(toxics):
            sink = _toxic_step(self.connection, toxic, arrived, sink)
        return await sink(data)

    async def _send(self, data: bytes) -> bool:
        try:
            self._writer.write(data)
            await self._writer.drain()
        except OSError:
            return False
        return True


def _toxic_step(
    connection: Connection, toxic: Toxic, arrived: float, after: Callable[[bytes], Awaitable[bool]]
) -> Callable[[bytes], Awaitable[bool]]:
    attributes = toxic.attributes

    async def step(data: bytes) -> bool:
        if toxic.type == "latency":
            jitter = attributes["jitter"]
            delay = (attributes["latency"] + (random.uniform(-jitter, jitter) if jitter else 0)) / 1000
            await asyncio.sleep(max(0.0, arrived + delay - time.monotonic()))
            return await after(data)
        if toxic.type == "bandwidth":
            if attributes["rate"] > 0:
                await asyncio.sleep(len(data) / (attributes["rate"] * 1000))
            return await after(data)
        if toxic.type == "slicer":
            return await _sliced(attributes, data, after)
        if toxic.type == "limit_data":
            left = attributes["bytes"] - connection.counter(toxic)
            allowed = data[: max(0, left)]
            if allowed:
                connection.count(toxic, len(allowed))
                if not await after(allowed):
                    return False
            return len(allowed) < left
        if toxic.type == "reset_peer":
            await asyncio.sleep(attributes["timeout"] / 1000)
            connection.reset()
            return False
        return await after(data)

    return step


async def _sliced(attributes: dict[str, int], data: bytes, after: Callable[[bytes], Awaitable[bool]]) -> bool:
    average, variation = attributes["average_size"], attributes["size_variation"]
    if average <= 0:
        return await after(data)
    while data:
        size = max(1, average + (random.randint(-variation, variation) if variation else 0))
        piece, data = data[:size], data[size:]
        if not await after(piece):
            return False
        if data and attributes["delay"] > 0:
            await asyncio.sleep(attributes["delay"] / 1_000_000)
    return True
