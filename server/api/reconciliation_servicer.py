"""ballast.reconciliation.v1.ReconciliationService: parse the request, call the use case, map the result."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import grpc

from ballast.common.v1 import money_pb2
from ballast.reconciliation.v1 import reconciliation_pb2 as pb
from ballast.reconciliation.v1 import reconciliation_pb2_grpc
from server.api.handlers import ServicerBase, timestamp_of, translate_errors
from server.db.database import Budget
from server.domain.cases import validate_resolve_case
from server.domain.errors import FieldViolation, InvalidArgument
from server.domain.identity import Permission
from server.domain.reconciliation import CHUNK_BYTES_MAX, ReportKind
from server.services import cases, evidence_export
from server.services.cases import CaseRecord, ReportRunRecord
from server.services.evidence_export import BUNDLE_CONTENT_TYPE, Bundle
from server.services.reconciliation import ReportHeader, ingest_report

#: An upload takes as long as its caller's deadline allows, up to this long when it sets none.
UPLOAD_TIMEOUT_S = 900

_RUN_STATUS = {
    "RECEIVED": pb.REPORT_RUN_STATUS_RECEIVED,
    "NORMALIZING": pb.REPORT_RUN_STATUS_NORMALIZING,
    "MATCHING": pb.REPORT_RUN_STATUS_MATCHING,
    "COMPLETED": pb.REPORT_RUN_STATUS_COMPLETED,
    "FAILED": pb.REPORT_RUN_STATUS_FAILED,
}
_KIND = {ReportKind.SETTLEMENT: pb.REPORT_KIND_SETTLEMENT, ReportKind.TRANSACTIONS: pb.REPORT_KIND_TRANSACTIONS}


def run_to_proto(run: ReportRunRecord) -> pb.ReportRun:
    message = pb.ReportRun(
        id=str(run.id),
        provider=run.provider,
        kind=_KIND[run.kind],
        file_name=run.file_name,
        content_type=run.content_type,
        sha256=run.sha256,
        byte_count=run.byte_count,
        status=_RUN_STATUS[run.status.value],
        failure_reason=run.failure_reason,
        row_count=run.row_count,
        invalid_row_count=run.invalid_row_count,
        matched_row_count=run.matched_row_count,
        unmatched_row_count=run.unmatched_row_count,
        opened_case_count=run.opened_case_count,
        create_time=timestamp_of(run.created_at),
    )
    if run.completed_at is not None:
        message.complete_time.CopyFrom(timestamp_of(run.completed_at))
    return message


def _money(amount: Decimal | None, currency_code: str | None) -> money_pb2.Money | None:
    if amount is None or currency_code is None:
        return None
    return money_pb2.Money(value=format(amount, "f"), currency_code=currency_code)


def _kind(kind: str) -> Any:
    family = cases.family_of(kind)
    return pb.CaseKind.Value(f"CASE_KIND_{family}") if family else pb.CASE_KIND_UNSPECIFIED


def _resolution(name: str) -> Any:
    known = pb.CaseResolution.DESCRIPTOR.values_by_name.get(f"CASE_RESOLUTION_{name}")
    return pb.CASE_RESOLUTION_UNSPECIFIED if known is None else known.number


def case_to_proto(case: CaseRecord, detail: cases.CaseDetail | None = None) -> pb.Case:
    message = pb.Case(
        id=str(case.id),
        kind=_kind(case.kind),
        internal_kind=case.kind,
        status=pb.CASE_STATUS_OPEN if case.status == "OPEN" else pb.CASE_STATUS_RESOLVED,
        summary=case.summary,
        payment_id="" if case.payment_id is None else str(case.payment_id),
        leg_id="" if case.leg_id is None else str(case.leg_id),
        provider_payment_id=case.provider_payment_id or "",
        report_run_id="" if case.report_run_id is None else str(case.report_run_id),
        expected_status="" if case.state is None else f"PAYMENT_STATE_{case.state}",
        create_time=timestamp_of(case.opened_at),
    )
    expected = _money(case.amount, case.currency_code)
    if expected is not None:
        message.expected_amount.CopyFrom(expected)
    for piece in case.evidence:
        if piece.get("report_run_id") and piece.get("row_number"):
            message.report_rows.append(
                pb.ReportRowRef(report_run_id=str(piece["report_run_id"]), row_number=int(piece["row_number"]))
            )
            message.evidence_refs.append(f"report:{piece['report_run_id']}:{piece['row_number']}")
        elif piece.get("reference"):
            message.evidence_refs.append(str(piece["reference"]))
        if "resolution" in piece:
            message.resolved_by = str(piece.get("approved_by") or piece.get("resolved_by") or "")
            # a correction a person approved took the provider's word
            decided = "PROVIDER_CORRECT" if piece["resolution"] == "CORRECTION_APPROVED" else piece["resolution"]
            message.resolution = _resolution(decided)
            if piece.get("at"):
                message.resolve_time.CopyFrom(timestamp_of(datetime.fromisoformat(str(piece["at"]))))
            message.evidence_refs.extend(str(ref) for ref in piece.get("evidence_refs") or [])
            if piece.get("note"):
                message.notes.append(pb.CaseNote(text=str(piece["note"]), author=message.resolved_by))
    if detail is not None:
        for row in detail.report_rows:
            message.provider_rows.append(_row(row))
            if row["gross"] is not None and not message.HasField("observed_amount"):
                gross = _money(row["gross"], row["currency_code"])
                if gross is not None:
                    message.observed_amount.CopyFrom(gross)
            if row["status"] and not message.observed_status:
                message.observed_status = row["status"]
        message.differences.extend(
            pb.FieldDifference(field=d.field, ballast_value=d.ballast, provider_value=d.provider)
            for d in detail.differences
        )
    return message


def _row(row: dict[str, Any]) -> pb.ReportRow:
    message = pb.ReportRow(
        ref=pb.ReportRowRef(report_run_id=str(row["run_id"]), row_number=row["row_number"] or 0),
        provider_transaction_id=row["provider_transaction_id"] or "",
        source_id=row["source_id"] or "",
        merchant_reference=row["reference"] or "",
        payout_id=row["payout_id"] or "",
        type=row["type"] or "",
        status=row["status"] or "",
        settlement_date="" if row["settlement_date"] is None else row["settlement_date"].isoformat(),
        error=row["error"] or "",
    )
    for name in ("gross", "fee", "net"):
        money = _money(row[name], row["currency_code"])
        if money is not None:
            getattr(message, name).CopyFrom(money)
    return message


def _bound(money: money_pb2.Money, present: bool) -> tuple[str, str] | None:
    return (money.value, money.currency_code) if present else None


class _Uploads(ServicerBase):
    """The calls as long as their files: an upload, and an evidence bundle assembled before it is sent."""

    @translate_errors
    async def ingest(
        self, requests: AsyncIterable[pb.IngestReportRequest], context: grpc.aio.ServicerContext
    ) -> pb.IngestReportResponse:
        self._authenticator.authorize(context, Permission.INGEST_REPORT)
        stream = aiter(requests)
        first = await anext(stream, None)
        if first is None or first.WhichOneof("payload") != "header":
            raise InvalidArgument([FieldViolation("header", "the first message must carry the header")])
        header = first.header
        if header.kind == pb.REPORT_KIND_UNSPECIFIED:
            raise InvalidArgument([FieldViolation("header.kind", "is required: REPORT_KIND_SETTLEMENT")])
        if header.kind != pb.REPORT_KIND_SETTLEMENT:
            raise InvalidArgument([FieldViolation("header.kind", "only settlement reports are reconciled so far")])
        checked = ReportHeader(
            header.provider, ReportKind.SETTLEMENT, header.file_name, header.content_type, header.sha256
        ).validated()

        async def chunks() -> AsyncIterator[bytes]:
            async for message in stream:
                if message.WhichOneof("payload") != "chunk":
                    raise InvalidArgument([FieldViolation("chunk", "every message after the first carries a chunk")])
                if not 1 <= len(message.chunk) <= CHUNK_BYTES_MAX:
                    raise InvalidArgument([FieldViolation("chunk", f"must be 1 to {CHUNK_BYTES_MAX} bytes")])
                yield message.chunk

        ingested = await ingest_report(self._database, checked, chunks())
        return pb.IngestReportResponse(run=run_to_proto(ingested.run), replayed=ingested.replayed)

    @translate_errors
    async def bundle(self, request: pb.ExportEvidenceRequest, context: grpc.aio.ServicerContext) -> Bundle:
        """The bundle, assembled before the first message (errors answered with their status)."""
        self._authenticator.authorize(context, Permission.READ_CASES)
        budget = Budget.within(UPLOAD_TIMEOUT_S)
        target = request.WhichOneof("target")
        if target == "case_id":
            return await evidence_export.export_case(self._database, request.case_id, budget)
        if target == "report_run_id":
            return await evidence_export.export_run(self._database, request.report_run_id, budget)
        raise InvalidArgument([FieldViolation("target", "name a case_id or a report_run_id")])


class ReconciliationServicer(ServicerBase, reconciliation_pb2_grpc.ReconciliationServiceServicer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._uploads = _Uploads(self._database, self._authenticator, UPLOAD_TIMEOUT_S)

    async def IngestReport(
        self, request_iterator: AsyncIterable[pb.IngestReportRequest], context: grpc.aio.ServicerContext
    ) -> pb.IngestReportResponse:
        return await self._uploads.ingest(request_iterator, context)

    @translate_errors
    async def GetReportRun(
        self, request: pb.GetReportRunRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetReportRunResponse:
        self._authenticator.authorize(context, Permission.READ_CASES)
        run = await cases.get_report_run(self._database, request.report_run_id, self._budget(context))
        return pb.GetReportRunResponse(run=run_to_proto(run))

    @translate_errors
    async def ListCases(self, request: pb.ListCasesRequest, context: grpc.aio.ServicerContext) -> pb.ListCasesResponse:
        self._authenticator.authorize(context, Permission.READ_CASES)
        query = cases.CaseQuery(
            family="" if request.kind == pb.CASE_KIND_UNSPECIFIED else pb.CaseKind.Name(request.kind)[10:],
            status="" if request.status == pb.CASE_STATUS_UNSPECIFIED else pb.CaseStatus.Name(request.status)[12:],
            report_run_id=request.report_run_id,
            provider=request.provider,
            opened_after=_time(request, "opened_after"),
            opened_before=_time(request, "opened_before"),
            amount_min=_bound(request.min_amount, request.HasField("min_amount")),
            amount_max=_bound(request.max_amount, request.HasField("max_amount")),
            page_size=request.page_size,
            page_token=request.page_token,
        )
        page = await cases.list_cases(self._database, query, self._budget(context))
        return pb.ListCasesResponse(
            cases=[case_to_proto(case) for case in page.cases], next_page_token=page.next_page_token
        )

    @translate_errors
    async def GetCase(self, request: pb.GetCaseRequest, context: grpc.aio.ServicerContext) -> pb.GetCaseResponse:
        self._authenticator.authorize(context, Permission.READ_CASES)
        detail = await cases.get_case(self._database, request.case_id, self._budget(context))
        return pb.GetCaseResponse(reconciliation_case=case_to_proto(detail.case, detail))

    @translate_errors
    async def ResolveCase(
        self, request: pb.ResolveCaseRequest, context: grpc.aio.ServicerContext
    ) -> pb.ResolveCaseResponse:
        principal = self._authenticator.authorize(context, Permission.RESOLVE_CASE)
        command = validate_resolve_case(
            idempotency_key=request.idempotency_key,
            case_id=request.case_id,
            resolution=""
            if request.resolution == pb.CASE_RESOLUTION_UNSPECIFIED
            else pb.CaseResolution.Name(request.resolution).removeprefix("CASE_RESOLUTION_"),
            note=request.note,
            evidence_refs=list(request.evidence_refs),
            difference=_bound(request.difference, request.HasField("difference")),
        )
        resolved = await cases.resolve_case(self._database, principal, command, self._budget(context))
        return pb.ResolveCaseResponse(
            reconciliation_case=case_to_proto(resolved.detail.case, resolved.detail), replayed=resolved.replayed
        )

    async def ExportEvidence(
        self, request: pb.ExportEvidenceRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ExportEvidenceResponse]:
        bundle = await self._uploads.bundle(request, context)
        yield pb.ExportEvidenceResponse(
            metadata=pb.EvidenceBundleMetadata(
                content_type=BUNDLE_CONTENT_TYPE,
                sha256=bundle.sha256,
                byte_count=bundle.byte_count,
                file_name=bundle.file_name,
            )
        )
        async for chunk in bundle.chunks():
            yield pb.ExportEvidenceResponse(chunk=chunk)


def _time(request: pb.ListCasesRequest, name: str) -> datetime | None:
    if not request.HasField(name):
        return None
    value: datetime = getattr(request, name).ToDatetime(tzinfo=UTC)
    return value
