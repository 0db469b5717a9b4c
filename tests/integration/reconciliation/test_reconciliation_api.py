"""ReconciliationService over the network: a report uploaded in chunks, its run followed to the end, and
the cases it opened listed and read with both sides of each difference."""

from __future__ import annotations

import hashlib
import io
import json
import uuid
import zipfile
from collections.abc import Iterator
from decimal import Decimal

import grpc
import pytest

from ballast.common.v1 import money_pb2
from ballast.reconciliation.v1 import reconciliation_pb2 as pb
from server.services.reconciliation import ReportWorker
from tests.integration.reconciliation.conftest import Books, Caller, csv_rows

CHUNK = 64 * 1024


def upload(body: bytes, provider: str = "simulator", sha256: str | None = None) -> Iterator[pb.IngestReportRequest]:
    header = pb.ReportHeader(
        provider=provider,
        kind=pb.REPORT_KIND_SETTLEMENT,
        file_name="settlement.csv",
        content_type="text/csv",
        sha256=sha256 or hashlib.sha256(body).hexdigest(),
    )
    yield pb.IngestReportRequest(header=header)
    for start in range(0, len(body), CHUNK):
        yield pb.IngestReportRequest(chunk=body[start : start + CHUNK])


async def ingest(books: Books, body: bytes, caller: Caller | None = None, **header: str) -> pb.IngestReportResponse:
    response: pb.IngestReportResponse = await books.recon.IngestReport(
        upload(body, **header), metadata=(caller or books.operator).metadata, timeout=30
    )
    return response


async def run_of(books: Books, run_id: str) -> pb.ReportRun:
    response = await books.recon.GetReportRun(
        pb.GetReportRunRequest(report_run_id=run_id), metadata=books.auditor.metadata, timeout=5
    )
    return response.run


async def test_a_report_uploaded_in_chunks_is_reconciled_and_its_cases_read_side_by_side(books: Books) -> None:
    await books.succeeded_payments([f"{20 + n}.00" for n in range(30)])
    body = await books.report()
    ingested = await ingest(books, body)
    assert not ingested.replayed
    assert ingested.run.status == pb.REPORT_RUN_STATUS_RECEIVED
    assert ingested.run.sha256 == hashlib.sha256(body).hexdigest() and ingested.run.byte_count == len(body)

    await ReportWorker(books.database).run_once()  # what the server's worker does as a run arrives
    run = await run_of(books, ingested.run.id)
    assert run.status == pb.REPORT_RUN_STATUS_COMPLETED, run.failure_reason
    assert run.row_count == len(csv_rows(body))
    assert run.row_count == run.matched_row_count + run.unmatched_row_count + run.invalid_row_count
    assert run.HasField("complete_time")

    listed = await books.recon.ListCases(
        pb.ListCasesRequest(report_run_id=run.id, page_size=500), metadata=books.auditor.metadata, timeout=5
    )
    assert len(listed.cases) == run.opened_case_count > 0
    assert {case.kind for case in listed.cases} <= {
        pb.CASE_KIND_MISSING_INTERNAL,
        pb.CASE_KIND_MISSING_PROVIDER,
        pb.CASE_KIND_AMOUNT_MISMATCH,
        pb.CASE_KIND_FEE_MISMATCH,
        pb.CASE_KIND_FX_ADJUSTMENT,
    }  # a late row is a TIMING_MISMATCH that needs no one
    times = [case.create_time.ToDatetime() for case in listed.cases]
    assert times == sorted(times, reverse=True)

    # 60 draws at 12% each: one of them is an amount or a fee that differs (the simulator's seed is fixed)
    case = next(c for c in listed.cases if c.kind in (pb.CASE_KIND_AMOUNT_MISMATCH, pb.CASE_KIND_FEE_MISMATCH))
    detail = (
        await books.recon.GetCase(pb.GetCaseRequest(case_id=case.id), metadata=books.auditor.metadata, timeout=5)
    ).reconciliation_case
    assert detail.payment_id and detail.provider_payment_id
    (row,) = detail.provider_rows
    assert row.source_id == detail.provider_payment_id and row.type == "CHARGE"
    differences = {d.field: d for d in detail.differences}
    if detail.internal_kind == "AMOUNT_MISMATCH":
        assert differences["amount"].ballast_value == detail.expected_amount.value
        assert differences["gross"].provider_value == row.gross.value
    else:
        assert detail.internal_kind == "FEE_MISMATCH"
        assert differences["fee"].provider_value == row.fee.value != differences["fee"].ballast_value

    # the same file again is the same run
    again = await ingest(books, body)
    assert again.replayed and again.run.id == run.id and again.run.status == pb.REPORT_RUN_STATUS_COMPLETED


async def test_bytes_that_do_not_hash_to_the_header_are_refused_and_nothing_is_kept(books: Books) -> None:
    body = await books.report()
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await ingest(books, body[:-10], sha256=hashlib.sha256(body).hexdigest())
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "header.sha256" in refused.value.details() and "upload the whole file again" in refused.value.details()
    assert (
        await books.pool.fetchval(
            "SELECT count(*) FROM report_runs WHERE sha256 = $1", hashlib.sha256(body).hexdigest()
        )
        == 0
    )


async def test_a_report_of_an_unknown_provider_is_refused_naming_the_field(books: Books) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await ingest(books, b"a,b\n1,2\n", provider="nobody")
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "header.provider" in refused.value.details() and "simulator" in refused.value.details()


async def test_only_operators_ingest_and_services_read_no_cases(books: Books) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await ingest(books, b"x\n", caller=books.auditor)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await books.recon.ListCases(pb.ListCasesRequest(), metadata=books.shop.merchant.metadata, timeout=5)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_an_unknown_run_is_not_found(books: Books) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await run_of(books, str(uuid.uuid4()))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def _an_open_case(books: Books) -> tuple[pb.ReportRun, pb.Case]:
    await books.succeeded_payments([f"{30 + n}.00" for n in range(30)])
    ingested = await ingest(books, await books.report())
    await ReportWorker(books.database).run_once()
    run = await run_of(books, ingested.run.id)
    listed = await books.recon.ListCases(
        pb.ListCasesRequest(report_run_id=run.id, kind=pb.CASE_KIND_MISSING_PROVIDER),
        metadata=books.auditor.metadata,
        timeout=5,
    )
    return run, listed.cases[0]


def resolve(case_id: str, key: str, **fields: object) -> pb.ResolveCaseRequest:
    return pb.ResolveCaseRequest(idempotency_key=key, case_id=case_id, **fields)  # type: ignore[arg-type]


async def test_an_operator_writes_off_a_missing_settlement_once_with_a_note_and_the_ledger_follows(
    books: Books,
) -> None:
    _, case = await _an_open_case(books)
    request = resolve(
        case.id,
        f"resolve-{uuid.uuid4()}",
        resolution=pb.CASE_RESOLUTION_WRITTEN_OFF,
        note="the provider confirmed by e-mail it will never pay this out",
        evidence_refs=["ticket:OPS-1234"],
        difference=money_pb2.Money(value=f"-{case.expected_amount.value}", currency_code="EUR"),
    )
    answered = await books.recon.ResolveCase(request, metadata=books.operator.metadata, timeout=5)
    resolved = answered.reconciliation_case
    assert not answered.replayed
    assert resolved.status == pb.CASE_STATUS_RESOLVED and resolved.resolution == pb.CASE_RESOLUTION_WRITTEN_OFF
    assert resolved.resolved_by == books.operator.client_id and resolved.HasField("resolve_time")
    assert [note.text for note in resolved.notes] == [request.note]
    assert "ticket:OPS-1234" in resolved.evidence_refs
    # the difference is posted once, against write-off
    entry = await books.pool.fetch(
        "SELECT l.account, l.amount FROM ledger_entries e JOIN ledger_lines l ON l.entry_id = e.id"
        " WHERE e.event_key = $1 ORDER BY l.line_number",
        f"case:{case.id}:write_off",
    )
    amount = Decimal(case.expected_amount.value)
    assert [(row["account"], row["amount"]) for row in entry] == [
        ("provider_clearing", -amount),
        ("write_off:simulator", amount),
    ]
    audited = await books.pool.fetchval(
        "SELECT count(*) FROM audit_log WHERE aggregate_type = 'case' AND aggregate_id = $1"
        " AND action = 'case.resolved'",
        case.id,
    )
    assert audited == 1

    # the same key again: the same answer, nothing posted twice
    again = await books.recon.ResolveCase(request, metadata=books.operator.metadata, timeout=5)
    assert again.replayed and again.reconciliation_case.resolution == pb.CASE_RESOLUTION_WRITTEN_OFF
    assert await books.pool.fetchval("SELECT count(*) FROM ledger_entries WHERE event_key LIKE 'case:%'") == 1
    # another decision on the resolved case is refused
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await books.recon.ResolveCase(
            resolve(case.id, f"other-{uuid.uuid4()}", resolution=pb.CASE_RESOLUTION_NO_DISCREPANCY, note="no"),
            metadata=books.operator.metadata,
            timeout=5,
        )
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_a_decision_needs_a_note_an_operator_and_a_difference_only_where_one_is_posted(books: Books) -> None:
    _, case = await _an_open_case(books)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await books.recon.ResolveCase(
            resolve(case.id, f"k-{uuid.uuid4()}", resolution=pb.CASE_RESOLUTION_COMPENSATED, note=" "),
            metadata=books.operator.metadata,
            timeout=5,
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "note" in refused.value.details() and "difference" in refused.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await books.recon.ResolveCase(
            resolve(case.id, f"k-{uuid.uuid4()}", resolution=pb.CASE_RESOLUTION_NO_DISCREPANCY, note="fine"),
            metadata=books.auditor.metadata,
            timeout=5,
        )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    still = await books.recon.GetCase(pb.GetCaseRequest(case_id=case.id), metadata=books.auditor.metadata, timeout=5)
    assert still.reconciliation_case.status == pb.CASE_STATUS_OPEN


async def _bundle(books: Books, request: pb.ExportEvidenceRequest) -> tuple[pb.EvidenceBundleMetadata, bytes]:
    messages = [
        message async for message in books.recon.ExportEvidence(request, metadata=books.auditor.metadata, timeout=30)
    ]
    assert messages[0].WhichOneof("payload") == "metadata"
    body = b"".join(message.chunk for message in messages[1:])
    return messages[0].metadata, body


def _verified(body: bytes) -> dict[str, bytes]:
    """The bundle's files, each checked against the manifest's SHA-256 and size, as an auditor would."""
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        manifest = json.loads(archive.read("manifest.json"))
        files = {entry["name"]: archive.read(entry["name"]) for entry in manifest["files"]}
        for entry in manifest["files"]:
            assert hashlib.sha256(files[entry["name"]]).hexdigest() == entry["sha256"]
            assert len(files[entry["name"]]) == entry["bytes"]
        assert set(archive.namelist()) == {*files, "manifest.json"}
    return files


async def test_an_auditor_exports_a_verifiable_bundle_of_a_run_and_of_a_case(books: Books) -> None:
    run, case = await _an_open_case(books)
    metadata, body = await _bundle(books, pb.ExportEvidenceRequest(report_run_id=run.id))
    assert metadata.sha256 == hashlib.sha256(body).hexdigest() and metadata.byte_count == len(body)
    assert metadata.content_type == "application/zip"
    files = _verified(body)
    assert hashlib.sha256(files["report/settlement.csv"]).hexdigest() == run.sha256  # the report as received
    assert len(files["rows.csv"].decode().splitlines()) == run.row_count + 1
    assert len(files["cases.csv"].decode().splitlines()) > run.opened_case_count  # CSV rows, some multi-line

    metadata, body = await _bundle(books, pb.ExportEvidenceRequest(case_id=case.id))
    files = _verified(body)
    assert case.id in files["case.csv"].decode()
    assert {"findings.csv", "payment.csv", "transitions.csv", "ledger.csv", "audit.csv"} <= files.keys()
    assert case.payment_id in files["payment.csv"].decode()

    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await _bundle(books, pb.ExportEvidenceRequest(case_id=str(uuid.uuid4())))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_difference_is_posted_only_in_the_cases_currency(books: Books) -> None:
    _, case = await _an_open_case(books)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await books.recon.ResolveCase(
            resolve(
                case.id,
                f"k-{uuid.uuid4()}",
                resolution=pb.CASE_RESOLUTION_COMPENSATED,
                note="adjusting",
                difference=money_pb2.Money(value="-0.10", currency_code="USD"),
            ),
            metadata=books.operator.metadata,
            timeout=5,
        )
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "EUR" in refused.value.details()
    assert await books.pool.fetchval("SELECT count(*) FROM ledger_entries WHERE event_key LIKE 'case:%'") == 0


async def test_cases_are_read_page_by_page_with_the_token_of_the_same_filter(books: Books) -> None:
    run, _ = await _an_open_case(books)
    seen: list[str] = []
    token = ""
    while True:
        page = await books.recon.ListCases(
            pb.ListCasesRequest(report_run_id=run.id, page_size=2, page_token=token),
            metadata=books.auditor.metadata,
            timeout=5,
        )
        seen += [case.id for case in page.cases]
        token = page.next_page_token
        if not token:
            break
    assert len(seen) == len(set(seen)) == run.opened_case_count
    with pytest.raises(grpc.aio.AioRpcError) as refused:  # a token of one filter under another
        first = await books.recon.ListCases(
            pb.ListCasesRequest(report_run_id=run.id, page_size=1), metadata=books.auditor.metadata, timeout=5
        )
        await books.recon.ListCases(
            pb.ListCasesRequest(page_size=1, page_token=first.next_page_token),
            metadata=books.auditor.metadata,
            timeout=5,
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_an_upload_naming_an_earlier_files_hash_must_carry_that_file(books: Books) -> None:
    body = await books.report()
    await ingest(books, body)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await ingest(books, b"garbage!", sha256=hashlib.sha256(body).hexdigest())
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "header.sha256" in refused.value.details()


async def test_a_corrected_report_keeps_the_decisions_taken_on_the_differences_it_repeats(books: Books) -> None:
    _, case = await _an_open_case(books)
    await books.recon.ResolveCase(
        resolve(case.id, f"k-{uuid.uuid4()}", resolution=pb.CASE_RESOLUTION_INTERNAL_CORRECT, note="asked them"),
        metadata=books.operator.metadata,
        timeout=5,
    )
    body = await books.report()
    corrected = body.replace(b"lines", b"lines (corrected)")  # the provider re-sends it, slightly changed
    assert corrected != body
    again = await ingest(books, corrected)
    await ReportWorker(books.database).run_once()
    second = await run_of(books, again.run.id)
    assert second.status == pb.REPORT_RUN_STATUS_COMPLETED
    # the decided difference is not a case again; the others are the same cases, still open
    kept = await books.pool.fetchval(
        "SELECT count(*) FROM report_findings WHERE run_id = $1 AND case_id = $2",
        uuid.UUID(second.id),
        uuid.UUID(case.id),
    )
    assert kept == 1
    assert second.opened_case_count == 0
    reopened = await books.pool.fetchval(
        "SELECT count(*) FROM cases WHERE payment_id = $1 AND status = 'OPEN' AND kind = 'MISSING_PROVIDER'",
        uuid.UUID(case.payment_id),
    )
    assert reopened == 0
