"""The chaos harness (`python -m chaos`) as QA runs it: every process a run starts is gone when the run
is interrupted with Ctrl-C or killed outright; an interrupted run leaves no scratch database behind, and
what a killed one leaves is found and removed by `python -m chaos clean`'s cleanup."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import pytest

from chaos.cleanup import DATABASE_PATTERN, find_leftovers, remove_leftovers
from server.db.engine import asyncpg_dsn
from tests.e2e.conftest import ROOT
from tests.support.waiting import until

pytestmark = pytest.mark.e2e

#: The marker every child inherits in its environment, so the spec finds them whatever their argv.
MARKER = "CHAOS_SPEC_MARKER"
RUN_UP_TIMEOUT_S = 60.0
GONE_TIMEOUT_S = 30.0
SCENARIO = "broker-down"


def _processes_marked(marker: str) -> list[int]:
    """The live (non-zombie) processes whose environment carries MARKER=marker."""
    wanted = f"{MARKER}={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if wanted not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            if (entry / "stat").read_text().rpartition(")")[2].split()[0] == "Z":
                continue
        except (OSError, IndexError):
            continue  # gone meanwhile, or not ours to read
        found.append(int(entry.name))
    return found


async def _chaos_databases(server_url: str) -> set[str]:
    connection = await asyncpg.connect(asyncpg_dsn(server_url))
    try:
        rows = await connection.fetch("SELECT datname FROM pg_database WHERE datname LIKE 'chaos\\_%'")
    finally:
        await connection.close()
    return {row["datname"] for row in rows}


def _start_run(out: Path, database_url: str, nats_url: str, marker: str) -> subprocess.Popen[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("BALLAST_")}
    env.update(DATABASE_URL=database_url, NATS_URL=nats_url, TOXIPROXY_URL="http://127.0.0.1:1", **{MARKER: marker})
    with (out / "harness.log").open("w") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "chaos", "run", SCENARIO, "--seed", "3", "--out", str(out)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # a process group of its own, as a terminal's foreground job has
        )


def _wait_for_the_load(out: Path, harness: subprocess.Popen[str]) -> None:
    """Until the simulator has logged a payment from the run's load (everything is up by then)."""
    simulator_log = out / f"{SCENARIO}-seed3" / "simulator.log"

    def loading() -> bool:
        assert harness.poll() is None, (out / "harness.log").read_text()
        return simulator_log.exists() and "path=/v1/payments " in simulator_log.read_text(errors="replace")

    asyncio.run(until(loading, "the run's load reached the simulator", RUN_UP_TIMEOUT_S, interval_s=0.1))


@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill-9"])
def test_an_interrupted_run_leaves_no_process_behind(
    signal_number: signal.Signals, server_database_url: str, nats_url: str, tmp_path: Path
) -> None:
    marker = uuid.uuid4().hex
    databases_before = asyncio.run(_chaos_databases(server_database_url))
    harness = _start_run(tmp_path, server_database_url, nats_url, marker)
    try:
        _wait_for_the_load(tmp_path, harness)
        children = set(_processes_marked(marker)) - {harness.pid}
        # the toxiproxy server, the simulator, the server and the relay at least
        assert len(children) >= 4, children
        if signal_number == signal.SIGINT:
            os.killpg(harness.pid, signal.SIGINT)  # Ctrl-C: the whole foreground group
        else:
            harness.kill()  # nothing of the harness runs again: its children must see to themselves
        status = harness.wait(GONE_TIMEOUT_S)
        asyncio.run(until(lambda: not _processes_marked(marker), "every child is gone", GONE_TIMEOUT_S, 0.1))
    finally:
        if harness.poll() is None:
            os.killpg(harness.pid, signal.SIGKILL)
        for pid in _processes_marked(marker):
            os.kill(pid, signal.SIGKILL)
    if signal_number == signal.SIGINT:
        assert status == 130, (tmp_path / "harness.log").read_text()
        assert "every process the run started has been stopped" in (tmp_path / "harness.log").read_text()
        assert asyncio.run(_chaos_databases(server_database_url)) <= databases_before
    else:
        assert status == -signal.SIGKILL
        # nothing of the harness ran again: its database and streams stay, until `clean` takes them
        left = asyncio.run(_chaos_databases(server_database_url)) - databases_before
        run_ids = {match["run_id"] for name in left if (match := DATABASE_PATTERN.fullmatch(name))}
        assert len(run_ids) == 1, left
        found = asyncio.run(find_leftovers(server_database_url, nats_url, None, run_ids=run_ids))
        assert found.databases == sorted(left)  # (its stream too, once its relay had made it)
        assert asyncio.run(remove_leftovers(server_database_url, nats_url, None, run_ids=run_ids)) == found
        assert asyncio.run(_chaos_databases(server_database_url)) <= databases_before
