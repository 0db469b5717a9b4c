"""`python -m bench.all` (`make bench-all`): every benchmark, one after the other, then one Markdown table of
their ratios, each against a baseline measured in the same benchmark's run, with the machine they ran on.

Each benchmark runs as `python -m <module>` with its own output streamed as it goes; each appends its
ratios to a file this run names (bench/harness.py, record_ratios). The table goes to standard output
and to bench/results/<time>-all.md. A benchmark that fails is a row saying so; the exit status is 1
when any failed or missed a target, 2 for a usage error, 130 after Ctrl-C.

    python -m bench.all [--recon-rows N] [--only bench,bench.relay,...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from bench.harness import RATIOS_ENV, RESULTS_DIR, ROOT, Ratio

#: The benchmarks, in the order they run: (module, make target).
BENCHMARKS = (
    ("bench", "make bench"),
    ("bench.relay", "make bench-relay"),
    ("bench.webhooks", "make bench-webhooks"),
    ("bench.simulator", "make bench-simulator"),
    ("bench.reconciliation", "make bench-recon"),
)
RECON_ROWS_DEFAULT = 1_000_000
#: One benchmark's whole run, generation included, at the most.
BENCHMARK_TIMEOUT_S = 1_800


def machine() -> str:
    """The machine in one line: CPU model and count, memory, OS, Python."""
    model = ""
    if Path("/proc/cpuinfo").exists():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = ""
    if Path("/proc/meminfo").exists():
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f", {int(line.split()[1]) / 2**20:.0f} GiB"
                break
    cpu = f"{os.cpu_count()} CPUs" + (f" ({model})" if model else "")
    return f"{cpu}{memory}, {platform.platform()}, Python {platform.python_version()}"


def _command(module: str, recon_rows: int) -> list[str]:
    command = [sys.executable, "-m", module]
    return [*command, "--rows", str(recon_rows)] if module == "bench.reconciliation" else command


def run(modules: Sequence[tuple[str, str]], recon_rows: int, ratios_path: Path) -> dict[str, int]:
    """Each benchmark's exit status (a timeout is 124)."""
    statuses: dict[str, int] = {}
    env = dict(os.environ) | {RATIOS_ENV: str(ratios_path)}
    for module, target in modules:
        print(f"== {target} (python -m {module})", file=sys.stderr, flush=True)
        try:
            done = subprocess.run(_command(module, recon_rows), cwd=ROOT, env=env, timeout=BENCHMARK_TIMEOUT_S)
            statuses[target] = done.returncode
        except subprocess.TimeoutExpired:
            statuses[target] = 124
    return statuses


def table(statuses: dict[str, int], ratios_path: Path, when: str) -> tuple[str, bool]:
    """The Markdown report; whether every benchmark ran and met its targets."""
    recorded: dict[str, dict[str, object]] = {}
    if ratios_path.exists():
        for line in ratios_path.read_text().splitlines():
            entry = json.loads(line)
            recorded[entry["benchmark"]] = entry
    lines = [
        f"# Benchmarks, {when}",
        "",
        f"Machine: {machine()}. Each ratio is against a baseline measured in the same benchmark's run.",
        "",
        "| benchmark | ratio | measured | target | met | notes |",
        "|---|---|---|---|---|---|",
    ]
    all_met = True
    for target, status in statuses.items():
        entry = recorded.get(target)
        if entry is None or status not in (0, 1):
            lines.append(f"| `{target}` | did not finish (exit {status}) | | | no | |")
            all_met = False
            continue
        for item in entry["ratios"]:  # type: ignore[attr-defined]
            ratio = Ratio(item["name"], item["value"], item["target"], item["at_least"])
            sign = ">=" if ratio.at_least else "<="
            all_met = all_met and ratio.met
            lines.append(
                f"| `{target}` | {ratio.name} | {ratio.value:.2f} | {sign} {ratio.target:g} |"
                f" {'yes' if ratio.met else 'NO'} | {entry['details']} |"
            )
        if status != 0 and not entry["ratios"]:
            all_met = False
    return "\n".join(lines) + "\n", all_met


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.all", description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument(
        "--recon-rows", type=int, default=RECON_ROWS_DEFAULT, help="bench.reconciliation's --rows (1000 to 1500000)"
    )
    parser.add_argument("--only", default="", help="a comma-separated subset of the modules, e.g. bench,bench.relay")
    args = parser.parse_args(argv)
    if not 1_000 <= args.recon_rows <= 1_500_000:
        parser.error("--recon-rows must be from 1000 to 1500000")
    chosen = [item.strip() for item in args.only.split(",") if item.strip()]
    unknown = set(chosen) - {module for module, _ in BENCHMARKS}
    if unknown:
        parser.error(f"--only names no benchmark: {', '.join(sorted(unknown))}")
    modules = [(module, target) for module, target in BENCHMARKS if not chosen or module in chosen]
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    try:
        with tempfile.TemporaryDirectory(prefix="ballast-bench-") as tmp:
            ratios_path = Path(tmp) / "ratios.jsonl"
            statuses = run(modules, args.recon_rows, ratios_path)
            report, all_met = table(statuses, ratios_path, when)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}-all.md"
    path.write_text(report)
    print(report)
    print(f"written to {path}", file=sys.stderr)
    return 0 if all_met else 1


if __name__ == "__main__":
    sys.exit(main())
