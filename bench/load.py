"""The load generator: a fixed number of CreatePayment calls in flight against one target.

`concurrency` worker coroutines share a few channels; each worker sends one call, waits for the
answer and sends the next, so exactly `concurrency` calls are in flight at all times. A call
counts if it completes inside the measurement window (after the warm-up); calls still in flight
when the window closes are awaited (bounded by CALL_TIMEOUT_S) but not counted.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import secrets
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc

if TYPE_CHECKING:
    import aiohttp

from ballast.common.v1 import money_pb2
from ballast.payments.v1 import payments_pb2, payments_pb2_grpc

#: Every call has this deadline, so a stuck server cannot stall the benchmark.
CALL_TIMEOUT_S = 5.0
#: Workers are spread over this many channels, each with its own HTTP/2 connection.
CHANNELS = 4


@dataclass(frozen=True)
class CpuUsage:
    """CPU used during the window, in cores (1.0 = one core busy all the time)."""

    server: float
    load_generator: float
    #: Everything else on the host: mostly PostgreSQL.
    other: float


@dataclass
class LoadResult:
    target: str
    window_s: float
    #: Latencies of the successful calls that completed inside the window.
    latencies_s: list[float] = field(default_factory=list)
    #: Status code name -> failed calls that completed inside the window.
    errors: Counter[str] = field(default_factory=Counter)
    #: The same, for calls that completed during the warm-up or after the window.
    errors_outside_window: Counter[str] = field(default_factory=Counter)
    #: Status code name -> the details of its first failed call, to say what went wrong.
    error_examples: dict[str, str] = field(default_factory=dict)
    cpu: CpuUsage | None = None

    @property
    def calls_per_s(self) -> float:
        return len(self.latencies_s) / self.window_s

    def percentile_ms(self, fraction: float) -> float:
        """Nearest-rank percentile of the successful calls' latency, in milliseconds (NaN if none)."""
        if not self.latencies_s:
            return float("nan")
        ordered = sorted(self.latencies_s)
        rank = max(1, math.ceil(len(ordered) * fraction))
        return ordered[rank - 1] * 1000

    def as_dict(self) -> dict[str, object]:
        return {
            "calls_per_s": round(self.calls_per_s, 1),
            "calls": len(self.latencies_s),
            "window_s": round(self.window_s, 3),
            "p50_ms": round(self.percentile_ms(0.50), 2),
            "p99_ms": round(self.percentile_ms(0.99), 2),
            "errors": dict(self.errors),
            "errors_outside_window": dict(self.errors_outside_window),
            "error_examples": self.error_examples,
            "cpu_cores": None if self.cpu is None else vars(self.cpu),
        }


class _CpuMeter:
    """Linux /proc accounting of CPU time: the server process, this process and the whole host."""

    def __init__(self, server_pid: int) -> None:
        self._server_pid = server_pid
        self._start: tuple[float, float, float, float] | None = None

    @staticmethod
    def _process_s(pid: int | str) -> float:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    @staticmethod
    def _host_busy_s() -> float:
        with open("/proc/stat") as stat:
            ticks = [int(value) for value in stat.readline().split()[1:9]]
        idle = ticks[3] + ticks[4]  # idle + iowait
        return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK")

    def _sample(self) -> tuple[float, float, float, float]:
        return (time.perf_counter(), self._process_s(self._server_pid), self._process_s("self"), self._host_busy_s())

    def start(self) -> None:
        try:
            self._start = self._sample()
        except (OSError, ValueError, IndexError):
            self._start = None  # not Linux, or the server is gone: no CPU figures

    def stop(self) -> CpuUsage | None:
        if self._start is None:
            return None
        try:
            end = self._sample()
        except (OSError, ValueError, IndexError):
            return None
        wall, server, generator, host = (b - a for a, b in zip(self._start, end, strict=True))
        return CpuUsage(
            server=round(server / wall, 2),
            load_generator=round(generator / wall, 2),
            other=round(max(0.0, host - server - generator) / wall, 2),
        )


def _progress(message: str) -> None:
    end = "\r" if sys.stderr.isatty() else "\n"
    print(f"\x1b[2K{message}" if end == "\r" else message, end=end, file=sys.stderr, flush=True)


#: One request of a load test, sent by one of `concurrency` workers: None on success, else
#: (error code, details).
Request = Callable[[int], Awaitable[tuple[str, str] | None]]


async def drive(
    target: str, send: Request, *, server_pid: int, warmup_s: float, duration_s: float, concurrency: int
) -> LoadResult:
    """Keep `concurrency` requests in flight for warmup_s + duration_s; measure the last duration_s.

    `send(worker)` makes one request; it counts if it completes inside the window without error.
    """
    result = LoadResult(target, window_s=duration_s)
    meter = _CpuMeter(server_pid)
    begin = time.perf_counter()
    window_start = begin + warmup_s
    window_end = window_start + duration_s

    async def worker(number: int) -> None:
        while time.perf_counter() < window_end:
            started = time.perf_counter()
            failure = await send(number)
            finished = time.perf_counter()
            code = None if failure is None else failure[0]
            if failure is not None:
                result.error_examples.setdefault(failure[0], failure[1])
            if not window_start <= finished < window_end:
                if code is not None:
                    result.errors_outside_window[code] += 1
            elif code is None:
                result.latencies_s.append(finished - started)
            else:
                result.errors[code] += 1

    async def report_progress() -> None:
        meter_started = False
        while True:
            now = time.perf_counter()
            if now < window_start:
                _progress(f"[{target}] warm-up: {window_start - now:4.1f} s left")
            else:
                if not meter_started:
                    meter.start()
                    meter_started = True
                if now >= window_end:
                    result.cpu = meter.stop()
                    _progress(f"[{target}] window closed; waiting for the calls still in flight")
                    return
                errors = sum(result.errors.values())
                _progress(
                    f"[{target}] measuring: {window_end - now:4.1f} s left,"
                    f" {len(result.latencies_s)} calls, {errors} errors"
                )
            await asyncio.sleep(max(0.0, min(0.5, window_start - now if now < window_start else window_end - now)))

    progress = asyncio.create_task(report_progress())
    await asyncio.gather(*(worker(number) for number in range(concurrency)))
    await progress
    if sys.stderr.isatty():
        print(file=sys.stderr)
    return result


async def run_load(
    target: str,
    address: str,
    *,
    token: str,
    server_pid: int,
    warmup_s: float,
    duration_s: float,
    concurrency: int,
) -> LoadResult:
    """CreatePayment with `concurrency` calls in flight, spread over a few channels."""
    metadata = (("authorization", f"Bearer {token}"),)
    run_id = secrets.token_hex(4)
    sequence = itertools.count()
    amount = money_pb2.Money(value="12.34", currency_code="EUR")
    options = [("grpc.use_local_subchannel_pool", 1)]  # a connection per channel, not one shared
    channels = [grpc.aio.insecure_channel(address, options=options) for _ in range(min(CHANNELS, concurrency))]
    stubs = [payments_pb2_grpc.PaymentServiceStub(channel) for channel in channels]

    async def create_payment(worker: int) -> tuple[str, str] | None:
        request = payments_pb2.CreatePaymentRequest(
            idempotency_key=f"bench-{target}-{run_id}-{next(sequence)}", amount=amount
        )
        try:
            await stubs[worker % len(stubs)].CreatePayment(request, metadata=metadata, timeout=CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError as error:
            return error.code().name, str(error.details())[:200]
        return None

    try:
        return await drive(
            target,
            create_payment,
            server_pid=server_pid,
            warmup_s=warmup_s,
            duration_s=duration_s,
            concurrency=concurrency,
        )
    finally:
        for channel in channels:
            await channel.close()


#: One HTTP request of a load test: None on success, else (error code, details).
HttpRequest = Callable[["aiohttp.ClientSession"], Awaitable[tuple[str, str] | None]]


async def run_http_load(
    target: str, send: HttpRequest, *, server_pid: int, warmup_s: float, duration_s: float, concurrency: int
) -> LoadResult:
    """`send` over HTTP with `concurrency` requests in flight, one keep-alive connection each."""
    import aiohttp

    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=CALL_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        return await drive(
            target,
            lambda _: send(session),
            server_pid=server_pid,
            warmup_s=warmup_s,
            duration_s=duration_s,
            concurrency=concurrency,
        )
