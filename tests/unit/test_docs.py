from pathlib import Path

from server.domain.diagrams import render

DOCS = Path(__file__).resolve().parents[2] / "docs" / "state-machines.md"


def test_the_state_diagrams_match_the_transition_tables() -> None:
    assert DOCS.read_text() == render(), "docs/state-machines.md is stale: run `make docs` and commit it"
