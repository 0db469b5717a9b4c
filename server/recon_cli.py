"""`python -m server recon ...`: reconciliation from the command line, for operations staff.

recon ingest FILE --provider NAME   take in a provider's settlement report (a progress bar on a
                                    terminal) and reconcile it now; prints the run and its counts
recon run RUN_ID                    a run's status and counts
recon cases [--run RUN_ID]          the open cases, newest first
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TextIO

from server.db.database import Budget, Database
from server.db.engine import create_pool
from server.domain.errors import BallastError
from server.domain.reconciliation import CHUNK_BYTES_MAX, REPORT_BYTES_MAX, ReportKind
from server.services import cases, evidence_export
from server.services.reconciliation import ReportHeader, ingest_file_report, process_run

#: What one command may take: a million-row report reconciles in well under this.
COMMAND_BUDGET_S = 900
USAGE = (
    "usage: python -m server recon ingest FILE --provider NAME\n"
    "       python -m server recon run RUN_ID\n"
    "       python -m server recon cases [--run RUN_ID]\n"
    "       python -m server recon export (--case ID | --run ID) --out FILE"
)


class Progress:
    """A progress bar on a terminal (bytes read of the file); nothing when stderr is not one."""

    def __init__(self, total: int, out: TextIO = sys.stderr) -> None:
        self._total, self._out, self._done = max(total, 1), out, 0
        self._shown = 0.0
        self._enabled = out.isatty()

    def advance(self, count: int) -> None:
        self._done += count
        now = time.monotonic()
        if self._enabled and (now - self._shown >= 0.1 or self._done >= self._total):
            self._shown = now
            share = self._done / self._total
            bar = "#" * int(share * 30)
            self._out.write(f"\ringest [{bar:<30}] {share:6.1%} {self._done / 1048576:8.1f} MiB")
            self._out.flush()

    def close(self) -> None:
        if self._enabled:
            self._out.write("\n")


async def _file_chunks(path: Path, progress: Progress) -> AsyncIterator[bytes]:
    with path.open("rb") as file:
        while chunk := await asyncio.to_thread(file.read, CHUNK_BYTES_MAX):
            progress.advance(len(chunk))
            yield chunk


def _print_run(run: cases.ReportRunRecord) -> None:
    print(f"run {run.id}: {run.status.value}{f' ({run.failure_reason})' if run.failure_reason else ''}")
    print(f"  provider {run.provider}, file {run.file_name}, {run.byte_count} bytes, sha256 {run.sha256}")
    print(
        f"  rows {run.row_count}: {run.matched_row_count} matched, {run.unmatched_row_count} with a difference,"
        f" {run.invalid_row_count} invalid; {run.opened_case_count} cases opened"
    )


async def ingest(database: Database, path: Path, provider: str) -> int:
    size = (await asyncio.to_thread(path.stat)).st_size
    if size > REPORT_BYTES_MAX:
        print(
            f"{path} is {size} bytes, more than the {REPORT_BYTES_MAX} a report may be: split it by period",
            file=sys.stderr,
        )
        return 1
    progress = Progress(size)
    header = ReportHeader(provider, ReportKind.SETTLEMENT, path.name[:255] or "report", "text/csv", None)
    try:
        ingested = await ingest_file_report(database, header, _file_chunks(path, progress))
    finally:
        progress.close()
    if ingested.replayed:
        print("this file was ingested before: its run is unchanged", file=sys.stderr)
    run = await process_run(database, ingested.run.id)
    _print_run(run)
    return 0 if run.status.value == "COMPLETED" else 1


async def show_run(database: Database, run_id: str) -> int:
    _print_run(await cases.get_report_run(database, run_id, Budget.within(30)))
    return 0


async def list_open(database: Database, run_id: str | None) -> int:
    page = await cases.list_cases(
        database, cases.CaseQuery(status="OPEN", report_run_id=run_id or "", page_size=500), Budget.within(30)
    )
    for case in page.cases:
        print(f"{case.id}  {case.kind:28} {case.opened_at:%Y-%m-%d %H:%M}  {case.summary[:100]}")
    print(f"{len(page.cases)} open cases{' (more: filter by --run)' if page.next_page_token else ''}")
    return 0


async def export(database: Database, case_id: str | None, run_id: str | None, out: Path) -> int:
    budget = Budget.within(COMMAND_BUDGET_S)
    if case_id is not None:
        bundle = await evidence_export.export_case(database, case_id, budget)
    else:
        bundle = await evidence_export.export_run(database, run_id or "", budget)
    with out.open("wb") as file:
        async for chunk in bundle.chunks():
            file.write(chunk)
    print(f"{out}: {bundle.byte_count} bytes, sha256 {bundle.sha256} (manifest.json inside lists each file's)")
    return 0


def _parse(arguments: list[str]) -> argparse.Namespace | None:
    parser = argparse.ArgumentParser(prog="python -m server recon")
    commands = parser.add_subparsers(dest="command", required=True)
    ingesting = commands.add_parser("ingest", help="take in and reconcile a provider's settlement report")
    ingesting.add_argument("file", type=Path)
    ingesting.add_argument("--provider", required=True, help="the provider's name in Ballast, e.g. simulator")
    showing = commands.add_parser("run", help="a report run's status and counts")
    showing.add_argument("run_id")
    listing = commands.add_parser("cases", help="the open cases, newest first")
    listing.add_argument("--run", help="only the cases this report run opened")
    exporting = commands.add_parser("export", help="an auditor's evidence bundle for a case or a run")
    target = exporting.add_mutually_exclusive_group(required=True)
    target.add_argument("--case", help="a case id")
    target.add_argument("--run", help="a report run id")
    exporting.add_argument("--out", required=True, type=Path, help="the ZIP file to write")
    try:
        return parser.parse_args(arguments)
    except SystemExit:
        print(USAGE, file=sys.stderr)
        return None


def main(database_url: str, arguments: list[str]) -> int:
    options = _parse(arguments)
    if options is None:
        return 2
    if options.command == "ingest" and not options.file.is_file():
        print(f"{options.file} is not a file", file=sys.stderr)
        return 2
    return asyncio.run(_run(database_url, options))


async def _run(database_url: str, options: argparse.Namespace) -> int:
    pool = await create_pool(database_url, size=2, statement_timeout_ms=COMMAND_BUDGET_S * 1000)
    database = Database(pool)
    try:
        if options.command == "ingest":
            return await ingest(database, options.file, options.provider)
        if options.command == "run":
            return await show_run(database, options.run_id)
        if options.command == "export":
            return await export(database, options.case, options.run, options.out)
        return await list_open(database, options.run)
    except BallastError as error:
        print(f"recon {options.command}: {error}", file=sys.stderr)
        return 1
    finally:
        await pool.close()
