"""Typed keys for what the aiohttp application and its requests carry."""

from __future__ import annotations

from aiohttp import web

from simulator.engine import Simulator
from simulator.faults import RequestFaults

SIMULATOR = web.AppKey("simulator", Simulator)
FAULTS = web.RequestKey("faults", RequestFaults)
