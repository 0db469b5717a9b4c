"""Bad reports: each gets a clear error, and nothing is half-written."""

from __future__ import annotations

import pytest

from server.db.recon_repository import ReportRunRecord
from server.domain.errors import InvalidArgument
from server.services import reconciliation
from tests.integration.reconciliation.conftest import Books

HEADER = (
    "payout_id,settlement_date,balance_transaction_id,type,status,source_id,reference,currency,gross,fee,net,"
    "description\n"
)


def _line(
    txn: str, gross: str = "10.00", fee: str = "0.59", net: str = "9.41", currency: str = "EUR", **other: str
) -> str:
    fields = {
        "payout_id": "po_1",
        "settlement_date": "2026-12-02",
        "balance_transaction_id": txn,
        "type": "charge",
        "status": "pending",
        "source_id": f"pay_{txn}",
        "reference": "",
        "currency": currency,
        "gross": gross,
        "fee": fee,
        "net": net,
        "description": "charge",
    } | other
    return ",".join(fields.values()) + "\n"


async def _errors(books: Books, run: ReportRunRecord) -> dict[int, str]:
    rows = await books.pool.fetch(
        "SELECT row_number, error FROM report_rows WHERE run_id = $1 AND error IS NOT NULL", run.id
    )
    return {row["row_number"]: row["error"] for row in rows}


async def test_rows_that_do_not_parse_are_kept_with_their_line_and_error_and_the_run_goes_on(books: Books) -> None:
    body = (
        HEADER
        + _line("t1")
        + _line("t2", gross="1e3")  # a float, not an amount
        + _line("t3", gross="12.345", net="11.755")  # more fraction digits than EUR has
        + _line("t4", currency="XXY")
        + _line("t5", settlement_date="2026-02-30")
        + _line("t6", net="9.40")  # not gross less fee
        + _line("t7", type="bonus")
        + '"po_1",2026-12-02,"t8",charge,pending,"pay_t8","a ""quoted"", reference",EUR,10.00,0.59,9.41,charge\n'
        + "po_1,2026-12-02,t9,charge\n"  # cut short
    ).encode()
    run = await books.reconcile(body)
    assert run.status == "COMPLETED", run.failure_reason
    assert (run.row_count, run.invalid_row_count) == (9, 7)
    errors = await _errors(books, run)
    assert "gross '1e3' is not a plain decimal amount" in errors[2]
    assert "gross 12.345 has more fraction digits than EUR allows (2)" in errors[3]
    assert "currency 'XXY' is not an ISO 4217 code" in errors[4]
    assert "settlement_date 2026-02-30 is not a day of its month" in errors[5]
    assert "net 9.40 is not gross 10.00 less fee 0.59" in errors[6]
    assert "type 'bonus' is not one of" in errors[7]
    assert "has 4 fields where the header has 12" in errors[9]
    assert all(error.startswith(f"line {number + 1}: ") for number, error in errors.items())
    quoted = await books.pool.fetchval("SELECT reference FROM report_rows WHERE run_id = $1 AND row_number = 8", run.id)
    assert quoted == 'a "quoted", reference'


async def test_a_report_that_is_not_utf8_fails_saying_so_and_keeps_no_rows(books: Books) -> None:
    run = await books.reconcile((HEADER + _line("t1", description="caf\xe9")).encode("latin-1"))
    assert run.status == "FAILED"
    assert "not UTF-8" in run.failure_reason and "upload it again" in run.failure_reason
    assert await books.pool.fetchval("SELECT count(*) FROM report_rows WHERE run_id = $1", run.id) == 0


async def test_a_report_without_the_providers_columns_fails_naming_them(books: Books) -> None:
    run = await books.reconcile(b"id,amount\n1,10.00\n")
    assert run.status == "FAILED"
    assert "balance_transaction_id" in run.failure_reason and "header line" in run.failure_reason
    assert await books.pool.fetchval("SELECT count(*) FROM report_rows WHERE run_id = $1", run.id) == 0


async def test_an_empty_upload_is_refused_and_nothing_is_kept(books: Books) -> None:
    before = await books.pool.fetchval("SELECT count(*) FROM report_runs")
    with pytest.raises(InvalidArgument) as refused:
        await books.ingest(b"")
    assert "the file is empty" in str(refused.value)
    assert await books.pool.fetchval("SELECT count(*) FROM report_runs") == before


async def test_a_report_over_the_size_bound_is_refused_while_it_streams_and_nothing_is_kept(
    books: Books, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reconciliation, "REPORT_BYTES_MAX", 2048)  # the bound, scaled down (512 MiB in service)
    before = await books.pool.fetchval("SELECT count(*) FROM report_chunks")
    with pytest.raises(InvalidArgument) as refused:
        await books.ingest((HEADER + "".join(_line(f"t{n}") for n in range(100))).encode())
    assert "larger than" in str(refused.value) and "split it by period" in str(refused.value)
    assert await books.pool.fetchval("SELECT count(*) FROM report_chunks") == before


async def test_a_report_over_the_row_bound_fails_before_any_row_is_kept(
    books: Books, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reconciliation, "REPORT_ROWS_MAX", 3)
    run = await books.reconcile((HEADER + "".join(_line(f"t{n}") for n in range(4))).encode())
    assert run.status == "FAILED" and "more than 3 rows" in run.failure_reason
    assert await books.pool.fetchval("SELECT count(*) FROM report_rows WHERE run_id = $1", run.id) == 0
