"""The map stays true: every file ARCHITECTURE.md names exists, and the README links to it."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: A backticked path the map names: a directory or a file of the project's own.
NAMED_PATH = re.compile(r"`((?:server|simulator|tests|proto|gen|docs|bench|chaos|loadtests)/[\w./-]*|pyproject\.toml)`")


def test_every_path_the_map_names_exists() -> None:
    text = (ROOT / "ARCHITECTURE.md").read_text()
    named = set(NAMED_PATH.findall(text))
    assert len(named) >= 20, named  # the pattern still finds the map's paths
    missing = sorted(path for path in named if not (ROOT / path.rstrip("/")).exists())
    assert not missing, f"ARCHITECTURE.md names paths that do not exist: {missing}"


def test_the_readme_links_to_the_map() -> None:
    assert "(ARCHITECTURE.md)" in (ROOT / "README.md").read_text()
