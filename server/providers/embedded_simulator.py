"""The provider simulator started beside a development server, when BALLAST_PROVIDER_URL is unset.

It runs as its own process (`python -m simulator`), sends its webhooks to this server's HTTP port,
writes its one-line-per-request log to <data dir>/simulator.log, and keeps what it accepted in
<data dir>/simulator.sqlite3 (`--state`): killed with the server, it comes back at the next start
knowing every payment and order, and settles those still pending, as a real provider would.

It stops with the server: cleanly on exit, by the end of its standard input or SIGTERM from the
kernel (Linux) when the server is killed, and otherwise by the next start, which stops what a dead
server left (server/ownership.py). A data directory has one simulator: a second server on it is
refused with ComponentInUse while the first lives.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import structlog

from server.ownership import claim, die_with_parent

log = structlog.get_logger(__name__)

STARTUP_TIMEOUT_S = 15
STOP_TIMEOUT_S = 5
READY_PREFIX = "simulator listening on "
#: The lock and pid files in the data directory: simulator.lock, simulator.pid.
COMPONENT = "simulator"
STATE_FILE = "simulator.sqlite3"


@contextlib.asynccontextmanager
async def embedded_simulator(
    data_dir: Path, *, webhook_url: str, webhook_secret: str, profile: str, seed: int = 42
) -> AsyncIterator[str]:
    """Start the simulator on a free loopback port; yield its base URL; stop it on exit."""
    owned = await asyncio.to_thread(claim, data_dir, COMPONENT, "the provider simulator")
    log_path = data_dir / "simulator.log"
    arguments = [sys.executable, "-m", "simulator", "--host", "127.0.0.1", "--port", "0", "--profile", profile]
    arguments += ["--seed", str(seed), "--webhook-url", webhook_url, "--webhook-secret", webhook_secret]
    arguments += ["--state", str(data_dir / STATE_FILE), "--exit-on-stdin-close"]
    try:
        with log_path.open("ab") as log_file:
            process = await asyncio.create_subprocess_exec(
                *arguments,
                # a pipe nobody writes to: when this process ends, however it ends, the simulator sees
                # its end and stops, so it is never left running on its own
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log_file,
                start_new_session=True,  # a Ctrl-C reaches the server, which stops the simulator itself
                preexec_fn=die_with_parent(),  # one prctl call between fork and exec, nothing else
            )
    except BaseException:
        owned.release()
        raise
    owned.record(process.pid, arguments)
    try:
        url = await _ready_url(process, log_path)
        owned.record(process.pid, arguments, url=url)
        log.info("embedded_simulator.ready", url=url, profile=profile, log=str(log_path))
        print(f"provider simulator: {url}  (profile {profile}; log {log_path})", file=sys.stderr, flush=True)
        yield url
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                process.kill()
                await process.wait()
        owned.release()


async def _ready_url(process: asyncio.subprocess.Process, log_path: Path) -> str:
    """The URL from the simulator's first stdout line: `simulator listening on http://HOST:PORT ...`."""
    if process.stdout is None:
        raise RuntimeError("the simulator was started without a pipe for its readiness line")
    try:
        line = await asyncio.wait_for(process.stdout.readline(), STARTUP_TIMEOUT_S)
    except TimeoutError:
        raise RuntimeError(f"the simulator did not start within {STARTUP_TIMEOUT_S}s; see {log_path}") from None
    text = line.decode().strip()
    if not text.startswith(READY_PREFIX):
        raise RuntimeError(f"the simulator did not start ({text or 'no output'}); see {log_path}")
    return text.removeprefix(READY_PREFIX).split()[0]
