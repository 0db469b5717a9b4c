import datetime

from ballast.common.v1 import money_pb2 as _money_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PaymentState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PAYMENT_STATE_UNSPECIFIED: _ClassVar[PaymentState]
    PAYMENT_STATE_RECORDED: _ClassVar[PaymentState]
    PAYMENT_STATE_PENDING: _ClassVar[PaymentState]
    PAYMENT_STATE_UNKNOWN: _ClassVar[PaymentState]
    PAYMENT_STATE_SUCCEEDED: _ClassVar[PaymentState]
    PAYMENT_STATE_FAILED: _ClassVar[PaymentState]
    PAYMENT_STATE_REJECTED: _ClassVar[PaymentState]
    PAYMENT_STATE_REFUND_PENDING: _ClassVar[PaymentState]
    PAYMENT_STATE_REFUNDED: _ClassVar[PaymentState]
    PAYMENT_STATE_EXPIRED: _ClassVar[PaymentState]
    PAYMENT_STATE_PARTIALLY_REFUNDED: _ClassVar[PaymentState]

class RefundState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REFUND_STATE_UNSPECIFIED: _ClassVar[RefundState]
    REFUND_STATE_RECORDED: _ClassVar[RefundState]
    REFUND_STATE_PENDING: _ClassVar[RefundState]
    REFUND_STATE_UNKNOWN: _ClassVar[RefundState]
    REFUND_STATE_SUCCEEDED: _ClassVar[RefundState]
    REFUND_STATE_FAILED: _ClassVar[RefundState]
    REFUND_STATE_REJECTED: _ClassVar[RefundState]
    REFUND_STATE_EXPIRED: _ClassVar[RefundState]
PAYMENT_STATE_UNSPECIFIED: PaymentState
PAYMENT_STATE_RECORDED: PaymentState
PAYMENT_STATE_PENDING: PaymentState
PAYMENT_STATE_UNKNOWN: PaymentState
PAYMENT_STATE_SUCCEEDED: PaymentState
PAYMENT_STATE_FAILED: PaymentState
PAYMENT_STATE_REJECTED: PaymentState
PAYMENT_STATE_REFUND_PENDING: PaymentState
PAYMENT_STATE_REFUNDED: PaymentState
PAYMENT_STATE_EXPIRED: PaymentState
PAYMENT_STATE_PARTIALLY_REFUNDED: PaymentState
REFUND_STATE_UNSPECIFIED: RefundState
REFUND_STATE_RECORDED: RefundState
REFUND_STATE_PENDING: RefundState
REFUND_STATE_UNKNOWN: RefundState
REFUND_STATE_SUCCEEDED: RefundState
REFUND_STATE_FAILED: RefundState
REFUND_STATE_REJECTED: RefundState
REFUND_STATE_EXPIRED: RefundState

class Payment(_message.Message):
    __slots__ = ("id", "client_id", "idempotency_key", "amount", "state", "description", "merchant_reference", "metadata", "provider_payment_id", "provider_status", "create_time", "update_time", "refunded_amount")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    MERCHANT_REFERENCE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_PAYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_STATUS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    REFUNDED_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    id: str
    client_id: str
    idempotency_key: str
    amount: _money_pb2.Money
    state: PaymentState
    description: str
    merchant_reference: str
    metadata: _containers.ScalarMap[str, str]
    provider_payment_id: str
    provider_status: str
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    refunded_amount: _money_pb2.Money
    def __init__(self, id: _Optional[str] = ..., client_id: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., amount: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., state: _Optional[_Union[PaymentState, str]] = ..., description: _Optional[str] = ..., merchant_reference: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., provider_payment_id: _Optional[str] = ..., provider_status: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., refunded_amount: _Optional[_Union[_money_pb2.Money, _Mapping]] = ...) -> None: ...

class CreatePaymentRequest(_message.Message):
    __slots__ = ("idempotency_key", "amount", "description", "merchant_reference", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    MERCHANT_REFERENCE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    amount: _money_pb2.Money
    description: str
    merchant_reference: str
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, idempotency_key: _Optional[str] = ..., amount: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., description: _Optional[str] = ..., merchant_reference: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class CreatePaymentResponse(_message.Message):
    __slots__ = ("payment", "replayed")
    PAYMENT_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    payment: Payment
    replayed: bool
    def __init__(self, payment: _Optional[_Union[Payment, _Mapping]] = ..., replayed: _Optional[bool] = ...) -> None: ...

class GetPaymentRequest(_message.Message):
    __slots__ = ("payment_id",)
    PAYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    payment_id: str
    def __init__(self, payment_id: _Optional[str] = ...) -> None: ...

class GetPaymentResponse(_message.Message):
    __slots__ = ("payment",)
    PAYMENT_FIELD_NUMBER: _ClassVar[int]
    payment: Payment
    def __init__(self, payment: _Optional[_Union[Payment, _Mapping]] = ...) -> None: ...

class ListPaymentsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "state")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    state: PaymentState
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., state: _Optional[_Union[PaymentState, str]] = ...) -> None: ...

class ListPaymentsResponse(_message.Message):
    __slots__ = ("payments", "next_page_token")
    PAYMENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    payments: _containers.RepeatedCompositeFieldContainer[Payment]
    next_page_token: str
    def __init__(self, payments: _Optional[_Iterable[_Union[Payment, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetPaymentTimelineRequest(_message.Message):
    __slots__ = ("payment_id", "page_size", "page_token")
    PAYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    payment_id: str
    page_size: int
    page_token: str
    def __init__(self, payment_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class GetPaymentTimelineResponse(_message.Message):
    __slots__ = ("payment_id", "entries", "next_page_token")
    PAYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    payment_id: str
    entries: _containers.RepeatedCompositeFieldContainer[TimelineEntry]
    next_page_token: str
    def __init__(self, payment_id: _Optional[str] = ..., entries: _Optional[_Iterable[_Union[TimelineEntry, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class TimelineEntry(_message.Message):
    __slots__ = ("occur_time", "transition", "provider_status", "ledger_line", "refund_transition")
    OCCUR_TIME_FIELD_NUMBER: _ClassVar[int]
    TRANSITION_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_STATUS_FIELD_NUMBER: _ClassVar[int]
    LEDGER_LINE_FIELD_NUMBER: _ClassVar[int]
    REFUND_TRANSITION_FIELD_NUMBER: _ClassVar[int]
    occur_time: _timestamp_pb2.Timestamp
    transition: StateTransition
    provider_status: ProviderStatusObservation
    ledger_line: LedgerLine
    refund_transition: RefundTransition
    def __init__(self, occur_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., transition: _Optional[_Union[StateTransition, _Mapping]] = ..., provider_status: _Optional[_Union[ProviderStatusObservation, _Mapping]] = ..., ledger_line: _Optional[_Union[LedgerLine, _Mapping]] = ..., refund_transition: _Optional[_Union[RefundTransition, _Mapping]] = ...) -> None: ...

class StateTransition(_message.Message):
    __slots__ = ("from_state", "to_state", "cause", "evidence_ref", "event", "approved_by")
    FROM_STATE_FIELD_NUMBER: _ClassVar[int]
    TO_STATE_FIELD_NUMBER: _ClassVar[int]
    CAUSE_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_REF_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    APPROVED_BY_FIELD_NUMBER: _ClassVar[int]
    from_state: PaymentState
    to_state: PaymentState
    cause: str
    evidence_ref: str
    event: str
    approved_by: str
    def __init__(self, from_state: _Optional[_Union[PaymentState, str]] = ..., to_state: _Optional[_Union[PaymentState, str]] = ..., cause: _Optional[str] = ..., evidence_ref: _Optional[str] = ..., event: _Optional[str] = ..., approved_by: _Optional[str] = ...) -> None: ...

class ProviderStatusObservation(_message.Message):
    __slots__ = ("provider", "status", "evidence_ref")
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_REF_FIELD_NUMBER: _ClassVar[int]
    provider: str
    status: str
    evidence_ref: str
    def __init__(self, provider: _Optional[str] = ..., status: _Optional[str] = ..., evidence_ref: _Optional[str] = ...) -> None: ...

class LedgerLine(_message.Message):
    __slots__ = ("entry_id", "account", "amount")
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    entry_id: str
    account: str
    amount: _money_pb2.Money
    def __init__(self, entry_id: _Optional[str] = ..., account: _Optional[str] = ..., amount: _Optional[_Union[_money_pb2.Money, _Mapping]] = ...) -> None: ...

class RefundTransition(_message.Message):
    __slots__ = ("refund_id", "from_state", "to_state", "cause", "evidence_ref", "event", "amount")
    REFUND_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_STATE_FIELD_NUMBER: _ClassVar[int]
    TO_STATE_FIELD_NUMBER: _ClassVar[int]
    CAUSE_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_REF_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    refund_id: str
    from_state: RefundState
    to_state: RefundState
    cause: str
    evidence_ref: str
    event: str
    amount: _money_pb2.Money
    def __init__(self, refund_id: _Optional[str] = ..., from_state: _Optional[_Union[RefundState, str]] = ..., to_state: _Optional[_Union[RefundState, str]] = ..., cause: _Optional[str] = ..., evidence_ref: _Optional[str] = ..., event: _Optional[str] = ..., amount: _Optional[_Union[_money_pb2.Money, _Mapping]] = ...) -> None: ...

class Refund(_message.Message):
    __slots__ = ("id", "payment_id", "client_id", "idempotency_key", "amount", "state", "reason", "metadata", "provider_refund_id", "provider_status", "create_time", "update_time")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_REFUND_ID_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_STATUS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    id: str
    payment_id: str
    client_id: str
    idempotency_key: str
    amount: _money_pb2.Money
    state: RefundState
    reason: str
    metadata: _containers.ScalarMap[str, str]
    provider_refund_id: str
    provider_status: str
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., payment_id: _Optional[str] = ..., client_id: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., amount: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., state: _Optional[_Union[RefundState, str]] = ..., reason: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., provider_refund_id: _Optional[str] = ..., provider_status: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RefundPaymentRequest(_message.Message):
    __slots__ = ("idempotency_key", "payment_id", "amount", "reason", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    payment_id: str
    amount: _money_pb2.Money
    reason: str
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, idempotency_key: _Optional[str] = ..., payment_id: _Optional[str] = ..., amount: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., reason: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class RefundPaymentResponse(_message.Message):
    __slots__ = ("refund", "replayed")
    REFUND_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    refund: Refund
    replayed: bool
    def __init__(self, refund: _Optional[_Union[Refund, _Mapping]] = ..., replayed: _Optional[bool] = ...) -> None: ...

class GetRefundRequest(_message.Message):
    __slots__ = ("refund_id",)
    REFUND_ID_FIELD_NUMBER: _ClassVar[int]
    refund_id: str
    def __init__(self, refund_id: _Optional[str] = ...) -> None: ...

class GetRefundResponse(_message.Message):
    __slots__ = ("refund",)
    REFUND_FIELD_NUMBER: _ClassVar[int]
    refund: Refund
    def __init__(self, refund: _Optional[_Union[Refund, _Mapping]] = ...) -> None: ...

class ListRefundsRequest(_message.Message):
    __slots__ = ("payment_id", "page_size", "page_token")
    PAYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    payment_id: str
    page_size: int
    page_token: str
    def __init__(self, payment_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListRefundsResponse(_message.Message):
    __slots__ = ("refunds", "next_page_token")
    REFUNDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    refunds: _containers.RepeatedCompositeFieldContainer[Refund]
    next_page_token: str
    def __init__(self, refunds: _Optional[_Iterable[_Union[Refund, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
