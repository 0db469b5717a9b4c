"""`python -m chaos`: QA's chaos harness.

    python -m chaos list                         the scenarios, with their stories
    python -m chaos run provider-hang --seed 7   one scenario; its report under chaos/results/
    python -m chaos all [--seed N]               every scenario, then a summary table (`make chaos`)
    python -m chaos smoke [--seed N]             the quick subset CI runs (`make chaos-smoke`)

DATABASE_URL and NATS_URL are used when set; otherwise an embedded PostgreSQL and NATS are started.
TOXIPROXY_URL (default http://127.0.0.1:8474) is used when a Toxiproxy server answers there;
otherwise `toxiproxy-server` from PATH, or the harness's own compatible one, is started. Every
process a run starts is stopped when it ends, on Ctrl-C too. The exit status is 1 when any run broke
an invariant, 2 for a usage error, 130 after Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import textwrap
import time
import traceback
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from chaos.processes import ROOT
from chaos.report import RunReport
from chaos.run import run_scenario
from chaos.scenarios import SCENARIOS, Scenario, scenario, smoke

RESULTS = ROOT / "chaos" / "results"
DEFAULT_SEED = 1
#: An error's one-line summary is cut to this length (the whole traceback goes to the run's directory).
ERROR_MESSAGE_MAX = 300


def _arguments(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m chaos", description="Ballast's chaos harness.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="the scenarios and their stories")
    commands.add_parser("clean", help="remove what runs killed with kill -9 left (databases, streams, proxies)")
    one = commands.add_parser("run", help="run one scenario")
    one.add_argument("name", help="a scenario's name (python -m chaos list)")
    for command in (
        one,
        commands.add_parser("all", help="every scenario"),
        commands.add_parser("smoke", help="CI's subset"),
    ):
        command.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"the run's seed (default {DEFAULT_SEED})")
        command.add_argument("--out", type=Path, default=None, help="where reports go (default chaos/results/<time>)")
    return parser.parse_args(argv)


def _list() -> int:
    for item in SCENARIOS.values():
        marks = " [smoke]" if item.smoke else ""
        print(f"{item.name}{marks}")
        print(textwrap.indent(textwrap.fill(item.story, 96), "    "))
    return 0


def _clean() -> int:
    """Remove what dead runs left on DATABASE_URL's PostgreSQL (or the embedded one), NATS_URL's NATS
    (a run's embedded NATS went with it) and the Toxiproxy at TOXIPROXY_URL (or the default one)."""
    from chaos.cleanup import remove_leftovers
    from chaos.faults import DEFAULT_TOXIPROXY_URL, TOXIPROXY_URL_ENV
    from chaos.topology import postgres_server_url

    nats_url = os.environ.get("NATS_URL", "").strip() or None
    toxiproxy_url = os.environ.get(TOXIPROXY_URL_ENV, "").strip() or DEFAULT_TOXIPROXY_URL
    with postgres_server_url() as database_url:
        removed = asyncio.run(remove_leftovers(database_url, nats_url, toxiproxy_url))
    for kind, names in (("database", removed.databases), ("stream", removed.streams), ("proxy", removed.proxies)):
        for name in names:
            print(f"removed {kind} {name}")
    if not removed:
        print("nothing left behind by a dead run")
    return 0


def _table(reports: list[RunReport | tuple[str, str]], seed: int) -> str:
    lines = [
        "| scenario | seed | result | payments | calls/s | settled after | time |",
        "|---|---|---|---|---|---|---|",
    ]
    for report in reports:
        if isinstance(report, tuple):
            name, error = report
            lines.append(f"| {name} | {seed} | ERROR: {error} | - | - | - | - |")
            continue
        broken = [result.name for result in report.invariants if not result.passed]
        verdict = "pass" if report.passed else "FAIL: " + ", ".join(broken or ["fault not applied"])
        settled = f"{report.convergence.elapsed_s:.1f} s" if report.convergence.converged else "not settled"
        lines.append(
            f"| {report.scenario} | {report.seed} | {verdict} | {report.load.payments_asked}"
            f" | {report.load.calls_per_s:g} | {settled} | {report.duration_s:.0f} s |"
        )
    return "\n".join(lines)


def _one_line(error: BaseException) -> str:
    """What went wrong, in one line: the error's first line, then its type."""
    first = (str(error).strip().splitlines() or [""])[0][:ERROR_MESSAGE_MAX]
    return f"{first} ({type(error).__name__})" if first else type(error).__name__


def _run_all(scenarios: list[Scenario], seed: int, out: Path) -> int:
    """Each scenario in turn; one that cannot run (its world did not start) is reported and the rest run."""
    reports: list[RunReport | tuple[str, str]] = []
    started = time.monotonic()
    for number, item in enumerate(scenarios, start=1):
        print(f"[{number}/{len(scenarios)}] {item.name} (seed {seed}) ...", file=sys.stderr, flush=True)
        work_dir = out / f"{item.name}-seed{seed}"
        try:
            report = run_scenario(item, seed, work_dir)
        except Exception as error:  # a run that could not start or finish: say why, go on with the rest
            message = _one_line(error)
            work_dir.mkdir(parents=True, exist_ok=True)
            (work_dir / "error.txt").write_text("".join(traceback.format_exception(error)))
            print(
                f"[{number}/{len(scenarios)}] {item.name} could not run: {message}\n"
                f"    the whole traceback and every process's log are in {work_dir}",
                file=sys.stderr,
                flush=True,
            )
            reports.append((item.name, message))
            continue
        print(f"[{number}/{len(scenarios)}] {report.summary()}", file=sys.stderr, flush=True)
        if not report.passed:
            print(report.to_markdown(), file=sys.stderr, flush=True)
        reports.append(report)
    table = _table(reports, seed)
    (out / "summary.md").write_text(table + "\n")
    print(table)
    print(f"\n{len(reports)} scenario(s) in {time.monotonic() - started:.0f} s; reports under {out}")
    return 0 if all(isinstance(report, RunReport) and report.passed for report in reports) else 1


def main(argv: Sequence[str]) -> int:
    arguments = _arguments(argv)
    if arguments.command == "list":
        return _list()
    if arguments.command == "clean":
        return _clean()
    if arguments.command == "run":
        try:
            chosen = [scenario(arguments.name)]
        except ValueError as error:
            print(error, file=sys.stderr)
            return 2
    else:
        chosen = list(SCENARIOS.values()) if arguments.command == "all" else smoke()
    out = arguments.out or RESULTS / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out.mkdir(parents=True, exist_ok=True)
    try:
        return _run_all(chosen, arguments.seed, out)
    except KeyboardInterrupt:
        print("interrupted: every process the run started has been stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
