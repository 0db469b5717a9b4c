"""The server as a separate process, started the way `make run` starts it, called over the network."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from chaos.processes import free_port as free_port

ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 30


@dataclass
class ServerProcess:
    process: subprocess.Popen[str]
    address: str
    token: str
    client_id: str
    log_path: Path

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),)

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self, timeout_s: float = 20) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise


def deployment_of(data_dir: Path) -> str:
    """A test deployment's name on NATS, one per data directory: servers sharing one (replicas) share it,
    and no other test's server, nor a developer's on the same NATS, ever reads their events."""
    return f"test_{hashlib.sha256(str(data_dir).encode()).hexdigest()[:16]}"


def server_environment(database_url: str, port: int, token: str, client_id: str, data_dir: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("BALLAST_")}
    env.update(
        BALLAST_DEPLOYMENT=deployment_of(data_dir),
        DATABASE_URL=database_url,
        BALLAST_GRPC_PORT=str(port),
        BALLAST_API_TOKENS=f"{token}={client_id}:service",
        BALLAST_DATA_DIR=str(data_dir),
        BALLAST_SHUTDOWN_GRACE_MS="15000",
        BALLAST_METRICS_PORT="0",
        BALLAST_HTTP_PORT="0",
        BALLAST_DB_POOL_SIZE="10",
        BALLAST_RELAY_WORKERS="0",
    )
    return env


def wait_until_serving(server: ServerProcess) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    with grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise RuntimeError(f"server exited with {server.process.returncode}:\n{server.log()}")
            try:
                if (
                    health.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                    == health_pb2.HealthCheckResponse.SERVING
                ):
                    return
            except grpc.RpcError:
                time.sleep(0.1)
    raise TimeoutError(f"server not serving after {STARTUP_TIMEOUT_S}s:\n{server.log()}")


@pytest.fixture
def start_server(database_url: str, nats_url: str, tmp_path: Path) -> Iterator[object]:
    """start_server() -> a serving ServerProcess; every one started is stopped at the end."""
    started: list[ServerProcess] = []

    def start(token: str | None = None, client_id: str | None = None, **extra_env: str) -> ServerProcess:
        """A new server process; pass the token and client id of another one to make a replica."""
        port = free_port()
        token = token or f"e2e-token-{uuid.uuid4().hex}"
        client_id = client_id or f"e2e-{uuid.uuid4().hex[:8]}"
        log_path = tmp_path / f"server-{port}.log"
        # one deployment per test: the servers a test starts are replicas, sharing its stream
        relaying = {"NATS_URL": nats_url, "BALLAST_RELAY_WORKERS": "1", "BALLAST_DEPLOYMENT": deployment_of(tmp_path)}
        # a data directory each: a replica beside it runs a simulator of its own, and one data
        # directory has one simulator (a second server on it is refused)
        data_dir = tmp_path / f"data-{port}"
        env = server_environment(database_url, port, token, client_id, data_dir) | relaying | extra_env
        with log_path.open("w") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "server"],
                cwd=ROOT,
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                text=True,
            )
        server = ServerProcess(process, f"127.0.0.1:{port}", token, client_id, log_path)
        started.append(server)
        wait_until_serving(server)
        return server

    yield start
    for server in started:
        if server.process.poll() is None:
            server.stop()
