"""Investigation cases: what Ballast could not decide alone, kept with the evidence for a person."""

from __future__ import annotations

import enum


class CaseStatus(enum.StrEnum):
    #: waiting for a person (or for more evidence, which is added to it)
    OPEN = "OPEN"
    RESOLVED = "RESOLVED"


#: A case's kind (one open case of a kind per payment or leg) and its summary for the person.
KIND_LENGTH_MAX = 64
SUMMARY_LENGTH_MAX = 2000
