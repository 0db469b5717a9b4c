"""What every client of a chaos run was told: a history of operations, as the load driver records them.

Each call a client makes is an `invoke`, then one completion: `ok` (an answer, with the payment id and
the state the client was told), `fail` (a definite refusal: nothing happened) or `info` (indeterminate:
a deadline or UNAVAILABLE after the request may have landed). Every operation carries the client
(process) and the idempotency key, so the checker knows what each client was told about each key, and
its `operation`: `create_payment`, or `refund_payment` (a refund of a payment that succeeded, under a key
of its own; its `payment_id` is the payment refunded, its `refund_id` the refund an answer named, its
`state` the refund's).

A history is appended to while the load runs and written as JSON lines, one operation a line, so a run
can be checked again later from its file.
"""

from __future__ import annotations

import enum
import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class Kind(enum.StrEnum):
    INVOKE = "invoke"
    OK = "ok"
    #: a definite refusal: the request had no effect
    FAIL = "fail"
    #: indeterminate: the request may or may not have landed
    INFO = "info"


#: The operations the load driver makes: a payment under a new key, and a refund of one that succeeded.
CREATE_PAYMENT = "create_payment"
REFUND_PAYMENT = "refund_payment"


@dataclass(frozen=True)
class Operation:
    kind: Kind
    #: the client that made the call
    process: str
    idempotency_key: str
    #: seconds on the driver's clock
    time_s: float
    operation: str = CREATE_PAYMENT
    #: the payment id, once an answer gave one
    payment_id: str | None = None
    #: on `ok`, the payment state the client was told
    state: str | None = None
    #: on `fail` or `info`, the error's code (DEADLINE_EXCEEDED, UNAVAILABLE, INVALID_ARGUMENT, ...)
    error: str | None = None
    #: what was asked, on `invoke`: a decimal string and an ISO 4217 code
    amount: str | None = None
    currency: str | None = None
    #: on `fail` or `info`, the error's message as the client got it
    message: str | None = None
    #: a refund_payment's refund id, once an answer gave one (its payment's is payment_id)
    refund_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "kind": self.kind.value,
            "process": self.process,
            "idempotency_key": self.idempotency_key,
            "time_s": self.time_s,
            "operation": self.operation,
        }
        for name in ("payment_id", "state", "error", "amount", "currency", "message", "refund_id"):
            value = getattr(self, name)
            if value is not None:
                data[name] = value
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Operation:
        try:
            kind = Kind(data["kind"])
            process, key, time_s = str(data["process"]), str(data["idempotency_key"]), float(data["time_s"])
        except (KeyError, ValueError, TypeError) as error:
            raise ValueError(f"not an operation: {data!r} ({error})") from error

        def optional(name: str) -> str | None:
            value = data.get(name)
            return None if value is None else str(value)

        return cls(
            kind=kind,
            process=process,
            idempotency_key=key,
            time_s=time_s,
            operation=str(data.get("operation", CREATE_PAYMENT)),
            payment_id=optional("payment_id"),
            state=optional("state"),
            error=optional("error"),
            amount=optional("amount"),
            currency=optional("currency"),
            message=optional("message"),
            refund_id=optional("refund_id"),
        )


class History:
    """Operations in the order they were recorded. Appending is synchronous: safe from one event loop."""

    def __init__(self, operations: Iterable[Operation] = ()) -> None:
        self._operations: list[Operation] = list(operations)

    def __iter__(self) -> Iterator[Operation]:
        return iter(self._operations)

    def __len__(self) -> int:
        return len(self._operations)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, History) and self._operations == other._operations

    __hash__ = None  # type: ignore[assignment]

    def append(self, operation: Operation) -> Operation:
        self._operations.append(operation)
        return operation

    # -- what a load driver calls -----------------------------------------------------------------

    def invoke(
        self,
        process: str,
        key: str,
        *,
        amount: str | None = None,
        currency: str | None = None,
        time_s: float | None = None,
        operation: str = CREATE_PAYMENT,
        payment_id: str | None = None,
    ) -> Operation:
        return self.append(
            Operation(
                Kind.INVOKE,
                process,
                key,
                _now(time_s),
                operation,
                payment_id=payment_id,
                amount=amount,
                currency=currency,
            )
        )

    def ok(
        self,
        process: str,
        key: str,
        payment_id: str,
        state: str,
        *,
        time_s: float | None = None,
        operation: str = CREATE_PAYMENT,
        refund_id: str | None = None,
    ) -> Operation:
        return self.append(
            Operation(
                Kind.OK, process, key, _now(time_s), operation, payment_id=payment_id, state=state, refund_id=refund_id
            )
        )

    def fail(
        self,
        process: str,
        key: str,
        error: str,
        *,
        message: str | None = None,
        time_s: float | None = None,
        operation: str = CREATE_PAYMENT,
    ) -> Operation:
        return self.append(Operation(Kind.FAIL, process, key, _now(time_s), operation, error=error, message=message))

    def info(
        self,
        process: str,
        key: str,
        error: str,
        *,
        message: str | None = None,
        time_s: float | None = None,
        operation: str = CREATE_PAYMENT,
    ) -> Operation:
        return self.append(Operation(Kind.INFO, process, key, _now(time_s), operation, error=error, message=message))

    def of_operation(self, operation: str) -> History:
        """The operations of one kind of call only (CREATE_PAYMENT, REFUND_PAYMENT), in order."""
        return History(op for op in self._operations if op.operation == operation)

    def calls(self) -> list[tuple[Operation, Operation]]:
        """Each completed call as (invoke, completion): a process makes one call at a time, so its
        completion follows its invoke. An invoke never completed (the run stopped) is left out."""
        waiting: dict[str, Operation] = {}
        pairs = []
        for operation in self._operations:
            if operation.kind is Kind.INVOKE:
                waiting[operation.process] = operation
            elif operation.process in waiting:
                pairs.append((waiting.pop(operation.process), operation))
        return pairs

    # -- reading it -------------------------------------------------------------------------------

    def of_kind(self, kind: Kind) -> list[Operation]:
        return [operation for operation in self._operations if operation.kind is kind]

    def by_key(self) -> dict[str, list[Operation]]:
        """Each idempotency key's operations, in order."""
        grouped: dict[str, list[Operation]] = {}
        for operation in self._operations:
            grouped.setdefault(operation.idempotency_key, []).append(operation)
        return grouped

    # -- JSON lines -------------------------------------------------------------------------------

    def to_jsonl(self) -> str:
        return "".join(json.dumps(operation.to_json(), sort_keys=True) + "\n" for operation in self._operations)

    @classmethod
    def from_jsonl(cls, text: str) -> History:
        operations = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"line {number}: not JSON ({error})") from error
            if not isinstance(data, dict):
                raise ValueError(f"line {number}: not an operation: {line!r}")
            try:
                operations.append(Operation.from_json(data))
            except ValueError as error:
                raise ValueError(f"line {number}: {error}") from error
        return cls(operations)

    def write(self, path: Path) -> None:
        path.write_text(self.to_jsonl())

    @classmethod
    def read(cls, path: Path) -> History:
        return cls.from_jsonl(path.read_text())


def _now(time_s: float | None) -> float:
    return time.monotonic() if time_s is None else time_s
