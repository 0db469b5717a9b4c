"""ballast.execution.v1.ExecutionService: parse the request, call the use case, map the result."""

from __future__ import annotations

from decimal import Decimal

import grpc

from ballast.execution.v1 import execution_pb2, execution_pb2_grpc
from server.api.auth import TokenAuthenticator
from server.api.handlers import ServicerBase, fit_page, timestamp_of, translate_errors
from server.db.database import Database
from server.domain.identifiers import parse_uuid
from server.domain.identity import Permission
from server.domain.money import EXACT
from server.domain.order_legs import Leg
from server.domain.orders import validate_close_leg, validate_modify_leg, validate_submit_order
from server.providers.venue import VenueClient
from server.services import execution, order_submission
from server.services.execution import LegRecord, ModificationRecord, OrderRecord


def _decimal(value: Decimal | None) -> str:
    return "" if value is None else format(value, "f")


def _enum_name(prefix: str, value: int, enum_type: object) -> str:
    """ "SIDE_BUY" -> "BUY"; an unknown or unspecified value becomes "" (refused by validation)."""
    name: str = enum_type.Name(value) if value in enum_type.values() else ""  # type: ignore[attr-defined]
    return name.removeprefix(prefix) if name and not name.endswith("_UNSPECIFIED") else ""


def modification_to_proto(modification: ModificationRecord | None) -> execution_pb2.LegModification | None:
    if modification is None:
        return None
    return execution_pb2.LegModification(
        idempotency_key=modification.idempotency_key,
        new_quantity=_decimal(modification.quantity),
        new_limit_price=_decimal(modification.limit_price),
        status=f"MODIFICATION_STATUS_{modification.status.value}",
        reason=modification.reason,
    )


def leg_to_proto(leg: LegRecord) -> execution_pb2.Leg:
    average = Leg(leg.spec.quantity, leg.state, leg.filled_quantity, leg.fill_notional).average_fill_price()
    return execution_pb2.Leg(
        id=str(leg.id),
        state=f"LEG_STATE_{leg.state.value}",
        state_reason=leg.state_reason,
        instrument_symbol=leg.spec.instrument_symbol,
        side=f"SIDE_{leg.spec.side.value}",
        quantity=_decimal(leg.spec.quantity),
        order_type=f"ORDER_TYPE_{leg.spec.order_type.value}",
        limit_price=_decimal(leg.spec.limit_price),
        currency_code=leg.spec.currency_code,
        filled_quantity=_decimal(leg.filled_quantity),
        average_fill_price=_decimal(None if average is None else average.normalize(EXACT)),
        fills=[
            execution_pb2.Fill(
                execution_id=fill.execution_id,
                quantity=_decimal(fill.quantity),
                price=_decimal(fill.price),
                fill_time=timestamp_of(fill.fill_time),
            )
            for fill in leg.fills
        ],
        create_time=timestamp_of(leg.created_at),
        update_time=timestamp_of(leg.updated_at),
        fill_count=leg.fill_count,
        modification=modification_to_proto(leg.modification),
    )


def order_to_proto(order: OrderRecord) -> execution_pb2.Order:
    return execution_pb2.Order(
        id=str(order.id),
        client_id=order.client_id,
        idempotency_key=order.idempotency_key,
        client_order_reference=order.client_order_reference,
        legs=[leg_to_proto(leg) for leg in order.legs],
        create_time=timestamp_of(order.created_at),
        update_time=timestamp_of(order.updated_at),
    )


class ExecutionServicer(ServicerBase, execution_pb2_grpc.ExecutionServiceServicer):
    def __init__(
        self,
        database: Database,
        authenticator: TokenAuthenticator,
        request_timeout_s: float,
        venue: VenueClient | None = None,
    ) -> None:
        super().__init__(database, authenticator, request_timeout_s)
        #: None: no venue is configured (development only); legs stay SUBMITTED
        self._venue = venue

    @translate_errors
    async def SubmitOrder(
        self, request: execution_pb2.SubmitOrderRequest, context: grpc.aio.ServicerContext
    ) -> execution_pb2.SubmitOrderResponse:
        principal = self._authenticator.authorize(context, Permission.TRADE)
        command = validate_submit_order(
            request.idempotency_key,
            request.client_order_reference,
            [
                {
                    "instrument_symbol": leg.instrument_symbol,
                    "side": _enum_name("SIDE_", leg.side, execution_pb2.Side),
                    "quantity": leg.quantity,
                    "order_type": _enum_name("ORDER_TYPE_", leg.order_type, execution_pb2.OrderType),
                    "limit_price": leg.limit_price,
                    "currency_code": leg.currency_code,
                }
                for leg in request.legs
            ],
        )
        result = await order_submission.submit_and_send(
            self._database, self._venue, principal, command, self._budget(context)
        )
        return execution_pb2.SubmitOrderResponse(order=order_to_proto(result.order), replayed=result.replayed)

    @translate_errors
    async def GetOrder(
        self, request: execution_pb2.GetOrderRequest, context: grpc.aio.ServicerContext
    ) -> execution_pb2.GetOrderResponse:
        principal = self._authenticator.authorize(context, Permission.READ_ORDERS)
        order = await execution.get_order(
            self._database,
            principal,
            parse_uuid(request.order_id, "order_id"),
            self._budget(context),
        )
        return execution_pb2.GetOrderResponse(order=order_to_proto(order))

    @translate_errors
    async def ListOrders(
        self, request: execution_pb2.ListOrdersRequest, context: grpc.aio.ServicerContext
    ) -> execution_pb2.ListOrdersResponse:
        principal = self._authenticator.authorize(context, Permission.READ_ORDERS)
        page = await execution.list_orders(
            self._database,
            principal,
            page_size=request.page_size,
            page_token=request.page_token,
            budget=self._budget(context),
        )
        listed, token = fit_page(page.orders, order_to_proto, page.token_after, page.next_page_token)
        return execution_pb2.ListOrdersResponse(orders=listed, next_page_token=token)

    @translate_errors
    async def ModifyLeg(
        self, request: execution_pb2.ModifyLegRequest, context: grpc.aio.ServicerContext
    ) -> execution_pb2.ModifyLegResponse:
        principal = self._authenticator.authorize(context, Permission.TRADE)
        command = validate_modify_leg(
            request.idempotency_key, request.order_id, request.leg_id, request.new_quantity, request.new_limit_price
        )
        result = await order_submission.modify_and_send(
            self._database, self._venue, principal, command, self._budget(context)
        )
        return execution_pb2.ModifyLegResponse(leg=leg_to_proto(result.leg), replayed=result.replayed)

    @translate_errors
    async def CloseLeg(
        self, request: execution_pb2.CloseLegRequest, context: grpc.aio.ServicerContext
    ) -> execution_pb2.CloseLegResponse:
        principal = self._authenticator.authorize(context, Permission.TRADE)
        command = validate_close_leg(request.idempotency_key, request.order_id, request.leg_id, request.reason)
        result = await order_submission.close_and_send(
            self._database, self._venue, principal, command, self._budget(context)
        )
        return execution_pb2.CloseLegResponse(leg=leg_to_proto(result.leg), replayed=result.replayed)
