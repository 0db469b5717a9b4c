"""Ballast's Locust users (loadtests/users.py) with their weights, and the load shape BALLAST_LOAD_SHAPE
names (loadtests/shapes.py; none: Locust's own --users, --spawn-rate and --run-time).

    locust -f loadtests/locustfile.py --host 127.0.0.1:50051

`python -m loadtests` (`make load`, `make load-ui`) runs it against a server it starts, and checks the
invariants when the load ends (loadtests/README.md).
"""

from __future__ import annotations

import os

from loadtests import grpc_user  # noqa: F401 - first: gRPC made gevent-compatible before any channel
from loadtests.shapes import shape_named
from loadtests.users import USERS, weights


# Locust runs the User and LoadTestShape classes it finds here: the users with a weight, one shape at most
def _expose_weighted_users() -> None:
    for name, weight in weights().items():
        if weight > 0:
            user = USERS[name]
            user.weight = weight
            globals()[user.__name__] = user


_expose_weighted_users()

if os.environ.get("BALLAST_LOAD_SHAPE", "").strip():
    LoadShape = shape_named(os.environ["BALLAST_LOAD_SHAPE"].strip())
