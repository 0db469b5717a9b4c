"""The toxics Toxiproxy 2.8.0 knows: their attributes (defaults and types) and how a request body becomes one.

What the real server answers is the specification: unknown attribute keys are ignored, missing ones are 0,
a toxic's stream defaults to downstream, its toxicity to 1 (any number is accepted), its name to
`{type}_{stream}`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: Each toxic type's attributes, in the order the real server writes them.
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "latency": ("latency", "jitter"),
    "bandwidth": ("rate",),
    "slow_close": ("delay",),
    "timeout": ("timeout",),
    "reset_peer": ("timeout",),
    "slicer": ("average_size", "size_variation", "delay"),
    "limit_data": ("bytes",),
}

STREAMS = ("upstream", "downstream")

#: The Go struct behind each type, as the real server's decoder errors name it.
_STRUCTS = {
    "latency": "LatencyToxic",
    "bandwidth": "BandwidthToxic",
    "slow_close": "SlowCloserToxic",
    "timeout": "TimeoutToxic",
    "reset_peer": "ResetToxic",
    "slicer": "SlicerToxic",
    "limit_data": "LimitDataToxic",
}


def _json_kind(value: Any) -> str:
    """What Go's JSON decoder calls a value it cannot put in a field."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return f"number {value}"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


class BadToxic(ValueError):
    """A request body that does not describe a toxic (the API answers 400 with this message)."""


@dataclass
class Toxic:
    name: str
    type: str
    stream: str
    toxicity: float
    attributes: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        toxicity: float | int = int(self.toxicity) if float(self.toxicity).is_integer() else self.toxicity
        return {
            "attributes": dict(self.attributes),
            "name": self.name,
            "type": self.type,
            "stream": self.stream,
            "toxicity": toxicity,
        }

    def update(self, body: dict[str, Any]) -> None:
        """Apply an update body: new toxicity and attributes; the rest stays."""
        if "toxicity" in body:
            self.toxicity = _number(body["toxicity"], "toxicity")
        if "attributes" in body:
            self.attributes.update(_attributes(self.type, body["attributes"], base=self.attributes))


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadToxic(
            f"bad request body: json: cannot unmarshal {_json_kind(value)} into Go struct field .{what} of type float32"
        )
    return float(value)


def _attributes(kind: str, given: Any, base: dict[str, int] | None = None) -> dict[str, int]:
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise BadToxic("bad request body: json: cannot unmarshal attributes into an object")
    values = {key: 0 for key in ATTRIBUTES[kind]} if base is None else dict(base)
    for key in ATTRIBUTES[kind]:
        if key not in given:
            continue
        value = given[key]
        if value is None:  # Go's decoder leaves a field alone on null
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise BadToxic(
                f"bad request body: json: cannot unmarshal {_json_kind(value)} into Go struct field "
                f"{_STRUCTS[kind]}.attributes.{key} of type int64"
            )
        values[key] = value
    return values


def toxic_from_body(body: Any) -> Toxic:
    """The toxic a creation body describes, or BadToxic naming what is wrong (as the real server words it)."""
    if not isinstance(body, dict):
        raise BadToxic("bad request body: json: cannot unmarshal into a toxic")
    kind = body.get("type")
    if not isinstance(kind, str) or kind not in ATTRIBUTES:
        raise BadToxic("invalid toxic type")
    stream = body.get("stream") or "downstream"
    if stream not in STREAMS:
        raise BadToxic("stream was invalid, can be either upstream or downstream")
    name = body.get("name") or f"{kind}_{stream}"
    if not isinstance(name, str):
        raise BadToxic("bad request body: json: cannot unmarshal name into a string")
    toxicity = _number(body["toxicity"], "toxicity") if "toxicity" in body else 1.0
    return Toxic(
        name=name, type=kind, stream=stream, toxicity=toxicity, attributes=_attributes(kind, body.get("attributes"))
    )
