"""Evidence bundles for auditors: one case, or one report run, with everything behind it, verifiable offline.

A bundle is a ZIP file: the raw report exactly as received (its SHA-256 is the run's), the rows, the
findings, the cases, Ballast's records (the payment, its transitions, the provider's words, its
ledger lines) and the case's audit chain, as CSV written by PostgreSQL; and `manifest.json`, which
names every file with its size and SHA-256. `sha256sum` over the unpacked files checks it. The bundle
is assembled in a temporary file (never in memory, whatever the report's size) before the first byte
is sent, so its own SHA-256 and size are known up front.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import uuid
import zipfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

from server.db import cases_repository as cases_repo
from server.db import recon_repository as repo
from server.db.database import Budget, Database
from server.domain.errors import NotFound
from server.domain.identifiers import parse_uuid

#: Bundles are streamed in chunks of this size (the contract's bound on a chunk).
BUNDLE_CHUNK_BYTES = 1024 * 1024
#: A bundle larger than this in memory spills to disk while it is assembled.
SPOOL_BYTES_MAX = 8 * 1024 * 1024
BUNDLE_CONTENT_TYPE = "application/zip"
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Bundle:
    file_name: str
    sha256: str
    byte_count: int
    content: IO[bytes]

    async def chunks(self) -> AsyncIterator[bytes]:
        """The bundle's bytes, in order; the file is closed once they are all read."""
        try:
            self.content.seek(0)
            while chunk := self.content.read(BUNDLE_CHUNK_BYTES):
                yield chunk
        finally:
            self.content.close()


class _HashingEntry:
    """A file of the ZIP being written, hashed as it goes."""

    def __init__(self, archive: zipfile.ZipFile, name: str) -> None:
        self.name = name
        self.sha256 = hashlib.sha256()
        self.byte_count = 0
        self._file = archive.open(name, "w", force_zip64=True)

    def write(self, data: bytes) -> None:
        self.sha256.update(data)
        self.byte_count += len(data)
        self._file.write(data)

    def close(self) -> dict[str, Any]:
        self._file.close()
        return {"name": self.name, "bytes": self.byte_count, "sha256": self.sha256.hexdigest()}


async def _assemble(
    subject: dict[str, Any], fill: Callable[[Callable[[str], _HashingEntry]], Any], file_name: str
) -> Bundle:
    content = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES_MAX)  # noqa: SIM115 - closed by Bundle.chunks
    files: list[dict[str, Any]] = []
    with zipfile.ZipFile(content, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        opened: list[_HashingEntry] = []

        def entry(name: str) -> _HashingEntry:
            if opened:
                files.append(opened.pop().close())
            created = _HashingEntry(archive, name)
            opened.append(created)
            return created

        await fill(entry)
        if opened:
            files.append(opened.pop().close())
        manifest = {"subject": subject, "created_at": datetime.now(UTC).isoformat(), "files": files}
        archive.writestr(MANIFEST, json.dumps(manifest, indent=2, sort_keys=True, default=str))
    content.seek(0)
    digest = hashlib.sha256()
    size = 0
    while chunk := content.read(BUNDLE_CHUNK_BYTES):
        digest.update(chunk)
        size += len(chunk)
    return Bundle(file_name, digest.hexdigest(), size, content)


async def export_run(database: Database, raw_run_id: str, budget: Budget) -> Bundle:
    """A run's bundle: its raw report, rows, findings, cases and the payouts it posted."""
    run_id = parse_uuid(raw_run_id, "report_run_id")
    async with database.connection(budget) as connection:
        run = await repo.get_run(connection, run_id)
        if run is None:
            raise NotFound("report run", str(run_id))

        async def fill(entry: Callable[[str], _HashingEntry]) -> None:
            report = entry(f"report/{run.file_name.replace('/', '_')}")
            await repo.write_raw_report(connection, run_id, report.write)
            for name, query in repo.RUN_EVIDENCE_QUERIES:
                await repo.copy_query_csv(connection, query, [str(run_id)], entry(name).write)

        subject = {
            "report_run_id": str(run.id),
            "provider": run.provider,
            "file_name": run.file_name,
            "sha256": run.sha256,
            "byte_count": run.byte_count,
            "status": run.status.value,
        }
        return await _assemble(subject, fill, f"evidence-run-{run.id}.zip")


async def export_case(database: Database, raw_case_id: str, budget: Budget) -> Bundle:
    """A case's bundle: the case, its findings and report rows, the payment's records and ledger lines,
    the case's audit chain, and the raw report of the run that opened it."""
    case_id = parse_uuid(raw_case_id, "case_id")
    async with database.connection(budget) as connection:
        case = await cases_repo.get_case(connection, case_id)
        if case is None:
            raise NotFound("case", str(case_id))
        run_id: uuid.UUID | None = case.report_run_id

        async def fill(entry: Callable[[str], _HashingEntry]) -> None:
            for name, query in repo.CASE_EVIDENCE_QUERIES:
                await repo.copy_query_csv(connection, query, [str(case_id)], entry(name).write)
            if run_id is not None:
                run = await repo.get_run(connection, run_id)
                if run is not None:
                    report = entry(f"report/{run.file_name.replace('/', '_')}")
                    await repo.write_raw_report(connection, run_id, report.write)

        subject = {"case_id": str(case_id), "kind": case.kind, "report_run_id": str(run_id) if run_id else None}
        return await _assemble(subject, fill, f"evidence-case-{case_id}.zip")
