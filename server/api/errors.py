"""Domain errors -> gRPC status codes with google.rpc details. The only place that mapping lives."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from server.domain.errors import (
    BallastError,
    ConcurrencyConflict,
    DeadlineExceeded,
    IdempotencyKeyReused,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)

STATUS_DETAILS_METADATA_KEY = "grpc-status-details-bin"
ERROR_DOMAIN = "ballast"


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def _details_for(error: BallastError) -> tuple[grpc.StatusCode, list[any_pb2.Any]]:
    if isinstance(error, InvalidArgument):
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                for v in error.violations
            ]
        )
        return grpc.StatusCode.INVALID_ARGUMENT, [_pack(bad_request)]
    if isinstance(error, IdempotencyKeyReused):
        failure = error_details_pb2.PreconditionFailure(
            violations=[
                error_details_pb2.PreconditionFailure.Violation(
                    type="IDEMPOTENCY_KEY_REUSED",
                    subject=f"idempotency_key:{error.idempotency_key}",
                    description=str(error),
                )
            ]
        )
        return grpc.StatusCode.FAILED_PRECONDITION, [_pack(failure)]
    if isinstance(error, NotFound):
        return grpc.StatusCode.NOT_FOUND, [
            _pack(error_details_pb2.ResourceInfo(resource_type=error.kind, resource_name=error.identifier))
        ]
    if isinstance(error, PermissionDenied):
        return grpc.StatusCode.PERMISSION_DENIED, []
    retry = [_pack(error_details_pb2.RetryInfo(retry_delay={"nanos": 50_000_000}))]
    if isinstance(error, ConcurrencyConflict):
        return grpc.StatusCode.ABORTED, retry
    if isinstance(error, DeadlineExceeded):
        return grpc.StatusCode.DEADLINE_EXCEEDED, []
    if isinstance(error, Unavailable):
        return grpc.StatusCode.UNAVAILABLE, retry
    return grpc.StatusCode.INTERNAL, []


def status_for(error: BallastError) -> tuple[grpc.StatusCode, str, tuple[tuple[str, bytes], ...]]:
    """The (code, message, trailing metadata) a handler aborts with for this error."""
    code, details = _details_for(error)
    message = str(error)
    if error.retryable:
        message += " (retryable: repeat the call with the same idempotency key)"
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=message, details=details)
    return code, message, ((STATUS_DETAILS_METADATA_KEY, status.SerializeToString()),)
