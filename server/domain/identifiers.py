"""Ids as callers send them: only the canonical UUID spelling is accepted."""

from __future__ import annotations

import re
import uuid

from server.domain.errors import FieldViolation, InvalidArgument, echo

#: The one spelling of an id Ballast accepts: the canonical 8-4-4-4-12 hex form (either case).
UUID_PATTERN = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def parse_uuid(raw: str, field: str) -> uuid.UUID:
    # uuid.UUID() alone would also take braces, "urn:uuid:", signs, underscores and non-ASCII digits.
    if not isinstance(raw, str) or not UUID_PATTERN.fullmatch(raw):
        raise InvalidArgument([FieldViolation(field, f"{echo(str(raw), 40)} is not a UUID such as {uuid.UUID(int=0)}")])
    return uuid.UUID(raw)
