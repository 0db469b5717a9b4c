"""What a gRPC error says: its code, and the google.rpc details in its status trailer."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import asyncpg
import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from ballast.payments.v1 import payments_pb2, payments_pb2_grpc
from tests.support.probes import payment_rows_of
from tests.support.servers import Caller


def status_details(error: grpc.aio.AioRpcError) -> list[Any]:
    """The details of the google.rpc.Status an error carries (which it must)."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, f"{error.code().name} must carry a google.rpc.Status trailer"
    return list(status.details)


def field_violations(error: grpc.aio.AioRpcError) -> set[str]:
    """The fields named by the google.rpc.BadRequest in an error's status details."""
    fields: set[str] = set()
    for detail in status_details(error):
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request):
            fields |= {violation.field for violation in bad_request.field_violations}
    return fields


def precondition_subjects(error: grpc.aio.AioRpcError) -> list[str]:
    """The subjects named by the google.rpc.PreconditionFailure in an error's status details."""
    subjects: list[str] = []
    for detail in status_details(error):
        failure = error_details_pb2.PreconditionFailure()
        if detail.Unpack(failure):
            subjects += [violation.subject for violation in failure.violations]
    return subjects


async def rpc_error(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    """The error a call must end with."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def assert_invalid_argument_writing_nothing(
    stub: payments_pb2_grpc.PaymentServiceStub,
    caller: Caller,
    pool: asyncpg.Pool,
    request: payments_pb2.CreatePaymentRequest,
    field: str,
) -> None:
    """CreatePayment refuses the request as INVALID_ARGUMENT naming `field`, and writes nothing for the caller."""
    before = await payment_rows_of(pool, caller.client_id)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreatePayment(request, metadata=caller.metadata, timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert field in field_violations(caught.value)
    assert await payment_rows_of(pool, caller.client_id) == before
