"""Domain errors -> gRPC status codes with google.rpc details. The only place that mapping lives."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from server.domain.errors import (
    BallastError,
    ConcurrencyConflict,
    DeadlineExceeded,
    FailedPrecondition,
    IdempotencyKeyReused,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ProviderUnavailable,
    Unavailable,
)
from server.domain.state_machine import IllegalTransition

STATUS_DETAILS_METADATA_KEY = "grpc-status-details-bin"

# Trailers must stay well under gRPC's 8 KiB soft limit on metadata, or clients see RESOURCE_EXHAUSTED
# instead of the error: the message and the details both travel there.
MESSAGE_LENGTH_MAX = 500
FIELD_VIOLATIONS_MAX = 10
DESCRIPTION_LENGTH_MAX = 200


def _shortened(text: str, length_max: int) -> str:
    return text if len(text) <= length_max else text[: length_max - 3] + "..."


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def _precondition_failure(kind: str, subject: str, error: BallastError) -> tuple[grpc.StatusCode, list[any_pb2.Any]]:
    violation = error_details_pb2.PreconditionFailure.Violation(type=kind, subject=subject, description=str(error))
    return grpc.StatusCode.FAILED_PRECONDITION, [_pack(error_details_pb2.PreconditionFailure(violations=[violation]))]


def retry_status(message: str, delay: duration_pb2.Duration) -> bytes:
    """An UNAVAILABLE status with its RetryInfo, serialized for the status-details trailer."""
    status = status_pb2.Status(
        code=code_pb2.UNAVAILABLE, message=message, details=[_pack(error_details_pb2.RetryInfo(retry_delay=delay))]
    )
    serialized: bytes = status.SerializeToString()
    return serialized


def _details_for(error: BallastError) -> tuple[grpc.StatusCode, list[any_pb2.Any]]:
    if isinstance(error, InvalidArgument):
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=_shortened(v.description, DESCRIPTION_LENGTH_MAX)
                )
                for v in error.violations[:FIELD_VIOLATIONS_MAX]
            ]
        )
        return grpc.StatusCode.INVALID_ARGUMENT, [_pack(bad_request)]
    if isinstance(error, IdempotencyKeyReused):
        return _precondition_failure("IDEMPOTENCY_KEY_REUSED", f"idempotency_key:{error.idempotency_key}", error)
    if isinstance(error, IllegalTransition):
        subject = f"{error.machine}:{error.from_state}->{error.to_state}"
        return _precondition_failure("ILLEGAL_TRANSITION", subject, error)
    if isinstance(error, FailedPrecondition):
        return _precondition_failure("FAILED_PRECONDITION", error.subject, error)
    if isinstance(error, NotFound):
        return grpc.StatusCode.NOT_FOUND, [
            _pack(error_details_pb2.ResourceInfo(resource_type=error.kind, resource_name=error.identifier))
        ]
    if isinstance(error, PermissionDenied):
        return grpc.StatusCode.PERMISSION_DENIED, []
    if isinstance(error, ProviderUnavailable):
        seconds, fraction = divmod(max(error.retry_after_s, 0.05), 1)
        delay = {"seconds": int(seconds), "nanos": int(fraction * 1e9)}
        return grpc.StatusCode.UNAVAILABLE, [_pack(error_details_pb2.RetryInfo(retry_delay=delay))]
    retry = [_pack(error_details_pb2.RetryInfo(retry_delay={"nanos": 50_000_000}))]
    if isinstance(error, ConcurrencyConflict):
        return grpc.StatusCode.ABORTED, retry
    if isinstance(error, DeadlineExceeded):
        return grpc.StatusCode.DEADLINE_EXCEEDED, []
    if isinstance(error, Unavailable):
        return grpc.StatusCode.UNAVAILABLE, retry
    return grpc.StatusCode.INTERNAL, []


#: What a caller may do next, by whether the call carried an idempotency key (a write) or not (a read).
RETRY_ADVICE = {
    True: " (retryable: repeat the call with the same idempotency key)",
    False: " (retryable: repeat the call)",
}
#: A deadline that ran out mid-call leaves a write's outcome unknown to its caller: say so, and how to learn it.
DEADLINE_ADVICE = {
    True: (
        "; the outcome is unknown: the request may have taken effect. Repeat the call with the same"
        " idempotency key to learn it: the repeat returns what was done and never does it twice"
    ),
    False: "; nothing was changed: repeat the call, with a longer deadline if it keeps running out",
}


def _advice(error: BallastError, keyed: bool) -> str:
    if isinstance(error, DeadlineExceeded):
        return DEADLINE_ADVICE[keyed]
    return RETRY_ADVICE[keyed] if error.retryable else ""


def status_for(
    error: BallastError, *, keyed: bool = True
) -> tuple[grpc.StatusCode, str, tuple[tuple[str, bytes], ...]]:
    """The (code, message, trailing metadata) a handler aborts with for this error; `keyed` tells
    whether the call carried an idempotency key, which changes what the caller should do next."""
    code, details = _details_for(error)
    message = str(error)
    if isinstance(error, InvalidArgument) and len(error.violations) > FIELD_VIOLATIONS_MAX:
        message = (
            f"{len(error.violations)} fields are invalid, the first {FIELD_VIOLATIONS_MAX} in the details: {message}"
        )
    message = _shortened(message, MESSAGE_LENGTH_MAX) + _advice(error, keyed)
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=message, details=details)
    return code, message, ((STATUS_DETAILS_METADATA_KEY, status.SerializeToString()),)
