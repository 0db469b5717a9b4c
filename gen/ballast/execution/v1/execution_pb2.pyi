import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Side(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SIDE_UNSPECIFIED: _ClassVar[Side]
    SIDE_BUY: _ClassVar[Side]
    SIDE_SELL: _ClassVar[Side]

class OrderType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ORDER_TYPE_UNSPECIFIED: _ClassVar[OrderType]
    ORDER_TYPE_MARKET: _ClassVar[OrderType]
    ORDER_TYPE_LIMIT: _ClassVar[OrderType]

class LegState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LEG_STATE_UNSPECIFIED: _ClassVar[LegState]
    LEG_STATE_SUBMITTED: _ClassVar[LegState]
    LEG_STATE_PENDING: _ClassVar[LegState]
    LEG_STATE_PARTIALLY_FILLED: _ClassVar[LegState]
    LEG_STATE_FILLED: _ClassVar[LegState]
    LEG_STATE_MODIFYING: _ClassVar[LegState]
    LEG_STATE_REJECTED: _ClassVar[LegState]
    LEG_STATE_CLOSED: _ClassVar[LegState]

class ModificationStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODIFICATION_STATUS_UNSPECIFIED: _ClassVar[ModificationStatus]
    MODIFICATION_STATUS_PENDING: _ClassVar[ModificationStatus]
    MODIFICATION_STATUS_CONFIRMED: _ClassVar[ModificationStatus]
    MODIFICATION_STATUS_REFUSED: _ClassVar[ModificationStatus]
    MODIFICATION_STATUS_CANCELED: _ClassVar[ModificationStatus]
SIDE_UNSPECIFIED: Side
SIDE_BUY: Side
SIDE_SELL: Side
ORDER_TYPE_UNSPECIFIED: OrderType
ORDER_TYPE_MARKET: OrderType
ORDER_TYPE_LIMIT: OrderType
LEG_STATE_UNSPECIFIED: LegState
LEG_STATE_SUBMITTED: LegState
LEG_STATE_PENDING: LegState
LEG_STATE_PARTIALLY_FILLED: LegState
LEG_STATE_FILLED: LegState
LEG_STATE_MODIFYING: LegState
LEG_STATE_REJECTED: LegState
LEG_STATE_CLOSED: LegState
MODIFICATION_STATUS_UNSPECIFIED: ModificationStatus
MODIFICATION_STATUS_PENDING: ModificationStatus
MODIFICATION_STATUS_CONFIRMED: ModificationStatus
MODIFICATION_STATUS_REFUSED: ModificationStatus
MODIFICATION_STATUS_CANCELED: ModificationStatus

class LegSpec(_message.Message):
    __slots__ = ("instrument_symbol", "side", "quantity", "order_type", "limit_price", "currency_code")
    INSTRUMENT_SYMBOL_FIELD_NUMBER: _ClassVar[int]
    SIDE_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    ORDER_TYPE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_PRICE_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_CODE_FIELD_NUMBER: _ClassVar[int]
    instrument_symbol: str
    side: Side
    quantity: str
    order_type: OrderType
    limit_price: str
    currency_code: str
    def __init__(self, instrument_symbol: _Optional[str] = ..., side: _Optional[_Union[Side, str]] = ..., quantity: _Optional[str] = ..., order_type: _Optional[_Union[OrderType, str]] = ..., limit_price: _Optional[str] = ..., currency_code: _Optional[str] = ...) -> None: ...

class Order(_message.Message):
    __slots__ = ("id", "client_id", "idempotency_key", "client_order_reference", "legs", "create_time", "update_time")
    ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ORDER_REFERENCE_FIELD_NUMBER: _ClassVar[int]
    LEGS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    id: str
    client_id: str
    idempotency_key: str
    client_order_reference: str
    legs: _containers.RepeatedCompositeFieldContainer[Leg]
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., client_id: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., client_order_reference: _Optional[str] = ..., legs: _Optional[_Iterable[_Union[Leg, _Mapping]]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Leg(_message.Message):
    __slots__ = ("id", "state", "state_reason", "instrument_symbol", "side", "quantity", "order_type", "limit_price", "currency_code", "filled_quantity", "average_fill_price", "fills", "create_time", "update_time", "fill_count", "modification")
    ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STATE_REASON_FIELD_NUMBER: _ClassVar[int]
    INSTRUMENT_SYMBOL_FIELD_NUMBER: _ClassVar[int]
    SIDE_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    ORDER_TYPE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_PRICE_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_CODE_FIELD_NUMBER: _ClassVar[int]
    FILLED_QUANTITY_FIELD_NUMBER: _ClassVar[int]
    AVERAGE_FILL_PRICE_FIELD_NUMBER: _ClassVar[int]
    FILLS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    FILL_COUNT_FIELD_NUMBER: _ClassVar[int]
    MODIFICATION_FIELD_NUMBER: _ClassVar[int]
    id: str
    state: LegState
    state_reason: str
    instrument_symbol: str
    side: Side
    quantity: str
    order_type: OrderType
    limit_price: str
    currency_code: str
    filled_quantity: str
    average_fill_price: str
    fills: _containers.RepeatedCompositeFieldContainer[Fill]
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    fill_count: int
    modification: LegModification
    def __init__(self, id: _Optional[str] = ..., state: _Optional[_Union[LegState, str]] = ..., state_reason: _Optional[str] = ..., instrument_symbol: _Optional[str] = ..., side: _Optional[_Union[Side, str]] = ..., quantity: _Optional[str] = ..., order_type: _Optional[_Union[OrderType, str]] = ..., limit_price: _Optional[str] = ..., currency_code: _Optional[str] = ..., filled_quantity: _Optional[str] = ..., average_fill_price: _Optional[str] = ..., fills: _Optional[_Iterable[_Union[Fill, _Mapping]]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., fill_count: _Optional[int] = ..., modification: _Optional[_Union[LegModification, _Mapping]] = ...) -> None: ...

class LegModification(_message.Message):
    __slots__ = ("idempotency_key", "new_quantity", "new_limit_price", "status", "reason")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    NEW_QUANTITY_FIELD_NUMBER: _ClassVar[int]
    NEW_LIMIT_PRICE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    new_quantity: str
    new_limit_price: str
    status: ModificationStatus
    reason: str
    def __init__(self, idempotency_key: _Optional[str] = ..., new_quantity: _Optional[str] = ..., new_limit_price: _Optional[str] = ..., status: _Optional[_Union[ModificationStatus, str]] = ..., reason: _Optional[str] = ...) -> None: ...

class Fill(_message.Message):
    __slots__ = ("execution_id", "quantity", "price", "fill_time")
    EXECUTION_ID_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    FILL_TIME_FIELD_NUMBER: _ClassVar[int]
    execution_id: str
    quantity: str
    price: str
    fill_time: _timestamp_pb2.Timestamp
    def __init__(self, execution_id: _Optional[str] = ..., quantity: _Optional[str] = ..., price: _Optional[str] = ..., fill_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class SubmitOrderRequest(_message.Message):
    __slots__ = ("idempotency_key", "client_order_reference", "legs")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ORDER_REFERENCE_FIELD_NUMBER: _ClassVar[int]
    LEGS_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    client_order_reference: str
    legs: _containers.RepeatedCompositeFieldContainer[LegSpec]
    def __init__(self, idempotency_key: _Optional[str] = ..., client_order_reference: _Optional[str] = ..., legs: _Optional[_Iterable[_Union[LegSpec, _Mapping]]] = ...) -> None: ...

class SubmitOrderResponse(_message.Message):
    __slots__ = ("order", "replayed")
    ORDER_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    order: Order
    replayed: bool
    def __init__(self, order: _Optional[_Union[Order, _Mapping]] = ..., replayed: _Optional[bool] = ...) -> None: ...

class GetOrderRequest(_message.Message):
    __slots__ = ("order_id",)
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    def __init__(self, order_id: _Optional[str] = ...) -> None: ...

class GetOrderResponse(_message.Message):
    __slots__ = ("order",)
    ORDER_FIELD_NUMBER: _ClassVar[int]
    order: Order
    def __init__(self, order: _Optional[_Union[Order, _Mapping]] = ...) -> None: ...

class ListOrdersRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListOrdersResponse(_message.Message):
    __slots__ = ("orders", "next_page_token")
    ORDERS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    orders: _containers.RepeatedCompositeFieldContainer[Order]
    next_page_token: str
    def __init__(self, orders: _Optional[_Iterable[_Union[Order, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ModifyLegRequest(_message.Message):
    __slots__ = ("idempotency_key", "order_id", "leg_id", "new_quantity", "new_limit_price")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    LEG_ID_FIELD_NUMBER: _ClassVar[int]
    NEW_QUANTITY_FIELD_NUMBER: _ClassVar[int]
    NEW_LIMIT_PRICE_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    order_id: str
    leg_id: str
    new_quantity: str
    new_limit_price: str
    def __init__(self, idempotency_key: _Optional[str] = ..., order_id: _Optional[str] = ..., leg_id: _Optional[str] = ..., new_quantity: _Optional[str] = ..., new_limit_price: _Optional[str] = ...) -> None: ...

class ModifyLegResponse(_message.Message):
    __slots__ = ("leg", "replayed")
    LEG_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    leg: Leg
    replayed: bool
    def __init__(self, leg: _Optional[_Union[Leg, _Mapping]] = ..., replayed: _Optional[bool] = ...) -> None: ...

class CloseLegRequest(_message.Message):
    __slots__ = ("idempotency_key", "order_id", "leg_id", "reason")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    LEG_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    order_id: str
    leg_id: str
    reason: str
    def __init__(self, idempotency_key: _Optional[str] = ..., order_id: _Optional[str] = ..., leg_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class CloseLegResponse(_message.Message):
    __slots__ = ("leg", "replayed")
    LEG_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    leg: Leg
    replayed: bool
    def __init__(self, leg: _Optional[_Union[Leg, _Mapping]] = ..., replayed: _Optional[bool] = ...) -> None: ...
