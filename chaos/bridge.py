"""A loopback TCP port in front of a Unix socket, for the one path Toxiproxy cannot take as it is.

Toxiproxy proxies TCP only, and the embedded PostgreSQL listens on a Unix socket alone (the wheel
starts it with `-h ""`). When a run's PostgreSQL is that one, the harness puts this bridge between
the `postgres` proxy and the socket: servers -> postgres proxy -> bridge -> socket. It forwards
bytes both ways and passes each side's close on to the other; it adds no fault of its own. It runs on
an event loop in a daemon thread of the harness, so it lives exactly as long as the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator

#: How much one read takes at most: the bound on what a connection holds in the bridge.
CHUNK_BYTES = 64 * 1024
#: How long starting or stopping the bridge may take.
START_STOP_TIMEOUT_S = 10.0


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until the reader ends, then pass the end on as a half-close: the other way may still talk."""
    try:
        while chunk := await reader.read(CHUNK_BYTES):
            writer.write(chunk)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.close()  # a reset: the other way cannot go on either


async def _forward(socket_path: str, client: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
    try:
        upstream, upstream_writer = await asyncio.open_unix_connection(socket_path)
    except OSError:
        client_writer.close()
        return
    try:
        await asyncio.gather(_pipe(client, upstream_writer), _pipe(upstream, client_writer))
    finally:
        for writer in (client_writer, upstream_writer):
            with contextlib.suppress(ConnectionError, OSError, RuntimeError):
                writer.close()


@contextlib.contextmanager
def tcp_to_unix(socket_path: str, host: str = "127.0.0.1") -> Iterator[str]:
    """Listen on a free port of `host` and forward each connection to `socket_path`; yields host:port."""
    loop = asyncio.new_event_loop()
    ready: list[asyncio.Server] = []
    started = threading.Event()
    failed: list[BaseException] = []

    def serve() -> None:
        asyncio.set_event_loop(loop)

        async def start() -> None:
            server = await asyncio.start_server(
                lambda reader, writer: _forward(socket_path, reader, writer), host=host, port=0
            )
            ready.append(server)

        try:
            loop.run_until_complete(start())
        except BaseException as error:  # handed to the caller below
            failed.append(error)
            started.set()
            return
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, name="chaos-tcp-to-unix", daemon=True)
    thread.start()
    if not started.wait(START_STOP_TIMEOUT_S) or failed:
        raise RuntimeError(f"cannot bridge TCP to {socket_path}: {failed[0] if failed else 'timed out'}")
    server = ready[0]
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"{host}:{port}"
    finally:

        async def stop() -> None:
            server.close()
            await server.wait_closed()

        with contextlib.suppress(Exception):  # stopping is tidiness: the thread is a daemon
            asyncio.run_coroutine_threadsafe(stop(), loop).result(START_STOP_TIMEOUT_S)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(START_STOP_TIMEOUT_S)
