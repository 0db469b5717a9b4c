"""Reconciliation's rules: report runs and their stages, the classes of difference, each provider's
report mapping (data), and the bounds on what a report may be.

The stages (docs/reconciliation.md) are named functions in server/services/reconciliation.py; the
set-wise SQL they run lives in server/db/recon_repository.py, parameterised by what is here.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from types import MappingProxyType

from server.domain.errors import FieldViolation, InvalidArgument

#: The largest report accepted, in bytes: a bigger one is refused before anything is stored.
REPORT_BYTES_MAX = 512 * 1024 * 1024
#: The most data rows one report may hold: a run with more FAILS before any row is matched.
REPORT_ROWS_MAX = 2_000_000
#: The raw bytes are stored (and streamed to PostgreSQL's COPY) in chunks of at most this size.
CHUNK_BYTES_MAX = 1024 * 1024
#: A provider's name in Ballast (lower case), a file name, a content type and an error message are kept
#: up to these lengths.
PROVIDER_LENGTH_MAX = 64
FILE_NAME_LENGTH_MAX = 255
CONTENT_TYPE_LENGTH_MAX = 255
ERROR_LENGTH_MAX = 500
#: A run a worker claimed is its own for this long; a worker that died leaves it to another after. Short:
#: the lease only keeps two workers from taking the same run between its stages, since each stage holds
#: the run's row lock (a dead server's lock ends with its connection), so two never do a stage twice.
RUN_LEASE_S = 15
#: A report is compared with the other runs in force (for a transaction reported twice, or one it lacks)
#: whose periods lie within this many days of its own: providers re-send a transaction within days, and
#: a run's work stays bounded however many years of reports Ballast holds.
IN_FORCE_WINDOW_DAYS = 62


class ReportKind(enum.StrEnum):
    SETTLEMENT = "SETTLEMENT"
    TRANSACTIONS = "TRANSACTIONS"


class RunStatus(enum.StrEnum):
    """Where a report run is. COMPLETED and FAILED are final."""

    RECEIVED = "RECEIVED"  # stored and checksum-verified
    NORMALIZING = "NORMALIZING"  # stage 2: raw rows into canonical rows
    MATCHING = "MATCHING"  # stages 3 to 5: matched, classified, resolved
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"


FINAL_RUN_STATUSES = frozenset({RunStatus.COMPLETED, RunStatus.FAILED})


class RowType(enum.StrEnum):
    """A canonical report row's type."""

    CHARGE = "CHARGE"  # a payment the provider captured
    REFUND = "REFUND"  # a refund it paid back (a negative gross)
    ADJUSTMENT = "ADJUSTMENT"  # an FX or other adjustment of a transaction
    PAYOUT = "PAYOUT"  # the payout itself: the net of its lines leaving the provider balance


class Difference(enum.StrEnum):
    """The class of a difference between a provider's report and Ballast's records."""

    MISSING_INTERNAL = "MISSING_INTERNAL"  # the provider settled something Ballast has no record of
    MISSING_PROVIDER = "MISSING_PROVIDER"  # Ballast's success has no row once the settlement window passed
    AMOUNT_MISMATCH = "AMOUNT_MISMATCH"
    CURRENCY_MISMATCH = "CURRENCY_MISMATCH"
    STATUS_MISMATCH = "STATUS_MISMATCH"  # settled, while Ballast holds it failed (or refunded back)
    FEE_MISMATCH = "FEE_MISMATCH"  # the fee is not the provider's agreed schedule (within tolerance)
    TIMING_MISMATCH = "TIMING_MISMATCH"  # settled on another day than expected
    DUPLICATE_PROVIDER_ROW = "DUPLICATE_PROVIDER_ROW"
    FX_ADJUSTMENT = "FX_ADJUSTMENT"  # an adjustment line beyond the FX tolerance
    PAYOUT_MISMATCH = "PAYOUT_MISMATCH"  # a payout's total is not the sum of its lines


#: Differences that resolve without a person: a TIMING_MISMATCH closes itself when its row arrives in a
#: later report. Every other difference opens a case.
SELF_CLOSING = frozenset({Difference.TIMING_MISMATCH})


@dataclass(frozen=True)
class ReportMapping:
    """How one provider's CSV settlement report maps onto canonical rows: which column holds each
    canonical field (by its header name), and the provider's words for each row type. Data only: the
    normalizing SQL is built from it (server/db/recon_repository.py)."""

    columns: MappingProxyType[str, str]
    types: MappingProxyType[str, RowType]
    #: the provider's statuses of a row whose money has settled (anything else is still in transit)
    settled_statuses: frozenset[str]


#: The canonical fields every mapping names a column for.
CANONICAL_FIELDS = (
    "provider_transaction_id",
    "source_id",
    "reference",
    "payout_id",
    "type",
    "status",
    "currency",
    "gross",
    "fee",
    "net",
    "settlement_date",
)

MAPPINGS: MappingProxyType[str, ReportMapping] = MappingProxyType(
    {
        # the simulator's /v1/reports/settlement?format=csv (simulator/settlement.py)
        "simulator": ReportMapping(
            columns=MappingProxyType(
                {
                    "provider_transaction_id": "balance_transaction_id",
                    "source_id": "source_id",
                    "reference": "reference",
                    "payout_id": "payout_id",
                    "type": "type",
                    "status": "status",
                    "currency": "currency",
                    "gross": "gross",
                    "fee": "fee",
                    "net": "net",
                    "settlement_date": "settlement_date",
                }
            ),
            types=MappingProxyType(
                {
                    "charge": RowType.CHARGE,
                    "refund": RowType.REFUND,
                    "adjustment": RowType.ADJUSTMENT,
                    "payout": RowType.PAYOUT,
                }
            ),
            settled_statuses=frozenset({"available", "paid"}),
        ),
    }
)


def mapping_for(provider: str) -> ReportMapping:
    """The provider's report mapping; NOT_FOUND naming the providers there are."""
    try:
        return MAPPINGS[provider]
    except KeyError:
        raise InvalidArgument(
            [
                FieldViolation(
                    "header.provider",
                    f"no report mapping for provider {provider[:64]!r}: reports are read for"
                    f" {', '.join(sorted(MAPPINGS))}",
                )
            ]
        ) from None


@dataclass(frozen=True)
class HeaderColumns:
    """Each canonical field's 1-based position in a report's header line."""

    positions: MappingProxyType[str, int]
    width: int


def header_columns(mapping: ReportMapping, header_line: str) -> HeaderColumns:
    """Where each canonical field is in a report whose first line is `header_line`; INVALID_ARGUMENT
    naming every column the mapping needs and the header lacks."""
    names = [name.strip().strip('"') for name in header_line.rstrip("\r\n").split(",")]
    missing = [column for column in mapping.columns.values() if column not in names]
    if missing:
        raise InvalidArgument(
            [
                FieldViolation(
                    "chunk",
                    f"the report's header line lacks the columns {', '.join(missing)}: is it this provider's"
                    " settlement report, exported as CSV with its header line?",
                )
            ]
        )
    positions = {field: names.index(column) + 1 for field, column in mapping.columns.items()}
    return HeaderColumns(MappingProxyType(positions), len(names))


def check_sha256(value: str, field: str = "sha256") -> str:
    """A SHA-256 written as 64 lower-case hexadecimal characters."""
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise InvalidArgument([FieldViolation(field, "must be a SHA-256: 64 lower-case hexadecimal characters")])
    return value
