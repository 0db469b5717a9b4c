"""Errors with two roots: every operating error has a deliberate status code, and a bug is answered
INTERNAL on purpose, logged loudly, never by falling through."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

import grpc
import pytest
import structlog
from google.rpc import error_details_pb2, status_pb2

import server
from ballast.payments.v1 import payments_pb2
from server.api.errors import STATUS_DETAILS_METADATA_KEY, status_code_of, status_for
from server.api.handlers import INTERNAL_MESSAGE, translate_errors
from server.domain.errors import BallastError, DeadlineExceeded, Defect, NotFound, ProviderUnavailable

#: Modules that run something when imported (the migration environment runs Alembic).
NOT_IMPORTED = ("server.db.migrations", "server.__main__")


def _every_kind_of(root: type[BaseException]) -> set[type[BaseException]]:
    for module in pkgutil.walk_packages(server.__path__, "server."):
        if not module.name.startswith(NOT_IMPORTED):
            importlib.import_module(module.name)
    kinds: set[type[BaseException]] = set()
    pending = [root]
    while pending:
        for kind in pending.pop().__subclasses__():
            if kind.__module__.startswith("server.") and kind not in kinds:
                kinds.add(kind)
                pending.append(kind)
    return kinds


def test_every_kind_of_operating_error_has_a_deliberate_status_code() -> None:
    kinds = _every_kind_of(BallastError)
    assert len(kinds) >= 10  # the walk found them: a walk that finds nothing proves nothing
    codes = {kind.__name__: status_code_of(kind) for kind in kinds}  # type: ignore[arg-type]
    assert all(code is not None for code in codes.values()), [name for name, code in codes.items() if code is None]
    # INTERNAL is for defects, UNKNOWN for nothing Ballast says on purpose
    assert not {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.OK} & set(codes.values()), codes


def test_a_defect_is_not_an_operating_error() -> None:
    assert not issubclass(Defect, BallastError)
    assert not _every_kind_of(Defect) & _every_kind_of(BallastError)


def test_a_kind_nobody_gave_a_status_code_is_a_defect_not_a_silent_internal() -> None:
    class Forgotten(BallastError):
        pass

    with pytest.raises(Defect, match="Forgotten has no status code"):
        status_for(Forgotten("something"))


class _Context:
    """What translate_errors asks of a call's context: its deadline, and the abort it answers with."""

    def __init__(self) -> None:
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    def time_remaining(self) -> float:
        return 5.0

    async def abort(self, code: grpc.StatusCode, message: str, trailing_metadata: Any = ()) -> None:
        self.aborted = (code, message)
        raise grpc.aio.AbortError()


class _Servicer:
    _request_timeout_s = 5.0

    @translate_errors
    async def Broken(self, request: Any, context: Any) -> Any:
        raise Defect("an unbalanced posting built by our own code")

    @translate_errors
    async def Missing(self, request: Any, context: Any) -> Any:
        raise NotFound("payment", "x")


async def test_a_defect_in_a_handler_is_answered_internal_on_purpose_and_logged_loudly() -> None:
    context = _Context()
    with structlog.testing.capture_logs() as logs, pytest.raises(grpc.aio.AbortError):
        await _Servicer().Broken(payments_pb2.GetPaymentRequest(), context)
    assert context.aborted == (grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)
    (logged,) = [entry for entry in logs if entry["event"] == "rpc.defect"]
    assert logged["log_level"] == "error" and "unbalanced posting" in logged["defect"]


async def test_an_operating_error_in_a_handler_is_answered_with_its_own_code() -> None:
    context = _Context()
    with pytest.raises(grpc.aio.AbortError):
        await _Servicer().Missing(payments_pb2.GetPaymentRequest(), context)
    assert context.aborted is not None and context.aborted[0] is grpc.StatusCode.NOT_FOUND


def test_a_deadline_that_ran_out_before_anything_began_says_nothing_was_done() -> None:
    _, message, _ = status_for(DeadlineExceeded("ran out before Ballast could begin it", begun=False))
    assert "nothing was done" in message and "unknown" not in message
    _, message, _ = status_for(DeadlineExceeded("ran out mid-call"))
    assert "the outcome is unknown" in message


def test_a_provider_not_asked_says_the_same_wait_in_its_message_and_its_retry_info() -> None:
    code, message, trailing = status_for(ProviderUnavailable("simulator", "too little time", 0.0))
    status = status_pb2.Status.FromString(dict(trailing)[STATUS_DETAILS_METADATA_KEY])
    retry = error_details_pb2.RetryInfo()
    assert code is grpc.StatusCode.UNAVAILABLE and status.details[0].Unpack(retry)
    waited_s = retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9
    assert waited_s > 0 and f"retry in {waited_s:.2f} s" in message
