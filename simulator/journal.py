"""The simulator's durable memory (`--state FILE`): what it accepted outlives its process.

A real provider does not forget a payment because its process restarted, and in development the
simulator should not either: a payment left pending when `make run` was killed must still be known
(and still settle) after the next start, or Ballast's resolver asks about it in vain. Every object
the simulator creates or changes (payment, refund, order, the answer to a modify or cancel, settlement
booking) is written here before its answer goes out, and read back when the simulator starts.

One SQLite row per object holds its latest state as JSON, upserted in place: the file grows with
the objects, not with their changes, and at start the oldest settled objects beyond
OBJECTS_KEPT_MAX are forgotten (one still pending or working never is). WAL with synchronous=NORMAL:
a committed write survives the process dying (kill -9, a crash), not a power cut, and costs no
fsync per request. A second simulator on the same file is refused (an flock on FILE.lock).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: Settled objects kept at start-up, newest first; pending and working ones are always kept.
OBJECTS_KEPT_MAX = 100_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    position INTEGER PRIMARY KEY,  -- creation order, kept by the upsert
    id TEXT NOT NULL UNIQUE,       -- pay_..., re_..., ord_..., the Idempotency-Key of an action, txn_...
    kind TEXT NOT NULL,            -- payment | refund | order | action | booking
    settled INTEGER NOT NULL,      -- 1: nothing more happens to it on its own; may be forgotten
    state TEXT NOT NULL            -- JSON, simulator/snapshots.py
)
"""
_UPSERT = (
    "INSERT INTO objects (id, kind, settled, state) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (id) DO UPDATE SET settled = excluded.settled, state = excluded.state"
)


class JournalInUse(RuntimeError):
    """Another simulator keeps its state in this file."""


class Journal:
    def __init__(self, path: Path, connection: sqlite3.Connection, lock_fd: int) -> None:
        self.path = path
        self._connection = connection
        self._lock_fd: int | None = lock_fd
        self._batch_depth = 0

    @classmethod
    def open(cls, path: Path) -> Journal:
        """Open (or create) the file, refusing one another simulator holds; prune it to its bound."""
        path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = path.with_name(path.name + ".lock")
        descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(descriptor, 32, 0).decode(errors="replace").strip() or "another process"
            os.close(descriptor)
            raise JournalInUse(f"{path} is in use by another simulator (pid {owner}): stop it first") from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
        connection = sqlite3.connect(path, isolation_level=None)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.execute(_SCHEMA)
        journal = cls(path, connection, descriptor)
        journal.prune(OBJECTS_KEPT_MAX)
        return journal

    def put(self, kind: str, object_id: str, state: dict[str, Any], *, settled: bool) -> None:
        """Write one object's latest state; committed on return unless inside batch()."""
        self._connection.execute(_UPSERT, (object_id, kind, int(settled), json.dumps(state, separators=(",", ":"))))

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Every put() inside is committed together, or (on an exception) none is."""
        outermost = self._batch_depth == 0
        if outermost:
            self._connection.execute("BEGIN")
        self._batch_depth += 1
        try:
            yield
        except BaseException:
            self._batch_depth -= 1
            if outermost:
                self._connection.execute("ROLLBACK")
            raise
        self._batch_depth -= 1
        if outermost:
            self._connection.execute("COMMIT")

    def load(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """(kind, state) of every object, in the order they were created."""
        for kind, state in self._connection.execute("SELECT kind, state FROM objects ORDER BY position"):
            yield kind, json.loads(state)

    def count(self) -> int:
        return int(self._connection.execute("SELECT count(*) FROM objects").fetchone()[0])

    def prune(self, kept_max: int) -> int:
        """Forget the oldest settled objects beyond kept_max; how many were forgotten."""
        cursor = self._connection.execute(
            "DELETE FROM objects WHERE settled = 1 AND position <="
            " (SELECT position FROM objects WHERE settled = 1 ORDER BY position DESC LIMIT 1 OFFSET ?)",
            (kept_max,),
        )
        return cursor.rowcount

    def clear(self) -> None:
        self._connection.execute("DELETE FROM objects")

    def close(self) -> None:
        self._connection.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
