"""Opaque page tokens for keyset pagination over (created_at, id), hardened against tampering."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from server.domain.errors import FieldViolation, InvalidArgument
from server.domain.identifiers import UUID_PATTERN

PAGE_TOKEN_LENGTH_MAX = 256


@dataclass(frozen=True)
class PageSizes:
    """One list's page sizes: what 0 (unset) means, and the most a page may ask for."""

    default: int
    maximum: int

    def violation(self, page_size: int) -> FieldViolation | None:
        if 0 <= page_size <= self.maximum:
            return None
        return FieldViolation("page_size", f"must be from 0 to {self.maximum}; 0 means {self.default}")

    def limit(self, page_size: int) -> int:
        """The number of items to read for `page_size`; InvalidArgument naming the field if out of range."""
        violation = self.violation(page_size)
        if violation is not None:
            raise InvalidArgument([violation])
        return page_size or self.default


#: Payments, orders and ledger entries: 50 a page unless asked, at most 500.
LIST_PAGE = PageSizes(default=50, maximum=500)
#: A payment's timeline: its entries are small, and a page holds a whole payment's life more often.
TIMELINE_PAGE = PageSizes(default=500, maximum=1000)


def encode_cursor(created_at: datetime, row_id: uuid.UUID, scope: str | None = None) -> str:
    """`scope` ties a token to the filter it was issued under (a state, an account)."""
    cursor = {"s": scope, "t": created_at.isoformat(), "i": str(row_id)}
    return base64.urlsafe_b64encode(json.dumps(cursor, separators=(",", ":")).encode()).decode()


def decode_cursor(token: str, list_name: str, scope: str | None = None) -> tuple[datetime, uuid.UUID]:
    invalid = InvalidArgument([FieldViolation("page_token", f"is not a token from a previous {list_name} response")])
    if len(token) > PAGE_TOKEN_LENGTH_MAX:
        raise invalid
    try:
        cursor = json.loads(base64.urlsafe_b64decode(token.encode()))
        created_at = datetime.fromisoformat(cursor["t"])
        if created_at.tzinfo is None or not UUID_PATTERN.fullmatch(cursor["i"]):
            raise invalid
        after = (created_at.astimezone(UTC), uuid.UUID(cursor["i"]))
        cursor_scope = cursor["s"]
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError, RecursionError, binascii.Error):
        raise invalid from None  # ValueError covers UnicodeDecodeError and json.JSONDecodeError
    if cursor_scope != scope:
        raise InvalidArgument([FieldViolation("page_token", "was issued for a different filter")])
    return after
