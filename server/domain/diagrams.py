"""docs/state-machines.md, rendered from the transition tables (`make docs` writes it; a test checks it)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from server.domain.corrections import CORRECTIONS
from server.domain.order_legs import LEG_MACHINE
from server.domain.payment_states import PAYMENT_EVENTS, PAYMENT_MACHINE
from server.domain.refund_states import REFUND_EVENTS, REFUND_MACHINE
from server.domain.state_machine import StateMachine


def _diagram(machine: StateMachine[Any], events_by_state: Mapping[Any, Mapping[Any, Any]]) -> str:
    """A machine whose edges are labelled with the events that move it."""
    lines = ["stateDiagram-v2", f"    [*] --> {machine.initial.value}"]
    for state, events in events_by_state.items():
        lines += [f"    {state.value} --> {target.value}: {event.value}" for event, target in events.items()]
    lines += [f"    {state.value} --> [*]" for state in events_by_state if machine.is_terminal(state)]
    return "\n".join(lines) + "\n"


def _corrections_table() -> str:
    rows = [
        f"| {current.value} | {says.value} | {correction.to_state.value} | {correction.approval.value.lower()} |"
        f" {correction.why} |"
        for (current, says), correction in CORRECTIONS.items()
    ]
    header = "| Ballast has | the provider's API says | corrected to | approval | why |\n|---|---|---|---|---|\n"
    return header + "\n".join(rows) + "\n"


def render() -> str:
    return f"""# State machines

Generated from the transition tables in `server/domain/` by `make docs`; a test fails when this file
is stale. PostgreSQL refuses any other transition too (triggers check the same pairs).

## Payment

Edges are labelled with the internal event that moves the payment (`server/domain/payment_states.py`).
Provider statuses map to these events in `server/domain/provider_status.py`. An event that names the
state the payment is already in is a harmless repeat; anything else not drawn here is refused.

```mermaid
{_diagram(PAYMENT_MACHINE, PAYMENT_EVENTS)}```

### Corrections

A decided payment never moves back on a webhook's word. When the provider's API, asked by id,
contradicts it, Ballast corrects it through a `CORRECTION` transition with the compensating ledger
entries, along these pairs only (`server/domain/corrections.py`; PostgreSQL refuses any other, and
refuses one needing approval, or any second correction of a payment, without `approved_by`). A
correction that needs a person opens a `CORRECTION_NEEDS_APPROVAL` case holding the proposal.

{_corrections_table()}
## Refund

A refund is its own resource (`server/domain/refund_states.py`), moved by the provider's answers
about it as a payment is by those about the payment. Its amount counts against its payment from the
moment it is recorded until it ends without money moving (`FAILED`, `REJECTED`, `EXPIRED`).

```mermaid
{_diagram(REFUND_MACHINE, REFUND_EVENTS)}```

## Order leg

Exactly the table in `server/domain/order_legs.py`. A leg is one child order at the venue.
`MODIFYING` is a cancel/replace (`ModifyLeg`) waiting for the venue's answer, under the old terms:
it starts from a working leg (`PENDING`, `PARTIALLY_FILLED`) or a `FILLED` one (whose quantity may
only grow, re-opening it). `MODIFYING --> MODIFYING` is a fill the venue made under the old terms.
The venue's answer, confirmed or refused, moves the leg to what its fills say under the terms then
in force (`PENDING`, `PARTIALLY_FILLED` or `FILLED`), so a refused modification never rejects a leg;
the outcome is kept as the leg's modification status. `MODIFYING --> REJECTED` is the venue refusing
the order itself, only while nothing has filled.

```mermaid
{LEG_MACHINE.mermaid()}```
"""


if __name__ == "__main__":
    from pathlib import Path

    target = Path(__file__).resolve().parents[2] / "docs" / "state-machines.md"
    target.parent.mkdir(exist_ok=True)
    target.write_text(render())
    print(f"wrote {target}")
