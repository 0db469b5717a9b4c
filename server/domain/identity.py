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
