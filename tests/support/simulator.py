"""The provider simulator in-process (server/providers/embedded_simulator.py), sending its webhooks to
Ballast's endpoint, with the profile and settings a spec chooses; and its ground truth."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

from server.db.database import Database
from server.providers.embedded_simulator import embedded_simulator
from tests.support.waiting import until
from tests.support.webhooks import PROVIDER, webhook_endpoint

#: The secret the simulator signs its webhooks with, and Ballast's endpoint verifies them with.
SIMULATOR_SECRET = "whsec_unreliable"  # noqa: S105 - a test secret
#: The simulator's random choices, the same in every run.
SIMULATOR_SEED = 7


@asynccontextmanager
async def simulated_provider(tmp_path: Path, database: Database, profile: str, **settings: Any) -> AsyncIterator[str]:
    """The simulator under `profile` with `settings` on top, its webhooks going to Ballast's endpoint over
    `database`; yields its URL."""
    async with (
        webhook_endpoint(database, SIMULATOR_SECRET) as endpoint,
        embedded_simulator(
            tmp_path,
            webhook_url=endpoint.url(PROVIDER),
            webhook_secret=SIMULATOR_SECRET,
            profile=profile,
            seed=SIMULATOR_SEED,
        ) as url,
        aiohttp.ClientSession() as http,
        http.put(f"{url}/_sim/profile", json={"settings": settings}) as response,
    ):
        assert response.status == 200, await response.text()
        yield url


async def simulator_truth(url: str) -> dict[str, Any]:
    """What the simulator really did (`/_sim/truth`): its payments and orders, with their final states."""
    async with aiohttp.ClientSession() as http, http.get(f"{url}/_sim/truth") as response:
        answer: dict[str, Any] = await response.json()
        return answer


async def until_webhooks_sent(url: str, idempotency_keys: Iterable[str], timeout_s: float = 20) -> None:
    """Until the simulator has no webhook left to send (each delivered, given up or dropped, duplicates and
    late ones included) about its payments and orders under these idempotency keys (Ballast's ids). A
    delivered webhook was answered by Ballast, after its commit."""
    keys = set(idempotency_keys)

    async def sent() -> bool:
        truth = await simulator_truth(url)
        objects = [item for item in truth["payments"] + truth["orders"] if item["idempotency_key"] in keys]
        return all(event["outcome"] != "queued" for item in objects for event in item["webhooks"])

    await until(sent, "the simulator sent every webhook", timeout_s)
