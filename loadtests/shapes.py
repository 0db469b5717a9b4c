"""The usual load shapes, selectable by name (BALLAST_LOAD_SHAPE, or `python -m loadtests run --shape`):

  step    users added in equal steps, each held for a while: where does latency bend?
  spike   a steady base, a sudden burst of users, and back: does the server answer the burst honestly
          and recover?
  soak    a steady number of users for a long time: does anything grow (memory, queues, latency)?

Each is sized by BALLAST_LOAD_USERS (the most users at once, default USERS_DEFAULT) and
BALLAST_LOAD_DURATION_S (the whole run, default DURATION_S_DEFAULT); the shape ends the run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from locust import LoadTestShape

from loadtests.bounds import DURATION_S_DEFAULT, DURATION_S_MAX, SHAPE_NAMES, USERS_DEFAULT, USERS_MAX

#: a step shape's number of steps; a spike's base and burst as shares of the most users
STEPS = 4
SPIKE_BASE_SHARE = 0.2
#: when, as shares of the run, the spike starts and ends
SPIKE_WINDOW = (0.4, 0.6)


@dataclass(frozen=True)
class Size:
    users: int
    duration_s: float

    @classmethod
    def from_environment(cls) -> Size:
        users = int(os.environ.get("BALLAST_LOAD_USERS", "") or USERS_DEFAULT)
        duration_s = float(os.environ.get("BALLAST_LOAD_DURATION_S", "") or DURATION_S_DEFAULT)
        if not 1 <= users <= USERS_MAX:
            raise ValueError(f"BALLAST_LOAD_USERS={users}: from 1 to {USERS_MAX}")
        if not 1 <= duration_s <= DURATION_S_MAX:
            raise ValueError(f"BALLAST_LOAD_DURATION_S={duration_s:g}: from 1 to {DURATION_S_MAX:g}")
        return cls(users, duration_s)


class _Sized(LoadTestShape):
    abstract = True

    def __init__(self) -> None:
        super().__init__()
        self.size = Size.from_environment()

    def users_at(self, elapsed_s: float) -> int:
        raise NotImplementedError

    def tick(self) -> tuple[int, float] | None:
        elapsed_s = self.get_run_time()
        if elapsed_s >= self.size.duration_s:
            return None
        users = max(1, self.users_at(elapsed_s))
        return users, float(max(1, users))  # reach each level within about a second


class StepShape(_Sized):
    """STEPS equal steps up to the most users, each held for an equal share of the run."""

    def users_at(self, elapsed_s: float) -> int:
        step = min(STEPS - 1, int(elapsed_s / (self.size.duration_s / STEPS)))
        return round(self.size.users * (step + 1) / STEPS)


class SpikeShape(_Sized):
    """SPIKE_BASE_SHARE of the most users, all of them within SPIKE_WINDOW of the run, then the base again."""

    def users_at(self, elapsed_s: float) -> int:
        start, end = (share * self.size.duration_s for share in SPIKE_WINDOW)
        if start <= elapsed_s < end:
            return self.size.users
        return round(self.size.users * SPIKE_BASE_SHARE)


class SoakShape(_Sized):
    """The most users, the whole run."""

    def users_at(self, elapsed_s: float) -> int:
        return self.size.users


SHAPES: dict[str, type[_Sized]] = {"step": StepShape, "spike": SpikeShape, "soak": SoakShape}
assert tuple(SHAPES) == SHAPE_NAMES


def shape_named(name: str) -> type[_Sized]:
    try:
        return SHAPES[name]
    except KeyError:
        raise ValueError(f"no load shape {name!r}: the shapes are {', '.join(SHAPES)}") from None
