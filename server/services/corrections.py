"""A person approves a correction the table does not make on its own.

When the provider's API contradicts a decided payment and the correction table says a person must
approve (taking money back from a merchant, charging for an expired payment, a refund Ballast never
asked for, or any second correction), a CORRECTION_NEEDS_APPROVAL case holds the proposal. Approving
it applies the correction in one transaction with the case's resolution: the payment must still be
where the case found it, the transition carries who approved it, and the compensating ledger entries
are posted. PostgreSQL refuses the same correction without an approver.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg

from server.db import cases_repository, payments_repository
from server.db.database import Budget, Database, in_transaction
from server.domain.corrections import APPROVER_LENGTH_MAX, CORRECTION_CASE
from server.domain.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound
from server.domain.payment_states import PaymentState
from server.services.payment_events import Evidence, PaymentOutcome, approve_correction_on

NOTE_LENGTH_MAX = 2000


@dataclass(frozen=True)
class ApprovedCorrection:
    case_id: uuid.UUID
    payment_id: uuid.UUID
    outcome: PaymentOutcome


def _proposal(evidence: list[dict[str, Any]]) -> tuple[PaymentState, PaymentState] | None:
    """The latest correction the case proposes."""
    for piece in reversed(evidence):
        proposed = piece.get("proposed_correction") if isinstance(piece, dict) else None
        if isinstance(proposed, dict):
            return PaymentState(proposed["from_state"]), PaymentState(proposed["to_state"])
    return None


def _check(approved_by: str, note: str) -> None:
    violations = []
    if not approved_by.strip() or len(approved_by) > APPROVER_LENGTH_MAX:
        violations.append(
            FieldViolation("approved_by", f"names the person approving: 1 to {APPROVER_LENGTH_MAX} characters")
        )
    if not note.strip() or len(note) > NOTE_LENGTH_MAX:
        violations.append(FieldViolation("note", f"says why: 1 to {NOTE_LENGTH_MAX} characters"))
    if violations:
        raise InvalidArgument(violations)


async def approve_correction(
    database: Database, case_id: uuid.UUID, to_state: PaymentState, approved_by: str, note: str, budget: Budget
) -> ApprovedCorrection:
    """Apply the correction the case proposes, approved by `approved_by`, and resolve the case.

    The person names the state they approve (`to_state`): it must be the case's latest proposal, so
    nobody approves one correction and gets another (later evidence may have proposed a new one).
    NotFound if no such open case; FailedPrecondition if it proposes no correction, another one, or if
    the payment moved since (the case then stays open: the proposal no longer describes the payment).
    """
    _check(approved_by, note)

    async def work(connection: asyncpg.Connection) -> ApprovedCorrection:
        return await approve_correction_in(connection, case_id, to_state, approved_by, note)

    return await in_transaction(database, budget, work)


async def approve_correction_in(
    connection: asyncpg.Connection,
    case_id: uuid.UUID,
    to_state: PaymentState | None,
    approved_by: str,
    note: str,
    resolution: dict[str, Any] | None = None,
) -> ApprovedCorrection:
    """approve_correction in the caller's transaction; `to_state` None approves the case's latest
    proposal (ResolveCase: the person accepts the provider's version). `resolution` adds to what the
    case's resolution records."""
    case = await cases_repository.lock_open_case(connection, case_id)
    if case is None:
        raise NotFound("open case", str(case_id))
    proposal = _proposal(case["evidence"])
    if case["kind"] != CORRECTION_CASE or proposal is None or case["payment_id"] is None:
        raise FailedPrecondition(f"case:{case_id}", f"case {case_id} ({case['kind']}) proposes no correction")
    from_state, proposed_state = proposal
    if to_state is None:
        to_state = proposed_state
    if proposed_state is not to_state:
        raise FailedPrecondition(
            f"case:{case_id}",
            f"case {case_id} now proposes {from_state.value} -> {proposed_state.value}, not {to_state.value}:"
            " read its latest evidence before approving",
        )
    # locked: nothing moves it between this check and the correction
    current = await payments_repository.lock_state(connection, case["payment_id"])
    if current is not from_state:
        raise FailedPrecondition(
            f"payment:{case['payment_id']}",
            f"payment {case['payment_id']} is {current and current.value}, not {from_state.value}"
            " as the case proposed: read the case's evidence again before acting",
        )
    evidence = Evidence("case.approved", f"case:{case_id}")
    outcome = await approve_correction_on(connection, case["payment_id"], to_state, evidence, approved_by)
    await cases_repository.resolve_case(
        connection,
        case_id,
        {
            "resolution": "CORRECTION_APPROVED",
            "approved_by": approved_by,
            "note": note,
            "correction": {"from_state": from_state.value, "to_state": to_state.value},
        }
        | (resolution or {}),
    )
    return ApprovedCorrection(case_id, case["payment_id"], outcome)
