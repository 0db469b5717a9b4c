"""Who owns an embedded process of a data directory: one lock file and one pid file per component.

The embedded NATS and the provider simulator are children of the Ballast process that started them.
That process holds an exclusive `flock` on `<dir>/<name>.lock` for as long as its child runs; the
kernel drops the lock when the owner dies, however it dies. `<dir>/<name>.pid` records the child
(its pid and a digest of its exact command line, which may hold a secret). Starting a component:

- the lock is held by another live process: `ComponentInUse`, nothing is touched (two brokers on
  one JetStream store, or two simulators on one state file, corrupt what they share);
- the lock is free and the pid file names a live process with the recorded command line: a child
  whose owner died. It is stopped (SIGTERM, a bounded wait, then SIGKILL), never adopted: a process
  we did not start cannot be tied to our lifetime or waited for, so adopting it would leave the same
  orphan behind at the next crash, and its flags and binary may not be the ones this code starts;
- then the new child starts, its pid file is written at once, and the lock is kept until it stops.

Children also get `PR_SET_PDEATHSIG` on Linux (`die_with_parent`), so a killed owner takes them
along; the sweep above covers every other platform and every gap.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger(__name__)

#: How long a leftover child gets to stop after SIGTERM before SIGKILL.
LEFTOVER_STOP_TIMEOUT_S = 10.0
#: How long a SIGKILLed process gets to be gone.
KILL_TIMEOUT_S = 5.0
_POLL_S = 0.05
_PR_SET_PDEATHSIG = 1
_PROC = Path("/proc/self/cmdline")


class ComponentInUse(RuntimeError):
    """Another live process owns this component: starting a second copy would corrupt what they share."""

    def __init__(self, what: str, where: Path, owner_pid: int | None, detail: str) -> None:
        owner = f"process {owner_pid}" if owner_pid else "another process"
        stop = f" (kill -TERM {owner_pid})" if owner_pid else ""
        super().__init__(f"{where} is in use: {owner} runs {what} there{detail}; stop that process first{stop}")
        self.owner_pid = owner_pid


@dataclass
class Owned:
    """This process's claim on one component: the lock it holds and the child it records."""

    name: str
    what: str
    directory: Path
    _lock_fd: int | None
    child_pid: int | None = None

    @property
    def pid_path(self) -> Path:
        return self.directory / f"{self.name}.pid"

    def record(self, pid: int, argv: Sequence[str], **details: str) -> None:
        """Write the pid file of the child just started (atomically: a reader sees the old or the new)."""
        self.child_pid = pid
        content = {"pid": pid, "command_sha256": _digest(" ".join(argv)), **details}
        temporary = self.pid_path.with_suffix(".pid.tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(json.dumps(content) + "\n")
        temporary.replace(self.pid_path)

    def recorded(self) -> dict[str, Any] | None:
        """The pid file's content, None when there is none (or it is unreadable: a write cut short)."""
        try:
            content = json.loads(self.pid_path.read_text())
        except (OSError, ValueError):
            return None
        return content if isinstance(content, dict) and isinstance(content.get("pid"), int) else None

    def release(self) -> None:
        """Forget the child (it has stopped) and drop the lock; a no-op the second time."""
        self.pid_path.unlink(missing_ok=True)
        self.child_pid = None
        self.unlock()

    def unlock(self) -> None:
        """Drop the lock, keeping the pid file."""
        with _held_lock:
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # closing the only descriptor drops the flock
                self._lock_fd = None
                _held.pop(self.directory / f"{self.name}.lock", None)


#: Claims this process holds, by lock path: one open file description each (flock is per description).
_held: dict[Path, Owned] = {}
_held_lock = threading.RLock()


def claim(directory: Path, name: str, what: str) -> Owned:
    """Take `<directory>/<name>.lock` and deal with what a dead owner left; ComponentInUse when taken.

    Call it again in the same process (a test restarting its broker) and it answers the claim this
    process already holds, as long as the child it recorded has stopped.
    """
    directory.mkdir(parents=True, exist_ok=True)
    lock_path = directory / f"{name}.lock"
    with _held_lock:
        owned = _held.get(lock_path)
        if owned is None:
            owned = _lock(lock_path, name, what, directory)
            try:
                _stop_leftover(owned)
            except BaseException:
                owned.unlock()  # its record stays: the next start tries again
                raise
            _held[lock_path] = owned
        elif owned.child_pid is not None and is_alive(owned.child_pid):
            raise RuntimeError(f"this process already runs {what} in {directory} (pid {owned.child_pid})")
    return owned


def _lock(lock_path: Path, name: str, what: str, directory: Path) -> Owned:
    descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = _read_pid(descriptor)
        os.close(descriptor)
        recorded = Owned(name, what, directory, None).recorded() or {}
        detail = f" ({recorded['url']})" if isinstance(recorded.get("url"), str) else ""
        raise ComponentInUse(what, directory, owner, detail) from None
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)  # who holds it, for the next one's message
    return Owned(name, what, directory, descriptor)


def _read_pid(descriptor: int) -> int | None:
    text = os.pread(descriptor, 32, 0).decode(errors="replace").strip()
    return int(text) if text.isdigit() else None


def _stop_leftover(owned: Owned) -> None:
    """Stop the child a dead owner recorded, if it still runs with the command line it was given."""
    recorded = owned.recorded()
    if recorded is None:
        owned.pid_path.unlink(missing_ok=True)
        return
    pid = recorded["pid"]
    running = command_line(pid) if is_alive(pid) else None
    if running is not None and _digest(running) == recorded.get("command_sha256"):
        log.warning("embedded.leftover_stopping", component=owned.name, pid=pid, why="its owner died")
        stop_process(pid, LEFTOVER_STOP_TIMEOUT_S)
        log.info("embedded.leftover_stopped", component=owned.name, pid=pid)
    # a pid the kernel gave to another program since, or a process already gone: nothing of ours
    owned.pid_path.unlink(missing_ok=True)


def _digest(command: str) -> str:
    return hashlib.sha256(command.encode()).hexdigest()


def stop_process(pid: int, timeout_s: float) -> None:
    """SIGTERM, wait up to timeout_s, then SIGKILL; RuntimeError if it is still there after that."""
    for signum, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, KILL_TIMEOUT_S)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)
        deadline = time.monotonic() + wait_s
        while is_alive(pid):
            if time.monotonic() > deadline:
                break
            time.sleep(_POLL_S)
        else:
            return
    raise RuntimeError(f"process {pid} is still running after SIGTERM and SIGKILL")


def is_alive(pid: int) -> bool:
    """Whether `pid` runs; a zombie (dead, not yet reaped by a parent that never waits) does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive, and certainly not ours
    return _state(pid) != "Z"


def command_line(pid: int) -> str | None:
    """The arguments `pid` was started with, joined by spaces; None when it is gone or unreadable."""
    if _PROC.exists():
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        return " ".join(part.decode(errors="replace") for part in raw.split(b"\0")[:-1]) or None
    return _ps(pid, "command=")


def _state(pid: int) -> str | None:
    """The process state letter (R, S, Z...), None when it is gone or unreadable."""
    if _PROC.exists():
        try:
            return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except (OSError, IndexError):
            return None
    text = _ps(pid, "stat=")
    return text[:1] if text else None


def _ps(pid: int, column: str) -> str | None:
    """One column of `ps` about `pid` (macOS and the BSDs have no /proc)."""
    try:
        command = ["ps", "-o", column, "-p", str(pid)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None


def die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` that makes the child receive SIGTERM when this process dies (Linux), else None.

    The kernel sends it when the *thread* that forked the child ends, so it is used only from the
    main thread, which lives as long as the process. Elsewhere the start-up sweep does the work.
    """
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before the fork, not in the child
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    parent = os.getpid()

    def set_parent_death_signal() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the parent died between fork and prctl: nobody will signal us
            os._exit(1)

    return set_parent_death_signal
