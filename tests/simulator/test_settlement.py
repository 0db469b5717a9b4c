"""Settlement reports over real HTTP: charges and fees grouped into payouts, and drift the truth owns up to."""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from tests.simulator.conftest import Sim, StartSim, eventually


def _settles_on(days: int = 1) -> str:
    return (datetime.now(UTC).date() + timedelta(days=days)).isoformat()


async def _report(sim: Sim, query: str = "") -> dict[str, Any]:
    status, body = await sim.get(f"/v1/reports/settlement{query}")
    assert status == 200, body
    result: dict[str, Any] = body
    return result


async def _pay_all(sim: Sim, amounts: list[str], currency: str = "EUR") -> list[str]:
    ids = []
    for n, amount in enumerate(amounts):
        body = {"amount": amount, "currency": currency, "reference": f"ref-{currency}-{n}"}
        reply = await sim.post("/v1/payments", body, key=f"{currency}-{n}")
        assert reply.status == 200
        ids.append(reply.json()["id"])
    await eventually(sim.settled, what="the payments to settle")
    return ids


async def test_charges_and_their_fees_are_grouped_into_one_payout_per_currency_and_day(start_sim: StartSim) -> None:
    sim = await start_sim(success_rate=1.0, fee_bps=290, fee_fixed_minor_units=30)
    eur = await _pay_all(sim, ["10.00", "99.99", "1234.56"])
    jpy = await _pay_all(sim, ["5000"], currency="JPY")
    report = await _report(sim)

    lines = {line["source_id"]: line for line in report["lines"]}
    assert set(lines) == set(eur + jpy)
    # 2.9% + 0.30, half up to the minor unit
    assert [lines[i]["fee"] for i in eur] == ["0.59", "3.20", "36.10"]
    assert lines[jpy[0]]["fee"] == "175"  # 145 + 30 yen: a zero-decimal currency keeps whole units
    for line in report["lines"]:
        assert Decimal(line["net"]) == Decimal(line["gross"]) - Decimal(line["fee"])
        assert line["settlement_date"] == _settles_on()
        assert line["status"] == "pending"  # settles tomorrow
    payouts = {payout["currency"]: payout for payout in report["payouts"]}
    assert payouts["EUR"]["line_count"] == 3
    assert Decimal(payouts["EUR"]["net"]) == sum(Decimal(lines[i]["net"]) for i in eur)
    assert {line["payout_id"] for line in report["lines"] if line["currency"] == "EUR"} == {payouts["EUR"]["id"]}


async def test_a_refund_is_a_negative_line_and_failed_payments_move_no_money(start_sim: StartSim) -> None:
    sim = await start_sim(success_rate=0.0)
    await _pay_all(sim, ["20.00"])
    assert (await _report(sim))["lines"] == []

    async with sim.http.put(f"{sim.url}/_sim/profile", json={"settings": {"success_rate": 1.0}}) as response:
        assert response.status == 200
    [paid] = await _pay_all(sim, ["20.00"], currency="USD")
    assert (await sim.refund(paid, "refund-1", currency="USD")).status == 200
    await eventually(sim.settled, what="the refund to settle")
    lines = (await _report(sim))["lines"]
    assert [(line["type"], line["gross"], line["fee"], line["net"]) for line in lines] == [
        ("charge", "20.00", "0.88", "19.12"),
        ("refund", "-20.00", "0.00", "-20.00"),
    ]


async def test_the_csv_report_lists_each_payout_after_its_lines(start_sim: StartSim) -> None:
    sim = await start_sim(success_rate=1.0)
    await _pay_all(sim, ["10.00", "20.00"])
    async with sim.http.get(f"{sim.url}/v1/reports/settlement?format=csv") as response:
        assert response.status == 200
        assert response.content_type == "text/csv"
        rows = list(csv.DictReader(io.StringIO(await response.text())))
    assert [row["type"] for row in rows] == ["charge", "charge", "payout"]
    assert Decimal(rows[2]["net"]) == -(Decimal(rows[0]["net"]) + Decimal(rows[1]["net"]))
    assert {row["payout_id"] for row in rows} == {rows[2]["balance_transaction_id"]}


async def test_the_period_selects_by_settlement_date(start_sim: StartSim) -> None:
    sim = await start_sim(success_rate=1.0, settlement_delay_days=2)
    await _pay_all(sim, ["10.00"])
    day = date.fromisoformat(_settles_on(2))
    assert len((await _report(sim, f"?from={day}&to={day}"))["lines"]) == 1
    assert (await _report(sim, f"?to={day - timedelta(days=1)}"))["lines"] == []
    assert (await _report(sim, f"?from={day + timedelta(days=1)}"))["lines"] == []
    for query, param in (("?from=yesterday", "from"), (f"?from={day}&to={day - timedelta(days=1)}", "to")):
        status, body = await sim.get(f"/v1/reports/settlement{query}")
        assert (status, body["error"]["param"]) == (400, param)


async def test_each_kind_of_drift_shows_in_the_report_and_in_the_truth(start_sim: StartSim) -> None:
    kinds = {
        "missing": "report_missing_rate",
        "amount": "report_amount_rate",
        "fee": "report_fee_rate",
        "fx": "report_fx_rate",
        "late": "report_late_rate",
        "extra": "report_extra_rate",
    }
    for drift, setting in kinds.items():
        sim = await start_sim(success_rate=1.0, **{setting: 1.0})
        [paid] = await _pay_all(sim, ["50.00"])
        lines = (await _report(sim))["lines"]
        [booking, *invented] = (await sim.truth())["settlement"]
        true = booking["true"]
        assert true["source_id"] == paid
        assert (true["gross"], true["fee"], true["settlement_date"]) == ("50.00", "1.75", _settles_on())
        mine = [line for line in lines if line["source_id"] == paid]
        if drift == "missing":
            assert (mine, booking["drift"]) == ([], ["missing"])
            continue
        assert drift in booking["drift"] or (drift == "extra" and invented[0]["drift"] == ["extra"])
        if drift == "amount":
            assert mine[0]["gross"] != true["gross"]
        if drift == "fee":
            assert mine[0]["fee"] != true["fee"]
        if drift == "fx":
            assert [line["type"] for line in mine] == ["charge", "adjustment"]
            assert mine[1]["payout_id"] == mine[0]["payout_id"]
        if drift == "late":
            assert mine[0]["settlement_date"] == _settles_on(2)
        if drift == "extra":
            [phantom] = [line for line in lines if line["source_id"] != paid]
            assert invented[0]["true"] is None
            assert phantom["source_id"] not in {p["id"] for p in (await sim.truth())["payments"]}


async def test_drift_is_fixed_when_booked_and_the_same_for_the_same_seed(start_sim: StartSim) -> None:
    def shape(report: dict[str, Any], truth: dict[str, Any]) -> list[Any]:
        """What was reported and drifted for each merchant reference (bookings follow settle timing)."""
        fields = ("reference", "type", "gross", "fee", "settlement_date")
        amounts = sorted(tuple(line[name] for name in fields) for line in report["lines"])
        drift = sorted((b["true"]["reference"] if b["true"] else "", b["drift"]) for b in truth["settlement"])
        return [amounts, drift]

    runs = []
    for _ in range(2):
        sim = await start_sim("report-drift", seed=5, success_rate=1.0, report_amount_rate=0.3, report_fx_rate=0.3)
        await _pay_all(sim, [f"{n}.00" for n in range(10, 40)])
        first = await _report(sim)
        assert await _report(sim) == first  # downloading again changes nothing
        runs.append(shape(first, await sim.truth()))
    assert runs[0] == runs[1]
    assert any(drift for _, drift in runs[0][1])  # the profile did drift something
