"""Settlement: the provider's balance transactions, grouped into payouts and reported, with drift.

Every succeeded charge and every refund is booked as it really happened (the truth) and as the
settlement report will show it. The report-drift settings make the two differ the ways real reports
do: a row missing, a row for a charge nobody made, a changed amount or fee, an FX adjustment line,
a row settled a day late. Drift is drawn once, when the transaction is booked, from the payment's
own seeded generator, so a report downloaded twice says the same thing, and the same seed gives
the same drift.
"""

from __future__ import annotations

import csv
import io
import random
import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from simulator.payments import currency_digits
from simulator.settings import FaultSettings

CHARGE, REFUND, ADJUSTMENT, PAYOUT = "charge", "refund", "adjustment", "payout"
CSV_COLUMNS = (
    "payout_id",
    "settlement_date",
    "balance_transaction_id",
    "type",
    "status",
    "source_id",
    "reference",
    "currency",
    "gross",
    "fee",
    "net",
    "description",
)


def minor_unit(currency: str) -> Decimal:
    return Decimal(1).scaleb(-currency_digits(currency))


def fee_for(gross: Decimal, currency: str, settings: FaultSettings) -> Decimal:
    """The agreed fee schedule: fee_bps of the amount plus a fixed fee, rounded half up to the minor unit."""
    unit = minor_unit(currency)
    fee = gross * settings.fee_bps / 10_000 + settings.fee_fixed_minor_units * unit
    return fee.quantize(unit, rounding=ROUND_HALF_UP)


@dataclass(frozen=True)
class Line:
    """One balance transaction as a report shows it."""

    type: str
    source_id: str  # the provider's payment id
    reference: str  # the merchant's reference given when the payment was created
    currency: str
    gross: Decimal
    fee: Decimal
    settlement_date: date
    description: str
    id: str = field(default_factory=lambda: f"txn_{uuid.uuid4().hex[:24]}")

    @property
    def net(self) -> Decimal:
        return self.gross - self.fee

    @property
    def payout_id(self) -> str:
        """One payout per currency and settlement date groups every line of that day."""
        return f"po_{self.settlement_date:%Y%m%d}_{self.currency.lower()}"

    def to_json(self, today: date) -> dict[str, Any]:
        return {
            "payout_id": self.payout_id,
            "settlement_date": self.settlement_date.isoformat(),
            "balance_transaction_id": self.id,
            "type": self.type,
            "status": "available" if self.settlement_date <= today else "pending",
            "source_id": self.source_id,
            "reference": self.reference,
            "currency": self.currency,
            "gross": str(self.gross),
            "fee": str(self.fee),
            "net": str(self.net),
            "description": self.description,
        }


@dataclass(frozen=True)
class Booking:
    """What the provider really booked (`true`, None for a line it invented) and what it reports."""

    true: Line | None
    reported: tuple[Line, ...]
    drift: tuple[str, ...]
    booked: int = field(default_factory=lambda: int(time.time()))

    def to_json(self, today: date) -> dict[str, Any]:
        return {
            "true": None if self.true is None else self.true.to_json(today),
            "reported": [line.to_json(today) for line in self.reported],
            "drift": list(self.drift),
        }


def _shift(value: Decimal, rng: random.Random, unit: Decimal, most_units: int) -> Decimal:
    """`value` moved by 1..most_units minor units up or down, never to zero or across it."""
    step = unit * rng.randint(1, most_units) * rng.choice((-1, 1))
    shifted = value + step
    return shifted if shifted != 0 and (shifted > 0) == (value > 0) else value - step


def book(true: Line, rng: random.Random, settings: FaultSettings) -> list[Booking]:
    """The bookings for one real transaction: its own, and an invented one when `extra` drifts.

    A fixed number of draws per call, whatever is drawn, so one booking's drift never shifts the next.
    """
    unit = minor_unit(true.currency)
    missing = rng.random() < settings.report_missing_rate
    amount = rng.random() < settings.report_amount_rate
    fee = rng.random() < settings.report_fee_rate
    fx = rng.random() < settings.report_fx_rate
    late = rng.random() < settings.report_late_rate
    extra = rng.random() < settings.report_extra_rate
    amount_shifted = _shift(true.gross, rng, unit, 100)
    fee_shifted = max(true.fee + unit * rng.randint(-20, 50), Decimal(0))
    fx_amount = unit * rng.randint(1, 200) * rng.choice((-1, 1))
    invented_gross = unit * rng.randint(100, 100_000)
    invented_source = f"pay_{rng.getrandbits(96):024x}"

    drift: list[str] = []
    reported = true
    if amount:
        reported, drift = replace(reported, gross=amount_shifted), [*drift, "amount"]
    if fee and fee_shifted != true.fee:
        reported, drift = replace(reported, fee=fee_shifted), [*drift, "fee"]
    if late:
        reported, drift = replace(reported, settlement_date=true.settlement_date + timedelta(days=1)), [*drift, "late"]
    lines = [reported]
    if fx:
        adjustment = Line(
            ADJUSTMENT,
            true.source_id,
            true.reference,
            true.currency,
            fx_amount,
            Decimal(0),
            reported.settlement_date,
            "fx adjustment",
        )
        lines.append(adjustment)
        drift.append("fx")
    if missing:
        lines, drift = [], ["missing"]
    bookings = [Booking(true, tuple(lines), tuple(drift))]
    if extra:
        invented = Line(
            CHARGE,
            invented_source,
            "",
            true.currency,
            invented_gross,
            fee_for(invented_gross, true.currency, settings),
            true.settlement_date,
            "charge",
        )
        bookings.append(Booking(None, (invented,), ("extra",)))
    return bookings


@dataclass
class Report:
    """The lines settling in [start, end] (either open), and the payouts they group into."""

    start: date | None
    end: date | None
    lines: list[Line]
    today: date

    def payouts(self) -> list[dict[str, Any]]:
        groups: dict[str, list[Line]] = {}
        for line in self.lines:
            groups.setdefault(line.payout_id, []).append(line)
        return [
            {
                "id": payout_id,
                "currency": lines[0].currency,
                "settlement_date": lines[0].settlement_date.isoformat(),
                "status": "paid" if lines[0].settlement_date <= self.today else "in_transit",
                "gross": str(sum((line.gross for line in lines), Decimal(0))),
                "fee": str(sum((line.fee for line in lines), Decimal(0))),
                "net": str(sum((line.net for line in lines), Decimal(0))),
                "line_count": len(lines),
            }
            for payout_id, lines in groups.items()
        ]

    def to_json(self) -> dict[str, Any]:
        return {
            "object": "settlement_report",
            "from": None if self.start is None else self.start.isoformat(),
            "to": None if self.end is None else self.end.isoformat(),
            "payouts": self.payouts(),
            "lines": [line.to_json(self.today) for line in self.lines],
        }

    def to_csv(self) -> str:
        """Every line under its payout, then the payout itself as a line taking the net out of the balance."""
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        by_payout: dict[str, list[dict[str, Any]]] = {}
        for line in self.lines:
            by_payout.setdefault(line.payout_id, []).append(line.to_json(self.today))
        for payout in self.payouts():
            writer.writerows(by_payout[payout["id"]])
            net = -Decimal(payout["net"])
            writer.writerow(
                {
                    "payout_id": payout["id"],
                    "settlement_date": payout["settlement_date"],
                    "balance_transaction_id": payout["id"],
                    "type": PAYOUT,
                    "status": payout["status"],
                    "source_id": "",
                    "reference": "",
                    "currency": payout["currency"],
                    "gross": str(net),
                    "fee": "0",
                    "net": str(net),
                    "description": f"payout of {payout['line_count']} lines",
                }
            )
        return out.getvalue()


class SettlementBook:
    """Every booking, in the order it was made."""

    def __init__(self) -> None:
        self.bookings: list[Booking] = []

    def record(self, true: Line, rng: random.Random, settings: FaultSettings) -> list[Booking]:
        """Book a real transaction; the bookings made (its own, and an invented one when it drifts so)."""
        made = book(true, rng, settings)
        self.bookings.extend(made)
        return made

    def report(self, start: date | None, end: date | None) -> Report:
        lines = sorted(
            (
                line
                for booking in self.bookings
                for line in booking.reported
                if (start is None or line.settlement_date >= start) and (end is None or line.settlement_date <= end)
            ),
            key=lambda line: (line.settlement_date, line.currency),  # stable: booking order within a payout
        )
        return Report(start, end, lines, today())

    def truth(self) -> list[dict[str, Any]]:
        return [booking.to_json(today()) for booking in self.bookings]


def today() -> date:
    return datetime.now(UTC).date()


def settlement_date(settings: FaultSettings) -> date:
    """When a transaction booked now is paid out."""
    return today() + timedelta(days=settings.settlement_delay_days)
