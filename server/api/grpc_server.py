"""Assemble the grpc.aio server: servicers, authentication, health and reflection."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from ballast.execution.v1 import execution_pb2, execution_pb2_grpc
from ballast.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from ballast.payments.v1 import payments_pb2, payments_pb2_grpc
from ballast.reconciliation.v1 import reconciliation_pb2, reconciliation_pb2_grpc
from server.api.admission import Admission, AdmissionInterceptor
from server.api.auth import AuthInterceptor, TokenAuthenticator
from server.api.execution_servicer import ExecutionServicer
from server.api.ledger_servicer import LedgerServicer
from server.api.metrics import MetricsInterceptor
from server.api.payments_servicer import PaymentServicer
from server.api.reconciliation_servicer import ReconciliationServicer
from server.db.database import Database
from server.providers.gateway import GatewayClient
from server.providers.venue import VenueClient
from server.settings import Settings

SERVICE_NAMES = tuple(
    module.DESCRIPTOR.services_by_name[name].full_name
    for module, name in (
        (payments_pb2, "PaymentService"),
        (execution_pb2, "ExecutionService"),
        (ledger_pb2, "LedgerService"),
        (reconciliation_pb2, "ReconciliationService"),
    )
)

#: Bounds on what one connection may hold in flight; beyond it callers get RESOURCE_EXHAUSTED, not a queue.
MAX_CONCURRENT_RPCS = 2048
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
#: Calls that arrived and that the server has not begun yet (it takes them one at a time): beyond the first
#: bound gRPC sheds new arrivals at random, beyond the second all of them, each answered CANCELLED with
#: nothing done. Overload is answered at once rather than by a queue whose calls outlive their deadlines.
PENDING_CALLS_SHED_FROM = 1000
PENDING_CALLS_MAX = 3000


#: Reflection's v1 service: its messages are v1alpha's under another package name (the same fields, the same
#: wire format), and grpcio-reflection serves only v1alpha, so one servicer answers under both names: clients
#: that ask only v1 (recent grpcurl, grpc-js) work too.
REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"


def _enable_reflection(server: grpc.aio.Server, service_names: tuple[str, ...]) -> None:
    servicer = reflection.aio.ReflectionServicer(service_names)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    info = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(REFLECTION_V1, {"ServerReflectionInfo": info}),)
    )


def build_server(
    settings: Settings,
    database: Database,
    gateway: GatewayClient | None = None,
    venue: VenueClient | None = None,
    admission: Admission | None = None,
) -> tuple[grpc.aio.Server, health.aio.HealthServicer, int]:
    """A started-ready (not yet started) server bound to the configured address, and its bound port.
    `admission` lets the caller refuse new calls (UNAVAILABLE) before it stops the server."""
    authenticator = TokenAuthenticator(settings.api_tokens)
    server = grpc.aio.server(
        # Metrics first, so that calls refused while stopping or by authentication are counted too.
        interceptors=[
            MetricsInterceptor(),
            AdmissionInterceptor(admission or Admission()),
            AuthInterceptor(authenticator),
        ],
        maximum_concurrent_rpcs=MAX_CONCURRENT_RPCS,
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
            ("grpc.server.max_pending_requests", PENDING_CALLS_SHED_FROM),
            ("grpc.server.max_pending_requests_hard_limit", PENDING_CALLS_MAX),
        ],
    )
    payments_pb2_grpc.add_PaymentServiceServicer_to_server(
        PaymentServicer(database, authenticator, settings.request_timeout_ms / 1000, gateway), server
    )
    execution_pb2_grpc.add_ExecutionServiceServicer_to_server(
        ExecutionServicer(database, authenticator, settings.request_timeout_ms / 1000, venue), server
    )
    ledger_pb2_grpc.add_LedgerServiceServicer_to_server(
        LedgerServicer(database, authenticator, settings.request_timeout_ms / 1000), server
    )
    reconciliation_pb2_grpc.add_ReconciliationServiceServicer_to_server(
        ReconciliationServicer(database, authenticator, settings.request_timeout_ms / 1000), server
    )

    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    _enable_reflection(server, (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME, REFLECTION_V1))

    address = f"{settings.grpc_host}:{settings.grpc_port}"
    try:
        port = server.add_insecure_port(address)
    except RuntimeError:  # grpc raises RuntimeError("Failed to bind ...") for a port in use
        port = 0
    if port == 0:
        raise CannotListen(
            f"cannot listen on {address} (is another server using it?): set BALLAST_GRPC_PORT to a free port"
        )
    return server, health_servicer, port


class CannotListen(OSError):
    """A port the configuration names is taken; the message says which setting to change."""


async def set_component_serving(health_servicer: health.aio.HealthServicer, component: str, serving: bool) -> None:
    """One component's health (e.g. ballast.outbox), apart from the server's own."""
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    await health_servicer.set(component, status)


async def set_serving(health_servicer: health.aio.HealthServicer, serving: bool) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ("", *SERVICE_NAMES):
        await health_servicer.set(name, status)
