"""One structured line per request and per webhook delivery: `event=... key=value ...`.

key=value rather than JSON so a developer can read the simulator's terminal next to Ballast's.
"""

from __future__ import annotations

import logging

logger = logging.getLogger("simulator")


def _format(value: object) -> str:
    text = str(value)
    if not text or any(character in text for character in ' "='):
        return '"' + text.replace('"', '\\"') + '"'
    return text


def log(event: str, **fields: object) -> None:
    logger.info(" ".join([f"event={event}", *(f"{key}={_format(value)}" for key, value in fields.items())]))
