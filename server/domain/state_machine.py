"""A state machine as data: which states may follow which. Every machine in Ballast is one of these.

The same table drives the Python checks, the PostgreSQL trigger that refuses illegal writes, and the
state diagrams in docs/; nothing else decides what may follow what.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from server.domain.errors import BallastError

S = TypeVar("S", bound=enum.StrEnum)


class IllegalTransition(BallastError):
    """A move the machine's table does not allow; nothing was changed."""

    def __init__(self, machine: str, from_state: str, to_state: str, subject: str = "") -> None:
        self.machine = machine
        self.from_state = from_state
        self.to_state = to_state
        where = f" for {subject}" if subject else ""
        super().__init__(f"{machine}: {from_state} -> {to_state} is not an allowed transition{where}")


@dataclass(frozen=True)
class StateMachine(Generic[S]):
    name: str
    initial: S
    #: state -> the states that may follow it (a state may list itself where repeating is meaningful)
    transitions: Mapping[S, frozenset[S]]

    def __post_init__(self) -> None:
        states = set(self.transitions)
        for to_states in self.transitions.values():
            if not to_states <= states:
                raise ValueError(f"{self.name}: transitions name states missing from the table: {to_states - states}")
        if self.initial not in states:
            raise ValueError(f"{self.name}: initial state {self.initial} is not in the table")

    def allows(self, from_state: S, to_state: S) -> bool:
        return to_state in self.transitions[from_state]

    def check(self, from_state: S, to_state: S, subject: str = "") -> None:
        if not self.allows(from_state, to_state):
            raise IllegalTransition(self.name, from_state.value, to_state.value, subject)

    def is_terminal(self, state: S) -> bool:
        return not self.transitions[state]

    def pairs(self) -> list[tuple[str, str]]:
        """Every allowed (from, to) as strings, in table order: what the database's trigger checks."""
        return [
            (a.value, b.value)
            for a, tos in self.transitions.items()
            for b in sorted(tos, key=list(self.transitions).index)
        ]

    def mermaid(self) -> str:
        """A Mermaid stateDiagram-v2 of the table."""
        lines = ["stateDiagram-v2", f"    [*] --> {self.initial.value}"]
        lines += [f"    {a} --> {b}" for a, b in self.pairs()]
        lines += [f"    {state.value} --> [*]" for state in self.transitions if self.is_terminal(state)]
        return "\n".join(lines) + "\n"
