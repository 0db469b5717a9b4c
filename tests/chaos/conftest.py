"""Toxiproxy servers for the chaos specs: ours (`python -m chaos.toxiproxy`) always, the real binary when
TOXIPROXY_SERVER_BIN names it (skipped otherwise), each a separate process on a free port."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from chaos.processes import free_port as free_port
from tests.support.waiting import until

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Toxiproxy:
    """A running Toxiproxy API: which implementation, its URL and an HTTP session to it."""

    implementation: str
    url: str
    http: aiohttp.ClientSession

    async def call(self, method: str, path: str, body: object = None) -> tuple[int, object]:
        """The status and the JSON body (None when empty) of one API call."""
        data = None if body is None else (body if isinstance(body, str) else json.dumps(body))
        async with self.http.request(method, self.url + path, data=data) as response:
            text = await response.text()
            return response.status, (json.loads(text) if text.strip() else None)


def _command(implementation: str, port: int) -> list[str]:
    if implementation == "ours":
        return [sys.executable, "-m", "chaos.toxiproxy", "--host", "127.0.0.1", "--port", str(port)]
    binary = os.environ.get("TOXIPROXY_SERVER_BIN", "").strip()
    if not binary:
        pytest.skip("TOXIPROXY_SERVER_BIN is unset: the real Toxiproxy server is not compared")
    return [binary, "-host", "127.0.0.1", "-port", str(port)]


@pytest.fixture(scope="session", params=["ours", "real"])
def toxiproxy_process(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    port = free_port()
    process = subprocess.Popen(
        _command(request.param, port), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        yield request.param, f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
async def toxiproxy(toxiproxy_process: tuple[str, str]) -> AsyncIterator[Toxiproxy]:
    """A clean server: every proxy deleted before the test and after it."""
    implementation, url = toxiproxy_process
    async with aiohttp.ClientSession() as http:
        server = Toxiproxy(implementation, url, http)

        async def answers() -> bool:
            try:
                status, _ = await server.call("GET", "/version")
            except aiohttp.ClientConnectionError:
                return False
            return status == 200

        await until(answers, f"the {implementation} Toxiproxy answers /version")
        await _delete_all(server)
        yield server
        await _delete_all(server)


async def _delete_all(server: Toxiproxy) -> None:
    _, proxies = await server.call("GET", "/proxies")
    assert isinstance(proxies, dict)
    for name in proxies:
        await server.call("DELETE", f"/proxies/{name}")


@pytest.fixture
async def echo_server() -> AsyncIterator[str]:
    """A TCP server that writes back what it reads: the upstream the proxies forward to."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.close()
