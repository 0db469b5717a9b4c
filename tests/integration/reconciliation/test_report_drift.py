"""The whole pipeline against the simulator's planted drift: every difference lands in its class, and
nothing that matches is a finding."""

from __future__ import annotations

import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import aiohttp

from ballast.payments.v1 import payments_pb2
from server.db import recon_repository
from server.domain.reconciliation import IN_FORCE_WINDOW_DAYS
from server.services.reconciliation import ReportPuller, ReportWorker, resolve_report
from tests.integration.reconciliation.conftest import DRIFT, DRIFT_CLASSES, Books, csv_rows
from tests.integration.refunds.conftest import refund_request
from tests.support.waiting import until


def _planted(bookings: list[dict[str, Any]]) -> dict[str, set[str]]:
    """Per class, the provider ids the simulator's truth says drifted into it."""
    planted: dict[str, set[str]] = defaultdict(set)
    for booking in bookings:
        line = booking["true"] or booking["reported"][0]
        for drift in booking["drift"]:
            planted[DRIFT_CLASSES[drift]].add(line["source_id"])
    return planted


async def test_every_planted_difference_lands_in_its_class_and_nothing_else_is_found(books: Books) -> None:
    await books.succeeded_payments([f"{10 + n}.{n % 100:02d}" for n in range(40)])
    # a part of some of them refunded: refunds settle in the same report, and drift the same ways
    paid = await books.pool.fetch("SELECT id FROM payments ORDER BY created_at LIMIT 15")
    refunds = [await books.shop.refund(refund_request(str(row["id"]), "1.00")) for row in paid]
    await books.shop.settled_refunds([answer.refund.id for answer in refunds])
    run = await books.reconcile(await books.report())
    assert run.status == "COMPLETED", run.failure_reason
    findings = await books.findings(run.id)
    found: dict[str, set[str]] = defaultdict(set)
    for finding in findings:
        expected = finding["expected"]
        source = finding["source_id"] or expected.get("provider_payment_id") or expected.get("provider_refund_id")
        found[finding["difference"]].add(source)
    planted = _planted(await books.truth())
    assert planted, "the simulator planted no drift: the spec proves nothing"
    scores = {}
    for difference in sorted(set(found) | set(planted)):
        hits = found[difference] & planted[difference]
        precision = Decimal(len(hits)) / len(found[difference]) if found[difference] else Decimal(1)
        recall = Decimal(len(hits)) / len(planted[difference]) if planted[difference] else Decimal(1)
        scores[difference] = (precision, recall, len(planted[difference]))
    print("\nclass                    precision  recall  planted")
    for difference, (precision, recall, count) in scores.items():
        print(f"{difference:24} {precision:9.2f} {recall:7.2f} {count:8}")
    assert all(p == 1 and r == 1 for p, r, _ in scores.values()), scores


async def _without_drift(books: Books) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.put(f"{books.shop.url}/_sim/profile", json={"settings": dict.fromkeys(DRIFT, 0.0)}) as response,
    ):
        assert response.status == 200, await response.text()


async def test_a_pending_payment_the_report_shows_settled_becomes_succeeded_with_its_row_as_evidence(
    books: Books,
) -> None:
    await _without_drift(books)
    payment = await books.shop.created_payment("55.00")
    assert payment.state == payments_pb2.PAYMENT_STATE_PENDING  # the provider took it; nobody asked since

    async def booked() -> bool:
        return any((b["true"] or {}).get("reference") == payment.id for b in await books.truth())

    await until(booked, "the provider settled the payment", timeout_s=20)
    run = await books.reconcile(await books.report())
    assert run.status == "COMPLETED", run.failure_reason
    assert run.opened_case_count == 0
    payment_id = uuid.UUID(payment.id)
    assert await books.pool.fetchval("SELECT state FROM payments WHERE id = $1", payment_id) == "SUCCEEDED"
    evidence = await books.pool.fetchval(
        "SELECT evidence_ref FROM payment_transitions WHERE payment_id = $1 AND to_state = 'SUCCEEDED'", payment_id
    )
    assert evidence.startswith(f"report:{run.id}:")
    entries = await books.pool.fetchval("SELECT count(*) FROM ledger_entries WHERE payment_id = $1", payment_id)
    assert entries == 1

    # the same report again changes nothing, and says so
    again = await books.ingest(await books.report())
    assert again.replayed and again.run.id == run.id
    assert await books.pool.fetchval("SELECT count(*) FROM ledger_entries WHERE payment_id = $1", payment_id) == 1


async def _paid_out_the_same_day(books: Books) -> None:
    """No drift, and payments paid out the day they succeed: the report shows their payout paid."""
    await _without_drift(books)
    async with (
        aiohttp.ClientSession() as http,
        http.put(f"{books.shop.url}/_sim/profile", json={"settings": {"settlement_delay_days": 0}}) as response,
    ):
        assert response.status == 200
    await books.pool.execute("UPDATE provider_settings SET settlement_delay_days = 0 WHERE provider = 'simulator'")


async def _balance(books: Books, account: str) -> Decimal:
    total = await books.pool.fetchval(
        "SELECT coalesce(sum(amount), 0) FROM ledger_lines WHERE account = $1 AND currency_code = 'EUR'", account
    )
    return Decimal(total)


async def test_a_paid_payout_whose_lines_all_match_is_posted_once_and_clears_what_the_provider_owed(
    books: Books,
) -> None:
    await _paid_out_the_same_day(books)
    await books.succeeded_payments(["10.00", "99.99", "1234.56"])
    body = await books.report()
    run = await books.reconcile(body)
    assert run.status == "COMPLETED" and run.opened_case_count == 0, run

    payouts = await books.pool.fetch("SELECT id, event_key FROM ledger_entries WHERE event_key LIKE 'payout:%'")
    assert [row["event_key"] for row in payouts] == [f"payout:simulator:{csv_rows(body)[0]['payout_id']}"]
    lines = [row for row in csv_rows(body) if row["type"] == "charge"]
    assert await _balance(books, "provider_clearing") == 0  # everything the provider owed, it paid
    assert await _balance(books, "bank:simulator") == sum(Decimal(row["net"]) for row in lines)
    assert await _balance(books, "fee_expense:simulator") == sum(Decimal(row["fee"]) for row in lines)
    sums = await books.pool.fetch("SELECT currency_code, sum(amount) AS total FROM ledger_lines GROUP BY 1")
    assert all(row["total"] == 0 for row in sums)

    # the run again (a worker taking it over) posts nothing more
    async with books.pool.acquire() as connection, connection.transaction():
        run_again = await recon_repository.get_run(connection, run.id)
        assert run_again is not None
        await resolve_report(connection, run_again)
    assert await books.pool.fetchval("SELECT count(*) FROM ledger_entries WHERE event_key LIKE 'payout:%'") == 1


async def test_the_scheduled_pull_takes_in_each_closed_days_report_once(books: Books) -> None:
    await _without_drift(books)
    await books.succeeded_payments(["12.00", "13.00"])
    puller = ReportPuller(books.database, books.shop.gateway, interval_s=3600, days=2)
    # two days on, the day the simulator pays these out (tomorrow) is closed, and so is today
    later = datetime.now(UTC).date() + timedelta(days=2)
    first = await puller.pull_once(today=later)
    assert [pulled.replayed for pulled in first] == [False, False]
    worker = ReportWorker(books.database)
    while await worker.run_once() is not None:
        pass
    runs = await books.pool.fetch(
        "SELECT file_name, status, row_count FROM report_runs WHERE id = ANY($1::uuid[]) ORDER BY file_name",
        [pulled.run.id for pulled in first],
    )
    tomorrow = (later - timedelta(days=1)).isoformat()
    assert [(row["file_name"], row["status"]) for row in runs][-1] == (f"settlement_{tomorrow}.csv", "COMPLETED")
    assert runs[-1]["row_count"] == 3  # two charges and their payout
    # the next pull finds the same reports: nothing new
    again = await puller.pull_once(today=later)
    assert [pulled.replayed for pulled in again] == [True, True]
    assert {pulled.run.id for pulled in again} == {pulled.run.id for pulled in first}


async def test_a_corrected_report_supersedes_the_earlier_one_and_is_reconciled_again(books: Books) -> None:
    await books.succeeded_payments([f"{40 + n}.00" for n in range(30)])
    first_body = await books.report()
    first = await books.reconcile(first_body)
    assert first.status == "COMPLETED" and first.opened_case_count > 0
    # the provider corrects its report: the rows it had invented are gone
    planted = _planted(await books.truth())
    corrected_lines = [
        line
        for line in first_body.decode().splitlines(keepends=True)
        if not any(source in line for source in planted["MISSING_INTERNAL"])
    ]
    second = await books.reconcile("".join(corrected_lines).encode())
    assert second.status == "COMPLETED"
    superseded_by = await books.pool.fetchval("SELECT superseded_by FROM report_runs WHERE id = $1", first.id)
    assert superseded_by == second.id
    # nothing is a duplicate of the superseded report's rows, and its invented rows' cases are closed
    differences = {finding["difference"] for finding in await books.findings(second.id)}
    assert "DUPLICATE_PROVIDER_ROW" not in differences and "MISSING_INTERNAL" not in differences
    still_open = await books.pool.fetchval(
        "SELECT count(*) FROM cases WHERE report_run_id = $1 AND kind = 'MISSING_INTERNAL' AND status = 'OPEN'",
        first.id,
    )
    assert still_open == 0
    # both reports are kept, as received
    assert (
        await books.pool.fetchval("SELECT count(*) FROM report_runs WHERE id = ANY($1::uuid[])", [first.id, second.id])
        == 2
    )


async def test_a_report_that_changes_a_payout_already_posted_opens_a_case_and_posts_nothing_more(
    books: Books,
) -> None:
    await _paid_out_the_same_day(books)
    await books.succeeded_payments(["10.00", "20.00"])
    first = await books.reconcile(await books.report())
    assert first.opened_case_count == 0
    bank = await _balance(books, "bank:simulator")
    # a paid payout grows afterwards: the provider's report no longer agrees with what was posted
    await books.succeeded_payments(["30.00"])
    second = await books.reconcile(await books.report())
    differences = [finding["difference"] for finding in await books.findings(second.id)]
    assert differences == ["PAYOUT_MISMATCH"]
    assert second.opened_case_count == 1
    assert await _balance(books, "bank:simulator") == bank  # nothing posted twice, nothing changed


async def test_a_transaction_reported_twice_is_a_duplicate_in_its_report_and_in_a_later_one(books: Books) -> None:
    await _without_drift(books)
    await books.succeeded_payments(["10.00", "11.00"])
    body = await books.report()
    header, first_line, *rest = body.decode().splitlines(keepends=True)
    run = await books.reconcile((header + first_line + first_line + "".join(rest)).encode())
    duplicates = [f for f in await books.findings(run.id) if f["difference"] == "DUPLICATE_PROVIDER_ROW"]
    assert [(f["row_number"], f["observed"]["reported_before"]) for f in duplicates] == [(2, False)]
    # the same transaction in a report of another period that does not supersede this one
    day = csv_rows(body)[0]["settlement_date"]
    other_day = (datetime.fromisoformat(day) + timedelta(days=5)).date().isoformat()
    again = await books.reconcile((header + first_line.replace(day, other_day)).encode())
    duplicates = [f for f in await books.findings(again.id) if f["difference"] == "DUPLICATE_PROVIDER_ROW"]
    assert [(f["row_number"], f["observed"]["reported_before"]) for f in duplicates] == [(1, True)]
    # and in a report of a period further away than the runs a report is compared with: not a duplicate
    far_day = (datetime.fromisoformat(day) + timedelta(days=IN_FORCE_WINDOW_DAYS + 30)).date().isoformat()
    far = await books.reconcile((header + first_line.replace(day, far_day)).encode())
    assert [f for f in await books.findings(far.id) if f["difference"] == "DUPLICATE_PROVIDER_ROW"] == []
