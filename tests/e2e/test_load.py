"""`make load` and `make load-ui` as a performance engineer runs them: Locust over gRPC against a world the
harness starts, Locust's table and reports written, and the run judged by the chaos checker: it passes on
an honest run and fails when the checker finds a broken invariant."""

from __future__ import annotations

import asyncio
import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.e2e.conftest import ROOT
from tests.support.waiting import until

pytestmark = pytest.mark.e2e

#: A short run: the world starts, Locust loads it, the world settles and is checked.
RUN_TIMEOUT_S = 240.0
UI_UP_TIMEOUT_S = 90.0
UI = "http://127.0.0.1:8089"
#: A client told SUCCEEDED about a payment Ballast never had: what the checker must catch.
LIAR = """
import sys
from loadtests import __main__ as load

honest = load.LocustLoad.__call__

async def lying(self, the_world, started, history):
    await honest(self, the_world, started, history)
    history.invoke("liar", "forged-key", amount="1.00", currency="EUR")
    history.ok("liar", "forged-key", "00000000-0000-4000-8000-000000000000", "SUCCEEDED")

load.LocustLoad.__call__ = lying
sys.exit(load.main(sys.argv[1:]))
"""


def _environment(database_url: str, nats_url: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("BALLAST_")}
    return env | {"DATABASE_URL": database_url, "NATS_URL": nats_url}


def _run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False)


def _rows(out: Path) -> dict[str, dict[str, str]]:
    with (out / "stats_stats.csv").open(newline="") as file:
        return {row["Name"]: row for row in csv.DictReader(file)}


def test_a_short_load_run_writes_locusts_reports_checks_the_invariants_and_passes(
    server_database_url: str, nats_url: str, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "loadtests", "run", "--users", "6", "--duration", "8", "--out", str(out)]
    done = _run(argv, _environment(server_database_url, nats_url))
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    rows = _rows(out)
    assert int(rows["CreatePayment OK"]["Request Count"]) > 0
    assert all(name.split()[-1].isupper() for name in rows if name != "Aggregated")  # '<Method> <STATUS>'
    assert (out / "locust.html").stat().st_size > 0
    assert "PASS" in done.stdout and "checking the invariants" in done.stdout + done.stderr
    assert (out / "history.jsonl").read_text().count('"create_payment"') > 0


def test_a_load_run_whose_checker_finds_a_broken_invariant_fails(
    server_database_url: str, nats_url: str, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    argv = [sys.executable, "-c", LIAR, "run", "--users", "4", "--duration", "5", "--out", str(out)]
    done = _run(argv, _environment(server_database_url, nats_url))
    assert done.returncode == 1, done.stdout[-4000:] + done.stderr[-4000:]
    assert "BROKEN" in done.stdout and "forged-key" in (out / "report.md").read_text()


async def test_the_ui_serves_locusts_page_and_ctrl_c_ends_the_run_with_its_checks(
    server_database_url: str, nats_url: str, tmp_path: Path
) -> None:
    out, log_path = tmp_path / "ui", tmp_path / "ui.log"
    with log_path.open("w") as log:
        ui = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "loadtests",
            "ui",
            "--out",
            str(out),
            cwd=ROOT,
            env=_environment(server_database_url, nats_url),
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
        )
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:

            async def serving() -> bool:
                assert ui.returncode is None, log_path.read_text()[-4000:]
                try:
                    async with http.get(UI) as page:
                        return page.status == 200 and "<html" in (await page.text()).lower()
                except aiohttp.ClientError:
                    return False

            await until(serving, timeout_s=UI_UP_TIMEOUT_S, what="Locust's web UI to answer")
            async with http.post(f"{UI}/swarm", data={"user_count": 3, "spawn_rate": 3, "host": ""}) as started:
                assert "Swarming started" in await started.text()
        history = out / "locust-history.jsonl"
        await until(
            lambda: history.exists() and '"ok"' in history.read_text(),
            timeout_s=UI_UP_TIMEOUT_S,
            what="a payment made from the UI's swarm",
        )
        ui.send_signal(signal.SIGINT)  # Ctrl-C: the load stops, the run is checked
        assert await asyncio.wait_for(ui.wait(), RUN_TIMEOUT_S) == 0, log_path.read_text()[-4000:]
    finally:
        if ui.returncode is None:
            ui.kill()
            await ui.wait()
    assert "PASS" in log_path.read_text()
