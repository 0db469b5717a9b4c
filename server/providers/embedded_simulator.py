"""The provider simulator started beside a development server, when BALLAST_PROVIDER_URL is unset.

It runs as its own process (`python -m simulator`), sends its webhooks to this server's HTTP port,
writes its one-line-per-request log to <data dir>/simulator.log, and stops with the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

STARTUP_TIMEOUT_S = 15
STOP_TIMEOUT_S = 5
READY_PREFIX = "simulator listening on "


@contextlib.asynccontextmanager
async def embedded_simulator(
    data_dir: Path, *, webhook_url: str, webhook_secret: str, profile: str, seed: int = 42
) -> AsyncIterator[str]:
    """Start the simulator on a free loopback port; yield its base URL; stop it on exit."""
    await asyncio.to_thread(data_dir.mkdir, parents=True, exist_ok=True)
    log_path = data_dir / "simulator.log"
    arguments = ["-m", "simulator", "--host", "127.0.0.1", "--port", "0", "--profile", profile, "--seed", str(seed)]
    arguments += ["--webhook-url", webhook_url, "--webhook-secret", webhook_secret, "--exit-on-stdin-close"]
    with log_path.open("ab") as log_file:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            *arguments,
            # a pipe nobody writes to: when this process ends, however it ends, the simulator sees
            # its end and stops, so it is never left running on its own
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=log_file,
            start_new_session=True,  # a Ctrl-C reaches the server, which stops the simulator itself
        )
    try:
        url = await _ready_url(process, log_path)
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
