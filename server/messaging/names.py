"""One deployment's names on a shared NATS: its stream, its subjects and its consumers' durable names.

Each name derives from the deployment's name (BALLAST_DEPLOYMENT), so two deployments (a staging and a
production, two developers, two test servers) on one NATS never read each other's events: a durable
consumer shared by two deployments would hand one deployment's events to the other, whose database
does not have them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_DEPLOYMENT = "ballast"
#: Lower-case letters, digits, `_` and `-`: valid in NATS subjects, stream and consumer names alike.
DEPLOYMENT_PATTERN = re.compile(r"[a-z][a-z0-9_-]{0,31}")


@dataclass(frozen=True)
class DeploymentNames:
    deployment: str = DEFAULT_DEPLOYMENT

    def __post_init__(self) -> None:
        if not DEPLOYMENT_PATTERN.fullmatch(self.deployment):
            raise ValueError(
                f"deployment name {self.deployment[:40]!r} is invalid: 1 to 32 lower-case letters, digits, _ or -,"
                " starting with a letter"
            )

    @property
    def stream(self) -> str:
        """The JetStream stream holding the deployment's events (`BALLAST` for `ballast`)."""
        return self.deployment.upper().replace("-", "_")

    @property
    def subject_prefix(self) -> str:
        """The first token of the deployment's subjects (`ballast.payments.state_changed`)."""
        return self.deployment

    def durable(self, group: str) -> str:
        """The durable consumer name of one of the deployment's consumer groups (`ballast_exposures`)."""
        return f"{self.deployment}_{group}"
