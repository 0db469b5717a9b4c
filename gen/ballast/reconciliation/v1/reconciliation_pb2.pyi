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

class ReportKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REPORT_KIND_UNSPECIFIED: _ClassVar[ReportKind]
    REPORT_KIND_SETTLEMENT: _ClassVar[ReportKind]
    REPORT_KIND_TRANSACTIONS: _ClassVar[ReportKind]

class ReportRunStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REPORT_RUN_STATUS_UNSPECIFIED: _ClassVar[ReportRunStatus]
    REPORT_RUN_STATUS_RECEIVED: _ClassVar[ReportRunStatus]
    REPORT_RUN_STATUS_NORMALIZING: _ClassVar[ReportRunStatus]
    REPORT_RUN_STATUS_MATCHING: _ClassVar[ReportRunStatus]
    REPORT_RUN_STATUS_COMPLETED: _ClassVar[ReportRunStatus]
    REPORT_RUN_STATUS_FAILED: _ClassVar[ReportRunStatus]

class CaseKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CASE_KIND_UNSPECIFIED: _ClassVar[CaseKind]
    CASE_KIND_MISSING_INTERNAL: _ClassVar[CaseKind]
    CASE_KIND_MISSING_PROVIDER: _ClassVar[CaseKind]
    CASE_KIND_AMOUNT_MISMATCH: _ClassVar[CaseKind]
    CASE_KIND_STATUS_MISMATCH: _ClassVar[CaseKind]
    CASE_KIND_DUPLICATE: _ClassVar[CaseKind]
    CASE_KIND_CONTRADICTORY_EVIDENCE: _ClassVar[CaseKind]
    CASE_KIND_CURRENCY_MISMATCH: _ClassVar[CaseKind]
    CASE_KIND_FEE_MISMATCH: _ClassVar[CaseKind]
    CASE_KIND_TIMING_MISMATCH: _ClassVar[CaseKind]
    CASE_KIND_FX_ADJUSTMENT: _ClassVar[CaseKind]
    CASE_KIND_PAYOUT_MISMATCH: _ClassVar[CaseKind]
    CASE_KIND_UNRESOLVED_OUTCOME: _ClassVar[CaseKind]
    CASE_KIND_EVIDENCE_MISMATCH: _ClassVar[CaseKind]
    CASE_KIND_CORRECTION_NEEDS_APPROVAL: _ClassVar[CaseKind]
    CASE_KIND_UNASKED_REFUND: _ClassVar[CaseKind]
    CASE_KIND_INSTRUCTION_NOT_DELIVERED: _ClassVar[CaseKind]

class CaseStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CASE_STATUS_UNSPECIFIED: _ClassVar[CaseStatus]
    CASE_STATUS_OPEN: _ClassVar[CaseStatus]
    CASE_STATUS_RESOLVED: _ClassVar[CaseStatus]

class CaseResolution(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CASE_RESOLUTION_UNSPECIFIED: _ClassVar[CaseResolution]
    CASE_RESOLUTION_PROVIDER_CORRECT: _ClassVar[CaseResolution]
    CASE_RESOLUTION_INTERNAL_CORRECT: _ClassVar[CaseResolution]
    CASE_RESOLUTION_WRITTEN_OFF: _ClassVar[CaseResolution]
    CASE_RESOLUTION_NO_DISCREPANCY: _ClassVar[CaseResolution]
    CASE_RESOLUTION_COMPENSATED: _ClassVar[CaseResolution]
REPORT_KIND_UNSPECIFIED: ReportKind
REPORT_KIND_SETTLEMENT: ReportKind
REPORT_KIND_TRANSACTIONS: ReportKind
REPORT_RUN_STATUS_UNSPECIFIED: ReportRunStatus
REPORT_RUN_STATUS_RECEIVED: ReportRunStatus
REPORT_RUN_STATUS_NORMALIZING: ReportRunStatus
REPORT_RUN_STATUS_MATCHING: ReportRunStatus
REPORT_RUN_STATUS_COMPLETED: ReportRunStatus
REPORT_RUN_STATUS_FAILED: ReportRunStatus
CASE_KIND_UNSPECIFIED: CaseKind
CASE_KIND_MISSING_INTERNAL: CaseKind
CASE_KIND_MISSING_PROVIDER: CaseKind
CASE_KIND_AMOUNT_MISMATCH: CaseKind
CASE_KIND_STATUS_MISMATCH: CaseKind
CASE_KIND_DUPLICATE: CaseKind
CASE_KIND_CONTRADICTORY_EVIDENCE: CaseKind
CASE_KIND_CURRENCY_MISMATCH: CaseKind
CASE_KIND_FEE_MISMATCH: CaseKind
CASE_KIND_TIMING_MISMATCH: CaseKind
CASE_KIND_FX_ADJUSTMENT: CaseKind
CASE_KIND_PAYOUT_MISMATCH: CaseKind
CASE_KIND_UNRESOLVED_OUTCOME: CaseKind
CASE_KIND_EVIDENCE_MISMATCH: CaseKind
CASE_KIND_CORRECTION_NEEDS_APPROVAL: CaseKind
CASE_KIND_UNASKED_REFUND: CaseKind
CASE_KIND_INSTRUCTION_NOT_DELIVERED: CaseKind
CASE_STATUS_UNSPECIFIED: CaseStatus
CASE_STATUS_OPEN: CaseStatus
CASE_STATUS_RESOLVED: CaseStatus
CASE_RESOLUTION_UNSPECIFIED: CaseResolution
CASE_RESOLUTION_PROVIDER_CORRECT: CaseResolution
CASE_RESOLUTION_INTERNAL_CORRECT: CaseResolution
CASE_RESOLUTION_WRITTEN_OFF: CaseResolution
CASE_RESOLUTION_NO_DISCREPANCY: CaseResolution
CASE_RESOLUTION_COMPENSATED: CaseResolution

class ReportHeader(_message.Message):
    __slots__ = ("provider", "kind", "file_name", "content_type", "sha256")
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    FILE_NAME_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    provider: str
    kind: ReportKind
    file_name: str
    content_type: str
    sha256: str
    def __init__(self, provider: _Optional[str] = ..., kind: _Optional[_Union[ReportKind, str]] = ..., file_name: _Optional[str] = ..., content_type: _Optional[str] = ..., sha256: _Optional[str] = ...) -> None: ...

class IngestReportRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: ReportHeader
    chunk: bytes
    def __init__(self, header: _Optional[_Union[ReportHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class IngestReportResponse(_message.Message):
    __slots__ = ("run", "replayed")
    RUN_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    run: ReportRun
    replayed: bool
    def __init__(self, run: _Optional[_Union[ReportRun, _Mapping]] = ..., replayed: _Optional[bool] = ...) -> None: ...

class ReportRun(_message.Message):
    __slots__ = ("id", "provider", "kind", "file_name", "content_type", "sha256", "byte_count", "status", "failure_reason", "row_count", "invalid_row_count", "matched_row_count", "unmatched_row_count", "opened_case_count", "create_time", "complete_time")
    ID_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    FILE_NAME_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    BYTE_COUNT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    FAILURE_REASON_FIELD_NUMBER: _ClassVar[int]
    ROW_COUNT_FIELD_NUMBER: _ClassVar[int]
    INVALID_ROW_COUNT_FIELD_NUMBER: _ClassVar[int]
    MATCHED_ROW_COUNT_FIELD_NUMBER: _ClassVar[int]
    UNMATCHED_ROW_COUNT_FIELD_NUMBER: _ClassVar[int]
    OPENED_CASE_COUNT_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_TIME_FIELD_NUMBER: _ClassVar[int]
    id: str
    provider: str
    kind: ReportKind
    file_name: str
    content_type: str
    sha256: str
    byte_count: int
    status: ReportRunStatus
    failure_reason: str
    row_count: int
    invalid_row_count: int
    matched_row_count: int
    unmatched_row_count: int
    opened_case_count: int
    create_time: _timestamp_pb2.Timestamp
    complete_time: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., provider: _Optional[str] = ..., kind: _Optional[_Union[ReportKind, str]] = ..., file_name: _Optional[str] = ..., content_type: _Optional[str] = ..., sha256: _Optional[str] = ..., byte_count: _Optional[int] = ..., status: _Optional[_Union[ReportRunStatus, str]] = ..., failure_reason: _Optional[str] = ..., row_count: _Optional[int] = ..., invalid_row_count: _Optional[int] = ..., matched_row_count: _Optional[int] = ..., unmatched_row_count: _Optional[int] = ..., opened_case_count: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., complete_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ReportRowRef(_message.Message):
    __slots__ = ("report_run_id", "row_number")
    REPORT_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROW_NUMBER_FIELD_NUMBER: _ClassVar[int]
    report_run_id: str
    row_number: int
    def __init__(self, report_run_id: _Optional[str] = ..., row_number: _Optional[int] = ...) -> None: ...

class CaseNote(_message.Message):
    __slots__ = ("text", "author", "create_time")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    text: str
    author: str
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, text: _Optional[str] = ..., author: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Case(_message.Message):
    __slots__ = ("id", "kind", "status", "summary", "payment_id", "provider_payment_id", "report_run_id", "report_rows", "expected_amount", "observed_amount", "expected_status", "observed_status", "evidence_refs", "resolution", "resolved_by", "notes", "create_time", "resolve_time", "internal_kind", "differences", "leg_id", "provider_rows")
    ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_PAYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    REPORT_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    REPORT_ROWS_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_STATUS_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_STATUS_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_REFS_FIELD_NUMBER: _ClassVar[int]
    RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    RESOLVED_BY_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    RESOLVE_TIME_FIELD_NUMBER: _ClassVar[int]
    INTERNAL_KIND_FIELD_NUMBER: _ClassVar[int]
    DIFFERENCES_FIELD_NUMBER: _ClassVar[int]
    LEG_ID_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_ROWS_FIELD_NUMBER: _ClassVar[int]
    id: str
    kind: CaseKind
    status: CaseStatus
    summary: str
    payment_id: str
    provider_payment_id: str
    report_run_id: str
    report_rows: _containers.RepeatedCompositeFieldContainer[ReportRowRef]
    expected_amount: _money_pb2.Money
    observed_amount: _money_pb2.Money
    expected_status: str
    observed_status: str
    evidence_refs: _containers.RepeatedScalarFieldContainer[str]
    resolution: CaseResolution
    resolved_by: str
    notes: _containers.RepeatedCompositeFieldContainer[CaseNote]
    create_time: _timestamp_pb2.Timestamp
    resolve_time: _timestamp_pb2.Timestamp
    internal_kind: str
    differences: _containers.RepeatedCompositeFieldContainer[FieldDifference]
    leg_id: str
    provider_rows: _containers.RepeatedCompositeFieldContainer[ReportRow]
    def __init__(self, id: _Optional[str] = ..., kind: _Optional[_Union[CaseKind, str]] = ..., status: _Optional[_Union[CaseStatus, str]] = ..., summary: _Optional[str] = ..., payment_id: _Optional[str] = ..., provider_payment_id: _Optional[str] = ..., report_run_id: _Optional[str] = ..., report_rows: _Optional[_Iterable[_Union[ReportRowRef, _Mapping]]] = ..., expected_amount: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., observed_amount: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., expected_status: _Optional[str] = ..., observed_status: _Optional[str] = ..., evidence_refs: _Optional[_Iterable[str]] = ..., resolution: _Optional[_Union[CaseResolution, str]] = ..., resolved_by: _Optional[str] = ..., notes: _Optional[_Iterable[_Union[CaseNote, _Mapping]]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., resolve_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., internal_kind: _Optional[str] = ..., differences: _Optional[_Iterable[_Union[FieldDifference, _Mapping]]] = ..., leg_id: _Optional[str] = ..., provider_rows: _Optional[_Iterable[_Union[ReportRow, _Mapping]]] = ...) -> None: ...

class FieldDifference(_message.Message):
    __slots__ = ("field", "ballast_value", "provider_value")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    BALLAST_VALUE_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_VALUE_FIELD_NUMBER: _ClassVar[int]
    field: str
    ballast_value: str
    provider_value: str
    def __init__(self, field: _Optional[str] = ..., ballast_value: _Optional[str] = ..., provider_value: _Optional[str] = ...) -> None: ...

class ReportRow(_message.Message):
    __slots__ = ("ref", "provider_transaction_id", "source_id", "merchant_reference", "payout_id", "type", "status", "gross", "fee", "net", "settlement_date", "error")
    REF_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    MERCHANT_REFERENCE_FIELD_NUMBER: _ClassVar[int]
    PAYOUT_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    GROSS_FIELD_NUMBER: _ClassVar[int]
    FEE_FIELD_NUMBER: _ClassVar[int]
    NET_FIELD_NUMBER: _ClassVar[int]
    SETTLEMENT_DATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ref: ReportRowRef
    provider_transaction_id: str
    source_id: str
    merchant_reference: str
    payout_id: str
    type: str
    status: str
    gross: _money_pb2.Money
    fee: _money_pb2.Money
    net: _money_pb2.Money
    settlement_date: str
    error: str
    def __init__(self, ref: _Optional[_Union[ReportRowRef, _Mapping]] = ..., provider_transaction_id: _Optional[str] = ..., source_id: _Optional[str] = ..., merchant_reference: _Optional[str] = ..., payout_id: _Optional[str] = ..., type: _Optional[str] = ..., status: _Optional[str] = ..., gross: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., fee: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., net: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., settlement_date: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class GetReportRunRequest(_message.Message):
    __slots__ = ("report_run_id",)
    REPORT_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    report_run_id: str
    def __init__(self, report_run_id: _Optional[str] = ...) -> None: ...

class GetReportRunResponse(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: ReportRun
    def __init__(self, run: _Optional[_Union[ReportRun, _Mapping]] = ...) -> None: ...

class ListCasesRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "status", "kind", "report_run_id", "provider", "opened_after", "opened_before", "min_amount", "max_amount")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    REPORT_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    OPENED_AFTER_FIELD_NUMBER: _ClassVar[int]
    OPENED_BEFORE_FIELD_NUMBER: _ClassVar[int]
    MIN_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    MAX_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    status: CaseStatus
    kind: CaseKind
    report_run_id: str
    provider: str
    opened_after: _timestamp_pb2.Timestamp
    opened_before: _timestamp_pb2.Timestamp
    min_amount: _money_pb2.Money
    max_amount: _money_pb2.Money
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., status: _Optional[_Union[CaseStatus, str]] = ..., kind: _Optional[_Union[CaseKind, str]] = ..., report_run_id: _Optional[str] = ..., provider: _Optional[str] = ..., opened_after: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., opened_before: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., min_amount: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., max_amount: _Optional[_Union[_money_pb2.Money, _Mapping]] = ...) -> None: ...

class ListCasesResponse(_message.Message):
    __slots__ = ("cases", "next_page_token")
    CASES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    cases: _containers.RepeatedCompositeFieldContainer[Case]
    next_page_token: str
    def __init__(self, cases: _Optional[_Iterable[_Union[Case, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetCaseRequest(_message.Message):
    __slots__ = ("case_id",)
    CASE_ID_FIELD_NUMBER: _ClassVar[int]
    case_id: str
    def __init__(self, case_id: _Optional[str] = ...) -> None: ...

class GetCaseResponse(_message.Message):
    __slots__ = ("reconciliation_case",)
    RECONCILIATION_CASE_FIELD_NUMBER: _ClassVar[int]
    reconciliation_case: Case
    def __init__(self, reconciliation_case: _Optional[_Union[Case, _Mapping]] = ...) -> None: ...

class ResolveCaseRequest(_message.Message):
    __slots__ = ("idempotency_key", "case_id", "resolution", "note", "evidence_refs", "difference")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    CASE_ID_FIELD_NUMBER: _ClassVar[int]
    RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_REFS_FIELD_NUMBER: _ClassVar[int]
    DIFFERENCE_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    case_id: str
    resolution: CaseResolution
    note: str
    evidence_refs: _containers.RepeatedScalarFieldContainer[str]
    difference: _money_pb2.Money
    def __init__(self, idempotency_key: _Optional[str] = ..., case_id: _Optional[str] = ..., resolution: _Optional[_Union[CaseResolution, str]] = ..., note: _Optional[str] = ..., evidence_refs: _Optional[_Iterable[str]] = ..., difference: _Optional[_Union[_money_pb2.Money, _Mapping]] = ...) -> None: ...

class ResolveCaseResponse(_message.Message):
    __slots__ = ("reconciliation_case", "replayed")
    RECONCILIATION_CASE_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    reconciliation_case: Case
    replayed: bool
    def __init__(self, reconciliation_case: _Optional[_Union[Case, _Mapping]] = ..., replayed: _Optional[bool] = ...) -> None: ...

class ExportEvidenceRequest(_message.Message):
    __slots__ = ("case_id", "report_run_id")
    CASE_ID_FIELD_NUMBER: _ClassVar[int]
    REPORT_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    case_id: str
    report_run_id: str
    def __init__(self, case_id: _Optional[str] = ..., report_run_id: _Optional[str] = ...) -> None: ...

class EvidenceBundleMetadata(_message.Message):
    __slots__ = ("content_type", "sha256", "byte_count", "file_name")
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    BYTE_COUNT_FIELD_NUMBER: _ClassVar[int]
    FILE_NAME_FIELD_NUMBER: _ClassVar[int]
    content_type: str
    sha256: str
    byte_count: int
    file_name: str
    def __init__(self, content_type: _Optional[str] = ..., sha256: _Optional[str] = ..., byte_count: _Optional[int] = ..., file_name: _Optional[str] = ...) -> None: ...

class ExportEvidenceResponse(_message.Message):
    __slots__ = ("metadata", "chunk")
    METADATA_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    metadata: EvidenceBundleMetadata
    chunk: bytes
    def __init__(self, metadata: _Optional[_Union[EvidenceBundleMetadata, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...
