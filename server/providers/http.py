"""Calling a provider over HTTP: what came back, sorted by what Ballast may conclude from it.

Three kinds of outcome, because a caller must never be told more than is known:

- an HTTP answer: 2xx (what the provider did), or 4xx (`Refused` by the caller of `call`: the
  provider refused the request itself; a definite answer, and no sign of an outage);
- `NotSent`: the request never reached the provider (the breaker is open, the connection was
  refused, it said 429 before processing): nothing happened there;
- `OutcomeUnknown`: the request may have reached it (a timeout, a reset after sending, a 5xx, an
  unreadable answer): only asking the provider, by idempotency key, will tell.

Every call runs under the provider's circuit breaker, within min(the caller's budget, the provider's
timeout). The breaker is told whether the provider had its full timeout: a call cut short by its
caller's deadline still ends OutcomeUnknown for that caller (the request may have arrived), but its
timeout is not held against the provider.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import aiohttp

from server.domain.evidence import PROVIDER_ID_LENGTH_MAX, PROVIDER_STATUS_LENGTH_MAX
from server.providers.breaker import Breaker, BreakerOpen, Neutral

#: Below this much time left there is no point asking: the answer could not come back in time.
CALL_TIME_MIN_S = 0.05
#: The longest one call waits for the provider unless told otherwise (BALLAST_PROVIDER_TIMEOUT_MS).
CALL_TIMEOUT_DEFAULT_S = 10.0


class NotSent(Exception):
    """The provider did not get the request; nothing happened there."""

    def __init__(self, reason: str, retry_after_s: float, *, unreachable: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s
        #: the provider was tried and could not be reached (a refused connection), rather than not tried
        #: at all (an open breaker, too little time) or told to come back (a rate limit)
        self.unreachable = unreachable


class OutcomeUnknown(Exception):
    """The request may have reached the provider; only asking it (by idempotency key) will tell."""


class Refused(Exception):
    """The provider refused the request itself (4xx): a definite answer, and not a sign of an outage."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"the provider refused the request with HTTP {status}: {body[:200]!r}")
        self.status = status
        self.body = body


class _ServerError(Exception):
    """A 5xx: counted by the breaker; whether the provider acted is unknown."""


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    headers: dict[str, str]


class HttpProvider:
    """One provider's pooled HTTP session, base URL, breaker and timeout (the most one call may take)."""

    def __init__(
        self,
        provider: str,
        base_url: str,
        session: aiohttp.ClientSession,
        breaker: Breaker,
        call_timeout_s: float = CALL_TIMEOUT_DEFAULT_S,
    ) -> None:
        self.provider = provider
        self._base_url = base_url.rstrip("/")
        self._session = session
        self.breaker = breaker
        self.call_timeout_s = call_timeout_s

    async def call(self, method: str, path: str, timeout_s: float, **request: Any) -> Reply:
        """One request under the breaker, within min(timeout_s, the provider's timeout); a 2xx or 4xx
        Reply, else NotSent or OutcomeUnknown."""
        if timeout_s < CALL_TIME_MIN_S:
            raise NotSent(
                "too little of the caller's deadline was left to ask the provider: repeat with a longer deadline", 0.0
            )

        async def send() -> Reply | Neutral[Reply]:
            async with self._session.request(method, self._base_url + path, **request) as response:
                reply = Reply(response.status, await response.read(), dict(response.headers))
            if reply.status >= 500:
                raise _ServerError(f"HTTP {reply.status}")
            if reply.status == 429 or 400 <= reply.status < 500:
                return Neutral(reply)  # an answer: the provider is up, whatever it thinks of the request
            return reply

        # a timeout counts against the provider only when it had all of its time to answer
        full_time = timeout_s >= self.call_timeout_s
        try:
            reply = await self.breaker.call(send, min(timeout_s, self.call_timeout_s), full_time=full_time)
        except BreakerOpen as error:
            raise NotSent(str(error), error.retry_after_s) from None
        except aiohttp.ClientConnectorError as error:  # the connection was never made: nothing was sent
            reason = f"cannot connect to {self.provider}: {error.os_error.strerror or error}"
            raise NotSent(reason, 1.0, unreachable=True) from None
        except (TimeoutError, aiohttp.ClientError, _ServerError) as error:
            raise OutcomeUnknown(f"{type(error).__name__}: {error}"[:300]) from None
        if reply.status == 429:
            raise NotSent(f"{self.provider} is rate limiting", _retry_after_s(reply.headers))
        return reply


def _retry_after_s(headers: dict[str, str]) -> float:
    try:
        return max(float(headers.get("Retry-After", "1")), 0.0)
    except ValueError:
        return 1.0


def read_id_and_status(body: bytes, provider: str) -> tuple[str, str]:
    """The `id` and `status` of a provider's JSON object; an unreadable one leaves the outcome unknown."""
    try:
        parsed = json.loads(body)
        object_id, status = parsed["id"], parsed["status"]
    except (ValueError, KeyError, TypeError):
        raise OutcomeUnknown(f"{provider}'s answer could not be read: {body[:200]!r}") from None
    if not isinstance(object_id, str) or not isinstance(status, str):
        raise OutcomeUnknown(f"{provider}'s answer has no id or status: {body[:200]!r}")
    return object_id[:PROVIDER_ID_LENGTH_MAX], status[:PROVIDER_STATUS_LENGTH_MAX]
