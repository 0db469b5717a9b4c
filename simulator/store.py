"""The provider's memory of one kind of object (payments, orders): by id and by idempotency key.

Every method is synchronous and the simulator runs on one event loop, so a check-then-create
cannot interleave with another: 50 concurrent requests with one key create one object, no lock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar


@dataclass
class Answer:
    """What the API should answer: a status, a JSON body, and whether it is an idempotent replay."""

    status: int
    body: dict[str, Any]
    replayed: bool = False


class IdempotencyConflict(Exception):
    """The key was used before with different parameters."""

    def __init__(self, key: str) -> None:
        super().__init__(f"idempotency key {key!r} was already used with different parameters")
        self.key = key


class Keyed(Protocol):
    """An object created under an idempotency key, from a request that can be compared."""

    @property
    def id(self) -> str: ...
    @property
    def idempotency_key(self) -> str: ...
    @property
    def request(self) -> object: ...


ObjectT = TypeVar("ObjectT", bound=Keyed)


@dataclass
class Saved(Generic[ObjectT]):
    """The first answer given for a key, replayed verbatim to every repeat."""

    request: object
    object: ObjectT
    status: int
    body: dict[str, Any]


class Store(Generic[ObjectT]):
    def __init__(self) -> None:
        self.objects: dict[str, ObjectT] = {}  # by id, in creation order
        self.by_key: dict[str, Saved[ObjectT]] = {}

    def replay(self, key: str, request: object) -> Saved[ObjectT] | None:
        """The saved answer for a repeated key, None for a new key; IdempotencyConflict on a mismatch."""
        saved = self.by_key.get(key)
        if saved is None:
            return None
        if saved.request != request:
            raise IdempotencyConflict(key)
        return saved

    def add(self, created: ObjectT, status: int, body: dict[str, Any]) -> None:
        if created.idempotency_key in self.by_key:
            raise RuntimeError(f"idempotency key {created.idempotency_key!r} is taken: call replay() first")
        self.objects[created.id] = created
        self.by_key[created.idempotency_key] = Saved(created.request, created, status, body)

    def get(self, object_id: str) -> ObjectT | None:
        return self.objects.get(object_id)

    def by_idempotency_key(self, key: str) -> ObjectT | None:
        saved = self.by_key.get(key)
        return saved.object if saved else None
