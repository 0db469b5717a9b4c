"""Apply Alembic migrations up to head: `python -m server migrate` and server start-up use this."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from alembic import command
from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
#: Every function and trigger of the schema at head, grouped by the invariant each guards.
INVARIANTS_SQL = Path(__file__).parent / "invariants.sql"
#: Where each revision keeps its own frozen copy of the SQL it loads (functions and triggers).
FROZEN_SQL_DIR = MIGRATIONS_DIR / "versions"

#: The revisions folded into the baseline (0014): a database at one of them was built before the baseline.
FOLDED_REVISIONS = frozenset(f"{number:04}" for number in range(1, 14))
#: The last commit whose migrations build a database up from a folded revision to 0014.
LAST_COMMIT_BEFORE_BASELINE = "60919c7"

# A comment, a string, a quoted name, a dollar-quoted body, a semicolon, or a run of anything else.
_SQL_TOKEN = re.compile(r"""--[^\n]*|'(?:[^']|'')*'|"(?:[^"]|"")*"|(\$\w*\$)[\s\S]*?\1|;|[^-'"$;]+|[\s\S]""")


class PreBaselineDatabase(RuntimeError):
    """A database at a revision folded into the baseline: this code no longer has the migrations it needs."""

    def __init__(self, revision: str) -> None:
        super().__init__(
            f"the database is at revision {revision}, one of the revisions 0001 to 0013 folded into the baseline"
            " revision 0014, so this version of Ballast cannot migrate it. Bring it to 0014 with the last version"
            f" that can (check out commit {LAST_COMMIT_BEFORE_BASELINE}, run `make migrate` with the same"
            " DATABASE_URL, and come back), or, for development data, start again from an empty database"
            " (`make clean-data`)."
        )


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["database_url"] = database_url
    return config


def migrate_to_head(database_url: str) -> None:
    """Blocking; runs its own event loop, so call it before the server's loop starts (or in a thread)."""
    command.upgrade(alembic_config(database_url), "head")


async def pending_revision(connection: object) -> tuple[str | None, str]:
    """(the database's revision, the code's head revision); they differ when migrations are pending."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config("")).get_current_head() or ""
    has_table = await connection.fetchval("SELECT to_regclass('alembic_version') IS NOT NULL")  # type: ignore[attr-defined]
    current = await connection.fetchval("SELECT version_num FROM alembic_version") if has_table else None  # type: ignore[attr-defined]
    return current, head


def sql_statements(script: str) -> list[str]:
    """The statements of an SQL script, split at the semicolons that end them (not those inside a string,
    a quoted name, a comment or a dollar-quoted function body); comments before a statement stay with it."""
    statements: list[str] = []
    pieces: list[str] = []
    for token in _SQL_TOKEN.finditer(script):
        if token.group() == ";":
            statements.append("".join(pieces).strip())
            pieces = []
        else:
            pieces.append(token.group())
    rest = "".join(pieces)
    if any(line.strip() and not line.strip().startswith("--") for line in rest.splitlines()):
        raise ValueError(f"the SQL script ends without a semicolon after: {rest.strip()[:200]!r}")
    return statements


def frozen_sql(revision: str, name: str, sha256: str) -> list[str]:
    """The statements of a revision's frozen SQL file (in FROZEN_SQL_DIR), refused when the file is not
    the one the revision was written with: a revision builds the same schema forever."""
    path = FROZEN_SQL_DIR / name
    script = path.read_bytes().replace(b"\r\n", b"\n")  # as committed, whatever the checkout did
    if hashlib.sha256(script).hexdigest() != sha256:
        raise RuntimeError(
            f"{name} changed, but revision {revision} must keep building the schema it always built: restore"
            f" it (`git checkout -- server/db/migrations/versions/{name}`) and make the change in a new revision"
            " as well as in server/db/invariants.sql."
        )
    return sql_statements(script.decode())
