"""Helpers the test levels share, one module each; a helper written twice is a helper missing here.

- `databases`: scratch databases, rows written behind the server's back
- `rpc`: what a gRPC error says (its BadRequest fields, its PreconditionFailure subjects)
- `legs`: a world's orders and legs placed, acknowledged, filled, modified and closed as production does; their rows
- `faults`: a statement that fails, a pool of one held connection, a row held, an insert refused, races noted
- `probes`: what a spec reads back (row counts, a payment's state, its ledger entries, whether it is due)
- `providers`: a payment provider whose API answers as the test tells it
- `evidence`: a provider's word applied to a payment, a venue's report to a leg, as production applies them;
  Ballast's own conclusions; a captured payment
- `requests`: gRPC requests, the domain's commands, and the payments and legs a spec starts from
- `simulator`: the provider simulator in-process, sending its webhooks to Ballast, and its ground truth
- `servers`: the server in-process, and a world of a test's own (brand-new clients, a stub per service)
- `webhooks`: the simulator's events, signed with its own signer, and Ballast's webhook endpoint on a free port
- `waiting`: a poll under a deadline
"""

from tests.support.databases import insert_idempotency_key, scratch_database
from tests.support.evidence import apply_evidence, report_to_leg
from tests.support.providers import AnsweringProvider, answering_provider
from tests.support.rpc import field_violations, precondition_subjects, rpc_error, status_details
from tests.support.waiting import until

__all__ = [
    "AnsweringProvider",
    "answering_provider",
    "apply_evidence",
    "field_violations",
    "insert_idempotency_key",
    "precondition_subjects",
    "report_to_leg",
    "rpc_error",
    "scratch_database",
    "status_details",
    "until",
]
