"""The processes a chaos run starts, stops, kills and restarts: the provider simulator, Ballast's server
replicas and its outbox relays, each a real `python -m ...` process with its own log file.

Every child gets `PR_SET_PDEATHSIG` (server/ownership.py's die_with_parent): a harness killed with
SIGKILL takes its children with it. Each runs in a session of its own, so a Ctrl-C in the terminal
reaches the harness alone, which stops them on its way out, in order (the run holds them in an
ExitStack). A child's whole output goes to its log under the run's directory.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.ownership import die_with_parent

ROOT = Path(__file__).resolve().parents[1]
#: How long a started process gets to serve before the run gives up on it.
STARTUP_TIMEOUT_S = 30.0
#: How long a stopped process gets to exit before it is killed.
EXIT_TIMEOUT_S = 20.0
#: One call to the simulator's control API.
CONTROL_TIMEOUT_S = 10.0
SIMULATOR_READY_PREFIX = "simulator listening on "


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_environment() -> dict[str, str]:
    """This process's environment without any BALLAST_ setting: a child's settings are the run's alone."""
    return {key: value for key, value in os.environ.items() if not key.startswith("BALLAST_")}


@dataclass
class Child:
    """One process of the run, restartable with the same arguments and environment."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[str] | None = None
    #: how many times it was started
    starts: int = 0

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, *, stdout: int | None = None) -> subprocess.Popen[str]:
        self.starts += 1
        with self.log_path.open("a") as log_file:
            log_file.write(f"--- start {self.starts} of {self.name} ---\n")
            log_file.flush()
            self.process = subprocess.Popen(
                self.argv,
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.PIPE,
                stdout=log_file if stdout is None else stdout,
                stderr=log_file,
                text=True,
                preexec_fn=die_with_parent(),  # one prctl call between fork and exec, nothing else
                # a session of its own: a Ctrl-C in the terminal reaches the harness alone, which then
                # stops every process of the run in order
                start_new_session=True,
            )
        return self.process

    def stop(self, timeout_s: float = EXIT_TIMEOUT_S) -> int | None:
        """SIGTERM, then SIGKILL after timeout_s; the exit status (None when it never ran)."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait()

    def kill(self) -> int | None:
        """SIGKILL, as a power cut would."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        return self.process.wait(EXIT_TIMEOUT_S)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def simulator_control(url: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """Call the simulator's control API (`/_sim/...`) at `url`; the JSON answer. An error status raises
    urllib's HTTPError."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{url}{path}", data=data, method=method)  # noqa: S310 - our URL
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=CONTROL_TIMEOUT_S) as response:  # noqa: S310
        return json.loads(response.read())


@dataclass
class Simulator:
    """The provider simulator; its control API (`/_sim/...`) over HTTP."""

    child: Child
    url: str = ""

    def start(self) -> None:
        process = self.child.start(stdout=subprocess.PIPE)
        assert process.stdout is not None
        line = process.stdout.readline()  # its first and only stdout line, once it listens
        if not line.startswith(SIMULATOR_READY_PREFIX):
            self.child.kill()
            raise RuntimeError(f"the simulator did not start ({line.strip() or 'no output'}):\n{self.child.log()}")
        self.url = line.removeprefix(SIMULATOR_READY_PREFIX).split()[0]

    def control(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        return simulator_control(self.url, method, path, body)

    def truth(self) -> dict[str, Any]:
        truth: dict[str, Any] = self.control("GET", "/_sim/truth")
        return truth


def simulator(log_path: Path, *, profile: str, seed: int, webhook_url: str, webhook_secret: str) -> Simulator:
    """The simulator on a free loopback port, sending its webhooks to `webhook_url` (not started yet).

    It also stops when its standard input closes, so it never outlives the harness.
    """
    argv = [sys.executable, "-m", "simulator", "--host", "127.0.0.1", "--port", "0"]
    argv += ["--profile", profile, "--seed", str(seed), "--webhook-url", webhook_url]
    argv += ["--webhook-secret", webhook_secret, "--exit-on-stdin-close"]
    return Simulator(Child("simulator", argv, clean_environment(), log_path))


@dataclass
class Server:
    """One replica of Ballast's server: gRPC and HTTP on fixed ports, so a restart takes them again."""

    child: Child
    grpc_port: int
    http_port: int
    token: str
    client_id: str

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),)

    def start(self, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        self.child.start()
        wait_until_serving(self.child, self.address, timeout_s)


def server(index: int, env: dict[str, str], log_dir: Path, *, token: str, client_id: str, http_port: int) -> Server:
    """Replica `index` with this environment (its ports and data directory are added here)."""
    grpc_port = free_port()
    data_dir = log_dir / f"server-{index}-data"
    environment = env | {
        "BALLAST_GRPC_PORT": str(grpc_port),
        "BALLAST_HTTP_PORT": str(http_port),
        "BALLAST_DATA_DIR": str(data_dir),
    }
    child = Child(
        f"server-{index}", [sys.executable, "-m", "server", "serve"], environment, log_dir / f"server-{index}.log"
    )
    return Server(child, grpc_port, http_port, token, client_id)


def relay(index: int, env: dict[str, str], log_dir: Path) -> Child:
    """An outbox relay process (`python -m server relay`), with the exposures consumer."""
    environment = env | {"BALLAST_DATA_DIR": str(log_dir / f"relay-{index}-data"), "BALLAST_RELAY_WORKERS": "1"}
    return Child(
        f"relay-{index}", [sys.executable, "-m", "server", "relay"], environment, log_dir / f"relay-{index}.log"
    )


def wait_until_serving(child: Child, address: str, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
    """Poll the gRPC health service until it says SERVING; the log's tail when the process dies first."""
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if not child.running:
                raise RuntimeError(f"{child.name} exited:\n{child.log()[-3000:]}")
            try:
                status = health.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise TimeoutError(f"{child.name} not serving after {timeout_s:g}s:\n{child.log()[-3000:]}")
