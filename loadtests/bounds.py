"""The load's names and bounds, shared by the harness (`python -m loadtests`, which never imports Locust:
Locust patches the standard library for gevent on import) and the Locust side (loadtests/shapes.py)."""

from __future__ import annotations

#: The load shapes by name (loadtests/shapes.py).
SHAPE_NAMES = ("step", "spike", "soak")
USERS_DEFAULT = 40
USERS_MAX = 5_000
DURATION_S_DEFAULT = 60.0
DURATION_S_MAX = 7 * 24 * 3600.0
