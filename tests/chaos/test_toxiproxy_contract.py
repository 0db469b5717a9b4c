"""The Toxiproxy API contract: one sequence of calls, with the answers the real Toxiproxy 2.8.0 gives,
run against our proxy always and against the real binary when TOXIPROXY_SERVER_BIN is set.

Only what cannot be the same is normalised: the ports the servers choose, and the wording of Go's JSON
decoder errors (the specs pin their prefix and status)."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from tests.chaos.conftest import Toxiproxy

UP = "127.0.0.1:9"


class Prefix(str):
    """An error message matched on its start: the rest is the Go decoder's wording."""


def _normal(value: Any) -> Any:
    """Chosen ports read PORT; the rest is left as answered."""
    if isinstance(value, dict):
        return {k: (re.sub(r":[1-9]\d*$", ":PORT", v) if k == "listen" else _normal(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_normal(v) for v in value]
    return value


def _matches(answer: Any, expected: Any) -> bool:
    if isinstance(expected, Prefix):
        return isinstance(answer, str) and answer.startswith(expected)
    if isinstance(expected, dict):
        return (
            isinstance(answer, dict)
            and answer.keys() == expected.keys()
            and all(_matches(answer[k], v) for k, v in expected.items())
        )
    if isinstance(expected, list):
        return isinstance(answer, list) and len(answer) == len(expected) and all(map(_matches, answer, expected))
    return bool(answer == expected and type(answer) is type(expected))


def proxy(name: str, listen: str = "127.0.0.1:PORT", *, enabled: bool = True, toxics: Any = ()) -> dict[str, Any]:
    return {"name": name, "listen": listen, "upstream": UP, "enabled": enabled, "Logger": {}, "toxics": list(toxics)}


def error(message: str, status: int) -> dict[str, Any]:
    return {"error": message, "status": status}


LATENCY = {
    "attributes": {"latency": 100, "jitter": 0},
    "name": "latency_downstream",
    "type": "latency",
    "stream": "downstream",
    "toxicity": 1,
}
LATENCY_JITTER = {**LATENCY, "attributes": {"latency": 100, "jitter": 5}, "toxicity": 0.3}
TIMEOUT = {"attributes": {"timeout": 10}, "name": "t2", "type": "timeout", "stream": "upstream", "toxicity": 0.5}

#: (method, path, body, status, answer): what Toxiproxy 2.8.0 answers, call after call.
SEQUENCE: list[tuple[str, str, Any, int, Any]] = [
    ("GET", "/version", None, 200, {"version": "2.8.0"}),
    ("GET", "/proxies", None, 200, {}),
    ("POST", "/proxies", {"name": "a", "listen": "127.0.0.1:0", "upstream": UP}, 201, proxy("a")),
    (
        "POST",
        "/proxies",
        {"name": "a", "listen": "127.0.0.1:0", "upstream": UP},
        409,
        error("proxy already exists", 409),
    ),
    ("POST", "/proxies", {"listen": "127.0.0.1:0", "upstream": UP}, 400, error("missing required field: name", 400)),
    ("POST", "/proxies", {"name": "u", "listen": "127.0.0.1:0"}, 400, error("missing required field: upstream", 400)),
    ("POST", "/proxies", "garbage", 400, error(Prefix("bad request body: "), 400)),
    (
        "POST",
        "/proxies",
        {"name": "d", "listen": "127.0.0.1:0", "upstream": UP, "enabled": False},
        201,
        proxy("d", "127.0.0.1:0", enabled=False),
    ),
    ("GET", "/proxies", None, 200, {"a": proxy("a"), "d": proxy("d", "127.0.0.1:0", enabled=False)}),
    ("GET", "/proxies/a", None, 200, proxy("a")),
    ("POST", "/proxies", {"name": "b", "upstream": UP}, 201, proxy("b", "[::]:PORT")),
    ("DELETE", "/proxies/b", None, 204, None),
    ("GET", "/proxies/zz", None, 404, error("proxy not found", 404)),
    ("POST", "/proxies/a", {"enabled": False}, 200, proxy("a", enabled=False)),
    ("POST", "/proxies/a", {"enabled": True}, 200, proxy("a")),
    ("POST", "/proxies/zz", {"enabled": False}, 404, error("proxy not found", 404)),
    ("POST", "/proxies/a/toxics", {"type": "latency", "attributes": {"latency": 100}}, 200, LATENCY),
    ("POST", "/proxies/a/toxics", {"type": "latency"}, 409, error("toxic already exists", 409)),
    (
        "POST",
        "/proxies/a/toxics",
        {"name": "t2", "type": "timeout", "stream": "upstream", "toxicity": 0.5, "attributes": {"timeout": 10}},
        200,
        TIMEOUT,
    ),
    ("POST", "/proxies/a/toxics", {"type": "nope"}, 400, error("invalid toxic type", 400)),
    (
        "POST",
        "/proxies/a/toxics",
        {"name": "x", "type": "latency", "stream": "sideways"},
        400,
        error("stream was invalid, can be either upstream or downstream", 400),
    ),
    (
        "POST",
        "/proxies/a/toxics",
        {"name": "q", "type": "latency", "attributes": {"latency": "x"}},
        400,
        error(Prefix("bad request body: json: cannot unmarshal string into "), 400),
    ),
    ("POST", "/proxies/a/toxics", "garbage", 400, error(Prefix("bad request body: "), 400)),
    ("POST", "/proxies/zz/toxics", {"type": "latency"}, 404, error("proxy not found", 404)),
    ("GET", "/proxies/a/toxics", None, 200, [TIMEOUT, LATENCY]),
    ("GET", "/proxies/a/toxics/latency_downstream", None, 200, LATENCY),
    ("GET", "/proxies/a/toxics/nope", None, 404, error("toxic not found", 404)),
    (
        "POST",
        "/proxies/a/toxics/latency_downstream",
        {"attributes": {"jitter": 5}, "toxicity": 0.3},
        200,
        LATENCY_JITTER,
    ),
    ("POST", "/proxies/a/toxics/nope", {"toxicity": 0.3}, 404, error("toxic not found", 404)),
    ("GET", "/proxies/a", None, 200, proxy("a", toxics=[TIMEOUT, LATENCY_JITTER])),
    ("DELETE", "/proxies/a/toxics/latency_downstream", None, 204, None),
    ("DELETE", "/proxies/a/toxics/latency_downstream", None, 404, error("toxic not found", 404)),
    (
        "POST",
        "/populate",
        [
            {"name": "a", "listen": "127.0.0.1:0", "upstream": UP},
            {"name": "f", "listen": "127.0.0.1:0", "upstream": UP},
        ],
        201,
        {"proxies": [proxy("a"), proxy("f")]},
    ),
    (
        "POST",
        "/populate",
        [{"name": "h", "listen": "127.0.0.1:0"}],
        400,
        {"error": "missing required field: upstream at proxy 1", "status": 400, "proxies": None},
    ),
    ("POST", "/proxies/a/toxics", {"type": "limit_data", "stream": "upstream"}, 200, None),
    ("POST", "/reset", None, 204, None),
    ("GET", "/proxies", None, 200, {"a": proxy("a"), "d": proxy("d"), "f": proxy("f")}),
    ("DELETE", "/proxies/a", None, 204, None),
    ("DELETE", "/proxies/a", None, 404, error("proxy not found", 404)),
]

#: Each toxic type's attributes when none are given, and its default name and stream.
DEFAULTS = {
    "latency": {"latency": 0, "jitter": 0},
    "bandwidth": {"rate": 0},
    "slow_close": {"delay": 0},
    "timeout": {"timeout": 0},
    "reset_peer": {"timeout": 0},
    "slicer": {"average_size": 0, "size_variation": 0, "delay": 0},
    "limit_data": {"bytes": 0},
}


async def test_the_api_answers_as_toxiproxy_2_8_0_does(toxiproxy: Toxiproxy) -> None:
    for step, (method, path, body, status, expected) in enumerate(SEQUENCE):
        answered_status, answer = await toxiproxy.call(method, path, body)
        where = f"step {step}: {method} {path} on the {toxiproxy.implementation} Toxiproxy"
        assert answered_status == status, f"{where}: {answered_status} {answer}"
        if expected is not None or status == 204:
            assert _matches(_normal(answer), expected), f"{where}: {answer}"


async def test_every_toxic_type_has_the_real_defaults(toxiproxy: Toxiproxy) -> None:
    await toxiproxy.call("POST", "/proxies", {"name": "e", "listen": "127.0.0.1:0", "upstream": UP})
    for kind, attributes in DEFAULTS.items():
        status, answer = await toxiproxy.call("POST", "/proxies/e/toxics", {"type": kind, "stream": "upstream"})
        assert (status, answer) == (
            200,
            {"attributes": attributes, "name": f"{kind}_upstream", "type": kind, "stream": "upstream", "toxicity": 1},
        )


async def test_a_created_proxy_listens_where_it_says(toxiproxy: Toxiproxy, echo_server: str) -> None:
    _, created = await toxiproxy.call(
        "POST", "/proxies", {"name": "l", "listen": "127.0.0.1:0", "upstream": echo_server}
    )
    assert isinstance(created, dict)
    host, port = created["listen"].rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"ping")
    assert await asyncio.wait_for(reader.readexactly(4), 5) == b"ping"
    writer.close()


async def test_a_proxy_that_cannot_listen_is_refused_as_the_real_server_refuses_it(toxiproxy: Toxiproxy) -> None:
    taken = toxiproxy.url.removeprefix("http://")
    for body, status, message in [
        ({"name": "o", "listen": taken, "upstream": UP}, 500, f"listen tcp {taken}: bind: address already in use"),
        (
            {"name": "o", "listen": "nonsense", "upstream": UP},
            500,
            "listen tcp: address nonsense: missing port in address",
        ),
        (
            {"name": "o", "listen": "127.0.0.1:0", "upstream": UP, "enabled": "yes"},
            400,
            "bad request body: json: cannot unmarshal string into Go struct field Proxy.enabled of type bool",
        ),
    ]:
        assert await toxiproxy.call("POST", "/proxies", body) == (status, error(message, status))
    assert await toxiproxy.call("GET", "/proxies") == (200, {})
