"""`python -m bench`: Ballast's CreatePayment throughput and latency, against the ceiling of a bare server.

What is measured: calls per second and p50/p99 latency of PaymentService.CreatePayment with
`--concurrency` calls (default 64) in flight, for `--duration-s` after a `--warmup-s` warm-up,
against two servers, one after the other, with the same load generator and settings:

  bare (ceiling)  bench/bare_server.py: grpc.aio + an asyncpg pool of the same size, one
                  transaction per call (BEGIN; INSERT key; INSERT payment; COMMIT), nothing else.
  bare uvloop     the same server on uvloop, writing the key and the payment with one statement
  1 st            (one round trip): the strongest ceiling, the best one Python process does here.
  ballast         `python -m server`, migrated with `python -m server migrate`, with no provider
                  (BALLAST_PROVIDER_URL=off): recording a payment, the work the bare server
                  does. Provider calls and webhooks have a benchmark of their own
                  (`python -m bench.webhooks`).

Why: on a given machine and PostgreSQL, absolute numbers say little; the ratio to what grpc.aio
and asyncpg can do at all with the same shape of work says how much Ballast's own code costs
(authentication, validation, idempotency, error mapping, budgets). The targets are ratios of at
least 0.70 to the bare ceiling and 0.90 to the strongest one.

Both servers run as subprocesses against a fresh database `ballast_bench_<random>` (dropped at
the end) on the PostgreSQL of DATABASE_URL, or on the embedded PostgreSQL when it is unset. The
load generator runs in this process. Every wait is bounded and the servers are stopped on exit,
Ctrl-C included. Progress goes to stderr; the table to stdout; server logs to bench/results/.

The CPU columns are the cores kept busy during the window by the server process, by this load
generator, and by everything else (mostly PostgreSQL); they say which of them ran out. On a small
machine the three share the cores, the same way for both targets.

"Ceiling" means the same work with none of Ballast's code, not a strict upper bound: Ballast
writes its key and payment with one statement (one round trip), the bare server with four
(BEGIN, INSERT, INSERT, COMMIT), so a ratio above 1.0 is possible.

With --check the exit status is 1 if the ratio is below the target or if any call failed
(failed calls make the numbers meaningless either way).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import signal
import sys
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from types import FrameType

from bench.harness import (
    Ratio,
    bench_database,
    free_port,
    migrate,
    postgres_server_url,
    record_ratios,
    redacted,
    server_process,
)
from bench.load import CpuUsage, LoadResult, run_load

TARGET_RATIO = 0.70
#: Ballast against the strongest ceiling: a bare server on uvloop writing the same rows with one statement.
STRONG_TARGET_RATIO = 0.90
BARE = "bare"
STRONG = "strong"
BALLAST = "ballast"
LABELS = {BARE: "bare (ceiling)", STRONG: "bare uvloop 1 st", BALLAST: "ballast"}


def _bounded(low: float, high: float, kind: type[int] | type[float]) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = kind(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{raw!r} is not a number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{raw} is not from {low} to {high}")
        return value

    return parse


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="CreatePayment throughput and latency of Ballast against a bare grpc.aio + asyncpg ceiling.",
    )
    parser.add_argument("--duration-s", type=_bounded(1, 600, float), default=10.0, help="measured seconds per target")
    parser.add_argument("--warmup-s", type=_bounded(0, 120, float), default=2.0, help="unmeasured seconds first")
    parser.add_argument("--concurrency", type=_bounded(1, 1024, int), default=64, help="calls in flight")
    parser.add_argument(
        "--check", action="store_true", help=f"exit 1 if the ratio is below {TARGET_RATIO} or a call failed"
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON to PATH")
    return parser.parse_args(argv)


def _pool_size() -> int:
    """Ballast's pool size (BALLAST_DB_POOL_SIZE, default 20 as in server/settings.py); the bare server's too."""
    raw = os.environ.get("BALLAST_DB_POOL_SIZE", "").strip() or "20"
    if not raw.isdigit() or not 1 <= int(raw) <= 500:
        raise SystemExit(f"BALLAST_DB_POOL_SIZE={raw!r} is invalid: expected an integer from 1 to 500")
    return int(raw)


def _status(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM cleans up like Ctrl-C


def _server_command(
    name: str, port: int, database_url: str, pool_size: int, token: str
) -> tuple[list[str], dict[str, str]]:
    """(argv, environment overrides) of one target's server process."""
    if name in (BARE, STRONG):
        argv = ["-m", "bench.bare_server", "--port", str(port), "--pool-size", str(pool_size)]
        if name == STRONG:
            argv += ["--uvloop", "--one-statement"]
        return [sys.executable, *argv], {"DATABASE_URL": database_url}
    return [sys.executable, "-m", "server", "serve"], {
        "DATABASE_URL": database_url,
        "BALLAST_GRPC_HOST": "127.0.0.1",
        "BALLAST_GRPC_PORT": str(port),
        "BALLAST_API_TOKENS": f"{token}=bench:service",
        "BALLAST_DB_POOL_SIZE": str(pool_size),
        "BALLAST_SHUTDOWN_GRACE_MS": "1000",
        "BALLAST_METRICS_PORT": "0",  # a development server may hold the default port
        "BALLAST_RELAY_WORKERS": "0",  # CreatePayment alone; the relay has a benchmark of its own
        # recording a payment, as the bare ceiling records one; provider calls are benchmarked apart
        "BALLAST_PROVIDER_URL": "off",
        "BALLAST_HTTP_PORT": "0",
    }


def measure(
    args: argparse.Namespace, pool_size: int, targets: Sequence[str] = (BARE, STRONG, BALLAST)
) -> tuple[str, list[LoadResult]]:
    """Run the targets one after the other; returns (where PostgreSQL is, results)."""
    token = secrets.token_urlsafe(24)
    with ExitStack() as stack:
        server_url, source = postgres_server_url()
        database_url = stack.enter_context(bench_database(server_url))
        database = f"{source}: {redacted(database_url)}"
        _status(f"database {database}; migrating")
        migrate(database_url)

        results = []
        for name in targets:
            port = free_port()
            command, env = _server_command(name, port, database_url, pool_size, token)
            _status(f"[{name}] starting")
            with server_process(name, command, env, port) as pid:
                load = run_load(
                    name,
                    f"127.0.0.1:{port}",
                    token=token,
                    server_pid=pid,
                    warmup_s=args.warmup_s,
                    duration_s=args.duration_s,
                    concurrency=args.concurrency,
                )
                results.append(asyncio.run(load))
        return database, results


def _cpu_cells(cpu: CpuUsage | None) -> tuple[str, str, str]:
    if cpu is None:
        return "-", "-", "-"
    return f"{cpu.server:.2f}", f"{cpu.load_generator:.2f}", f"{cpu.other:.2f}"


def table(results: list[LoadResult], labels: dict[str, str]) -> None:
    """One row per target: calls/s, p50, p99, errors, CPU; then what the errors were."""
    header = f"{'target':<16}{'calls/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}   CPU cores: server  loadgen  other"
    print(header)
    print("-" * len(header))
    for result in results:
        server, load_generator, other = _cpu_cells(result.cpu)
        print(
            f"{labels[result.target]:<16}{result.calls_per_s:>10.1f}{result.percentile_ms(0.50):>9.2f}"
            f"{result.percentile_ms(0.99):>9.2f}{sum(result.errors.values()):>8}"
            f"{'':>14}{server:>6}{load_generator:>9}{other:>7}"
        )
    for result in results:
        if result.errors or result.errors_outside_window:
            print(
                f"  {labels[result.target]} errors: in window {dict(result.errors)}, "
                f"in warm-up or drain {dict(result.errors_outside_window)}"
            )
            for code, details in result.error_examples.items():
                print(f"    {code}: {details}")


def report(results: list[LoadResult], ratio: float, strong_ratio: float) -> None:
    table(results, LABELS)
    print(f"ratio: {ratio:.2f} (target >= {TARGET_RATIO:.2f}: {'met' if ratio >= TARGET_RATIO else 'MISSED'})")
    print(
        f"ratio to the strongest ceiling (uvloop, one statement): {strong_ratio:.2f}"
        f" (target >= {STRONG_TARGET_RATIO:.2f}: {'met' if strong_ratio >= STRONG_TARGET_RATIO else 'MISSED'})"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    from server.observability import configure_logging

    configure_logging("WARNING", "console")  # the embedded PostgreSQL's start-up logs, to stderr
    pool_size = _pool_size()
    cpus = os.cpu_count() or 0
    try:
        database, results = measure(args, pool_size)
    except KeyboardInterrupt:
        _status("\ninterrupted; servers stopped, benchmark database dropped")
        return 130
    except RuntimeError as error:  # a server or the migration failed to start; the message says how
        _status(f"benchmark aborted: {error}")
        return 2
    bare, strong, ballast = results
    ratio = ballast.calls_per_s / bare.calls_per_s if bare.calls_per_s > 0 else 0.0
    strong_ratio = ballast.calls_per_s / strong.calls_per_s if strong.calls_per_s > 0 else 0.0
    failed_calls = sum(sum(r.errors.values()) + sum(r.errors_outside_window.values()) for r in results)
    passed = ratio >= TARGET_RATIO and strong_ratio >= STRONG_TARGET_RATIO and failed_calls == 0

    print(
        f"CreatePayment, {args.concurrency} calls in flight, {args.duration_s:g} s measured after "
        f"{args.warmup_s:g} s warm-up, DB pool {pool_size}, {cpus} CPUs, PostgreSQL {database}"
    )
    report(results, ratio, strong_ratio)
    record_ratios(
        "make bench",
        [
            Ratio("CreatePayment / bare grpc.aio ceiling", ratio, TARGET_RATIO),
            Ratio("CreatePayment / strongest ceiling (uvloop, one statement)", strong_ratio, STRONG_TARGET_RATIO),
        ],
        f"{ballast.calls_per_s:.0f} calls/s at {args.concurrency} in flight",
    )
    if args.json is not None:
        document = {
            "settings": {
                "duration_s": args.duration_s,
                "warmup_s": args.warmup_s,
                "concurrency": args.concurrency,
                "db_pool_size": pool_size,
            },
            "machine": {"cpus": cpus, "python": platform.python_version(), "platform": platform.platform()},
            "database": database,
            "targets": {result.target: result.as_dict() for result in results},
            "ratio": round(ratio, 4),
            "target_ratio": TARGET_RATIO,
            "strong_ratio": round(strong_ratio, 4),
            "strong_target_ratio": STRONG_TARGET_RATIO,
            "failed_calls": failed_calls,
            "passed": passed,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    if args.check and not passed:
        reason = (
            f"{failed_calls} calls failed"
            if failed_calls
            else f"ratios {ratio:.2f} and {strong_ratio:.2f}: targets {TARGET_RATIO:.2f} and {STRONG_TARGET_RATIO:.2f}"
        )
        _status(f"check failed: {reason}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
