"""Domain errors -> gRPC status codes with google.rpc details. The only place that mapping lives."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from server.domain.errors import (
    BallastError,
    ConcurrencyConflict,
    DeadlineExceeded,
    Defect,
    FailedPrecondition,
    IdempotencyKeyReused,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ProviderUnavailable,
    Unavailable,
)
from server.domain.order_legs import FillError
from server.domain.provider_status import UnknownProviderStatus
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


#: The status code of each kind of operating error: a subclass takes its nearest listed ancestor's. Every
#: kind has one on purpose (a test walks every BallastError subclass); a Defect is answered INTERNAL.
STATUS_CODES: dict[type[BallastError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    IdempotencyKeyReused: grpc.StatusCode.FAILED_PRECONDITION,
    IllegalTransition: grpc.StatusCode.FAILED_PRECONDITION,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    # venue evidence a leg cannot hold: the leg as it stands refuses it
    FillError: grpc.StatusCode.FAILED_PRECONDITION,
    ConcurrencyConflict: grpc.StatusCode.ABORTED,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    # a provider's answer in words Ballast cannot read: nothing was decided on it; ask again later
    UnknownProviderStatus: grpc.StatusCode.UNAVAILABLE,
}


def status_code_of(kind: type[BallastError]) -> grpc.StatusCode | None:
    """The kind's status code (its nearest listed ancestor's); None for a kind nobody gave one."""
    return next((STATUS_CODES[base] for base in kind.__mro__ if base in STATUS_CODES), None)


def _precondition_failure(kind: str, subject: str, error: BallastError) -> list[any_pb2.Any]:
    violation = error_details_pb2.PreconditionFailure.Violation(type=kind, subject=subject, description=str(error))
    return [_pack(error_details_pb2.PreconditionFailure(violations=[violation]))]


def retry_status(message: str, delay: duration_pb2.Duration) -> bytes:
    """An UNAVAILABLE status with its RetryInfo, serialized for the status-details trailer."""
    status = status_pb2.Status(
        code=code_pb2.UNAVAILABLE, message=message, details=[_pack(error_details_pb2.RetryInfo(retry_delay=delay))]
    )
    serialized: bytes = status.SerializeToString()
    return serialized


#: What a caller that may repeat the call is told to wait first.
RETRY_DELAY = duration_pb2.Duration(nanos=50_000_000)


def _details_for(error: BallastError) -> list[any_pb2.Any]:
    """The google.rpc details that say, in machine-readable form, what is wrong and what to do."""
    if isinstance(error, InvalidArgument):
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=_shortened(v.description, DESCRIPTION_LENGTH_MAX)
                )
                for v in error.violations[:FIELD_VIOLATIONS_MAX]
            ]
        )
        return [_pack(bad_request)]
    if isinstance(error, IdempotencyKeyReused):
        return _precondition_failure("IDEMPOTENCY_KEY_REUSED", f"idempotency_key:{error.idempotency_key}", error)
    if isinstance(error, IllegalTransition):
        subject = f"{error.machine}:{error.from_state}->{error.to_state}"
        return _precondition_failure("ILLEGAL_TRANSITION", subject, error)
    if isinstance(error, FailedPrecondition):
        return _precondition_failure("FAILED_PRECONDITION", error.subject, error)
    if isinstance(error, NotFound):
        return [_pack(error_details_pb2.ResourceInfo(resource_type=error.kind, resource_name=error.identifier))]
    if isinstance(error, ProviderUnavailable):
        seconds, fraction = divmod(error.retry_after_s, 1)
        delay = duration_pb2.Duration(seconds=int(seconds), nanos=int(fraction * 1e9))
        return [_pack(error_details_pb2.RetryInfo(retry_delay=delay))]
    if isinstance(error, ConcurrencyConflict | Unavailable):
        return [_pack(error_details_pb2.RetryInfo(retry_delay=RETRY_DELAY))]
    return []


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


#: A deadline that ran out before anything began: nothing was done, and only a longer deadline helps.
NOT_BEGUN_ADVICE = "; nothing was done: repeat the call with a longer deadline"


def _advice(error: BallastError, keyed: bool) -> str:
    if isinstance(error, DeadlineExceeded):
        return DEADLINE_ADVICE[keyed] if error.begun else NOT_BEGUN_ADVICE
    return RETRY_ADVICE[keyed] if error.retryable else ""


def status_for(
    error: BallastError, *, keyed: bool = True
) -> tuple[grpc.StatusCode, str, tuple[tuple[str, bytes], ...]]:
    """The (code, message, trailing metadata) a handler aborts with for this error; `keyed` tells
    whether the call carried an idempotency key, which changes what the caller should do next.
    Raises Defect for a kind of error nobody gave a status code (a test keeps that from happening)."""
    code = status_code_of(type(error))
    if code is None:
        raise Defect(f"{type(error).__name__} has no status code: add it to STATUS_CODES") from error
    details = _details_for(error)
    message = str(error)
    if isinstance(error, InvalidArgument) and len(error.violations) > FIELD_VIOLATIONS_MAX:
        message = (
            f"{len(error.violations)} fields are invalid, the first {FIELD_VIOLATIONS_MAX} in the details: {message}"
        )
    message = _shortened(message, MESSAGE_LENGTH_MAX) + _advice(error, keyed)
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=message, details=details)
    return code, message, ((STATUS_DETAILS_METADATA_KEY, status.SerializeToString()),)
