"""Processes a spec starts itself: the provider simulator on its own, and servers with an environment
the spec chooses (a fixed HTTP port, a provider, failpoints), so one can outlive the other."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chaos.processes import simulator_control
from tests.e2e.conftest import ROOT, ServerProcess, wait_until_serving

SIMULATOR_READY_PREFIX = "simulator listening on "
#: How long a stopped or killed process gets to be gone.
EXIT_TIMEOUT_S = 20


@dataclass
class SimulatorProcess:
    """The provider simulator as its own process; its control API (`/_sim/...`) over HTTP."""

    process: subprocess.Popen[str]
    url: str
    log_path: Path

    def control(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """Call the control API; the JSON answer. An error status raises urllib's HTTPError."""
        return simulator_control(self.url, method, path, body)

    def reset(self, seed: int, name: str, settings: dict[str, Any]) -> None:
        """Forget every payment and event, restart the RNG from `seed`, then take this profile."""
        self.control("POST", "/_sim/reset", {"seed": seed})
        self.set_profile(name, settings)

    def set_profile(self, name: str, settings: dict[str, Any]) -> None:
        """The named profile with these settings on top (the other settings are the profile's)."""
        self.control("PUT", "/_sim/profile", {"name": name, "settings": settings})

    def payments_with_key(self, idempotency_key: str) -> list[dict[str, Any]]:
        """The payments the provider really accepted under this idempotency key (its ground truth)."""
        truth = self.control("GET", "/_sim/truth")
        return [payment for payment in truth["payments"] if payment["idempotency_key"] == idempotency_key]

    def refunds_with_key(self, idempotency_key: str) -> list[dict[str, Any]]:
        """The refunds the provider really made under this idempotency key (its ground truth)."""
        truth = self.control("GET", "/_sim/truth")
        return [refund for refund in truth["refunds"] if refund["idempotency_key"] == idempotency_key]

    def requests_logged(self, method: str, path: str, status: int | None = None) -> int:
        """How many requests to `path` (that ended with `status`) the simulator has logged.

        A request's line is written before its answer goes out; one that never got an answer shows 499.
        """
        ended = r"\d+" if status is None else str(status)
        pattern = re.compile(rf"\bevent=request method={re.escape(method)} path={re.escape(path)} status={ended} ")
        return sum(1 for line in self.log_path.read_text().splitlines() if pattern.search(line))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(EXIT_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_simulator(
    log_path: Path, *, webhook_url: str, webhook_secret: str, profile: str = "calm", seed: int = 42
) -> SimulatorProcess:
    """The simulator on a free loopback port, sending its webhooks to `webhook_url`; serving when returned.

    It holds a pipe to this process as its standard input and stops when that closes, so it never
    outlives the test run, however the run ends.
    """
    arguments = ["--host", "127.0.0.1", "--port", "0", "--profile", profile, "--seed", str(seed)]
    arguments += ["--webhook-url", webhook_url, "--webhook-secret", webhook_secret, "--exit-on-stdin-close"]
    with log_path.open("w") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "simulator", *arguments],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log_file,
            text=True,
        )
    assert process.stdout is not None
    line = process.stdout.readline()  # its first and only stdout line, once it listens
    if not line.startswith(SIMULATOR_READY_PREFIX):
        process.kill()
        process.wait()
        raise RuntimeError(f"the simulator did not start ({line.strip() or 'no output'}):\n{log_path.read_text()}")
    return SimulatorProcess(process, line.removeprefix(SIMULATOR_READY_PREFIX).split()[0], log_path)


def launch_server(
    env: dict[str, str], address: str, token: str, client_id: str, log_path: Path, *, wait: bool = True
) -> ServerProcess:
    """`python -m server serve` with exactly this environment; serving when returned (with `wait`)."""
    with log_path.open("w") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "server", "serve"],
            cwd=ROOT,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            text=True,
        )
    server = ServerProcess(process, address, token, client_id, log_path)
    if wait:
        try:
            wait_until_serving(server)
        except BaseException:
            process.kill()
            process.wait()
            raise
    return server


def exit_status(process: subprocess.Popen[str], timeout_s: float = EXIT_TIMEOUT_S) -> int:
    """The process's exit status once it is gone (minus the signal's number when a signal ended it)."""
    return process.wait(timeout_s)


def kill(process: subprocess.Popen[str]) -> int:
    """SIGKILL, as a power cut would; its exit status."""
    process.send_signal(signal.SIGKILL)
    return exit_status(process)


def embedded_children(data_dir: Path) -> dict[str, list[int]]:
    """The pids of the embedded NATS servers, PostgreSQL postmasters and simulators working on data_dir.

    Read from /proc: a process that outlived its owner is found whatever its owner recorded.
    """
    wanted = {
        "nats-server": lambda argv: argv[0].endswith("nats-server") and str(data_dir / "nats") in argv,
        "postgres": lambda argv: argv[0].endswith("postgres") and str(data_dir / "postgres") in argv,
        "simulator": lambda argv: argv[1:3] == ["-m", "simulator"] and str(data_dir / "simulator.sqlite3") in argv,
    }
    found: dict[str, list[int]] = {name: [] for name in wanted}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = [part.decode() for part in (entry / "cmdline").read_bytes().split(b"\0")[:-1]]
            zombie = (entry / "stat").read_text().rpartition(")")[2].split()[0] == "Z"
        except (OSError, IndexError):
            continue  # gone meanwhile
        for name, matches in wanted.items():
            if argv and not zombie and matches(argv):
                found[name].append(int(entry.name))
    return found


def stop_embedded_children(data_dir: Path, timeout_s: float = EXIT_TIMEOUT_S) -> None:
    """Stop whatever embedded child still works on data_dir (after a failed spec): the postmaster
    with a fast shutdown (SIGINT), the others with SIGTERM; SIGKILL for what outlives timeout_s."""
    deadline = time.monotonic() + timeout_s
    for name, pids in embedded_children(data_dir).items():
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGINT if name == "postgres" else signal.SIGTERM)
    while any(embedded_children(data_dir).values()):
        if time.monotonic() > deadline:
            for pids in embedded_children(data_dir).values():
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            return
        time.sleep(0.05)
