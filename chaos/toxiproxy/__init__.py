"""A Toxiproxy-compatible proxy (the HTTP API of Toxiproxy 2.8.0 over asyncio TCP): `python -m chaos.toxiproxy`.

It stands in for the real server when none answers; the contract specs in tests/chaos run the same API
sequence against both so the two cannot drift.
"""

from chaos.toxiproxy.api import VERSION, create_app
from chaos.toxiproxy.proxy import Proxy
from chaos.toxiproxy.toxics import ATTRIBUTES, Toxic

__all__ = ["ATTRIBUTES", "VERSION", "Proxy", "Toxic", "create_app"]
