"""`python -m simulator`: parse and check the arguments, then serve until interrupted."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlparse

from aiohttp import web

from simulator.app import build_app
from simulator.engine import Simulator
from simulator.journal import Journal, JournalInUse
from simulator.logs import log
from simulator.profiles import PROFILES


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        """One line, exit status 2: the same contract as the Ballast server's settings."""
        self.exit(2, f"simulator: {message}\n")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = _Parser(prog="python -m simulator", description="A fake payment provider with fault profiles.")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8099, help="port to listen on; 0 picks a free one (default 8099)")
    parser.add_argument("--profile", default="calm", help=f"fault profile: {', '.join(PROFILES)} (default calm)")
    parser.add_argument("--seed", type=int, default=42, help="seed of the RNG behind every fault (default 42)")
    parser.add_argument("--webhook-url", default=None, help="where to POST webhook events (default: none sent)")
    parser.add_argument("--webhook-secret", default="whsec_simulator", help="HMAC key of the webhook signatures")
    parser.add_argument(
        "--state",
        type=Path,
        default=None,
        metavar="FILE",
        help="keep payments, orders and settlement bookings in this SQLite file and take them back on start,"
        " as a real provider would after a restart (default: in memory only, forgotten when it stops)",
    )
    parser.add_argument(
        "--exit-on-stdin-close",
        action="store_true",
        help="stop when standard input reaches its end: a parent process holds it open and so takes the"
        " simulator with it when it dies, however it dies",
    )
    args = parser.parse_args(argv)
    if args.profile not in PROFILES:
        parser.error(f"--profile must be one of {', '.join(PROFILES)}, not {args.profile!r}")
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be from 0 to 65535, not {args.port}")
    if args.webhook_url is not None:
        url = urlparse(args.webhook_url)
        if url.scheme not in ("http", "https") or not url.netloc:
            parser.error(f"--webhook-url must be an http(s) URL, not {args.webhook_url!r}")
    if not args.webhook_secret:
        parser.error("--webhook-secret must not be empty")
    return args


async def serve(args: argparse.Namespace, journal: Journal | None = None) -> None:
    """Serve until SIGINT or SIGTERM; print the bound address (the real port when --port 0).

    With a journal, what it holds is taken back (and what was under way resumes) before serving.
    """
    simulator = Simulator(
        profile_name=args.profile,
        seed=args.seed,
        webhook_url=args.webhook_url,
        webhook_secret=args.webhook_secret,
        journal=journal,
    )
    if journal is not None:
        log("state", file=journal.path, restored=simulator.restore())
    runner = web.AppRunner(build_app(simulator), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(signum, stop.set)
    if args.exit_on_stdin_close:
        stdin = sys.stdin.fileno()

        def on_stdin() -> None:
            if not os.read(stdin, 4096):  # end of file: the parent is gone
                loop.remove_reader(stdin)
                stop.set()

        loop.add_reader(stdin, on_stdin)
    try:
        site = web.TCPSite(runner, args.host, args.port)
        await site.start()
        host, port = runner.addresses[0][:2]
        # the readiness line a supervisor (or a test) waits for
        print(f"simulator listening on http://{host}:{port} profile={args.profile} seed={args.seed}", flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        journal = None if args.state is None else Journal.open(args.state)
    except JournalInUse as error:
        sys.exit(f"simulator: {error}")
    except (OSError, sqlite3.DatabaseError) as error:
        sys.exit(f"simulator: cannot use the state file {args.state} ({error}): move it away to start afresh")
    try:
        asyncio.run(serve(args, journal))
    except OSError as error:  # the port is taken, the host does not exist...
        sys.exit(f"simulator: cannot listen on {args.host}:{args.port}: {error.strerror or error}")
