"""The whole pipeline against the simulator's planted drift: every difference lands in its class, and
nothing that matches is a finding."""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal
from typing import Any

from tests.integration.reconciliation.conftest import DRIFT_CLASSES, Books


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
    run = await books.reconcile(await books.report())
    assert run.status == "COMPLETED", run.failure_reason
    findings = await books.findings(run.id)
    found: dict[str, set[str]] = defaultdict(set)
    for finding in findings:
        source = finding["source_id"] or finding["expected"].get("provider_payment_id")
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
