"""Circuit breakers around provider calls: aiobreaker, with the three gaps it leaves closed here.

1. aiobreaker records only `Exception`s raised inside the protected call. A timeout enforced around
   it arrives as a cancellation (a BaseException) and is never counted, so the time limit is
   enforced inside the protected call, where it surfaces as a `TimeoutError`.
2. aiobreaker counts an excluded error as a success: a provider declining a card would reset the
   failure count and hide an outage served between declines. A decline is an answer, returned as a
   value, and leaves the failure count where it was.
3. While half-open, aiobreaker lets every concurrent call through. Here at most `probes_max` calls
   probe at once; the others fail fast as if the breaker were still open.

While open, a call fails before any I/O, in microseconds, with `BreakerOpen` and the time left.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

import structlog
from aiobreaker import CircuitBreaker, CircuitBreakerError, CircuitBreakerListener, CircuitBreakerState
from aiobreaker.storage.memory import CircuitMemoryStorage

log = structlog.get_logger(__name__)

T = TypeVar("T")


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


_STATES = {
    CircuitBreakerState.CLOSED: BreakerState.CLOSED,
    CircuitBreakerState.OPEN: BreakerState.OPEN,
    CircuitBreakerState.HALF_OPEN: BreakerState.HALF_OPEN,
}


class BreakerOpen(Exception):
    """The call was not attempted: the provider's breaker is open (or its probes are all out)."""

    def __init__(self, name: str, retry_after_s: float) -> None:
        super().__init__(f"the circuit breaker for {name} is open")
        self.name = name
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class Neutral(Generic[T]):
    """A call's result that says nothing about the provider's health (a decline): wrap it in this."""

    value: T


@dataclass(frozen=True)
class BreakerSettings:
    #: consecutive failures that open the breaker
    failures_max: int = 5
    #: how long it stays open before probes are let through
    open_s: float = 10.0
    #: concurrent probes while half-open
    probes_max: int = 1


StateListener = Callable[[str, BreakerState, BreakerState], None]


class _Storage(CircuitMemoryStorage):  # type: ignore[misc]
    """aiobreaker's memory storage, able to keep the failure count through one neutral outcome."""

    def __init__(self) -> None:
        super().__init__(CircuitBreakerState.CLOSED)
        self.keep_counter = False

    def reset_counter(self) -> None:
        if self.keep_counter:
            self.keep_counter = False
            return
        super().reset_counter()


class _Listener(CircuitBreakerListener):  # type: ignore[misc]
    def __init__(self, name: str, on_change: StateListener | None) -> None:
        self._name = name
        self._on_change = on_change

    def state_change(self, breaker: Any, old: Any, new: Any) -> None:
        before, after = _STATES[old.state] if old else BreakerState.CLOSED, _STATES[new.state]
        log.warning("provider.breaker_state_changed", breaker=self._name, old=before.value, new=after.value)
        if self._on_change is not None:
            self._on_change(self._name, before, after)


class Breaker:
    """One provider's (or one provider operation's) breaker."""

    def __init__(self, name: str, settings: BreakerSettings, on_change: StateListener | None = None) -> None:
        self.name = name
        self._settings = settings
        self._storage = _Storage()
        self._breaker = CircuitBreaker(
            fail_max=settings.failures_max,
            timeout_duration=timedelta(seconds=settings.open_s),
            listeners=[_Listener(name, on_change)],
            state_storage=self._storage,
            name=name,
        )
        self._probes = 0

    @property
    def state(self) -> BreakerState:
        return _STATES[self._breaker.current_state]

    def _open_for_s(self) -> float:
        """Seconds until an open breaker lets a probe through; 0 once it may."""
        opened_at: datetime | None = self._storage.opened_at
        if opened_at is None:
            return 0.0
        # aiobreaker stamps naive UTC times
        left = opened_at + timedelta(seconds=self._settings.open_s) - datetime.utcnow()
        return max(left.total_seconds(), 0.0)

    async def call(self, operation: Callable[[], Awaitable[T | Neutral[T]]], timeout_s: float) -> T:
        """Run `operation` within `timeout_s` under the breaker.

        Raises BreakerOpen without calling it while open; otherwise returns its value or raises its
        error (a TimeoutError when it ran out of time), having counted the outcome.
        """
        state = self._breaker.current_state
        probing = state is not CircuitBreakerState.CLOSED
        if probing:
            wait_s = self._open_for_s() if state is CircuitBreakerState.OPEN else 0.0
            if wait_s > 0 or self._probes >= self._settings.probes_max:
                raise BreakerOpen(self.name, max(wait_s, 0.1))
            self._probes += 1
        try:
            result: T | Neutral[T] = await self._breaker.call_async(self._guarded, operation, timeout_s)
        except CircuitBreakerError as error:
            if error.__cause__ is not None:
                raise error.__cause__ from None  # this call failed and opened it: its own error says what happened
            raise BreakerOpen(self.name, max(self._open_for_s(), 0.1)) from None
        finally:
            if probing:
                self._probes -= 1
        return result.value if isinstance(result, Neutral) else result

    async def _guarded(self, operation: Callable[[], Awaitable[T | Neutral[T]]], timeout_s: float) -> T | Neutral[T]:
        async with asyncio.timeout(timeout_s):
            result = await operation()
        if isinstance(result, Neutral):
            self._storage.keep_counter = True  # aiobreaker resets the count on return: not for a decline
        return result
