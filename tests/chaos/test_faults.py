"""chaos/faults.py: the harness finds or starts a Toxiproxy server (the one answering, else toxiproxy-server
from PATH, else ours), drives it through the toxiproxy-python client, and stops only what it started.
The real server's half runs when TOXIPROXY_SERVER_BIN names its binary."""

from __future__ import annotations

import contextlib
import os
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from chaos.faults import TOXIPROXY_URL_ENV, FaultError, Faults, ToxiproxyServer, toxiproxy_server
from tests.chaos.conftest import ROOT, free_port

#: The latency toxic's delay: far above a round trip on loopback, so the difference cannot be noise.
LATENCY_MS = 400
#: How long a round trip through a proxy may take on a busy machine without a toxic.
CLEAN_ROUND_TRIP_S = 0.2

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the started child in /proc")


@pytest.fixture
def echo() -> Iterator[str]:
    """A TCP server, in threads, that writes back what it reads: the upstream the proxies forward to."""

    class Echo(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            with contextlib.suppress(OSError):
                while data := self.request.recv(65536):
                    self.request.sendall(data)

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(params=["builtin", "binary"])
def origin(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Arrange PATH so that the harness should start `origin`: a toxiproxy-server on it, or none."""
    without = [part for part in os.environ.get("PATH", "").split(os.pathsep) if not _has_toxiproxy(part)]
    if request.param == "binary":
        binary = os.environ.get("TOXIPROXY_SERVER_BIN", "").strip()
        if not binary:
            pytest.skip("TOXIPROXY_SERVER_BIN is unset: starting the real Toxiproxy server from PATH is not checked")
        (tmp_path / "bin").mkdir()
        (tmp_path / "bin" / "toxiproxy-server").symlink_to(binary)
        without.insert(0, str(tmp_path / "bin"))
    monkeypatch.setenv("PATH", os.pathsep.join(without))
    return str(request.param)


def _has_toxiproxy(directory: str) -> bool:
    return bool(directory) and (Path(directory) / "toxiproxy-server").exists()


def round_trip(address: str) -> float:
    """Seconds for a few bytes to go through `address` to the echo server and back, on a new connection."""
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        started = time.monotonic()
        connection.sendall(b"ping")
        received = b""
        while len(received) < 4:
            chunk = connection.recv(4)
            assert chunk, f"{address} closed the connection before echoing"
            received += chunk
        return time.monotonic() - started


def refuses(url: str) -> bool:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def started_child(port: int) -> int:
    """The pid of the child of this process serving `port` (a started server has exactly one)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError):
            if int(stat.read_text().rpartition(")")[2].split()[1]) != os.getpid():
                continue
            arguments = (stat.parent / "cmdline").read_bytes().split(b"\0")
            if str(port).encode() in arguments:
                found.append(int(stat.parent.name))
    assert len(found) == 1, f"expected one started server on port {port}, found the children {found}"
    return found[0]


def exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_faults_drive_a_started_server_that_stops_with_the_block(origin: str, echo: str) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with toxiproxy_server(url) as server:
        assert server.origin == origin
        assert server.url == url
        assert server.version == "2.8.0"
        pid = started_child(port) if sys.platform.startswith("linux") else None
        faults = Faults(url)
        faults.create_proxy("payments", "127.0.0.1:9")
        listen = faults.create_proxy("payments", echo)  # the same name again: replaced, not refused
        assert listen.startswith("127.0.0.1:")
        assert not listen.endswith(":0"), "the address actually bound, not the one asked for"
        assert round_trip(listen) < CLEAN_ROUND_TRIP_S

        faults.add_toxic("payments", "lag", "latency", attributes={"latency": LATENCY_MS})
        assert faults.toxics("payments") == [
            {
                "name": "lag",
                "type": "latency",
                "stream": "downstream",
                "toxicity": 1.0,
                "attributes": {"latency": LATENCY_MS, "jitter": 0},
            }
        ]
        assert round_trip(listen) >= LATENCY_MS / 1000

        faults.remove_toxic("payments", "lag")
        assert faults.toxics("payments") == []
        assert round_trip(listen) < CLEAN_ROUND_TRIP_S

        faults.disable("payments")
        with pytest.raises(OSError):
            round_trip(listen)
        faults.enable("payments")
        assert round_trip(listen) < CLEAN_ROUND_TRIP_S

        faults.add_toxic("payments", "lag", "latency", attributes={"latency": LATENCY_MS})
        faults.disable("payments")
        faults.reset()
        assert faults.toxics("payments") == []
        assert round_trip(listen) < CLEAN_ROUND_TRIP_S

        faults.create_proxy("ledger", echo)
        faults.destroy("payments")
        faults.destroy("payments")
        with pytest.raises(FaultError, match="'payments'"):
            faults.toxics("payments")
        assert faults.toxics("ledger") == []
        faults.destroy_all()
        with pytest.raises(FaultError, match="'ledger'"):
            faults.toxics("ledger")
    if pid is not None:
        assert not exists(pid), f"the started server (pid {pid}) outlived the block"
    assert refuses(url)


def test_a_started_server_is_stopped_when_the_block_raises(echo: str) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with pytest.raises(KeyboardInterrupt), toxiproxy_server(url):
        raise KeyboardInterrupt
    assert refuses(url)


def test_a_server_already_answering_is_used_and_left_running(
    echo: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "chaos.toxiproxy", "--host", "127.0.0.1", "--port", str(port)]
    running = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while refuses(url):
            assert time.monotonic() < deadline, f"our Toxiproxy did not listen at {url}"
            time.sleep(0.05)
        monkeypatch.setenv(TOXIPROXY_URL_ENV, url)  # no argument: the harness reads TOXIPROXY_URL
        with toxiproxy_server() as server:
            assert server == ToxiproxyServer(url, "running", "2.8.0")
            Faults(url).create_proxy("payments", echo)
        assert running.poll() is None, "leaving the block stopped a server it had not started"
        assert not refuses(url)
        assert Faults(url).toxics("payments") == []
    finally:
        running.terminate()
        running.wait(timeout=10)


@pytest.fixture
def faults(origin: str) -> Iterator[Faults]:
    with toxiproxy_server(f"http://127.0.0.1:{free_port()}") as server:
        assert server.origin == origin
        yield Faults(server.url)


def test_a_bad_toxic_is_a_fault_error_naming_it_and_healing_twice_is_fine(faults: Faults, echo: str) -> None:
    faults.create_proxy("payments", echo)
    with pytest.raises(FaultError, match=r"'poison'.*'payments'"):
        faults.add_toxic("payments", "poison", "no-such-type")
    with pytest.raises(FaultError, match=r"'lag'.*'nowhere'"):
        faults.add_toxic("nowhere", "lag", "latency")
    faults.add_toxic("payments", "lag", "latency", attributes={"latency": 10})
    with pytest.raises(FaultError, match=r"'lag'.*already exists"):
        faults.add_toxic("payments", "lag", "latency")

    faults.remove_toxic("payments", "lag")
    faults.remove_toxic("payments", "lag")
    faults.remove_toxic("payments", "never-added")
    assert faults.toxics("payments") == []
    with pytest.raises(FaultError, match="'nowhere'"):
        faults.remove_toxic("nowhere", "lag")


def test_nothing_answering_is_a_fault_error_saying_where() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(FaultError, match=f"'payments'.*no Toxiproxy answers at {url}"):
        Faults(url).disable("payments")
