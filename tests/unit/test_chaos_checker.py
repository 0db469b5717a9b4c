"""The chaos checker (chaos/checker.py) and its history (chaos/history.py): each invariant passes on a
consistent run, and fails on a run that breaks it, naming exactly the witness."""

from __future__ import annotations

import pytest

from chaos.history import History, Kind, Operation


def test_a_history_survives_json_lines() -> None:
    history = History()
    history.invoke("c1", "key-1", amount="10.00", currency="EUR", time_s=1.0)
    history.ok("c1", "key-1", "pay-1", "PENDING", time_s=1.5)
    history.invoke("c2", "key-2", amount="700", currency="JPY", time_s=1.1)
    history.info("c2", "key-2", "DEADLINE_EXCEEDED", time_s=3.1)
    history.invoke("c2", "key-2", time_s=3.2)
    history.fail("c2", "key-2", "INVALID_ARGUMENT", time_s=3.3)
    again = History.from_jsonl(history.to_jsonl())
    assert again == history
    assert [operation.kind for operation in again.by_key()["key-2"]] == [Kind.INVOKE, Kind.INFO, Kind.INVOKE, Kind.FAIL]
    assert again.of_kind(Kind.OK) == [Operation(Kind.OK, "c1", "key-1", 1.5, payment_id="pay-1", state="PENDING")]


@pytest.mark.parametrize(
    "line", ['{"kind": "maybe", "process": "c", "idempotency_key": "k", "time_s": 1}', "[1]", "{not json"]
)
def test_a_line_that_is_not_an_operation_is_refused_with_its_number(line: str) -> None:
    with pytest.raises(ValueError, match="line 2"):
        History.from_jsonl('{"kind": "invoke", "process": "c", "idempotency_key": "k", "time_s": 0}\n' + line)
