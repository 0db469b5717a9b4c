"""PaymentService.GetPaymentTimeline over gRPC (in-process server, real PostgreSQL): everything that
happened to a payment, with its evidence, in the order it happened."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import pytest

from ballast.ledger.v1 import ledger_pb2
from ballast.payments.v1 import payments_pb2
from server.db.database import Database
from server.domain.payment_states import PaymentEvent
from server.services.payment_events import Evidence, PaymentOutcome
from tests.support import apply_evidence, field_violations
from tests.support.requests import create_payment_request
from tests.support.servers import Caller, World

E = PaymentEvent


async def _create(world: World, value: str = "40.00", currency: str = "EUR") -> uuid.UUID:
    response = await world.payments.CreatePayment(
        create_payment_request(value=value, currency=currency),
        metadata=world.merchant.metadata,
        timeout=5,
    )
    return uuid.UUID(response.payment.id)


async def _apply(
    database: Database, payment_id: uuid.UUID, event: PaymentEvent, reference: str, provider_status: str | None = None
) -> PaymentOutcome:
    """The provider's word (as its API would give it: it moves the payment), or a refund Ballast asked for."""
    evidence = Evidence(
        cause="webhook" if provider_status else "api.refund",
        reference=reference,
        provider="simulator" if provider_status else None,
        provider_status=provider_status,
    )
    return await apply_evidence(database, payment_id, event, evidence)


async def _timeline(
    world: World, payment_id: object, caller: Caller | None = None
) -> payments_pb2.GetPaymentTimelineResponse:
    return await world.payments.GetPaymentTimeline(
        payments_pb2.GetPaymentTimelineRequest(payment_id=str(payment_id)),
        metadata=(caller or world.merchant).metadata,
        timeout=5,
    )


def _described(entry: payments_pb2.TimelineEntry) -> tuple[str, ...]:
    """One entry as a readable tuple: its kind and its content."""
    kind = entry.WhichOneof("entry")
    if kind == "transition":
        t = entry.transition
        name = payments_pb2.PaymentState.Name
        return ("transition", name(t.from_state), name(t.to_state), t.cause, t.evidence_ref)
    if kind == "provider_status":
        p = entry.provider_status
        return ("provider_status", p.provider, p.status, p.evidence_ref)
    assert kind == "ledger_line", kind
    line = entry.ledger_line
    return ("ledger_line", line.account, line.amount.value, line.amount.currency_code)


def _created(entries: list[tuple[str, ...]]) -> tuple[str, ...]:
    """The creation entry every timeline starts with (unless evidence is dated before it)."""
    [created] = [d for d in entries if d[3:4] == ("api.create_payment",)]
    assert created[:3] == ("transition", "PAYMENT_STATE_UNSPECIFIED", "PAYMENT_STATE_RECORDED")
    assert created[4].startswith("idempotency_key:")
    return created


async def test_a_new_payment_has_only_its_creation_on_its_timeline(world: World) -> None:
    payment_id = await _create(world)
    response = await _timeline(world, payment_id)
    assert response.payment_id == str(payment_id)
    described = [_described(entry) for entry in response.entries]
    assert described == [_created(described)]


async def test_the_timeline_merges_evidence_transitions_and_ledger_lines_in_the_order_they_happened(
    world: World, database: Database
) -> None:
    payment_id = await _create(world, "40.00")
    await _apply(database, payment_id, E.ACCEPTED, "evt-1", provider_status="pending")
    await _apply(database, payment_id, E.SUCCEEDED, "evt-2", provider_status="captured")
    await _apply(database, payment_id, E.REFUND_REQUESTED, "call-3")
    await _apply(database, payment_id, E.REFUND_SUCCEEDED, "evt-4", provider_status="refunded")
    merchant = f"merchant_payable:{world.merchant.client_id}"

    entries = (await _timeline(world, payment_id)).entries
    described = [_described(entry) for entry in entries]
    assert described == [
        _created(described),
        ("provider_status", "simulator", "pending", "evt-1"),
        ("transition", "PAYMENT_STATE_RECORDED", "PAYMENT_STATE_PENDING", "webhook", "evt-1"),
        ("provider_status", "simulator", "captured", "evt-2"),
        ("transition", "PAYMENT_STATE_PENDING", "PAYMENT_STATE_SUCCEEDED", "webhook", "evt-2"),
        ("ledger_line", "provider_clearing", "40.00", "EUR"),
        ("ledger_line", merchant, "-40.00", "EUR"),
        ("transition", "PAYMENT_STATE_SUCCEEDED", "PAYMENT_STATE_REFUND_PENDING", "api.refund", "call-3"),
        ("provider_status", "simulator", "refunded", "evt-4"),
        ("transition", "PAYMENT_STATE_REFUND_PENDING", "PAYMENT_STATE_REFUNDED", "webhook", "evt-4"),
        ("ledger_line", merchant, "40.00", "EUR"),
        ("ledger_line", "provider_clearing", "-40.00", "EUR"),
    ]
    times = [entry.occur_time.ToDatetime() for entry in entries]
    assert times == sorted(times)
    assert times[0] < times[-1]


async def test_ledger_lines_name_the_entries_the_ledger_service_lists(world: World, database: Database) -> None:
    payment_id = await _create(world, "7.05")
    await _apply(database, payment_id, E.SUCCEEDED, "evt-ok", provider_status="captured")

    timeline = await _timeline(world, payment_id)
    lines = [entry.ledger_line for entry in timeline.entries if entry.WhichOneof("entry") == "ledger_line"]
    listed = await world.ledger.ListEntries(
        ledger_pb2.ListEntriesRequest(payment_id=str(payment_id)), metadata=world.merchant.metadata, timeout=5
    )
    [entry] = listed.entries
    assert {line.entry_id for line in lines} == {entry.id}
    assert [(line.account, line.amount) for line in lines] == [(line.account, line.amount) for line in entry.lines]


async def test_a_refused_event_leaves_its_evidence_on_the_timeline_but_no_transition(
    world: World, database: Database
) -> None:
    payment_id = await _create(world, "3.00")
    await _apply(database, payment_id, E.SUCCEEDED, "evt-ok", provider_status="captured")
    refused = await _apply(database, payment_id, E.FAILED, "evt-late", provider_status="declined")
    assert refused.to_state is None

    described = [_described(entry) for entry in (await _timeline(world, payment_id)).entries]
    assert described[-1] == ("provider_status", "simulator", "declined", "evt-late")
    assert [d[0] for d in described] == [
        "transition",
        "provider_status",
        "transition",
        "ledger_line",
        "ledger_line",
        "provider_status",
    ]


async def test_entries_are_ordered_by_when_they_happened_not_by_when_they_were_recorded(
    world: World, database: Database, pool: asyncpg.Pool
) -> None:
    payment_id = await _create(world, "1.00")
    await _apply(database, payment_id, E.ACCEPTED, "evt-accepted", provider_status="pending")
    # A report row, imported later, tells what the provider had said an hour earlier, and a minute before that.
    hour_ago = datetime.now(UTC) - timedelta(hours=1)
    for status, observed_at in (("authorised", hour_ago), ("received", hour_ago - timedelta(minutes=1))):
        await pool.execute(
            "INSERT INTO provider_statuses (payment_id, provider, status, evidence_ref, observed_at)"
            " VALUES ($1, 'simulator', $2, 'report:7', $3)",
            payment_id,
            status,
            observed_at,
        )

    described = [_described(entry) for entry in (await _timeline(world, payment_id)).entries]
    assert described == [
        ("provider_status", "simulator", "received", "report:7"),
        ("provider_status", "simulator", "authorised", "report:7"),
        _created(described),
        ("provider_status", "simulator", "pending", "evt-accepted"),
        ("transition", "PAYMENT_STATE_RECORDED", "PAYMENT_STATE_PENDING", "webhook", "evt-accepted"),
    ]


async def test_amounts_keep_the_currencys_fraction_digits(world: World, database: Database) -> None:
    payment_id = await _create(world, "500", "JPY")
    await _apply(database, payment_id, E.SUCCEEDED, "evt-jpy", provider_status="captured")
    described = [_described(entry) for entry in (await _timeline(world, payment_id)).entries]
    assert [d[2:] for d in described if d[0] == "ledger_line"] == [("500", "JPY"), ("-500", "JPY")]


async def test_another_clients_payment_is_not_found_as_if_it_did_not_exist(world: World, database: Database) -> None:
    payment_id = await _create(world)
    await _apply(database, payment_id, E.SUCCEEDED, "evt-ok", provider_status="captured")
    for caller, asked in ((world.other, payment_id), (world.merchant, uuid.uuid4())):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _timeline(world, asked, caller)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_an_auditor_reads_every_clients_timeline_as_it_reads_every_ledger_account(
    world: World, database: Database
) -> None:
    payment_id = await _create(world)
    await _apply(database, payment_id, E.SUCCEEDED, "evt-audited", provider_status="captured")
    audited = await _timeline(world, payment_id, world.auditor)
    own = await _timeline(world, payment_id)
    assert audited == own


@pytest.mark.parametrize(
    "raw", ["", "not-a-uuid", "{" + str(uuid.UUID(int=1)) + "}", "urn:uuid:" + str(uuid.UUID(int=1))]
)
async def test_a_malformed_payment_id_is_invalid_argument_naming_the_field(world: World, raw: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _timeline(world, raw)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(caught.value) == {"payment_id"}


async def test_a_call_without_credentials_is_unauthenticated(world: World) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await world.payments.GetPaymentTimeline(
            payments_pb2.GetPaymentTimelineRequest(payment_id=str(uuid.uuid4())), timeout=5
        )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_long_timeline_comes_a_page_at_a_time_in_order_with_nothing_lost_or_repeated(
    world: World, database: Database, pool: asyncpg.Pool
) -> None:
    payment_id = await _create(world, "2.00")
    await pool.execute(
        "INSERT INTO provider_statuses (payment_id, provider, status, evidence_ref)"
        " SELECT $1, 'simulator', 'processing', 'evt-' || g FROM generate_series(1, 25) AS g",
        payment_id,
    )
    await _apply(database, payment_id, E.SUCCEEDED, "evt-final", provider_status="captured")
    whole = [_described(entry) for entry in (await _timeline(world, payment_id)).entries]
    paged: list[tuple[str, ...]] = []
    token = ""
    for _ in range(100):
        page = await world.payments.GetPaymentTimeline(
            payments_pb2.GetPaymentTimelineRequest(payment_id=str(payment_id), page_size=4, page_token=token),
            metadata=world.merchant.metadata,
            timeout=5,
        )
        assert len(page.entries) <= 4
        paged += [_described(entry) for entry in page.entries]
        token = page.next_page_token
        if not token:
            break
    assert paged == whole
    assert len(whole) == 1 + 25 + 1 + 1 + 2  # creation, 25 statuses, the captured status, its transition, 2 lines


@pytest.mark.parametrize(("page_size", "page_token"), [(-1, ""), (1001, ""), (0, "garbage"), (0, "W10=")])
async def test_bad_timeline_paging_is_invalid_argument(world: World, page_size: int, page_token: str) -> None:
    payment_id = await _create(world)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await world.payments.GetPaymentTimeline(
            payments_pb2.GetPaymentTimelineRequest(
                payment_id=str(payment_id), page_size=page_size, page_token=page_token
            ),
            metadata=world.merchant.metadata,
            timeout=5,
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(caught.value) <= {"page_size", "page_token"}
