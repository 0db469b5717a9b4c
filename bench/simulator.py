"""`python -m bench.simulator`: the provider simulator is never the bottleneck of a load test.

What is measured: payments created per second and p50/p99 latency with `--concurrency` requests
(default 64) in flight, for `--duration-s` after a `--warmup-s` warm-up, against two targets, one
after the other, in the same run on the same machine:

  ballast           PaymentService.CreatePayment of `python -m server`, measured exactly as
                    `python -m bench` measures it (same database set-up, server, load generator).
  simulator (calm)  `POST /v1/payments` of `python -m simulator --profile calm --seed 42`, each
                    request with a new Idempotency-Key, over keep-alive HTTP/1.1 connections.

Why: a load test drives Ballast, which calls the simulator; if the simulator created payments more
slowly than Ballast does, the test would measure the simulator. The target is a ratio
simulator/ballast above 1.0: on the same cores, the simulator serves more than Ballast can send.

Both targets run as subprocesses; the load generator runs in this process, so the CPU columns
separate the target (server) from the load generator and from everything else (for Ballast,
mostly PostgreSQL). The simulator's request log goes to bench/results/simulator.log.

The exit status is 1 if any call failed (the numbers then mean nothing), not if the target is
missed; 2 if a target could not be started.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import selectors
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress

import aiohttp

from bench.__main__ import (
    BALLAST,
    LABELS,
    _bounded,
    _pool_size,
    _raise_interrupt,
    _status,
    measure,
    table,
)
from bench.harness import (
    READY_TIMEOUT_S,
    RESULTS_DIR,
    ROOT,
    STOP_TIMEOUT_S,
    Ratio,
    _log_tail,
    _running,
    _stop,
    record_ratios,
)
from bench.load import LoadResult, run_http_load

TARGET_RATIO = 1.0
SIMULATOR = "simulator"
PROFILE = "calm"
SEED = 42
_READY_LINE = re.compile(r"^simulator listening on (http://\S+)")
#: The same body for every request; each request gets its own Idempotency-Key.
_BODY = json.dumps({"amount": "12.34", "currency": "EUR", "reference": "bench"}).encode()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.simulator",
        description="Payment creation rate of the provider simulator (calm profile) against Ballast's CreatePayment.",
    )
    parser.add_argument("--duration-s", type=_bounded(1, 600, float), default=10.0, help="measured seconds per target")
    parser.add_argument("--warmup-s", type=_bounded(0, 120, float), default=2.0, help="unmeasured seconds first")
    parser.add_argument("--concurrency", type=_bounded(1, 1024, int), default=64, help="requests in flight")
    return parser.parse_args(argv)


@contextmanager
def simulator_process() -> Iterator[tuple[str, int]]:
    """Run `python -m simulator` on a free port; yield (base URL, pid) once it listens; stop it on exit.

    It prints its address on the first stdout line; its per-request log goes to
    bench/results/simulator.log, so no pipe fills up.
    """
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    log_path = RESULTS_DIR / f"{SIMULATOR}.log"
    command = [sys.executable, "-m", "simulator", "--port", "0", "--profile", PROFILE, "--seed", str(SEED)]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=log, start_new_session=True)
        _running.add(process)
        try:
            assert process.stdout is not None
            with selectors.DefaultSelector() as selector:
                selector.register(process.stdout, selectors.EVENT_READ)
                ready = selector.select(timeout=READY_TIMEOUT_S)
            line = process.stdout.readline().decode(errors="replace") if ready else ""
            match = _READY_LINE.match(line)
            if match is None:
                if ready and not line:  # stdout closed: it is exiting
                    with suppress(subprocess.TimeoutExpired):
                        process.wait(STOP_TIMEOUT_S)
                if process.poll() is not None:
                    raise RuntimeError(f"{SIMULATOR} exited with {process.returncode}:\n{_log_tail(log_path)}")
                raise RuntimeError(f"{SIMULATOR} did not print its address within {READY_TIMEOUT_S} s: {line!r}")
            yield match.group(1), process.pid
        finally:
            _stop(process)
            if process.stdout is not None:
                process.stdout.close()


async def _create_payment(url: str, session: aiohttp.ClientSession) -> tuple[str, str] | None:
    """One `POST /v1/payments`; None on success, else (error code, details)."""
    headers = {"Content-Type": "application/json", "Idempotency-Key": str(uuid.uuid4())}
    try:
        async with session.post(url, data=_BODY, headers=headers) as response:
            body = await response.read()
    except (aiohttp.ClientError, TimeoutError) as error:
        return type(error).__name__, str(error)[:200]
    if response.status != 200:
        return f"HTTP_{response.status}", body[:200].decode(errors="replace")
    try:
        payment = json.loads(body)
    except ValueError:
        return "BAD_JSON", body[:200].decode(errors="replace")
    if not isinstance(payment, dict) or "id" not in payment:
        return "NO_PAYMENT", body[:200].decode(errors="replace")
    return None


def measure_simulator(args: argparse.Namespace) -> LoadResult:
    _status(f"[{SIMULATOR}] starting (profile {PROFILE}, seed {SEED})")
    with simulator_process() as (base_url, pid):
        url = f"{base_url}/v1/payments"
        load = run_http_load(
            SIMULATOR,
            lambda session: _create_payment(url, session),
            server_pid=pid,
            warmup_s=args.warmup_s,
            duration_s=args.duration_s,
            concurrency=args.concurrency,
        )
        return asyncio.run(load)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    from server.observability import configure_logging

    configure_logging("WARNING", "console")  # the embedded PostgreSQL's start-up logs, to stderr
    pool_size = _pool_size()
    cpus = os.cpu_count() or 0
    try:
        simulator = measure_simulator(args)  # first: a simulator that cannot start fails the run at once
        database, [ballast] = measure(args, pool_size, targets=(BALLAST,))
    except KeyboardInterrupt:
        _status("\ninterrupted; servers stopped, benchmark database dropped")
        return 130
    except RuntimeError as error:  # a server, the simulator or the migration failed to start
        _status(f"benchmark aborted: {error}")
        return 2
    results = [ballast, simulator]
    ratio = simulator.calls_per_s / ballast.calls_per_s if ballast.calls_per_s > 0 else 0.0
    failed_calls = sum(sum(r.errors.values()) + sum(r.errors_outside_window.values()) for r in results)

    print(
        f"Payment creation, {args.concurrency} in flight, {args.duration_s:g} s measured after "
        f"{args.warmup_s:g} s warm-up, DB pool {pool_size}, {cpus} CPUs, PostgreSQL {database}"
    )
    table(results, {**LABELS, SIMULATOR: f"{SIMULATOR} ({PROFILE})"})
    print(f"ratio simulator/ballast: {ratio:.2f} (target > {TARGET_RATIO:.1f})")
    record_ratios(
        "make bench-simulator",
        [Ratio("simulator payment creation / Ballast's CreatePayment", ratio, TARGET_RATIO)],
        f"profile {PROFILE}",
    )
    if failed_calls:
        _status(f"{failed_calls} calls failed: the numbers are meaningless")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
