"""Who is calling: every RPC runs on behalf of one authenticated client with one role."""

from __future__ import annotations

import enum
from dataclasses import dataclass


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
    READ_PAYMENTS = "payments.read"
    TRADE = "orders.trade"
    READ_ORDERS = "orders.read"
    #: balances and entries of every account, not only the caller's
    READ_LEDGER = "ledger.read"


_READ_OWN = {Permission.READ_PAYMENTS, Permission.READ_ORDERS}

#: What each role may do. Payment and order reads are scoped to the caller's own client id.
ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.SERVICE: frozenset({Permission.CREATE_PAYMENT, Permission.TRADE, *_READ_OWN}),
    Role.OPERATOR: frozenset({Permission.READ_LEDGER, *_READ_OWN}),
    Role.AUDITOR: frozenset({Permission.READ_LEDGER, *_READ_OWN}),
    Role.ADMIN: frozenset(Permission),
}


def is_allowed(principal: Principal, permission: Permission) -> bool:
    return permission in ROLE_PERMISSIONS[principal.role]
