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


#: Names the map uses for a pattern, not for one symbol of the code.
PATTERN_NAMES = frozenset({"x", "x_on"})


def test_every_name_the_map_gives_is_one_the_code_has() -> None:
    """A function, class or constant the map names (`judge`, `POOL_WAIT_S`) exists in the code: a rename
    that forgets the map fails here."""
    named = set(re.findall(r"`([A-Za-z_]\w*)(?:\(\))?`", (ROOT / "ARCHITECTURE.md").read_text())) - PATTERN_NAMES
    assert len(named) >= 30, named
    sources = (
        path.read_text()
        for directory in ("server", "simulator", "tests", "proto")
        for path in (ROOT / directory).rglob("*")
        if path.suffix in {".py", ".sql", ".proto"}
    )
    known = set(re.findall(r"[A-Za-z_]\w*", " ".join(sources)))
    assert not named - known, f"ARCHITECTURE.md names what the code does not have: {sorted(named - known)}"


#: What a statement of SQL starts with, in a string of Python code.
SQL_STATEMENT = re.compile(
    r"""["']\s*(SELECT\s|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|WITH\s+\w+\s+AS|LOCK\s+TABLE)""", re.IGNORECASE
)


def test_the_use_cases_the_handlers_and_the_domain_hold_no_sql() -> None:
    """SQL lives in server/db/, beside the function that binds it; a service composes those calls."""
    holding = {
        str(path.relative_to(ROOT)): SQL_STATEMENT.findall(path.read_text())
        for layer in ("services", "api", "domain")
        for path in (ROOT / "server" / layer).glob("*.py")
        if SQL_STATEMENT.search(path.read_text())
    }
    assert not holding, f"use cases, handlers or the domain holding SQL: {holding}"
    assert SQL_STATEMENT.search((ROOT / "server" / "db" / "payments_repository.py").read_text())  # it finds SQL
