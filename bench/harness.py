"""What the benchmark runs on: a PostgreSQL server, a throw-away database, and server subprocesses."""

from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import grpc
from sqlalchemy.engine import make_url

from server.db.scratch import scratch_database

ROOT = Path(__file__).resolve().parent.parent
#: Server logs (and, by default, nothing else) go here; git-ignored.
RESULTS_DIR = ROOT / "bench" / "results"

MIGRATE_TIMEOUT_S = 120
READY_TIMEOUT_S = 60
STOP_TIMEOUT_S = 10

_running: set[subprocess.Popen[bytes]] = set()


def postgres_server_url() -> tuple[str, str]:
    """(URL of a database to administer the server through, where the server comes from).

    DATABASE_URL if set; otherwise the embedded PostgreSQL under the data directory, started the
    way `python -m server` starts it. It stays up while this process holds its handle.
    """
    configured = os.environ.get("DATABASE_URL", "").strip()
    if configured:
        return configured, "DATABASE_URL"
    from server.db.embedded import start_embedded_postgres

    data_dir = Path(os.environ.get("BALLAST_DATA_DIR", "").strip() or ".data")
    return start_embedded_postgres((ROOT / data_dir).absolute(), database="postgres"), "embedded"


def redacted(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def _asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def _execute(url: str, sql: str) -> None:
    connection = await asyncpg.connect(_asyncpg_dsn(url), timeout=30)
    try:
        await connection.execute(sql, timeout=60)
    finally:
        await connection.close()


def bench_database(server_url: str) -> AbstractContextManager[str]:
    """A new, empty database `ballast_bench_<random>` on the server; dropped on exit."""
    return scratch_database(server_url, "ballast_bench")


def migrate(database_url: str) -> None:
    """`python -m server migrate` against database_url."""
    completed = subprocess.run(
        [sys.executable, "-m", "server", "migrate"],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": database_url},
        capture_output=True,
        timeout=MIGRATE_TIMEOUT_S,
        check=False,
    )
    if completed.returncode != 0:
        output = (completed.stdout + completed.stderr).decode(errors="replace")
        raise RuntimeError(f"`python -m server migrate` exited with {completed.returncode}:\n{output[-4000:]}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    _running.discard(process)


@atexit.register
def _stop_all() -> None:
    """The safety net: no server outlives the benchmark, however it ends."""
    for process in list(_running):
        _stop(process)


def _log_tail(path: Path, limit: int = 4000) -> str:
    return path.read_text(errors="replace")[-limit:] if path.exists() else ""


def _accepts_connections(port: int) -> bool:
    """True once an HTTP/2 connection to the gRPC server comes up (a fresh channel each time: no backoff)."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=0.5)
            return True
        except grpc.FutureTimeoutError:
            time.sleep(0.2)
            return False


@contextmanager
def server_process(name: str, command: list[str], env: dict[str, str], port: int) -> Iterator[int]:
    """Run a gRPC server subprocess, wait until it accepts connections on port; yield its pid; stop it on exit.

    Its output goes to bench/results/<name>.log. It runs in its own session, so a Ctrl-C reaches
    only the benchmark, which then stops it.
    """
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    log_path = RESULTS_DIR / f"{name}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, cwd=ROOT, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        _running.add(process)
        try:
            deadline = time.monotonic() + READY_TIMEOUT_S
            while not _accepts_connections(port):
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited with {process.returncode}:\n{_log_tail(log_path)}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not accept connections within {READY_TIMEOUT_S} s")
            yield process.pid
        finally:
            _stop(process)


# -- ratios, for `make bench-all` ----------------------------------------------------------------------

#: The file each benchmark appends its ratios to, one JSON line per benchmark (set by bench/all.py).
RATIOS_ENV = "BALLAST_BENCH_RATIOS"


@dataclass(frozen=True)
class Ratio:
    """One ratio a benchmark measured against a baseline of the same run, and its target."""

    #: what is compared with what, e.g. "CreatePayment / bare grpc.aio ceiling"
    name: str
    value: float
    target: float
    #: True: the ratio must be at least the target; False: at most
    at_least: bool = True

    @property
    def met(self) -> bool:
        return self.value >= self.target if self.at_least else self.value <= self.target

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "value": round(self.value, 4), "target": self.target, "at_least": self.at_least}


def record_ratios(benchmark: str, ratios: list[Ratio], details: str = "") -> None:
    """Append this benchmark's ratios to the file RATIOS_ENV names, when it is set (make bench-all)."""
    path = os.environ.get(RATIOS_ENV, "").strip()
    if not path:
        return
    line = {"benchmark": benchmark, "details": details, "ratios": [ratio.to_json() for ratio in ratios]}
    with Path(path).open("a", encoding="utf-8") as file:
        file.write(json.dumps(line) + "\n")
