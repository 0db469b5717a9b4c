"""chaos/faults.py: the harness finds or starts a Toxiproxy server (the one answering, else toxiproxy-server
from PATH, else ours; without TOXIPROXY_URL a run's own on a free port), refuses what answers but is not
a Toxiproxy, drives it through the toxiproxy-python client, and stops only what it started.
The real server's half runs when TOXIPROXY_SERVER_BIN names its binary."""

from __future__ import annotations

import contextlib
import http.server
import os
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from chaos.faults import (
    DEFAULT_TOXIPROXY_URL,
    TOXIPROXY_URL_ENV,
    FaultError,
    Faults,
    ToxiproxyServer,
    toxiproxy_server,
)
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


def test_proxies_lists_every_proxy_by_name(faults: Faults, echo: str) -> None:
    assert faults.proxies() == []
    faults.create_proxy("payments", echo)
    faults.create_proxy("ledger", echo)
    assert faults.proxies() == ["ledger", "payments"]
    faults.destroy("payments")
    assert faults.proxies() == ["ledger"]


def answers_at(url: str) -> bool:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except OSError:
        return False
    return True


def test_runs_side_by_side_without_toxiproxy_url_each_start_a_server_of_their_own(
    origin: str, echo: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(TOXIPROXY_URL_ENV, raising=False)
    if answers_at(DEFAULT_TOXIPROXY_URL):
        pytest.skip(f"something answers at {DEFAULT_TOXIPROXY_URL}: the runs would rightly use it, not start theirs")
    stacks = [contextlib.ExitStack(), contextlib.ExitStack()]
    together = threading.Barrier(2)

    def start(stack: contextlib.ExitStack) -> ToxiproxyServer:
        together.wait(timeout=10)  # both look for a server, and start one, at the same moment
        return stack.enter_context(toxiproxy_server())

    try:
        with ThreadPoolExecutor(2) as pool:
            first, second = pool.map(start, stacks)
        assert first.url != second.url, "two runs share one server that the first to end will stop"
        assert {first.origin, second.origin} == {origin}
        for started in (first, second):
            assert started.url != DEFAULT_TOXIPROXY_URL
            assert urlsplit(started.url).hostname == "127.0.0.1"
            Faults(started.url).create_proxy("payments", echo)

        stacks[0].close()  # the first run ends
        assert refuses(first.url)
        faults = Faults(second.url)
        assert faults.proxies() == ["payments"]
        listen = faults.create_proxy("ledger", echo)
        assert round_trip(listen) < CLEAN_ROUND_TRIP_S
    finally:
        for stack in stacks:
            stack.close()
    assert refuses(second.url)


@contextlib.contextmanager
def http_answering(status: int, body: str, content_type: str) -> Iterator[str]:
    """An HTTP server (not a Toxiproxy) answering every GET with `status` and `body`; its URL."""

    class Answer(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_only_a_toxiproxy_version_answer_is_a_toxiproxy(monkeypatch: pytest.MonkeyPatch) -> None:
    accepted = [
        (200, '{"version": "2.8.0"}', "application/json", "2.8.0"),  # 2.6 and later
        (200, "2.1.4\n", "text/plain", "2.1.4"),  # before 2.6: the bare version
    ]
    for status, body, content_type, version in accepted:
        with http_answering(status, body, content_type) as url:
            monkeypatch.setenv(TOXIPROXY_URL_ENV, url)
            with toxiproxy_server() as server:
                assert server == ToxiproxyServer(url, "running", version)
    refused = [
        (200, "<!DOCTYPE html><html><body><h1>Welcome to nginx!</h1></body></html>", "text/html", "Welcome to nginx"),
        (200, '{"status": "ok"}', "application/json", "status"),
        (404, "404 page not found", "text/plain", "404"),
    ]
    for status, body, content_type, said in refused:
        with http_answering(status, body, content_type) as url:
            with (
                pytest.raises(FaultError, match=f"^{url} answers but is not Toxiproxy: .*{said}"),
                toxiproxy_server(url),
            ):
                pass
            monkeypatch.setenv(TOXIPROXY_URL_ENV, url)
            with pytest.raises(FaultError, match=f"^{url} answers but is not Toxiproxy: .*{said}"), toxiproxy_server():
                pass


@contextlib.contextmanager
def nats_like() -> Iterator[str]:
    """A TCP server that greets each connection with a NATS INFO line and then waits, as NATS does."""

    class Greet(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            with contextlib.suppress(OSError):
                self.request.sendall(b'INFO {"server_id":"fake","version":"2.10.0","max_payload":1048576}\r\n')
                while self.request.recv(65536):
                    pass

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Greet)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def configured(variable: str) -> Iterator[str]:
    """The host and port of the real server `variable` (DATABASE_URL, NATS_URL) names, as an HTTP URL."""
    configured_url = os.environ.get(variable, "").strip()
    parts = urlsplit(configured_url)
    if not parts.hostname or not parts.port:
        pytest.skip(f"{variable} names no TCP host and port: that server is not probed")
    yield f"http://{parts.hostname}:{parts.port}"


@pytest.mark.parametrize(
    "holder",
    [
        pytest.param(nats_like, id="a-nats-greeting"),
        pytest.param(lambda: configured("DATABASE_URL"), id="postgresql"),
        pytest.param(lambda: configured("NATS_URL"), id="nats"),
    ],
)
def test_a_port_that_does_not_speak_http_is_not_a_toxiproxy(
    holder: Callable[[], contextlib.AbstractContextManager[str]],
) -> None:
    with holder() as url:
        refused = f"^{url} answers but is not Toxiproxy: no HTTP answer"
        with pytest.raises(FaultError, match=refused), toxiproxy_server(url):
            pass


@linux_only  # a socket bound but not listening holds its port against another bind on Linux
def test_a_started_server_that_cannot_listen_says_why_from_its_log(origin: str, tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))  # bound, not listening: nothing answers, yet the port is taken
        url = f"http://127.0.0.1:{holder.getsockname()[1]}"
        started = time.monotonic()
        taken = f"(?s)before answering {url}/version.*address already in use"
        with pytest.raises(FaultError, match=taken), toxiproxy_server(url):
            pass
        log_path = tmp_path / "toxiproxy.log"
        log_path.write_text("an earlier run's line\n")
        with (
            pytest.raises(FaultError, match=f"(?s)address already in use.*{log_path}") as raised,
            toxiproxy_server(url, log_path=log_path),
        ):
            pass
        assert "an earlier run's line" not in str(raised.value), "only what this server wrote is quoted"
        assert time.monotonic() - started < 10, "a server that cannot listen is known at once, not at the timeout"
