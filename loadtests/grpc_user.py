"""A Locust User that speaks Ballast's gRPC API: gevent-compatible gRPC, one channel per user, a deadline on
every call, and every call reported to Locust as `<Method> <STATUS>` (so `CreatePayment OK` and
`CreatePayment UNAVAILABLE` are rows of their own in Locust's table).

Where the load goes and as whom, from the environment (`python -m loadtests` sets them for a world it
starts):

  BALLAST_LOAD_TARGETS        the servers' gRPC addresses, comma-separated (default: Locust's --host,
                              else 127.0.0.1:50051); each user takes one, round robin
  BALLAST_TOKEN               the client's bearer token (default: the development token under
                              BALLAST_DATA_DIR, as `make token` prints it)
  BALLAST_OPERATOR_TOKEN      an operator's token, for the operator user (default: BALLAST_TOKEN)
  BALLAST_LOAD_DEADLINE_S     each call's deadline (default CALL_DEADLINE_S)
  BALLAST_LOAD_HISTORY        a file each payment and refund call is appended to, as the chaos
                              harness's history (chaos/history.py), so its checker can judge the run
"""

from __future__ import annotations

# gRPC's own threads must cooperate with gevent before any channel exists
import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()

import itertools  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, ClassVar, TypeVar  # noqa: E402

import grpc  # noqa: E402
from locust import User  # noqa: E402

#: Each call's deadline unless BALLAST_LOAD_DEADLINE_S says otherwise: the chaos clients' own, longer than
#: the server's provider timeout, so a hanging provider is answered by Ballast (UNKNOWN, or UNAVAILABLE
#: once its breaker opens).
from chaos.load import CALL_DEADLINE_S  # noqa: E402

DEFAULT_TARGET = "127.0.0.1:50051"
#: The reported "request type" of every call (Locust's first column).
REQUEST_TYPE = "grpc"

Response = TypeVar("Response")
_next_target = itertools.count()


class Outcome:
    """What a call got: its response or its error's status, and how long it took."""

    __slots__ = ("code", "details", "error", "response", "seconds")

    def __init__(
        self, code: grpc.StatusCode, response: Any, details: str, seconds: float, error: grpc.RpcError | None = None
    ) -> None:
        self.code, self.response, self.details, self.seconds, self.error = code, response, details, seconds, error

    @property
    def ok(self) -> bool:
        return bool(self.code == grpc.StatusCode.OK)


def targets(host: str | None) -> list[str]:
    listed = [target.strip() for target in os.environ.get("BALLAST_LOAD_TARGETS", "").split(",") if target.strip()]
    if listed:
        return listed
    if host:
        return [host.removeprefix("grpc://").removeprefix("http://").rstrip("/")]
    return [DEFAULT_TARGET]


def client_token() -> str:
    token = os.environ.get("BALLAST_TOKEN", "").strip()
    if token:
        return token
    from server.settings import development_token

    return development_token(Path(os.environ.get("BALLAST_DATA_DIR", "").strip() or ".data").absolute())


def deadline_s() -> float:
    raw = os.environ.get("BALLAST_LOAD_DEADLINE_S", "").strip()
    deadline = float(raw) if raw else CALL_DEADLINE_S
    if not 0.05 <= deadline <= 60:
        raise ValueError(f"BALLAST_LOAD_DEADLINE_S={raw!r}: a deadline is 0.05 to 60 seconds")
    return deadline


class HistoryFile:
    """The payment and refund calls of this load generator, appended as the chaos harness's history lines
    (one JSON object a line), their times in seconds since BALLAST_LOAD_EPOCH (the harness's clock)."""

    def __init__(self, path: Path | None, epoch: float) -> None:
        self._path, self._epoch = path, epoch
        self._lock = threading.Lock()
        self._file = None if path is None else path.open("a", encoding="utf-8")

    @classmethod
    def from_environment(cls) -> HistoryFile:
        raw = os.environ.get("BALLAST_LOAD_HISTORY", "").strip()
        epoch = float(os.environ.get("BALLAST_LOAD_EPOCH", "") or time.time())
        return cls(Path(raw) if raw else None, epoch)

    def record(self, kind: str, process: str, key: str, **fields: Any) -> None:
        if self._file is None:
            return
        line = {"kind": kind, "process": process, "idempotency_key": key, "time_s": time.time() - self._epoch}
        line |= {name: value for name, value in fields.items() if value is not None}
        with self._lock:
            self._file.write(json.dumps(line) + "\n")
            self._file.flush()


HISTORY = HistoryFile.from_environment()


class GrpcUser(User):
    """One client of Ballast: a channel of its own to one server, its token on every call."""

    abstract = True
    #: the metadata its calls carry (a bearer token); the operator user uses an operator's
    bearer_from: ClassVar[str] = "BALLAST_TOKEN"

    def on_start(self) -> None:
        addresses = targets(self.host)
        self.address = addresses[next(_next_target) % len(addresses)]
        self.channel = grpc.insecure_channel(self.address)
        token = os.environ.get(self.bearer_from, "").strip() or client_token()
        self.metadata = (("authorization", f"Bearer {token}"),)
        self.deadline_s = deadline_s()
        self.process = f"locust-{uuid.uuid4().hex[:12]}"  # unique for the run: users come and go
        self.make_stubs()

    def make_stubs(self) -> None:
        """Build the stubs this user calls, on self.channel."""

    def on_stop(self) -> None:
        self.channel.close()

    def call(self, method: str, invoke: Callable[..., Response], request: Any) -> Outcome:
        """`invoke(request)` under the deadline with this user's metadata, reported to Locust as
        `<method> <STATUS>`: a status other than OK counts as a failure in Locust's table."""
        started = time.perf_counter()
        try:
            response = invoke(request, timeout=self.deadline_s, metadata=self.metadata)
            outcome = Outcome(grpc.StatusCode.OK, response, "", time.perf_counter() - started)
        except grpc.RpcError as error:
            code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
            details = (error.details() if isinstance(error, grpc.Call) else str(error)) or ""
            outcome = Outcome(code, None, details, time.perf_counter() - started, error)
        size = outcome.response.ByteSize() if outcome.response is not None else 0
        self.environment.events.request.fire(
            request_type=REQUEST_TYPE,
            name=f"{method} {outcome.code.name}",
            response_time=outcome.seconds * 1000,
            response_length=size,
            exception=None if outcome.ok else CallFailed(outcome.code, outcome.details),
            context={"address": self.address},
        )
        return outcome


class CallFailed(Exception):
    """A call answered with a status other than OK (Locust's failures table shows it)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details[:200]}")
        self.code = code
