"""`python -m loadtests`: Locust against Ballast, and every invariant checked when the load ends.

    python -m loadtests run [--shape step|spike|soak] [--users N] [--duration S] [--scenario NAME]
                            [--weights payer=6,reader=3,...] [--seed N]        (`make load`)
    python -m loadtests ui [--scenario NAME]          Locust's web UI at http://127.0.0.1:8089 (`make load-ui`)
    python -m loadtests run --host ADDRESS            against a server already running: no invariants

A run starts the chaos harness's world (chaos/topology.py): a server, an outbox relay and the provider
simulator, PostgreSQL and NATS (embedded unless DATABASE_URL / NATS_URL are set), each reached through
Toxiproxy. Locust runs in a process of its own against it (loadtests/locustfile.py), with a named
scenario's faults playing meanwhile (`python -m chaos list`). When the load ends the world settles and
the chaos checker judges the history of every payment and refund call, the database, the broker's
stream and the simulator's truth. Everything goes under loadtests/results/<time>/: Locust's CSV
(stats_stats.csv, stats_failures.csv, ...) and HTML report, the history, and the harness's report.md
and report.json. The exit status is 1 when an invariant broke (or Locust failed), 2 for a usage error,
130 after Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from chaos.history import History
from chaos.load import ATTEMPTS_MAX, CALL_DEADLINE_S, RETRY_DELAY_MAX_S
from chaos.processes import ROOT
from chaos.run import run_scenario, say
from chaos.scenarios import Scenario, scenario
from chaos.topology import World
from loadtests.bounds import DURATION_S_MAX, SHAPE_NAMES, USERS_MAX
from server.ownership import die_with_parent

RESULTS = ROOT / "loadtests" / "results"
LOCUSTFILE = ROOT / "loadtests" / "locustfile.py"
UI_HOST, UI_PORT = "127.0.0.1", 8089
#: `make load`'s run unless told otherwise: short, so that a fresh clone checks itself in about a minute
SHAPE_DEFAULT = "step"
USERS_DEFAULT = 16
DURATION_S_DEFAULT = 20.0
SEED_DEFAULT = 1
#: Users finish the call in progress, and its retries, once the load stops: at most ATTEMPTS_MAX calls of
#: CALL_DEADLINE_S each and the waits between them, and a margin. A user stopped before that would leave
#: a call with no outcome in the history (users.py records one if it is stopped all the same).
STOP_TIMEOUT_S = int(ATTEMPTS_MAX * CALL_DEADLINE_S + (ATTEMPTS_MAX - 1) * RETRY_DELAY_MAX_S) + 5
#: Locust's own start and summary, beyond the shape's duration, before it is stopped.
LOCUST_MARGIN_S = 60.0
#: The load alone: no fault.
QUIET = Scenario("load", "The load alone, with no fault: what Ballast answers and keeps true under it.", ())


#: Statuses a well-formed call of a well-behaved client never gets, faults or not: a run whose table holds
#: one fails (a bug in the users or the server: the invariants alone would not see it).
NEVER_HONEST = ("UNAUTHENTICATED", "PERMISSION_DENIED", "INVALID_ARGUMENT", "UNIMPLEMENTED", "INTERNAL", "DATA_LOSS")


def load_problems(out: Path) -> list[str]:
    """What Locust's own reports say went wrong beyond honest answers: a user's task raised (its
    exceptions CSV), or a call got a status in NEVER_HONEST (its failures CSV)."""
    problems = []
    exceptions, failures = out / "stats_exceptions.csv", out / "stats_failures.csv"
    if exceptions.exists():
        with exceptions.open(newline="") as file:
            for row in csv.DictReader(file):
                problems.append(f"a user raised {row['Count']} time(s): {row['Message'][:300]}")
    if failures.exists():
        with failures.open(newline="") as file:
            for row in csv.DictReader(file):
                if row["Name"].rsplit(" ", 1)[-1] in NEVER_HONEST:
                    problems.append(f"{row['Name']} {row['Occurrences']} time(s): {row['Error'][:300]}")
    return problems


@dataclass(frozen=True)
class LocustLoad:
    """Locust as a chaos run's load (chaos.run.LoadRunner); `problems` says what its reports found wrong."""

    out: Path
    shape: str | None
    users: int
    duration_s: float
    weights: str
    ui: bool = False
    problems: list[str] = field(default_factory=list)

    def describe(self) -> str:
        if self.ui:
            return f"Locust's web UI at http://{UI_HOST}:{UI_PORT} (stop the run with Ctrl-C here)"
        return f"Locust, the {self.shape} shape up to {self.users} users for {self.duration_s:g}s"

    def command(self, host: str) -> list[str]:
        command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--host", host]
        command += ["--csv", str(self.out / "stats"), "--html", str(self.out / "locust.html")]
        command += ["--exit-code-on-error", "0", "--stop-timeout", str(STOP_TIMEOUT_S), "--loglevel", "WARNING"]
        if self.ui:
            return [*command, "--web-host", UI_HOST, "--web-port", str(UI_PORT)]
        return [*command, "--headless", "--only-summary"]

    def environment(self, targets: list[str], token: str, operator_token: str, epoch: float) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")])),
            BALLAST_LOAD_TARGETS=",".join(targets),
            BALLAST_TOKEN=token,
            BALLAST_OPERATOR_TOKEN=operator_token,
            BALLAST_LOAD_HISTORY=str(self.out / "locust-history.jsonl"),
            BALLAST_LOAD_EPOCH=repr(epoch),
            BALLAST_LOAD_USERS=str(self.users),
            BALLAST_LOAD_DURATION_S=repr(self.duration_s),
        )
        if self.weights:
            env["BALLAST_LOAD_WEIGHTS"] = self.weights
        if self.shape:
            env["BALLAST_LOAD_SHAPE"] = self.shape
        return env

    async def __call__(self, the_world: World, started: float, history: History) -> None:
        replicas = the_world.servers
        # the history's clock is the faults': seconds since `started`, on the wall clock Locust shares
        epoch = time.time() - (time.monotonic() - started)
        env = self.environment([r.address for r in replicas], replicas[0].token, the_world.operator_token, epoch)
        recorded = self.out / "locust-history.jsonl"
        recorded.unlink(missing_ok=True)  # an earlier run into the same --out is not this run's history
        before, began = resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic()
        code = await run_locust(self.command(replicas[0].address), env, None if self.ui else self.bound_s)
        after, wall_s = resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic() - began
        cpu_s = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        # the load generator's own cost, so that its ceiling is not taken for the server's
        say(f"Locust used {cpu_s:.1f} CPU-seconds in {wall_s:.0f}s ({cpu_s / max(wall_s, 1e-9):.2f} cores)")
        if recorded.exists():
            for operation in History.read(recorded):
                history.append(operation)
        if code != 0 and not self.ui:  # the UI's Locust was stopped by Ctrl-C: its status says only that
            raise LocustFailed(f"Locust exited {code}: see its output above")
        self.problems.extend(load_problems(self.out))

    @property
    def bound_s(self) -> float:
        return self.duration_s + STOP_TIMEOUT_S + LOCUST_MARGIN_S


class LocustFailed(Exception):
    """Locust itself failed (not a call it made)."""


async def run_locust(command: list[str], env: dict[str, str], bound_s: float | None) -> int:
    """Locust's exit status. Ctrl-C (SIGINT to this process) is passed on to Locust, which stops its users
    and writes its reports, and the run goes on to its checks; past `bound_s` Locust is stopped the same
    way. Locust runs in a session of its own, so a terminal's Ctrl-C reaches it once, through here."""
    process = await asyncio.create_subprocess_exec(
        *command,
        env=env,
        cwd=str(ROOT),
        start_new_session=True,
        preexec_fn=die_with_parent(),  # a harness killed outright takes Locust along (Linux)
    )
    loop = asyncio.get_running_loop()

    def stop() -> None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGINT)

    loop.add_signal_handler(signal.SIGINT, stop)
    try:
        return await asyncio.wait_for(process.wait(), bound_s)
    except TimeoutError:
        stop()
        try:
            return await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S + 5)
        except TimeoutError:
            process.kill()
            return await process.wait()
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        if process.returncode is None:  # cancelled: Locust does not outlive the run
            process.kill()


def _arguments(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m loadtests", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="a headless load run, then the invariants (make load)")
    run.add_argument("--shape", choices=SHAPE_NAMES, default=SHAPE_DEFAULT, help="the load shape")
    run.add_argument("--users", type=int, default=USERS_DEFAULT, help=f"the most users at once (1 to {USERS_MAX})")
    run.add_argument("--duration", type=float, default=DURATION_S_DEFAULT, help="the run's seconds")
    run.add_argument("--host", default="", help="a running server's gRPC address: no world, no invariants")
    ui = commands.add_parser("ui", help="Locust's web UI against a world it starts (make load-ui)")
    for command in (run, ui):
        command.add_argument("--scenario", default="", help="a chaos scenario whose faults play during the load")
        command.add_argument("--weights", default="", help="the users' weights, e.g. payer=6,reader=3,operator=0")
        command.add_argument("--seed", type=int, default=SEED_DEFAULT, help="the faults' seed")
        command.add_argument(
            "--out", type=Path, default=None, help="where results go (default loadtests/results/<time>)"
        )
    arguments = parser.parse_args(argv)
    if arguments.command == "run":
        if not 1 <= arguments.users <= USERS_MAX:
            parser.error(f"--users must be from 1 to {USERS_MAX}")
        if not 1 <= arguments.duration <= DURATION_S_MAX:
            parser.error(f"--duration must be from 1 to {DURATION_S_MAX:g} seconds")
    return arguments


def _payer_weight(weights: str) -> int | None:
    """The payer's weight a --weights value gives, if it gives one (users.py checks the rest)."""
    for item in weights.split(","):
        name, _, weight = item.partition("=")
        if name.strip() == "payer" and weight.strip().isdigit():
            return int(weight)
    return None


def main(argv: Sequence[str]) -> int:
    arguments = _arguments(argv)
    out = arguments.out or RESULTS / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out.mkdir(parents=True, exist_ok=True)
    ui = arguments.command == "ui"
    load = LocustLoad(
        out,
        None if ui else arguments.shape,
        USERS_DEFAULT if ui else arguments.users,
        DURATION_S_MAX if ui else arguments.duration,
        arguments.weights,
        ui=ui,
    )
    if not ui and arguments.host:  # someone else's server: Locust alone, its own table the result
        env = load.environment([arguments.host], os.environ.get("BALLAST_TOKEN", ""), "", time.time())
        return subprocess.run(load.command(arguments.host), env=env, cwd=str(ROOT), check=False).returncode
    if _payer_weight(arguments.weights) == 0:
        print("--weights: the payer's weight must be above 0 when the run is checked: the invariants judge payments")
        return 2
    try:
        chosen = scenario(arguments.scenario) if arguments.scenario else QUIET
    except ValueError as error:
        print(error, file=sys.stderr)
        return 2
    try:
        report = run_scenario(chosen, arguments.seed, out, load=load)
    except KeyboardInterrupt:
        print(f"interrupted; what was written is under {out}", file=sys.stderr)
        return 130
    print(report.summary())
    broken = [result for result in report.invariants if not result.passed]
    for result in broken:
        print(f"BROKEN: {result.name}: {result.description}")
    for problem in load.problems:
        print(f"LOAD FAILED: {problem}")
    print(f"Locust's report: {out / 'locust.html'}; CSV: {out}/stats_*.csv; the run: {out / 'report.md'}")
    return 0 if report.passed and not load.problems else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
