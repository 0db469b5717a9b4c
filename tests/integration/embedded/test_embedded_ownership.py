"""Embedded children and their owners (server/ownership.py), with real processes and real locks."""

from __future__ import annotations

import hashlib
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from server.messaging.embedded_nats import COMPONENT, start_nats_process
from server.ownership import ComponentInUse, claim, is_alive, stop_process

ROOT = Path(__file__).resolve().parents[3]
GONE_TIMEOUT_S = 10
IGNORE_SIGTERM = "signal.signal(signal.SIGTERM, signal.SIG_IGN)"
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")


def _nats(store: Path) -> subprocess.Popen[bytes]:
    """A broker on `store` as a dead owner would have left it: running, recorded, its lock free."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    binary = str(Path(sys.executable).parent / "nats-server")
    arguments = [binary, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(store)]
    process = subprocess.Popen(arguments, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_port(port)
    digest = hashlib.sha256(" ".join(arguments).encode()).hexdigest()
    (store / f"{COMPONENT}.pid").write_text(json.dumps({"pid": process.pid, "command_sha256": digest}))
    return process


def _wait_for_port(port: int) -> None:
    deadline = time.monotonic() + GONE_TIMEOUT_S
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            assert time.monotonic() < deadline, f"nothing listens on {port}"
            time.sleep(0.05)


def _wait_until_gone(pid: int) -> None:
    deadline = time.monotonic() + GONE_TIMEOUT_S
    while is_alive(pid):
        assert time.monotonic() < deadline, f"process {pid} is still running"
        time.sleep(0.05)


def test_a_broker_a_dead_owner_left_is_stopped_before_its_store_is_served_again(tmp_path: Path) -> None:
    leftover = _nats(tmp_path)
    try:
        url, broker = start_nats_process(tmp_path)
        try:
            assert leftover.poll() is not None  # stopped (SIGTERM) before the new one started
            assert json.loads((tmp_path / f"{COMPONENT}.pid").read_text())["pid"] == broker.pid
            assert url.startswith("nats://127.0.0.1:")
        finally:
            broker.terminate()
            broker.wait(GONE_TIMEOUT_S)
    finally:
        leftover.kill()
        leftover.wait(GONE_TIMEOUT_S)


def test_a_recorded_pid_that_now_runs_another_program_is_left_alone(tmp_path: Path) -> None:
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "thing.pid").write_text(json.dumps({"pid": stranger.pid, "command_sha256": "0" * 64}))
        owned = claim(tmp_path, "thing", "a thing")
        try:
            assert stranger.poll() is None
            assert not (tmp_path / "thing.pid").exists()  # not ours: forgotten, not stopped
        finally:
            owned.release()
    finally:
        stranger.kill()
        stranger.wait(GONE_TIMEOUT_S)


def test_a_child_that_ignores_sigterm_is_killed_after_the_deadline() -> None:
    stubborn = subprocess.Popen(
        [sys.executable, "-c", f"import signal, time; {IGNORE_SIGTERM}; print(1, flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert stubborn.stdout is not None and stubborn.stdout.readline() == "1\n"  # its handler is set
        started = time.monotonic()
        stop_process(stubborn.pid, timeout_s=0.5)
        assert 0.5 <= time.monotonic() - started < GONE_TIMEOUT_S
        assert stubborn.wait(GONE_TIMEOUT_S) == -signal.SIGKILL
    finally:
        stubborn.kill()
        stubborn.wait(GONE_TIMEOUT_S)


def test_a_component_a_live_process_owns_is_refused_naming_that_process(tmp_path: Path) -> None:
    owner = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from server.ownership import claim;"
            " claim(Path(sys.argv[1]), 'thing', 'a thing'); print('claimed', flush=True); time.sleep(60)",
            str(tmp_path),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert owner.stdout is not None and owner.stdout.readline() == "claimed\n"
        with pytest.raises(ComponentInUse) as refused:
            claim(tmp_path, "thing", "a thing")
        assert refused.value.owner_pid == owner.pid
        assert f"process {owner.pid} runs a thing there" in str(refused.value)
        assert f"kill -TERM {owner.pid}" in str(refused.value)
        assert owner.poll() is None
    finally:
        owner.kill()
        owner.wait(GONE_TIMEOUT_S)
    claim(tmp_path, "thing", "a thing").release()  # the kernel dropped the dead owner's lock


@linux_only
def test_a_broker_dies_with_its_owner_killed_by_sigkill(tmp_path: Path) -> None:
    owner = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from server.messaging.embedded_nats import start_nats_process;"
            " print('broker', start_nats_process(Path(sys.argv[1]))[1].pid, flush=True); time.sleep(60)",
            str(tmp_path),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert owner.stdout is not None
        line = owner.stdout.readline()
        while not line.startswith("broker "):  # after the broker's own log lines
            assert line, "the owner exited before its broker listened"
            line = owner.stdout.readline()
        broker_pid = int(line.split()[1])
        assert is_alive(broker_pid)
        owner.send_signal(signal.SIGKILL)
        owner.wait(GONE_TIMEOUT_S)
        _wait_until_gone(broker_pid)  # SIGTERM from the kernel: no start-up sweep needed
    finally:
        owner.kill()
        owner.wait(GONE_TIMEOUT_S)
