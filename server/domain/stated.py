"""What a provider states, as text: the one way provider values are compared and stored as evidence."""

from __future__ import annotations

import json
from decimal import Decimal

#: The longest provider value kept in a case or compared (amounts, ids, symbols).
STATED_LENGTH_MAX = 255


def stated(value: object) -> str | None:
    """A provider's value as text fit to be compared and stored in a case (None when it states nothing).

    A number (parsed exactly, as Decimal or int) is its decimal text; anything else that is not text
    is its JSON, which fits no term of Ballast's. NUL and lone surrogates (which JSON can carry and
    PostgreSQL refuses) are replaced, and the text is cut at STATED_LENGTH_MAX.
    """
    if value is None:
        return None
    if isinstance(value, str):
        text = value
    elif isinstance(value, int | Decimal) and not isinstance(value, bool):
        text = str(value)
    else:
        text = json.dumps(value, sort_keys=True, default=str)
    text = text[:STATED_LENGTH_MAX].replace("\x00", "\ufffd")
    return text.encode("utf-8", "replace").decode("utf-8")
