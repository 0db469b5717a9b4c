"""Evidence as Ballast keeps it: what a witness said, and the state changes applied on its word.

A provider's answer, a webhook or a venue's report is stored as received (cut to these lengths where a
witness may send anything), and every state change records the event, its cause and a reference to
the evidence behind it. PostgreSQL checks the same limits.
"""

from __future__ import annotations

#: The name of the provider (a payment gateway, a venue) evidence came from.
PROVIDER_NAME_LENGTH_MAX = 64
#: A provider's status word, stored verbatim beside the state it was mapped to.
PROVIDER_STATUS_LENGTH_MAX = 64
#: The id a provider gives its object (a payment, a venue's order).
PROVIDER_ID_LENGTH_MAX = 255
#: A webhook delivery's raw body, kept as received.
WEBHOOK_BODY_BYTES_MAX = 1024 * 1024

#: A state change's event (what happened, in Ballast's words) and its cause (what applied it).
EVENT_LENGTH_MAX = 64
CAUSE_LENGTH_MAX = 64
#: Where the evidence behind a state change, a status or a fill is kept.
EVIDENCE_REF_LENGTH_MAX = 500
