"""chaos/bridge.py: a loopback TCP port in front of a Unix socket (the embedded PostgreSQL's), so that a
Toxiproxy proxy can stand on that path too. Bytes go both ways unchanged, a close on either side
closes the other, and the port is gone when the bridge ends."""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from chaos.bridge import tcp_to_unix

#: Long enough that a bridge that does not forward fails the spec, short enough to keep it quick.
RECEIVE_TIMEOUT_S = 5.0


@pytest.fixture
def unix_echo(tmp_path: Path) -> Iterator[str]:
    """A Unix-socket server, in threads, that writes back what it reads; yields its path."""
    path = str(tmp_path / "echo.sock")

    class Echo(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            with contextlib.suppress(OSError):
                while data := self.request.recv(65536):
                    self.request.sendall(data)

    server = socketserver.ThreadingUnixStreamServer(path, Echo)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield path
    finally:
        server.shutdown()
        server.server_close()


def _receive(sock: socket.socket, size: int) -> bytes:
    received = b""
    while len(received) < size:
        chunk = sock.recv(size - len(received))
        if not chunk:
            break
        received += chunk
    return received


def test_bytes_cross_the_bridge_both_ways_unchanged_on_several_connections(unix_echo: str) -> None:
    payload = bytes(range(256)) * 1024  # 256 KiB: more than one of the bridge's reads
    with tcp_to_unix(unix_echo) as address:
        host, _, port = address.rpartition(":")
        assert host == "127.0.0.1"
        for _ in range(3):
            with socket.create_connection((host, int(port)), timeout=RECEIVE_TIMEOUT_S) as sock:
                sock.sendall(payload)
                # a half-close: what the echo still has to send must come back all the same
                sock.shutdown(socket.SHUT_WR)
                assert _receive(sock, len(payload)) == payload
                assert sock.recv(1) == b""  # the echo saw the close, and the bridge passed its close back


def test_a_connection_to_a_socket_nobody_serves_is_closed_and_the_port_is_gone_after(tmp_path: Path) -> None:
    with tcp_to_unix(str(tmp_path / "nobody.sock")) as address:
        host, _, port = address.rpartition(":")
        with socket.create_connection((host, int(port)), timeout=RECEIVE_TIMEOUT_S) as sock:
            assert sock.recv(1) == b""
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host, int(port)), timeout=RECEIVE_TIMEOUT_S).close()
