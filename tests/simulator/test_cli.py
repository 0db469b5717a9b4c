"""`python -m simulator` as a process: it validates its arguments, starts, answers and logs."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "simulator", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--profile", "tuesday"], "--profile must be one of calm, flaky, monday-morning, webhook-storm"),
        (["--port", "70000"], "--port must be from 0 to 65535"),
        (["--seed", "x"], "argument --seed: invalid int value"),
        (["--webhook-url", "ftp://example"], "--webhook-url must be an http(s) URL"),
    ],
)
def test_bad_arguments_stop_it_with_one_line(args: list[str], message: str) -> None:
    process = _run(*args)
    _, err = process.communicate(timeout=20)
    assert process.returncode == 2
    assert err.count("\n") == 1
    assert err.startswith("simulator: ")
    assert message in err


def test_it_starts_answers_and_logs_each_request() -> None:
    process = _run("--port", "0", "--profile", "calm", "--seed", "5", "--webhook-url", "http://127.0.0.1:9/hooks")
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert "profile=calm seed=5" in line, line
        url = line.split()[3]
        request = urllib.request.Request(  # noqa: S310 - a URL the test built
            f"{url}/v1/payments",
            data=json.dumps({"amount": "5.00", "currency": "EUR", "reference": "cli"}).encode(),
            headers={"Idempotency-Key": "cli-1", "Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            assert json.load(response)["status"] == "pending"
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=20)
    assert process.returncode == 0, err
    assert "event=request method=POST path=/v1/payments status=200 fault=none" in err


def test_it_stops_when_its_parent_closes_standard_input() -> None:
    """A parent that dies, however it dies, closes the pipe: the simulator is never left running alone."""
    process = subprocess.Popen(
        [sys.executable, "-m", "simulator", "--port", "0", "--exit-on-stdin-close"],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None and process.stdin is not None
        assert process.stdout.readline().startswith("simulator listening on http://")
        process.stdin.close()
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
