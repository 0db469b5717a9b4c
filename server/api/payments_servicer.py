"""ballast.payments.v1.PaymentService: parse the request, call the use case, map the result."""

from __future__ import annotations

import grpc

from ballast.common.v1 import money_pb2
from ballast.payments.v1 import payments_pb2, payments_pb2_grpc
from server.api.auth import TokenAuthenticator
from server.api.handlers import ServicerBase, fit_page, timestamp_of, translate_errors
from server.db.database import Database
from server.domain.errors import FieldViolation, InvalidArgument
from server.domain.identity import Permission
from server.domain.money import Money, quantize
from server.domain.payment_states import PaymentState
from server.domain.payments import validate_create_payment
from server.domain.refund_states import RefundState
from server.domain.refunds import validate_refund_payment
from server.providers.gateway import GatewayClient
from server.services import payments, refunds, submission, timeline
from server.services.ledger import signed_amount
from server.services.payments import PaymentRecord
from server.services.refunds import RefundRecord
from server.services.timeline import ProviderStatus, RefundStep, TimelineEntry, Transition


def _state(state: PaymentState | None) -> str:
    return "PAYMENT_STATE_UNSPECIFIED" if state is None else f"PAYMENT_STATE_{state.value}"


def _money(amount: Money) -> money_pb2.Money:
    return money_pb2.Money(value=amount.to_decimal_string(), currency_code=amount.currency_code)


def _refund_state(state: RefundState | None) -> str:
    return "REFUND_STATE_UNSPECIFIED" if state is None else f"REFUND_STATE_{state.value}"


def refund_to_proto(refund: RefundRecord) -> payments_pb2.Refund:
    return payments_pb2.Refund(
        id=str(refund.id),
        payment_id=str(refund.payment_id),
        client_id=refund.client_id,
        idempotency_key=refund.idempotency_key,
        amount=_money(refund.amount),
        state=_refund_state(refund.state),
        reason=refund.reason,
        metadata=refund.metadata,
        provider_refund_id=refund.provider_refund_id or "",
        provider_status=refund.provider_status or "",
        create_time=timestamp_of(refund.created_at),
        update_time=timestamp_of(refund.updated_at),
    )


def payment_to_proto(payment: PaymentRecord) -> payments_pb2.Payment:
    return payments_pb2.Payment(
        id=str(payment.id),
        client_id=payment.client_id,
        idempotency_key=payment.idempotency_key,
        amount=money_pb2.Money(value=payment.amount.to_decimal_string(), currency_code=payment.amount.currency_code),
        state=_state(payment.state),
        description=payment.description,
        merchant_reference=payment.merchant_reference,
        metadata=payment.metadata,
        provider_payment_id=payment.provider_payment_id or "",
        provider_status=payment.provider_status or "",
        create_time=timestamp_of(payment.created_at),
        update_time=timestamp_of(payment.updated_at),
        refunded_amount=_money(quantize(payment.refunded, payment.amount.currency_code)),
    )


def timeline_entry_to_proto(entry: TimelineEntry) -> payments_pb2.TimelineEntry:
    proto = payments_pb2.TimelineEntry(occur_time=timestamp_of(entry.occurred_at))
    event = entry.event
    if isinstance(event, Transition):
        proto.transition.CopyFrom(
            payments_pb2.StateTransition(
                from_state=_state(event.from_state),
                to_state=_state(event.to_state),
                cause=event.cause,
                evidence_ref=event.evidence_ref,
                event=event.event,
                approved_by=event.approved_by or "",
            )
        )
    elif isinstance(event, RefundStep):
        proto.refund_transition.CopyFrom(
            payments_pb2.RefundTransition(
                refund_id=str(event.refund_id),
                from_state=_refund_state(event.from_state),
                to_state=_refund_state(event.to_state),
                cause=event.cause,
                evidence_ref=event.evidence_ref,
                event=event.event,
                amount=_money(quantize(event.amount, event.currency_code)),
            )
        )
    elif isinstance(event, ProviderStatus):
        proto.provider_status.CopyFrom(
            payments_pb2.ProviderStatusObservation(
                provider=event.provider, status=event.status, evidence_ref=event.evidence_ref
            )
        )
    else:
        proto.ledger_line.CopyFrom(
            payments_pb2.LedgerLine(
                entry_id=str(event.entry_id),
                account=event.account,
                amount=money_pb2.Money(
                    value=signed_amount(event.amount, event.currency_code), currency_code=event.currency_code
                ),
            )
        )
    return proto


def _state_filter(value: int) -> PaymentState | None:
    if value == payments_pb2.PAYMENT_STATE_UNSPECIFIED:
        return None
    try:
        return PaymentState(payments_pb2.PaymentState.Name(value).removeprefix("PAYMENT_STATE_"))
    except ValueError:
        raise InvalidArgument([FieldViolation("state", f"{value} is not a PaymentState")]) from None


class PaymentServicer(ServicerBase, payments_pb2_grpc.PaymentServiceServicer):
    def __init__(
        self,
        database: Database,
        authenticator: TokenAuthenticator,
        request_timeout_s: float,
        gateway: GatewayClient | None = None,
    ) -> None:
        super().__init__(database, authenticator, request_timeout_s)
        #: None: no provider is configured (development only); payments stay RECORDED
        self._gateway = gateway

    @translate_errors
    async def CreatePayment(
        self, request: payments_pb2.CreatePaymentRequest, context: grpc.aio.ServicerContext
    ) -> payments_pb2.CreatePaymentResponse:
        principal = self._authenticator.authorize(context, Permission.CREATE_PAYMENT)
        command = validate_create_payment(
            idempotency_key=request.idempotency_key,
            has_amount=request.HasField("amount"),
            amount_value=request.amount.value,
            currency_code=request.amount.currency_code,
            description=request.description,
            merchant_reference=request.merchant_reference,
            metadata=dict(request.metadata),
        )
        result = await submission.create_and_submit(
            self._database, self._gateway, principal, command, self._budget(context)
        )
        return payments_pb2.CreatePaymentResponse(payment=payment_to_proto(result.payment), replayed=result.replayed)

    @translate_errors
    async def GetPayment(
        self, request: payments_pb2.GetPaymentRequest, context: grpc.aio.ServicerContext
    ) -> payments_pb2.GetPaymentResponse:
        payment = await payments.get_payment(
            self._database,
            self._authenticator.authorize(context, Permission.READ_PAYMENTS),
            payments.parse_payment_id(request.payment_id),
            self._budget(context),
        )
        return payments_pb2.GetPaymentResponse(payment=payment_to_proto(payment))

    @translate_errors
    async def ListPayments(
        self, request: payments_pb2.ListPaymentsRequest, context: grpc.aio.ServicerContext
    ) -> payments_pb2.ListPaymentsResponse:
        page = await payments.list_payments(
            self._database,
            self._authenticator.authorize(context, Permission.READ_PAYMENTS),
            page_size=request.page_size,
            page_token=request.page_token,
            state=_state_filter(request.state),
            budget=self._budget(context),
        )
        listed, token = fit_page(page.payments, payment_to_proto, page.token_after, page.next_page_token)
        return payments_pb2.ListPaymentsResponse(payments=listed, next_page_token=token)

    @translate_errors
    async def GetPaymentTimeline(
        self, request: payments_pb2.GetPaymentTimelineRequest, context: grpc.aio.ServicerContext
    ) -> payments_pb2.GetPaymentTimelineResponse:
        found = await timeline.get_payment_timeline(
            self._database,
            self._authenticator.authorize(context, Permission.READ_PAYMENTS),
            payments.parse_payment_id(request.payment_id),
            self._budget(context),
            page_size=request.page_size,
            page_token=request.page_token,
        )
        listed, token = fit_page(found.entries, timeline_entry_to_proto, found.token_after, found.next_page_token)
        return payments_pb2.GetPaymentTimelineResponse(
            payment_id=str(found.payment_id), entries=listed, next_page_token=token
        )

    @translate_errors
    async def RefundPayment(
        self, request: payments_pb2.RefundPaymentRequest, context: grpc.aio.ServicerContext
    ) -> payments_pb2.RefundPaymentResponse:
        principal = self._authenticator.authorize(context, Permission.REFUND_PAYMENT)
        command = validate_refund_payment(
            idempotency_key=request.idempotency_key,
            payment_id=request.payment_id,
            has_amount=request.HasField("amount"),
            amount_value=request.amount.value,
            currency_code=request.amount.currency_code,
            reason=request.reason,
            metadata=dict(request.metadata),
        )
        result = await refunds.refund_payment(self._database, self._gateway, principal, command, self._budget(context))
        return payments_pb2.RefundPaymentResponse(refund=refund_to_proto(result.refund), replayed=result.replayed)

    @translate_errors
    async def GetRefund(
        self, request: payments_pb2.GetRefundRequest, context: grpc.aio.ServicerContext
    ) -> payments_pb2.GetRefundResponse:
        refund = await refunds.get_refund(
            self._database,
            self._authenticator.authorize(context, Permission.READ_PAYMENTS),
            refunds.parse_refund_id(request.refund_id),
            self._budget(context),
        )
        return payments_pb2.GetRefundResponse(refund=refund_to_proto(refund))

    @translate_errors
    async def ListRefunds(
        self, request: payments_pb2.ListRefundsRequest, context: grpc.aio.ServicerContext
    ) -> payments_pb2.ListRefundsResponse:
        page = await refunds.list_refunds(
            self._database,
            self._authenticator.authorize(context, Permission.READ_PAYMENTS),
            payments.parse_payment_id(request.payment_id),
            page_size=request.page_size,
            page_token=request.page_token,
            budget=self._budget(context),
        )
        listed, token = fit_page(page.refunds, refund_to_proto, page.token_after, page.next_page_token)
        return payments_pb2.ListRefundsResponse(refunds=listed, next_page_token=token)
