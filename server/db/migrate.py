"""Apply Alembic migrations up to head: `python -m server migrate` and server start-up use this."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


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
