"""`python -m bench.webhooks`: webhook intake throughput against a bare endpoint, and the breaker's fail-fast.

What is measured, in one run on one machine:

  bare (ceiling)  bench/bare_webhook.py: aiohttp, verify the HMAC, insert one row, answer.
  ballast         `python -m server`: POST /webhooks/simulator with a signed `payment.succeeded`
                  for a distinct RECORDED payment each time: signature, the raw delivery stored as
                  evidence, the insert-first processed-event row, the provider's status kept and
                  the payment made due for its check with the provider's API (a webhook is a
                  signal: the resolver's check, not measured here, decides and posts), all committed.
  breaker open    a provider call while the gateway's breaker is open, in this process: the time
                  until the caller learns the provider was not asked.

Targets: Ballast at least 0.40 of the bare endpoint's events/s; breaker-open p99 under 1 ms.
Both servers run as subprocesses on a fresh database (DATABASE_URL's PostgreSQL, or the embedded
one); the load generator (64 requests in flight by default) runs here. The two are measured in
alternating rounds (3 by default), so that a change in the machine's speed during the run (other
work, a warm cache) falls on both; the ratio reported is the median of the rounds' ratios. The exit status is 1 if a
request failed, not if a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import itertools
import json
import secrets
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from decimal import Decimal

import aiohttp
import asyncpg

from bench.harness import (
    RESULTS_DIR,
    ROOT,
    Ratio,
    bench_database,
    free_port,
    migrate,
    postgres_server_url,
    record_ratios,
    redacted,
    server_process,
)
from bench.load import HttpRequest, LoadResult, run_http_load
from server.db.engine import asyncpg_dsn

SECRET = "whsec_bench"  # noqa: S105 - the benchmark's own secret, shared with bench/bare_webhook.py
BARE, BALLAST = "bare (ceiling)", "ballast"
RATIO_TARGET = 0.40
BREAKER_P99_TARGET_MS = 1.0
BREAKER_CALLS = 20_000
READY_TIMEOUT_S = 60
#: Payments seeded for Ballast to move: more than the run can use at the bare endpoint's rate.
SEED_PAYMENTS_PER_S = 6_000


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.webhooks", description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight (default 64)")
    parser.add_argument("--warmup-s", type=float, default=2.0, help="warm-up before measuring (default 2)")
    parser.add_argument("--duration-s", type=float, default=10.0, help="measured window per round (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of bare and Ballast (default 3)")
    args = parser.parse_args(argv)
    if (
        not 1 <= args.concurrency <= 1024
        or not 0 <= args.warmup_s <= 60
        or not 1 <= args.duration_s <= 300
        or not 1 <= args.rounds <= 20
    ):
        parser.error("expected --concurrency 1..1024, --warmup-s 0..60, --duration-s 1..300, --rounds 1..20")
    return args


def _status(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _sign(body: bytes) -> str:
    t = int(time.time())
    return f"t={t},v1={hmac.new(SECRET.encode(), f'{t}.'.encode() + body, hashlib.sha256).hexdigest()}"


def _event(payment_id: str) -> bytes:
    data = {"id": f"pay_{uuid.uuid4().hex[:24]}", "status": "succeeded", "idempotency_key": payment_id}
    return json.dumps({"id": f"evt_{uuid.uuid4().hex}", "type": "payment.succeeded", "data": {"object": data}}).encode()


async def _seed_payments(database_url: str, count: int) -> list[str]:
    """`count` RECORDED payments, written set-wise: the benchmark measures intake, not their creation."""
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await connection.execute(
            "INSERT INTO idempotency_keys (client_id, idempotency_key, operation, request_fingerprint, resource_id)"
            " SELECT 'bench', 'k' || g, 'payments.create', sha256(g::text::bytea), gen_random_uuid()"
            " FROM generate_series(1, $1) AS g",
            count,
        )
        await connection.execute(
            "INSERT INTO payments (id, client_id, idempotency_key, amount, currency_code, state)"
            " SELECT resource_id, client_id, idempotency_key, 10.00, 'EUR', 'RECORDED'"
            " FROM idempotency_keys WHERE client_id = 'bench'"
        )
        return [str(row["id"]) for row in await connection.fetch("SELECT id FROM payments WHERE client_id = 'bench'")]
    finally:
        await connection.close()


def _wait_http(url: str, process: subprocess.Popen[bytes] | None = None) -> None:
    import urllib.request

    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1):  # noqa: S310 - a loopback URL of our own
                return
        except OSError:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"{url}: the server exited with {process.returncode}") from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not answer within {READY_TIMEOUT_S} s") from None
            time.sleep(0.2)


@contextmanager
def _bare(database_url: str) -> Iterator[tuple[str, int]]:
    port = free_port()
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    with open(RESULTS_DIR / "bare_webhook.log", "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "bench.bare_webhook", "--port", str(port)],
            cwd=ROOT,
            env={"DATABASE_URL": database_url, "PATH": "/usr/bin:/bin"},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            _wait_http(f"http://127.0.0.1:{port}/healthz", process)
            yield f"http://127.0.0.1:{port}/webhooks/simulator", process.pid
        finally:
            process.terminate()
            process.wait(10)


@contextmanager
def _ballast(database_url: str) -> Iterator[tuple[str, int]]:
    grpc_port, http_port = free_port(), free_port()
    env = {
        "DATABASE_URL": database_url,
        "BALLAST_GRPC_HOST": "127.0.0.1",
        "BALLAST_GRPC_PORT": str(grpc_port),
        "BALLAST_HTTP_PORT": str(http_port),
        "BALLAST_API_TOKENS": f"{secrets.token_urlsafe(24)}=bench:service",
        "BALLAST_METRICS_PORT": "0",
        "BALLAST_RELAY_WORKERS": "0",  # intake alone; the relay has a benchmark of its own
        "BALLAST_PROVIDER_URL": "off",  # the webhooks come from the load generator
        "BALLAST_PROVIDER_WEBHOOK_SECRET": SECRET,
        "BALLAST_SHUTDOWN_GRACE_MS": "1000",
        "BALLAST_LOG_LEVEL": "WARNING",
    }
    with server_process("ballast_webhooks", [sys.executable, "-m", "server", "serve"], env, grpc_port) as pid:
        _wait_http(f"http://127.0.0.1:{http_port}/healthz")
        yield f"http://127.0.0.1:{http_port}/webhooks/simulator", pid


def _poster(url: str, payment_ids: Iterator[str]) -> HttpRequest:
    async def post(session: aiohttp.ClientSession) -> tuple[str, str] | None:
        body = _event(next(payment_ids))
        headers = {"Content-Type": "application/json", "Simulator-Signature": _sign(body)}
        try:
            async with session.post(url, data=body, headers=headers) as response:
                answer = await response.read()
        except (aiohttp.ClientError, TimeoutError) as error:
            return type(error).__name__, str(error)[:200]
        if response.status != 200:
            return f"HTTP_{response.status}", answer[:200].decode(errors="replace")
        if b'"confirming"' not in answer and b'"applied"' not in answer and b'"received": true' not in answer:
            return "NOT_APPLIED", answer[:200].decode(errors="replace")
        return None

    return post


async def _breaker_open_latencies_ms() -> list[float]:
    """A gateway call while its breaker is open, BREAKER_CALLS times, in this process."""
    from server.providers.breaker import Breaker, BreakerSettings
    from server.providers.gateway import GatewayClient, NotSent

    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        dead_url = f"http://127.0.0.1:{unused.getsockname()[1]}"
    async with aiohttp.ClientSession() as session:
        gateway = GatewayClient(
            "simulator", dead_url, session, Breaker("bench", BreakerSettings(failures_max=1, open_s=600))
        )
        latencies = []
        for _ in range(BREAKER_CALLS + 1):  # the first call is refused by the dead port and opens it
            started = time.perf_counter()
            try:
                await gateway.create_payment(str(uuid.uuid4()), Decimal("1.00"), "EUR", "bench", timeout_s=1)
            except NotSent:
                latencies.append((time.perf_counter() - started) * 1000)
    return sorted(latencies[1:])


def _row(result: LoadResult) -> str:
    errors = sum(result.errors.values())
    cpu = result.cpu
    cores = "" if cpu is None else f"{cpu.server:6.2f} {cpu.load_generator:8.2f} {cpu.other:6.2f}"
    return (
        f"{result.target:<16}{result.calls_per_s:>10.1f}{result.percentile_ms(0.5):>9.2f}"
        f"{result.percentile_ms(0.99):>9.2f}{errors:>8}   {cores}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from server.observability import configure_logging

    configure_logging("WARNING", "console")
    server_url, source = postgres_server_url()
    rounds: list[tuple[LoadResult, LoadResult]] = []
    with bench_database(server_url) as database_url:
        _status(f"database {source}: {redacted(database_url)}; migrating")
        migrate(database_url)
        seeded = int(SEED_PAYMENTS_PER_S * (args.warmup_s + args.duration_s + 5) * args.rounds)
        _status(f"seeding {seeded} recorded payments...")
        payment_ids = iter(asyncio.run(_seed_payments(database_url, seeded)))
        bare_ids = (str(n) for n in itertools.count())
        _status("starting the bare endpoint and Ballast")
        with _bare(database_url) as (bare_url, bare_pid), _ballast(database_url) as (ballast_url, ballast_pid):
            for number in range(1, args.rounds + 1):
                measured = []
                for target, url, pid, ids in (
                    (BARE, bare_url, bare_pid, bare_ids),
                    (BALLAST, ballast_url, ballast_pid, payment_ids),
                ):
                    _status(f"round {number} of {args.rounds}: [{target}]")
                    load = run_http_load(
                        target,
                        _poster(url, ids),
                        server_pid=pid,
                        warmup_s=args.warmup_s,
                        duration_s=args.duration_s,
                        concurrency=args.concurrency,
                    )
                    measured.append(asyncio.run(load))
                rounds.append((measured[0], measured[1]))
    _status("breaker open: timing provider calls...")
    breaker_ms = asyncio.run(_breaker_open_latencies_ms())

    print(
        f"webhook intake, {args.concurrency} requests in flight, {args.rounds} rounds of {args.duration_s:g} s"
        f" each, PostgreSQL {source}"
    )
    print(f"round {'target':<16}{'events/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}   CPU: server loadgen other")
    ratios = []
    for number, (bare, ballast) in enumerate(rounds, start=1):
        for result in (bare, ballast):
            print(f"{number:<6}{_row(result)}")
        ratios.append(ballast.calls_per_s / bare.calls_per_s if bare.calls_per_s else float("nan"))
    listed = ", ".join(f"{ratio:.2f}" for ratio in ratios)
    print(f"ratio ballast/bare: {statistics.median(ratios):.2f}, the median of {listed} (target >= {RATIO_TARGET:.2f})")
    p50, p99 = breaker_ms[len(breaker_ms) // 2], breaker_ms[int(len(breaker_ms) * 0.99)]
    print(
        f"breaker open: {len(breaker_ms)} calls refused, p50 {p50 * 1000:.0f} us, p99 {p99 * 1000:.0f} us"
        f" (target p99 < {BREAKER_P99_TARGET_MS:g} ms)"
    )
    record_ratios(
        "make bench-webhooks",
        [Ratio("webhook intake / bare verify-and-insert (median of rounds)", statistics.median(ratios), RATIO_TARGET)],
        f"breaker open: p99 {p99 * 1000:.0f} us (target < {BREAKER_P99_TARGET_MS:g} ms)",
    )
    results = [result for pair in rounds for result in pair]
    for result in results:
        for code, example in result.error_examples.items():
            print(f"  {result.target}: {code}: {example}", file=sys.stderr)
    return 1 if any(result.errors for result in results) else 0


if __name__ == "__main__":
    sys.exit(main())
