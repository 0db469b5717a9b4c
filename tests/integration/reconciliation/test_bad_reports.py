"""Bad reports: each gets a clear error, and nothing is half-written."""

from __future__ import annotations

import time

import pytest

from server.db import recon_repository
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


#: Rows every line of which has the header's width: a report COPY parses whole, its amounts and dates
#: judged from their casts. Each is (the line's fields, the error it gets, or None for a valid row).
TRICKY_ROWS: tuple[tuple[dict[str, str], str | None], ...] = (
    ({}, None),
    ({"gross": "1e3", "net": "999.41"}, "gross '1e3' is not a plain decimal amount"),
    ({"gross": "007.50", "net": "6.91"}, "gross '007.50' is not a plain decimal amount"),
    ({"fee": "NaN"}, "fee 'NaN' is not a plain decimal amount"),
    ({"gross": "1" * 41 + ".00", "net": "1" * 41 + ".00"}, "gross '1111111111"),  # longer than any amount
    ({"gross": "12.345", "net": "11.755"}, "gross 12.345 has more fraction digits than EUR allows (2)"),
    ({"fee": "-0.00", "net": "10.00"}, None),  # a zero fee written with its sign
    ({"net": "9.40"}, "net 9.40 is not gross 10.00 less fee 0.59"),
    ({"currency": "XXY"}, "currency 'XXY' is not an ISO 4217 code"),
    ({"type": "bonus"}, "type 'bonus' is not one of"),
    ({"balance_transaction_id": ""}, "has no transaction id"),
    ({"settlement_date": "1899-12-31"}, "settlement_date '1899-12-31' is not a date such as 2026-11-30"),
    ({"settlement_date": "2026-1-02"}, "settlement_date '2026-1-02' is not a date such as 2026-11-30"),
)
#: Values no cast takes: with one of them in a report, every row is checked field by field instead.
UNCASTABLE_ROWS: tuple[tuple[dict[str, str], str], ...] = (
    ({"gross": "ten", "net": "9.41"}, "gross 'ten' is not a plain decimal amount"),
    ({"gross": "9" * 200_000, "net": "9.41"}, "is not a plain decimal amount"),  # past numeric's own range
    ({"settlement_date": "2026-02-30"}, "settlement_date 2026-02-30 is not a day of its month"),
)


@pytest.mark.parametrize(
    "uncastable", [None, *UNCASTABLE_ROWS], ids=["all-cast", "a-word-amount", "a-huge-amount", "feb-30"]
)
async def test_a_well_formed_reports_bad_rows_get_the_same_errors_whether_judged_by_cast_or_by_pattern(
    books: Books, uncastable: tuple[dict[str, str], str] | None
) -> None:
    rows = [*TRICKY_ROWS, *([uncastable] if uncastable else [])]
    body = HEADER + "".join(_line(f"t{n}", **fields) for n, (fields, _) in enumerate(rows, start=1))
    run = await books.reconcile(body.encode())
    assert run.status == "COMPLETED", run.failure_reason
    errors = await _errors(books, run)
    for number, (fields, expected) in enumerate(rows, start=1):
        if expected is None:
            assert number not in errors, (fields, errors.get(number))
        else:
            assert expected in errors.get(number, ""), (fields, errors.get(number))
            assert errors[number].startswith(f"line {number + 1}: ")
    valid = await books.pool.fetch(
        "SELECT gross, fee, net, settlement_date FROM report_rows WHERE run_id = $1 AND error IS NULL ORDER BY fee",
        run.id,
    )
    assert [(str(row["gross"]), str(row["fee"]), str(row["net"])) for row in valid] == [
        ("10.00", "0.00", "10.00"),
        ("10.00", "0.59", "9.41"),
    ]


async def test_a_stage_never_waits_on_another_stages_analyze_of_the_same_table(books: Books) -> None:
    async with books.pool.acquire() as holder, books.pool.acquire() as stage, holder.transaction():
        await holder.execute("ANALYZE report_findings")  # held until this transaction ends
        async with stage.transaction():
            await stage.execute("SET LOCAL lock_timeout = '7s'")
            started = time.monotonic()
            await recon_repository.analyze_if_free(stage, "report_findings")
            assert time.monotonic() - started < 2.0
            # the stage's own lock timeout is as it was
            assert await stage.fetchval("SELECT current_setting('lock_timeout')") == "7s"
