"""LedgerService over gRPC (in-process server, real PostgreSQL): balances, entries, paging, who reads what.

Ledger lines come from the one path that writes them: payments created over gRPC and moved by evidence,
applied as production applies it (SUCCEEDED posts a capture: provider_clearing +amount, merchant_payable
-amount).
Every test has brand-new clients (a world of its own), so the balances of their merchant accounts are exact.
"""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import asyncpg
import grpc
import pytest

from ballast.ledger.v1 import ledger_pb2
from server.db.database import Database
from server.domain.payment_states import PaymentEvent
from server.services.payment_events import Evidence
from tests.support import apply_evidence, field_violations
from tests.support.requests import create_payment_request
from tests.support.servers import Caller, World

E = PaymentEvent


def _merchant(caller: Caller) -> str:
    return f"merchant_payable:{caller.client_id}"


async def _payment(world: World, amount: str, currency: str = "EUR", caller: Caller | None = None) -> uuid.UUID:
    response = await world.payments.CreatePayment(
        create_payment_request(value=amount, currency=currency),
        metadata=(caller or world.merchant).metadata,
        timeout=5,
    )
    return uuid.UUID(response.payment.id)


async def _apply(database: Database, payment_id: uuid.UUID, *events: PaymentEvent) -> None:
    for event in events:
        evidence = Evidence(cause="test", reference=f"test:{uuid.uuid4()}")
        await apply_evidence(database, payment_id, event, evidence)


async def _captured(
    world: World, database: Database, amount: str, currency: str = "EUR", caller: Caller | None = None
) -> uuid.UUID:
    payment_id = await _payment(world, amount, currency, caller)
    await _apply(database, payment_id, E.SUCCEEDED)
    return payment_id


async def _balance(world: World, caller: Caller, account: str, currency: str = "EUR") -> ledger_pb2.GetBalanceResponse:
    return await world.ledger.GetBalance(
        ledger_pb2.GetBalanceRequest(account=account, currency_code=currency), metadata=caller.metadata, timeout=5
    )


async def _entries(world: World, caller: Caller, **fields: object) -> ledger_pb2.ListEntriesResponse:
    request = ledger_pb2.ListEntriesRequest(**fields)  # type: ignore[arg-type]
    return await world.ledger.ListEntries(request, metadata=caller.metadata, timeout=5)


async def _all_entries(
    world: World, caller: Caller, page_token: str = "", **fields: object
) -> list[ledger_pb2.LedgerEntry]:
    """Every page from `page_token` on."""
    entries: list[ledger_pb2.LedgerEntry] = []
    token = page_token
    while True:
        page = await _entries(world, caller, page_token=token, **fields)
        entries.extend(page.entries)
        token = page.next_page_token
        if not token:
            return entries


def _lines(entry: ledger_pb2.LedgerEntry) -> list[tuple[str, str, str]]:
    return [(line.account, line.amount.value, line.amount.currency_code) for line in entry.lines]


async def _rpc_error(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value


class TestGetBalance:
    async def test_a_capture_credits_the_merchant_and_debits_provider_clearing(
        self, world: World, database: Database
    ) -> None:
        clearing_before = Decimal((await _balance(world, world.auditor, "provider_clearing")).balance.value)
        payment_id = await _captured(world, database, "12.50")

        merchant = await _balance(world, world.merchant, _merchant(world.merchant))
        assert (merchant.balance.value, merchant.balance.currency_code) == ("-12.50", "EUR")
        [capture] = (await _entries(world, world.merchant, payment_id=str(payment_id))).entries
        assert merchant.last_entry_id == capture.id
        assert merchant.as_of_time.ToDatetime(UTC) >= capture.posted_time.ToDatetime(UTC)
        clearing = await _balance(world, world.auditor, "provider_clearing")
        # Tests run one at a time: nothing else posts to provider_clearing in between.
        assert Decimal(clearing.balance.value) - clearing_before == Decimal("12.50")

    async def test_a_refund_reverses_exactly_what_the_capture_posted(self, world: World, database: Database) -> None:
        refunded = await _captured(world, database, "12.50")
        await _captured(world, database, "7.25")
        account = _merchant(world.merchant)
        assert (await _balance(world, world.merchant, account)).balance.value == "-19.75"

        await _apply(database, refunded, E.REFUND_REQUESTED)
        assert (await _balance(world, world.merchant, account)).balance.value == "-19.75"
        await _apply(database, refunded, E.REFUND_SUCCEEDED)
        after_refund = await _balance(world, world.merchant, account)
        assert after_refund.balance.value == "-7.25"
        [_, refund] = (await _entries(world, world.merchant, payment_id=str(refunded))).entries
        assert after_refund.last_entry_id == refund.id

    async def test_a_fully_refunded_merchant_is_back_to_zero_with_the_currencys_digits(
        self, world: World, database: Database
    ) -> None:
        payment_id = await _captured(world, database, "0.10")
        await _apply(database, payment_id, E.REFUND_REQUESTED, E.REFUND_SUCCEEDED)
        response = await _balance(world, world.merchant, _merchant(world.merchant))
        assert response.balance.value == "0.00"
        assert response.last_entry_id != ""

    async def test_a_failed_refund_posts_nothing(self, world: World, database: Database) -> None:
        payment_id = await _captured(world, database, "30.00")
        await _apply(database, payment_id, E.REFUND_REQUESTED, E.REFUND_FAILED)
        assert (await _balance(world, world.merchant, _merchant(world.merchant))).balance.value == "-30.00"

    @pytest.mark.parametrize(("currency", "zero"), [("EUR", "0.00"), ("JPY", "0"), ("KWD", "0.000")])
    async def test_an_account_without_lines_has_a_zero_balance_in_the_currencys_minor_unit(
        self, world: World, currency: str, zero: str
    ) -> None:
        response = await _balance(world, world.merchant, _merchant(world.merchant), currency)
        assert (response.balance.value, response.balance.currency_code) == (zero, currency)
        assert response.last_entry_id == ""
        assert response.as_of_time.ToDatetime(UTC) <= datetime.now(UTC)
        assert response.as_of_time.seconds > 0

    async def test_a_balance_counts_only_lines_in_its_currency(self, world: World, database: Database) -> None:
        await _captured(world, database, "10.00", "EUR")
        await _captured(world, database, "500", "JPY")
        await _captured(world, database, "1.250", "KWD")
        account = _merchant(world.merchant)
        balances = [
            (await _balance(world, world.merchant, account, currency)).balance.value
            for currency in ("EUR", "JPY", "KWD", "USD")
        ]
        assert balances == ["-10.00", "-500", "-1.250", "0.00"]

    @pytest.mark.parametrize("account", ["provider_clearing", "merchant_payable", "merchant_payable:someone-else"])
    async def test_a_service_may_not_read_any_account_but_its_own(self, world: World, account: str) -> None:
        error = await _rpc_error(_balance(world, world.merchant, account))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED

    async def test_a_service_may_not_read_another_services_merchant_account(
        self, world: World, database: Database
    ) -> None:
        await _captured(world, database, "2.00", caller=world.other)
        error = await _rpc_error(_balance(world, world.merchant, _merchant(world.other)))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED

    async def test_an_auditor_reads_any_account(self, world: World, database: Database) -> None:
        await _captured(world, database, "2.00", caller=world.other)
        response = await _balance(world, world.auditor, _merchant(world.other))
        assert response.balance.value == "-2.00"
        assert (await _balance(world, world.auditor, "provider_clearing")).balance.currency_code == "EUR"

    @pytest.mark.parametrize(
        ("account", "currency", "fields"),
        [
            ("", "EUR", {"account"}),
            ("provider_clearing", "", {"currency_code"}),
            ("", "", {"account", "currency_code"}),
            ("Provider Clearing", "EUR", {"account"}),
            ("merchant_payable:", "EUR", {"account"}),
            ("a" * 201, "EUR", {"account"}),
            ("provider_clearing", "eur", {"currency_code"}),
            ("provider_clearing", "XXX", {"currency_code"}),
            ("provider_clearing;drop", "EURO", {"account", "currency_code"}),
        ],
    )
    async def test_bad_input_is_invalid_argument_naming_each_field(
        self, world: World, account: str, currency: str, fields: set[str]
    ) -> None:
        error = await _rpc_error(_balance(world, world.merchant, account, currency))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field_violations(error) == fields

    async def test_a_call_without_credentials_is_unauthenticated(self, world: World) -> None:
        request = ledger_pb2.GetBalanceRequest(account="provider_clearing", currency_code="EUR")
        error = await _rpc_error(world.ledger.GetBalance(request, timeout=5))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED


class TestListEntries:
    async def test_entries_come_oldest_first_whole_and_with_signed_lines(
        self, world: World, database: Database
    ) -> None:
        payment_id = await _captured(world, database, "12.50")
        await _apply(database, payment_id, E.REFUND_REQUESTED, E.REFUND_SUCCEEDED)
        merchant = _merchant(world.merchant)

        capture, refund = (await _entries(world, world.merchant, account=merchant)).entries
        assert capture.event_key == f"payment:{payment_id}:captured"
        assert capture.payment_id == str(payment_id)
        assert capture.description == "payment captured"
        assert _lines(capture) == [("provider_clearing", "12.50", "EUR"), (merchant, "-12.50", "EUR")]
        assert refund.event_key == f"payment:{payment_id}:refunded"
        assert _lines(refund) == [(merchant, "12.50", "EUR"), ("provider_clearing", "-12.50", "EUR")]
        assert capture.posted_time.ToDatetime() <= refund.posted_time.ToDatetime()

    async def test_pages_follow_each_other_until_the_token_comes_back_empty(
        self, world: World, database: Database
    ) -> None:
        payments = [await _captured(world, database, f"{n}.00") for n in range(1, 6)]
        merchant = _merchant(world.merchant)

        pages = [await _entries(world, world.merchant, account=merchant, page_size=2)]
        while pages[-1].next_page_token:
            token = pages[-1].next_page_token
            pages.append(await _entries(world, world.merchant, account=merchant, page_size=2, page_token=token))
        assert [len(page.entries) for page in pages] == [2, 2, 1]
        listed = [entry.payment_id for page in pages for entry in page.entries]
        assert listed == [str(payment_id) for payment_id in payments]

    async def test_a_page_that_ends_exactly_at_the_last_entry_has_no_token(
        self, world: World, database: Database
    ) -> None:
        for amount in ("1.00", "2.00"):
            await _captured(world, database, amount)
        page = await _entries(world, world.merchant, account=_merchant(world.merchant), page_size=2)
        assert len(page.entries) == 2
        assert page.next_page_token == ""

    async def test_a_page_size_of_zero_means_fifty(self, world: World, database: Database) -> None:
        for _ in range(51):
            await _captured(world, database, "1.00")
        page = await _entries(world, world.merchant)
        assert len(page.entries) == 50
        rest = await _entries(world, world.merchant, page_token=page.next_page_token)
        assert (len(rest.entries), rest.next_page_token) == (1, "")

    async def test_entries_posted_while_paging_appear_on_a_later_page(self, world: World, database: Database) -> None:
        merchant = _merchant(world.merchant)
        await _captured(world, database, "1.00")
        await _captured(world, database, "2.00")
        first = await _entries(world, world.merchant, account=merchant, page_size=1)
        late = await _captured(world, database, "3.00")
        rest = await _all_entries(world, world.merchant, first.next_page_token, account=merchant, page_size=1)
        assert [_lines(entry)[1][1] for entry in (*first.entries, *rest)] == ["-1.00", "-2.00", "-3.00"]
        assert rest[-1].payment_id == str(late)

    async def test_a_payment_filter_lists_only_that_payments_entries(self, world: World, database: Database) -> None:
        wanted = await _captured(world, database, "9.99")
        await _apply(database, wanted, E.REFUND_REQUESTED, E.REFUND_SUCCEEDED)
        await _captured(world, database, "1.11")

        entries = (await _entries(world, world.merchant, payment_id=str(wanted))).entries
        assert [entry.event_key for entry in entries] == [f"payment:{wanted}:captured", f"payment:{wanted}:refunded"]

    async def test_with_account_and_payment_filters_an_entry_must_match_both(
        self, world: World, database: Database
    ) -> None:
        payment_id = await _captured(world, database, "5.00")
        both = await _entries(world, world.auditor, account=_merchant(world.merchant), payment_id=str(payment_id))
        assert [entry.payment_id for entry in both.entries] == [str(payment_id)]
        neither = await _entries(world, world.auditor, account=_merchant(world.other), payment_id=str(payment_id))
        assert list(neither.entries) == []

    async def test_a_payment_that_moved_no_money_has_no_entries(self, world: World, database: Database) -> None:
        payment_id = await _payment(world, "5.00")
        await _apply(database, payment_id, E.ACCEPTED, E.FAILED)
        page = await _entries(world, world.merchant, payment_id=str(payment_id))
        assert (list(page.entries), page.next_page_token) == ([], "")

    async def test_a_service_without_filters_lists_only_the_entries_touching_its_own_account(
        self, world: World, database: Database
    ) -> None:
        own = [await _captured(world, database, amount) for amount in ("3.30", "4.40")]
        await _captured(world, database, "6.60", caller=world.other)

        entries = await _all_entries(world, world.merchant, page_size=1)
        assert [entry.payment_id for entry in entries] == [str(payment_id) for payment_id in own]
        assert all(_merchant(world.merchant) in {line.account for line in entry.lines} for entry in entries)

    async def test_a_service_may_not_filter_by_another_account(self, world: World) -> None:
        for account in ("provider_clearing", _merchant(world.other)):
            error = await _rpc_error(_entries(world, world.merchant, account=account))
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED

    async def test_a_service_may_not_filter_by_a_payment_it_does_not_own_nor_learn_whether_it_exists(
        self, world: World, database: Database
    ) -> None:
        others = await _captured(world, database, "2.00", caller=world.other)
        for payment_id in (others, uuid.uuid4()):
            error = await _rpc_error(_entries(world, world.merchant, payment_id=str(payment_id)))
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED

    async def test_an_auditor_lists_any_account_and_any_payment(self, world: World, database: Database) -> None:
        payment_id = await _captured(world, database, "4.00", caller=world.other)
        page = await _entries(world, world.auditor, account="provider_clearing", payment_id=str(payment_id))
        [entry] = page.entries
        assert entry.event_key == f"payment:{payment_id}:captured"

    async def test_an_amount_stored_finer_than_its_currency_is_shown_exactly_never_rounded(
        self, world: World, pool: asyncpg.Pool
    ) -> None:
        account, entry_id = f"test_raw:{uuid.uuid4().hex}", uuid.uuid4()
        async with pool.acquire() as connection, connection.transaction():  # only raw SQL can write such lines
            await connection.execute(
                "INSERT INTO ledger_entries (id, event_key) VALUES ($1, $2)", entry_id, f"raw:{entry_id}"
            )
            await connection.execute(
                "INSERT INTO ledger_lines (entry_id, line_number, account, currency_code, amount)"
                " VALUES ($1, 1, $2, 'EUR', 5.0001), ($1, 2, 'test_raw_equity', 'EUR', -5.0001)",
                entry_id,
                account,
            )
        [entry] = (await _entries(world, world.auditor, account=account)).entries
        assert _lines(entry) == [(account, "5.0001", "EUR"), ("test_raw_equity", "-5.0001", "EUR")]
        assert (await _balance(world, world.auditor, account)).balance.value == "5.0001"

    @pytest.mark.parametrize(
        ("fields", "named"),
        [
            ({"page_size": -1}, {"page_size"}),
            ({"page_size": 501}, {"page_size"}),
            ({"account": "Not An Account"}, {"account"}),
            ({"payment_id": "not-a-uuid"}, {"payment_id"}),
            ({"payment_id": "{" + str(uuid.UUID(int=1)) + "}"}, {"payment_id"}),
            ({"page_token": "not a token"}, {"page_token"}),
            (
                {"page_size": 1000, "account": "x y", "payment_id": "1", "page_token": "%%"},
                {"page_size", "account", "payment_id", "page_token"},
            ),
        ],
    )
    async def test_bad_input_is_invalid_argument_naming_each_field(
        self, world: World, fields: dict[str, object], named: set[str]
    ) -> None:
        error = await _rpc_error(_entries(world, world.merchant, **fields))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field_violations(error) == named

    @pytest.mark.parametrize(
        "cursor",
        [
            pytest.param(b"[]", id="a-list"),
            pytest.param(b"null", id="null"),
            pytest.param(b"[" * 150, id="unterminated-nesting"),
            pytest.param(b"\xff\xfe", id="not-utf8"),
            pytest.param(b'{"s":"x","t":"yesterday","i":"%(id)s"}', id="not-a-time"),
            pytest.param(b'{"s":"x","t":"2026-01-01T00:00:00","i":"%(id)s"}', id="no-time-zone"),
            pytest.param(b'{"s":"x","t":"0001-01-01T00:00:00+14:00","i":"%(id)s"}', id="before-year-one-in-utc"),
            pytest.param(b'{"s":"x","t":"%(now)s","i":"urn:uuid:%(id)s"}', id="not-a-plain-uuid"),
            pytest.param(b'{"s":1,"t":"%(now)s","i":2}', id="wrong-types"),
            pytest.param(b'{"t":"%(now)s","i":"%(id)s"}', id="no-scope"),
        ],
    )
    async def test_a_tampered_page_token_is_invalid_argument_not_an_internal_error(
        self, world: World, cursor: bytes
    ) -> None:
        filled = cursor % {b"id": str(uuid.uuid4()).encode(), b"now": datetime.now(UTC).isoformat().encode()}
        token = base64.urlsafe_b64encode(filled).decode()
        error = await _rpc_error(_entries(world, world.auditor, page_token=token))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field_violations(error) == {"page_token"}

    async def test_an_overlong_page_token_is_refused_unread(self, world: World) -> None:
        token = base64.urlsafe_b64encode(json.dumps({"s": "x" * 300}).encode()).decode()
        error = await _rpc_error(_entries(world, world.auditor, page_token=token))
        assert field_violations(error) == {"page_token"}

    async def test_a_token_only_continues_the_listing_it_came_from(self, world: World, database: Database) -> None:
        for amount in ("1.00", "2.00"):
            await _captured(world, database, amount)
        merchant = _merchant(world.merchant)
        token = (await _entries(world, world.auditor, account=merchant, page_size=1)).next_page_token
        other_filters: list[dict[str, object]] = [
            {"account": "provider_clearing"},
            {},
            {"payment_id": str(uuid.uuid4())},
        ]
        for filters in other_filters:
            error = await _rpc_error(_entries(world, world.auditor, page_token=token, **filters))
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert field_violations(error) == {"page_token"}
