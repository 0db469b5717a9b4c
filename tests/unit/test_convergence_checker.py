"""The convergence checker (tests/convergence.py) names each broken invariant with the payments that
break it, and stays quiet when Ballast agrees with the provider's truth."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

from tests.convergence import ClientHistory, Drain, Snapshot, check

CLIENT = "convergence-unit"
MERCHANT = f"merchant_payable:{CLIENT}"


class World:
    """Ballast's database and the provider's truth, written by hand; consistent until a test breaks it."""

    def __init__(self) -> None:
        self.snapshot = Snapshot(CLIENT, {}, [], {}, {}, {}, Drain(True, 0, 0, 0))
        self.truth: list[dict[str, Any]] = []
        self.histories: list[ClientHistory] = []

    def payment(self, state: str, provider_status: str | None, amount: str = "10.00", currency: str = "EUR") -> str:
        payment_id = str(uuid.uuid4())
        key = f"key-{payment_id}"
        self.snapshot.payments[payment_id] = {
            "idempotency_key": key,
            "amount": Decimal(amount),
            "currency_code": currency,
            "state": state,
        }
        self.histories.append(ClientHistory(key, amount, currency, ["OK"], payment_id, "PENDING"))
        if provider_status is not None:
            self.truth.append(
                {
                    "idempotency_key": payment_id,
                    "final_status": provider_status,
                    "amount": amount,
                    "currency": currency,
                    "webhooks": [],
                }
            )
        if state == "SUCCEEDED":
            self.post(payment_id, Decimal(amount), currency)
        return payment_id

    def post(self, payment_id: str, amount: Decimal, currency: str) -> None:
        """A capture's ledger lines, as Ballast posts them."""
        for account, signed in (("provider_clearing", amount), (MERCHANT, -amount)):
            key = (payment_id, account, currency)
            self.snapshot.ledger_by_payment[key] = self.snapshot.ledger_by_payment.get(key, Decimal(0)) + signed
            balance = (account, currency)
            self.snapshot.balances[balance] = self.snapshot.balances.get(balance, Decimal(0)) + signed
        settled = self.snapshot.balances[(MERCHANT, currency)]
        self.snapshot.exposures[currency] = (Decimal(0), settled)

    def anomalies(self) -> dict[str, list[str]]:
        found = check(self.snapshot, self.truth, self.histories)
        return {anomaly.name: [witness.subject for witness in anomaly.witnesses] for anomaly in found}


def test_a_ballast_that_agrees_with_the_provider_has_no_anomaly() -> None:
    world = World()
    world.payment("SUCCEEDED", "succeeded")
    world.payment("SUCCEEDED", "succeeded", "1200", "JPY")
    world.payment("FAILED", "declined")
    world.payment("FAILED", "failed")
    world.payment("EXPIRED", None)
    world.payment("REJECTED", None)
    assert world.anomalies() == {}


def test_a_payment_failed_on_a_contradicting_webhook_while_the_provider_took_the_money_is_named() -> None:
    world = World()
    world.payment("SUCCEEDED", "succeeded")
    wrong = world.payment("FAILED", "succeeded", "25.00")
    world.snapshot.cases.append(("CONTRADICTORY_EVIDENCE", "OPEN", wrong))
    anomalies = world.anomalies()
    assert anomalies["final_state_differs_from_truth"] == [wrong]
    assert anomalies["case_despite_a_clear_answer"] == [wrong]
    assert anomalies["ledger_differs_from_truth"] == ["EUR", wrong]
    assert "left_undecided" not in anomalies


def test_an_abandoned_payment_left_recorded_is_undecided_and_holds_money_in_flight() -> None:
    world = World()
    world.payment("SUCCEEDED", "succeeded")
    stuck = world.payment("RECORDED", None, "7.50")
    world.snapshot.exposures["EUR"] = (Decimal("7.50"), world.snapshot.exposures["EUR"][1])
    anomalies = world.anomalies()
    assert anomalies["final_state_differs_from_truth"] == [stuck]
    assert anomalies["left_undecided"] == [stuck]
    assert anomalies["money_left_in_flight"] == ["EUR"]


def test_an_undecided_payment_named_by_an_open_case_is_not_left_undecided_but_the_case_is_needless() -> None:
    world = World()
    held = world.payment("UNKNOWN", "succeeded")
    world.snapshot.cases.append(("UNRESOLVED_OUTCOME", "OPEN", held))
    anomalies = world.anomalies()
    assert "left_undecided" not in anomalies
    assert anomalies["case_despite_a_clear_answer"] == [held]


def test_charges_ballast_did_not_ask_for_or_of_another_amount_are_named() -> None:
    world = World()
    paid = world.payment("SUCCEEDED", "succeeded", "10.00")
    world.truth[0]["amount"] = "100.00"
    stranger = str(uuid.uuid4())
    world.truth.append(
        {"idempotency_key": stranger, "final_status": "succeeded", "amount": "5.00", "currency": "EUR", "webhooks": []}
    )
    anomalies = world.anomalies()
    assert anomalies["amount_differs"] == [paid]
    assert anomalies["charge_unknown_to_ballast"] == [stranger]


def test_a_key_answered_with_another_payment_than_the_one_stored_is_named() -> None:
    world = World()
    world.payment("SUCCEEDED", "succeeded")
    world.histories[0].payment_id = str(uuid.uuid4())
    assert world.anomalies()["one_key_two_payments"] == [world.histories[0].key]


def test_an_outbox_that_did_not_drain_and_exposures_apart_from_the_ledger_are_named() -> None:
    world = World()
    world.payment("SUCCEEDED", "succeeded")
    world.snapshot.drain = Drain(False, 3, 1, 0)
    world.snapshot.exposures["EUR"] = (Decimal(0), Decimal(0))
    anomalies = world.anomalies()
    assert anomalies["outbox_not_drained"] == ["outbox"]
    assert anomalies["exposure_differs_from_ledger"] == ["EUR"]
