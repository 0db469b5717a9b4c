"""Who is calling: every RPC runs on behalf of one authenticated client with one role."""

from __future__ import annotations

import enum
from dataclasses import dataclass

#: The longest client id: it names the caller in every row the caller owns, and in ledger account names.
CLIENT_ID_LENGTH_MAX = 128


class Role(enum.StrEnum):
    #: an internal service creating and reading its own payments and orders
    SERVICE = "service"
    #: operations staff working reconciliation cases
    OPERATOR = "operator"
    #: read-only access for auditors
    AUDITOR = "auditor"
    #: everything
    ADMIN = "admin"


@dataclass(frozen=True)
class Principal:
    client_id: str
    role: Role


class Permission(enum.StrEnum):
    CREATE_PAYMENT = "payments.create"
    #: ask for a refund of one of its own client's payments
    REFUND_PAYMENT = "payments.refund"
    READ_PAYMENTS = "payments.read"
    TRADE = "orders.trade"
    READ_ORDERS = "orders.read"
    #: balances and entries of every account, not only the caller's
    READ_LEDGER = "ledger.read"
    #: the payments, orders and timelines of every client, not only the caller's own
    READ_EVERY_CLIENT = "clients.read_every"
    #: take in a provider's report for reconciliation
    INGEST_REPORT = "reconciliation.ingest"
    #: read report runs and cases, with their evidence
    READ_CASES = "cases.read"
    #: decide a case
    RESOLVE_CASE = "cases.resolve"


_READ_OWN = {Permission.READ_PAYMENTS, Permission.READ_ORDERS}
#: What operations staff and auditors read: every client's payments, orders, timelines and ledger
#: accounts alike, so that a ledger line they can read never names a payment they cannot.
_READ_EVERYTHING = {*_READ_OWN, Permission.READ_EVERY_CLIENT, Permission.READ_LEDGER}

#: What each role may do. A service reads its own client's payments, orders and account only.
ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.SERVICE: frozenset({Permission.CREATE_PAYMENT, Permission.REFUND_PAYMENT, Permission.TRADE, *_READ_OWN}),
    Role.OPERATOR: frozenset(
        {*_READ_EVERYTHING, Permission.READ_CASES, Permission.INGEST_REPORT, Permission.RESOLVE_CASE}
    ),
    Role.AUDITOR: frozenset({*_READ_EVERYTHING, Permission.READ_CASES}),
    Role.ADMIN: frozenset(Permission),
}


def is_allowed(principal: Principal, permission: Permission) -> bool:
    return permission in ROLE_PERMISSIONS[principal.role]


def readable_client(principal: Principal) -> str | None:
    """Whose payments and orders the principal may read: its own client's (that client id), or every
    client's (None). Another client's payment or order reads as NotFound, as if it did not exist."""
    return None if is_allowed(principal, Permission.READ_EVERY_CLIENT) else principal.client_id
