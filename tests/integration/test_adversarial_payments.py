"""Adversarial specifications of CreatePayment, GetPayment and ListPayments over gRPC (real PostgreSQL).

Each test states a promise of the README or the proto contract and tries to break it: odd amount
spellings, Unicode at the length limits, NUL bytes, forged page tokens, racing idempotency keys and
deadlines too short to do anything in. A failing test here is a server defect, not a test to fix.
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import asyncpg
import grpc
import pytest
from google.rpc import error_details_pb2

from ballast.common.v1.money_pb2 import Money
from ballast.payments.v1 import payments_pb2, payments_pb2_grpc
from server.api.grpc_server import build_server
from server.db.database import Database
from server.settings import load_settings
from tests.support import field_violations, insert_idempotency_key, status_details
from tests.support.probes import payment_rows_of, payments_with_key
from tests.support.requests import create_payment_request, metadata_at_the_limits, page_token
from tests.support.rpc import assert_invalid_argument_writing_nothing
from tests.support.servers import Caller, in_process_server

Stub = payments_pb2_grpc.PaymentServiceStub

#: The first number past the last PaymentState: no state (the newest, EXPIRED, is 9).
_PAST_THE_LAST_STATE = max(payments_pb2.PaymentState.values()) + 1

#: Codes a racing CreatePayment may answer besides the payment itself (the README: retry with the same key).
RETRYABLE = {grpc.StatusCode.ABORTED, grpc.StatusCode.UNAVAILABLE}


# --------------------------------------------------------------------------------------------- helpers


async def _list_all(stub: Stub, caller: Caller, page_size: int = 500, **fields: Any) -> list[payments_pb2.Payment]:
    seen: list[payments_pb2.Payment] = []
    token = ""
    for _ in range(10_000):
        page = await stub.ListPayments(
            payments_pb2.ListPaymentsRequest(page_size=page_size, page_token=token, **fields),
            metadata=caller.metadata,
            timeout=10,
        )
        seen.extend(page.payments)
        token = page.next_page_token
        if not token:
            return seen
    raise AssertionError("ListPayments never returned an empty next_page_token")


# --------------------------------------------------------------------------------------------- fixtures


#: Clients of this module's own server, each used by one test only, so that their payments are theirs alone.
OWN_CLIENTS = ("bulky", "fresh", "slow", "pager")
OWN_REQUEST_TIMEOUT_MS = 1500


@pytest.fixture(scope="module")
def own_callers() -> dict[str, Caller]:
    suffix = uuid.uuid4().hex[:8]
    return {name: Caller(f"{name}-{suffix}", f"{name}-token-{uuid.uuid4().hex}") for name in OWN_CLIENTS}


@pytest.fixture(scope="module")
async def own_stub(
    pool: asyncpg.Pool, own_callers: dict[str, Caller], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stub]:
    """A second in-process server with fresh clients and a short BALLAST_REQUEST_TIMEOUT_MS."""
    data_dir = tmp_path_factory.mktemp("adversarial")
    timeout = {"BALLAST_REQUEST_TIMEOUT_MS": str(OWN_REQUEST_TIMEOUT_MS)}
    async with (
        in_process_server(pool, own_callers.values(), data_dir, **timeout) as address,
        grpc.aio.insecure_channel(address) as channel,
    ):
        yield payments_pb2_grpc.PaymentServiceStub(channel)


# --------------------------------------------------------------------------------------------- money


class TestMoney:
    @pytest.mark.parametrize(
        ("value", "currency", "canonical"),
        [
            ("0.01", "EUR", "0.01"),
            ("12.3", "EUR", "12.30"),
            ("999999999999999.99", "EUR", "999999999999999.99"),
            ("1000000000000000", "EUR", "1000000000000000.00"),
            ("1000000000000000.00", "USD", "1000000000000000.00"),
            ("1", "JPY", "1"),
            ("1000000000000000", "JPY", "1000000000000000"),
            ("0.001", "KWD", "0.001"),
            ("1.25", "KWD", "1.250"),
            ("999999999999999.999", "BHD", "999999999999999.999"),
            ("0.0001", "CLF", "0.0001"),
            ("123456789012345.6789", "CLF", "123456789012345.6789"),
            ("1000000000000000", "CLF", "1000000000000000.0000"),
        ],
    )
    async def test_an_amount_round_trips_exactly_through_create_get_list_and_the_database(
        self, payments_stub: Stub, alpha: Caller, pool: asyncpg.Pool, value: str, currency: str, canonical: str
    ) -> None:
        created = await payments_stub.CreatePayment(
            create_payment_request(value=value, currency=currency), metadata=alpha.metadata, timeout=5
        )
        assert (created.payment.amount.value, created.payment.amount.currency_code) == (canonical, currency)
        fetched = await payments_stub.GetPayment(
            payments_pb2.GetPaymentRequest(payment_id=created.payment.id), metadata=alpha.metadata, timeout=5
        )
        assert fetched.payment.amount == created.payment.amount
        listed = await payments_stub.ListPayments(
            payments_pb2.ListPaymentsRequest(page_size=1), metadata=alpha.metadata, timeout=5
        )
        assert listed.payments[0].id == created.payment.id
        assert listed.payments[0].amount == created.payment.amount
        stored = await pool.fetchval("SELECT amount FROM payments WHERE id = $1", uuid.UUID(created.payment.id))
        assert isinstance(stored, Decimal)
        assert stored == Decimal(value)

    @pytest.mark.parametrize(
        ("spellings", "currency"), [(("10", "10.0", "10.00"), "EUR"), (("1.5", "1.50", "1.500"), "KWD")]
    )
    async def test_spellings_of_one_amount_are_one_request_and_replay_the_same_payment(
        self, payments_stub: Stub, alpha: Caller, pool: asyncpg.Pool, spellings: tuple[str, ...], currency: str
    ) -> None:
        key = f"spelling-{uuid.uuid4()}"
        responses = [
            await payments_stub.CreatePayment(
                create_payment_request(key, value=value, currency=currency), metadata=alpha.metadata, timeout=5
            )
            for value in spellings
        ]
        assert [response.replayed for response in responses] == [False] + [True] * (len(spellings) - 1)
        assert len({response.payment.SerializeToString(deterministic=True) for response in responses}) == 1
        assert await payments_with_key(pool, alpha.client_id, key) == 1

    @pytest.mark.parametrize(
        ("value", "currency"),
        [
            ("00.1", "EUR"),
            ("01", "EUR"),
            ("1.", "EUR"),
            (".5", "EUR"),
            ("1e2", "EUR"),
            ("1E2", "EUR"),
            ("+1", "EUR"),
            ("-0.01", "EUR"),
            ("1,00", "EUR"),
            ("1 000", "EUR"),
            ("1_000", "EUR"),
            ("0x10", "EUR"),
            ("NaN", "EUR"),
            ("Infinity", "EUR"),
            ("９", "EUR"),  # fullwidth digit
            ("１０.００", "EUR"),
            ("١٢", "EUR"),  # Arabic-Indic digits
            ("10\x00", "EUR"),
            (" 10", "EUR"),
            ("10 ", "EUR"),
            ("\n10", "EUR"),
            ("10\n", "EUR"),  # whitespace is refused, a trailing newline included
            ("10.5\n", "EUR"),
            ("10\u200b", "EUR"),  # zero-width space
            ("0", "EUR"),
            ("0.00", "EUR"),
            ("0.000", "KWD"),
            ("10.000", "EUR"),  # even a zero beyond the minor unit
            ("10.0", "JPY"),
            ("1.0001", "KWD"),
            ("1000000000000000.01", "EUR"),
            ("1000000000000001", "JPY"),
            ("9" * 41, "EUR"),
            ("1" + "0" * 200, "EUR"),
            ("0." + "0" * 38 + "1", "EUR"),
        ],
    )
    async def test_a_malformed_amount_is_invalid_argument_naming_amount_value_and_writes_nothing(
        self, payments_stub: Stub, alpha: Caller, pool: asyncpg.Pool, value: str, currency: str
    ) -> None:
        await assert_invalid_argument_writing_nothing(
            payments_stub, alpha, pool, create_payment_request(value=value, currency=currency), "amount.value"
        )

    @pytest.mark.parametrize(
        "currency", ["eur", "Eur", "EUR ", " EUR", "EUR\n", "EUR\x00", "EU", "EURO", "XXX", "XAU", "€", "ＥＵＲ", "ÉUR"]
    )
    async def test_an_unknown_currency_is_invalid_argument_naming_the_currency_and_writes_nothing(
        self, payments_stub: Stub, alpha: Caller, pool: asyncpg.Pool, currency: str
    ) -> None:
        await assert_invalid_argument_writing_nothing(
            payments_stub, alpha, pool, create_payment_request(currency=currency), "amount.currency_code"
        )

    async def test_a_huge_currency_code_is_still_invalid_argument_naming_the_currency(
        self, payments_stub: Stub, alpha: Caller, pool: asyncpg.Pool
    ) -> None:
        """The field is free text on the wire; the answer must not grow with it until it cannot be delivered."""
        await assert_invalid_argument_writing_nothing(
            payments_stub, alpha, pool, create_payment_request(currency="X" * 100_000), "amount.currency_code"
        )

    async def test_the_same_digits_in_another_currency_are_another_request(
        self, payments_stub: Stub, alpha: Caller, pool: asyncpg.Pool
    ) -> None:
        key = f"currency-{uuid.uuid4()}"
        await payments_stub.CreatePayment(
            create_payment_request(key, value="10", currency="EUR"), metadata=alpha.metadata, timeout=5
        )
        for currency in ("USD", "JPY", "KWD"):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await payments_stub.CreatePayment(
                    create_payment_request(key, value="10", currency=currency), metadata=alpha.metadata, timeout=5
                )
            assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert await payments_with_key(pool, alpha.client_id, key) == 1


# --------------------------------------------------------------------------------------------- text fields


class TestTextFields:
    async def test_multibyte_text_at_every_character_limit_is_accepted_and_round_trips_exactly(
        self, payments_stub: Stub, alpha: Caller
    ) -> None:
        key = "🔑" * 255  # 255 characters, 1020 bytes
        request = create_payment_request(
            key,
            description="𝄞" * 1000,
            merchant_reference="😀" * 255,
            metadata=metadata_at_the_limits("€"),
        )
        created = await payments_stub.CreatePayment(request, metadata=alpha.metadata, timeout=10)
        payment = created.payment
        assert payment.idempotency_key == key
        assert payment.description == request.description
        assert payment.merchant_reference == request.merchant_reference
        assert dict(payment.metadata) == dict(request.metadata)
        replay = await payments_stub.CreatePayment(request, metadata=alpha.metadata, timeout=10)
        assert replay.replayed
        assert replay.payment == payment
        fetched = await payments_stub.GetPayment(
            payments_pb2.GetPaymentRequest(payment_id=payment.id), metadata=alpha.metadata, timeout=10
        )
        assert fetched.payment == payment

    @pytest.mark.parametrize(
        "text",
        [
            "e\u0301" * 500,  # 1000 characters: combining acute accents
            "\u202eevil\u202c and \u200f\u05e9\u05dc\u05d5\u05dd\u200e",  # RTL override, RLM, Hebrew, LRM
            "zero\u200bwidth\u200djoiner\ufeffbom",
            "👨‍👩‍👧‍👦🏳️‍🌈",
            "tab\tnewline\nreturn\r\x01\x7f",
            "\\u0000 is not a NUL, nor is %00",
            "'; DROP TABLE payments; --",
        ],
    )
    async def test_unusual_but_legal_text_round_trips_exactly_in_every_text_field(
        self, payments_stub: Stub, alpha: Caller, text: str
    ) -> None:
        request = create_payment_request(
            description=text,
            merchant_reference=text[:255],
            metadata={"k": text[:500], text[:40]: "v"},
        )
        created = await payments_stub.CreatePayment(request, metadata=alpha.metadata, timeout=5)
        fetched = await payments_stub.GetPayment(
            payments_pb2.GetPaymentRequest(payment_id=created.payment.id), metadata=alpha.metadata, timeout=5
        )
        for payment in (created.payment, fetched.payment):
            assert payment.description == request.description
            assert payment.merchant_reference == request.merchant_reference
            assert dict(payment.metadata) == dict(request.metadata)

    @pytest.mark.parametrize(
        ("fields", "field"),
        [
            ({"description": "𝄞" * 1001}, "description"),
            ({"description": "e\u0301" * 500 + "x"}, "description"),
            ({"merchant_reference": "😀" * 256}, "merchant_reference"),
            ({"metadata": {"😀" * 41: "v"}}, "metadata"),
            ({"metadata": {"": "v"}}, "metadata"),
            ({"metadata": {"k": "€" * 501}}, "metadata[k]"),
            ({"metadata": {f"k{index}": "v" for index in range(51)}}, "metadata"),
            ({"description": "nul\x00inside"}, "description"),
            ({"description": "\x00"}, "description"),
            ({"merchant_reference": "INV-\x00-1"}, "merchant_reference"),
            ({"metadata": {"k\x00": "v"}}, "metadata"),
            ({"metadata": {"\x00": "v"}}, "metadata"),
            ({"metadata": {"k": "v\x00"}}, "metadata[k]"),
        ],
    )
    async def test_text_over_a_limit_or_holding_a_nul_is_invalid_argument_naming_the_field_and_writes_nothing(
        self, payments_stub: Stub, alpha: Caller, pool: asyncpg.Pool, fields: dict[str, Any], field: str
    ) -> None:
        await assert_invalid_argument_writing_nothing(
            payments_stub, alpha, pool, create_payment_request(**fields), field
        )

    async def test_every_field_wrong_at_once_is_reported_field_by_field(
        self, payments_stub: Stub, alpha: Caller, pool: asyncpg.Pool
    ) -> None:
        request = payments_pb2.CreatePaymentRequest(
            idempotency_key="k\x00",
            amount=Money(value="1.234", currency_code="EUR"),
            description="d" * 1001,
            merchant_reference="\x00",
            metadata={"k": "v" * 501},
        )
        before = await payment_rows_of(pool, alpha.client_id)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await payments_stub.CreatePayment(request, metadata=alpha.metadata, timeout=5)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field_violations(caught.value) == {
            "idempotency_key",
            "amount.value",
            "description",
            "merchant_reference",
            "metadata[k]",
        }
        assert await payment_rows_of(pool, alpha.client_id) == before

    @pytest.mark.parametrize(
        ("metadata", "fields"),
        [
            pytest.param(
                {f"{index:02d}".ljust(40, "k"): "v" * 501 for index in range(50)},
                {f"metadata[{f'{index:02d}'.ljust(40, 'k')}]" for index in range(50)},
                id="50-ascii-keys-with-overlong-values",
            ),
            pytest.param(
                {f"{index:02d}".ljust(40, "😀"): "v" * 501 for index in range(50)},
                {f"metadata[{f'{index:02d}'.ljust(40, '😀')}]" for index in range(50)},
                id="50-emoji-keys-with-overlong-values",
            ),
            pytest.param(
                {f"{index:02d}".ljust(60, "😀"): "v" for index in range(50)},
                {"metadata"},
                id="50-overlong-emoji-keys",
            ),
        ],
    )
    async def test_many_metadata_violations_are_still_delivered_as_invalid_argument_naming_them(
        self, payments_stub: Stub, alpha: Caller, pool: asyncpg.Pool, metadata: dict[str, str], fields: set[str]
    ) -> None:
        """A request within the contract's entry count (50) but wrong in every entry must still get its BadRequest.

        Asked ten times, because the size limit a default client puts on the answer's trailers is enforced at random
        between its soft (8 KiB) and hard (16 KiB) bounds.
        """
        before = await payment_rows_of(pool, alpha.client_id)
        codes = []
        for _ in range(10):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await payments_stub.CreatePayment(
                    create_payment_request(metadata=metadata), metadata=alpha.metadata, timeout=5
                )
            codes.append(caught.value.code())
            if caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT:
                # The details name the first ten problems, so that the trailer fits gRPC's metadata limits.
                named = field_violations(caught.value)
                assert named <= fields and len(named) == min(len(fields), 10)
        assert codes == [grpc.StatusCode.INVALID_ARGUMENT] * 10, caught.value.details()
        assert await payment_rows_of(pool, alpha.client_id) == before

    async def test_metadata_order_does_not_change_the_request(
        self, payments_stub: Stub, alpha: Caller, pool: asyncpg.Pool
    ) -> None:
        key = f"order-{uuid.uuid4()}"
        entries = [(f"k{index}", f"v{index}") for index in range(20)]
        first = await payments_stub.CreatePayment(
            create_payment_request(key, metadata=dict(entries)), metadata=alpha.metadata, timeout=5
        )
        again = await payments_stub.CreatePayment(
            create_payment_request(key, metadata=dict(reversed(entries))), metadata=alpha.metadata, timeout=5
        )
        assert again.replayed
        assert again.payment.id == first.payment.id
        assert await payments_with_key(pool, alpha.client_id, key) == 1


# --------------------------------------------------------------------------------------------- idempotency keys


class TestIdempotencyKeys:
    async def test_keys_differing_only_by_case_or_whitespace_or_normalisation_are_different_keys(
        self, payments_stub: Stub, alpha: Caller, pool: asyncpg.Pool
    ) -> None:
        """Keys are opaque strings compared exactly, as Stripe compares them: no folding, no trimming."""
        base = f"Case-{uuid.uuid4()}-\u00e9"
        variants = [base, base.lower(), base.upper(), base + " ", " " + base, base[:-1] + "e\u0301"]
        ids = set()
        for variant in variants:
            response = await payments_stub.CreatePayment(
                create_payment_request(variant, value="7.00"), metadata=alpha.metadata, timeout=5
            )
            assert not response.replayed
            assert response.payment.idempotency_key == variant
            ids.add(response.payment.id)
        assert len(ids) == len(variants)

    @pytest.mark.parametrize(
        "key",
        [
            "\x00",
            "key\x00",
            "\x00key",
            "key\n",
            "\tkey",
            "\u200b",  # zero-width space
            "key\u200f",  # right-to-left mark
            "key\u2028",  # line separator
            "key\x7f",
            "k" * 256,
            "😀" * 256,
            "",
        ],
    )
    async def test_an_empty_overlong_or_non_printable_key_is_invalid_argument_and_writes_nothing(
        self, payments_stub: Stub, alpha: Caller, pool: asyncpg.Pool, key: str
    ) -> None:
        await assert_invalid_argument_writing_nothing(
            payments_stub, alpha, pool, create_payment_request(key), "idempotency_key"
        )

    @pytest.mark.parametrize(
        "changed",
        [
            {"value": "12.35"},
            {"currency": "USD"},
            {"description": "other"},
            {"description": "same\u200b"},
            {"merchant_reference": "INV-2"},
            {"metadata": {"cart": "c-1", "extra": ""}},
            {"metadata": {"cart": "C-1"}},
            {"metadata": {}},
        ],
    )
    async def test_the_same_key_with_any_other_parameter_is_failed_precondition_naming_the_key_exactly(
        self, payments_stub: Stub, alpha: Caller, pool: asyncpg.Pool, changed: dict[str, Any]
    ) -> None:
        key = f"ключ-😀-e\u0301-{uuid.uuid4()}"
        original: dict[str, Any] = {
            "value": "12.34",
            "currency": "EUR",
            "description": "same",
            "merchant_reference": "INV-1",
            "metadata": {"cart": "c-1"},
        }
        first = await payments_stub.CreatePayment(
            create_payment_request(key, **original), metadata=alpha.metadata, timeout=5
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await payments_stub.CreatePayment(
                create_payment_request(key, **(original | changed)), metadata=alpha.metadata, timeout=5
            )
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert key in (caught.value.details() or "")
        failure = error_details_pb2.PreconditionFailure()
        assert any(detail.Unpack(failure) for detail in status_details(caught.value))
        assert failure.violations[0].subject == f"idempotency_key:{key}"
        assert await payments_with_key(pool, alpha.client_id, key) == 1
        # The refusal changed nothing: the original still replays.
        replay = await payments_stub.CreatePayment(
            create_payment_request(key, **original), metadata=alpha.metadata, timeout=5
        )
        assert replay.replayed
        assert replay.payment == first.payment

    async def test_the_refusal_of_the_longest_legal_multibyte_key_reaches_the_caller_naming_it(
        self, payments_stub: Stub, alpha: Caller
    ) -> None:
        key = "😀" * 223 + uuid.uuid4().hex  # 255 characters, 924 bytes, named three times in the answer
        await payments_stub.CreatePayment(create_payment_request(key), metadata=alpha.metadata, timeout=5)
        for _ in range(10):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await payments_stub.CreatePayment(
                    create_payment_request(key, value="1"), metadata=alpha.metadata, timeout=5
                )
            assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION, caught.value.details()
            assert key in (caught.value.details() or "")

    async def test_fifty_concurrent_calls_with_one_key_create_one_payment_that_every_caller_gets_or_may_retry(
        self, payments_stub: Stub, alpha: Caller, pool: asyncpg.Pool
    ) -> None:
        request = create_payment_request(f"race-{uuid.uuid4()}", description="raced")
        outcomes = await asyncio.gather(
            *(payments_stub.CreatePayment(request, metadata=alpha.metadata, timeout=10) for _ in range(50)),
            return_exceptions=True,
        )
        answers = [o for o in outcomes if isinstance(o, payments_pb2.CreatePaymentResponse)]
        errors = [o for o in outcomes if not isinstance(o, payments_pb2.CreatePaymentResponse)]
        assert all(isinstance(e, grpc.aio.AioRpcError) and e.code() in RETRYABLE for e in errors), errors
        assert len({answer.payment.id for answer in answers}) == 1
        assert sum(not answer.replayed for answer in answers) <= 1
        assert await payments_with_key(pool, alpha.client_id, request.idempotency_key) == 1
        # Everyone who got ABORTED can retry and gets the one payment.
        retried = await payments_stub.CreatePayment(request, metadata=alpha.metadata, timeout=5)
        assert retried.replayed
        assert retried.payment.id == answers[0].payment.id

    async def test_fifty_concurrent_calls_with_one_key_and_two_parameter_sets_create_one_payment(
        self, payments_stub: Stub, alpha: Caller, pool: asyncpg.Pool
    ) -> None:
        key = f"race-mixed-{uuid.uuid4()}"
        requests = [create_payment_request(key, value=f"{10 + index % 2}.00") for index in range(50)]
        outcomes = await asyncio.gather(
            *(payments_stub.CreatePayment(r, metadata=alpha.metadata, timeout=10) for r in requests),
            return_exceptions=True,
        )
        answers = [o for o in outcomes if isinstance(o, payments_pb2.CreatePaymentResponse)]
        refused = [
            o
            for o in outcomes
            if isinstance(o, grpc.aio.AioRpcError) and o.code() == grpc.StatusCode.FAILED_PRECONDITION
        ]
        others = [o for o in outcomes if o not in answers and o not in refused]
        assert all(isinstance(o, grpc.aio.AioRpcError) and o.code() in RETRYABLE for o in others), others
        assert len({answer.payment.id for answer in answers}) == 1
        winner = answers[0].payment.amount.value
        for request, outcome in zip(requests, outcomes, strict=True):
            if outcome in refused:
                assert request.amount.value != winner
            elif outcome in answers:
                assert request.amount.value == winner
        assert await payments_with_key(pool, alpha.client_id, key) == 1

    async def test_two_clients_racing_with_one_key_get_one_payment_each(
        self, payments_stub: Stub, alpha: Caller, beta: Caller, pool: asyncpg.Pool
    ) -> None:
        request = create_payment_request(f"shared-race-{uuid.uuid4()}")
        callers = [alpha, beta] * 25
        outcomes = await asyncio.gather(
            *(payments_stub.CreatePayment(request, metadata=c.metadata, timeout=10) for c in callers),
            return_exceptions=True,
        )
        by_client: dict[str, set[str]] = {alpha.client_id: set(), beta.client_id: set()}
        for caller, outcome in zip(callers, outcomes, strict=True):
            if isinstance(outcome, payments_pb2.CreatePaymentResponse):
                assert outcome.payment.client_id == caller.client_id
                by_client[caller.client_id].add(outcome.payment.id)
            else:
                assert isinstance(outcome, grpc.aio.AioRpcError) and outcome.code() in RETRYABLE, outcome
        assert all(len(ids) == 1 for ids in by_client.values())
        assert by_client[alpha.client_id] != by_client[beta.client_id]
        for caller in (alpha, beta):
            assert await payments_with_key(pool, caller.client_id, request.idempotency_key) == 1

    async def test_a_hundred_concurrent_calls_with_distinct_keys_create_a_hundred_payments(
        self, payments_stub: Stub, alpha: Caller, pool: asyncpg.Pool
    ) -> None:
        requests = [create_payment_request(f"distinct-{uuid.uuid4()}") for _ in range(100)]
        before = await payment_rows_of(pool, alpha.client_id)
        outcomes = await asyncio.gather(
            *(payments_stub.CreatePayment(r, metadata=alpha.metadata, timeout=10) for r in requests)
        )
        assert len({o.payment.id for o in outcomes}) == 100
        assert not any(o.replayed for o in outcomes)
        assert [o.payment.idempotency_key for o in outcomes] == [r.idempotency_key for r in requests]
        after = await payment_rows_of(pool, alpha.client_id)
        assert (after[0] - before[0], after[1] - before[1]) == (100, 100)

    async def test_retrying_after_calls_that_ran_out_of_time_yields_exactly_one_payment(
        self, payments_stub: Stub, alpha: Caller, pool: asyncpg.Pool
    ) -> None:
        request = create_payment_request(f"timed-out-{uuid.uuid4()}")
        ids = set()
        for timeout in (0.001, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1):
            try:
                response = await payments_stub.CreatePayment(request, metadata=alpha.metadata, timeout=timeout)
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED, error
            else:
                ids.add(response.payment.id)
        final = await payments_stub.CreatePayment(request, metadata=alpha.metadata, timeout=5)
        ids.add(final.payment.id)
        assert len(ids) == 1
        assert await payments_with_key(pool, alpha.client_id, request.idempotency_key) == 1

    async def test_an_invalid_request_under_a_used_key_is_invalid_argument_and_leaves_the_key_alone(
        self, payments_stub: Stub, alpha: Caller, pool: asyncpg.Pool
    ) -> None:
        request = create_payment_request(f"used-{uuid.uuid4()}")
        first = await payments_stub.CreatePayment(request, metadata=alpha.metadata, timeout=5)
        await assert_invalid_argument_writing_nothing(
            payments_stub, alpha, pool, create_payment_request(request.idempotency_key, value="-1"), "amount.value"
        )
        replay = await payments_stub.CreatePayment(request, metadata=alpha.metadata, timeout=5)
        assert replay.replayed and replay.payment == first.payment


# --------------------------------------------------------------------------------------------- GetPayment


class TestGetPayment:
    async def test_an_uppercase_spelling_of_the_id_names_the_same_payment(
        self, payments_stub: Stub, alpha: Caller
    ) -> None:
        created = await payments_stub.CreatePayment(create_payment_request(), metadata=alpha.metadata, timeout=5)
        fetched = await payments_stub.GetPayment(
            payments_pb2.GetPaymentRequest(payment_id=created.payment.id.upper()), metadata=alpha.metadata, timeout=5
        )
        assert fetched.payment == created.payment
        assert fetched.payment.id == created.payment.id  # answered in the canonical lower-case spelling

    @pytest.mark.parametrize(
        "spelling",
        [
            lambda i: i.upper(),
            lambda i: "{" + i + "}",
            lambda i: "urn:uuid:" + i,
            lambda i: i.replace("-", ""),
        ],
    )
    async def test_no_spelling_of_another_clients_payment_id_reveals_it(
        self, payments_stub: Stub, alpha: Caller, beta: Caller, auditor: Caller, spelling: Any
    ) -> None:
        created = await payments_stub.CreatePayment(create_payment_request(), metadata=alpha.metadata, timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await payments_stub.GetPayment(
                payments_pb2.GetPaymentRequest(payment_id=spelling(created.payment.id)),
                metadata=beta.metadata,
                timeout=5,
            )
        # Only the canonical spelling is an id at all; the others are malformed input.
        assert caught.value.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)
        # An auditor reads every client's payments: a spelling it accepts finds this one, none finds another.
        try:
            read = await payments_stub.GetPayment(
                payments_pb2.GetPaymentRequest(payment_id=spelling(created.payment.id)),
                metadata=auditor.metadata,
                timeout=5,
            )
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        else:
            assert read.payment == created.payment

    @pytest.mark.parametrize(
        "payment_id",
        [
            pytest.param("", id="empty"),
            pytest.param(" ", id="space"),
            pytest.param("\x00", id="nul"),
            pytest.param("00000000-0000-0000-0000-00000000000\x00", id="ending-in-nul"),
            pytest.param("00000000-0000-0000-0000-0000000000000", id="one-digit-too-many"),
            pytest.param("g0000000-0000-0000-0000-000000000000", id="not-hex"),
            pytest.param("x" * 100_000, id="huge"),
            pytest.param("+0000000000000000000000000000000", id="with-a-sign"),
            pytest.param("0_000000000000000000000000000000", id="with-an-underscore"),
            pytest.param(" 000000000000000000000000000000 ", id="padded-with-spaces"),
            pytest.param("０" * 32, id="fullwidth-digits"),
        ],
    )
    async def test_a_malformed_payment_id_is_invalid_argument_naming_payment_id(
        self, payments_stub: Stub, alpha: Caller, payment_id: str
    ) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await payments_stub.GetPayment(
                payments_pb2.GetPaymentRequest(payment_id=payment_id), metadata=alpha.metadata, timeout=5
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
        assert field_violations(caught.value) == {"payment_id"}


# --------------------------------------------------------------------------------------------- ListPayments


class TestListPayments:
    @pytest.mark.parametrize("page_size", [-1, -(2**31), 501, 2**31 - 1])
    async def test_a_page_size_outside_zero_to_five_hundred_is_invalid_argument(
        self, payments_stub: Stub, alpha: Caller, page_size: int
    ) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await payments_stub.ListPayments(
                payments_pb2.ListPaymentsRequest(page_size=page_size), metadata=alpha.metadata, timeout=5
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field_violations(caught.value) == {"page_size"}

    async def test_page_sizes_one_zero_seven_and_five_hundred_page_through_every_payment_once_newest_first(
        self, own_stub: Stub, own_callers: dict[str, Caller]
    ) -> None:
        pager = own_callers["pager"]
        # Created concurrently, so that several may share a created_at and only the id breaks the tie.
        await asyncio.gather(
            *(own_stub.CreatePayment(create_payment_request(), metadata=pager.metadata, timeout=10) for _ in range(60))
        )
        everything = await _list_all(own_stub, pager, page_size=500)
        ids = [payment.id for payment in everything]
        assert len(ids) == len(set(ids)) == 60
        ordering = [(p.create_time.seconds, p.create_time.nanos, uuid.UUID(p.id)) for p in everything]
        assert ordering == sorted(ordering, reverse=True)
        for page_size in (1, 0, 7, 59, 60, 61):
            assert [p.id for p in await _list_all(own_stub, pager, page_size=page_size)] == ids
        first_page = await own_stub.ListPayments(
            payments_pb2.ListPaymentsRequest(page_size=0), metadata=pager.metadata, timeout=5
        )
        assert len(first_page.payments) == 50  # 0 means the default of 50
        last_page = await own_stub.ListPayments(
            payments_pb2.ListPaymentsRequest(page_token=first_page.next_page_token), metadata=pager.metadata, timeout=5
        )
        assert [p.id for p in last_page.payments] == ids[50:]
        assert last_page.next_page_token == ""

    async def test_a_token_issued_for_one_state_filter_is_refused_under_another(
        self, payments_stub: Stub, alpha: Caller
    ) -> None:
        for _ in range(3):
            await payments_stub.CreatePayment(create_payment_request(), metadata=alpha.metadata, timeout=5)
        unfiltered = await payments_stub.ListPayments(
            payments_pb2.ListPaymentsRequest(page_size=1), metadata=alpha.metadata, timeout=5
        )
        recorded = await payments_stub.ListPayments(
            payments_pb2.ListPaymentsRequest(page_size=1, state=payments_pb2.PAYMENT_STATE_RECORDED),
            metadata=alpha.metadata,
            timeout=5,
        )
        assert unfiltered.next_page_token and recorded.next_page_token
        for token, state in (
            (unfiltered.next_page_token, payments_pb2.PAYMENT_STATE_RECORDED),
            (recorded.next_page_token, payments_pb2.PAYMENT_STATE_UNSPECIFIED),
            (recorded.next_page_token, payments_pb2.PAYMENT_STATE_SUCCEEDED),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await payments_stub.ListPayments(
                    payments_pb2.ListPaymentsRequest(page_size=1, page_token=token, state=state),
                    metadata=alpha.metadata,
                    timeout=5,
                )
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert field_violations(caught.value) == {"page_token"}

    async def test_another_clients_page_token_never_reveals_that_clients_payments(
        self, payments_stub: Stub, alpha: Caller, beta: Caller
    ) -> None:
        for _ in range(3):
            await payments_stub.CreatePayment(create_payment_request(), metadata=alpha.metadata, timeout=5)
        alphas = await payments_stub.ListPayments(
            payments_pb2.ListPaymentsRequest(page_size=1), metadata=alpha.metadata, timeout=5
        )
        alpha_ids = {p.id for p in await _list_all(payments_stub, alpha)}
        try:
            page = await payments_stub.ListPayments(
                payments_pb2.ListPaymentsRequest(page_size=500, page_token=alphas.next_page_token),
                metadata=beta.metadata,
                timeout=5,
            )
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        else:
            assert all(p.client_id == beta.client_id for p in page.payments)
            assert not alpha_ids & {p.id for p in page.payments}

    async def test_no_listing_by_another_service_shows_another_clients_payments_while_an_auditor_lists_them(
        self, payments_stub: Stub, alpha: Caller, beta: Caller, auditor: Caller
    ) -> None:
        created = await payments_stub.CreatePayment(create_payment_request(), metadata=alpha.metadata, timeout=5)
        for state in (payments_pb2.PAYMENT_STATE_UNSPECIFIED, payments_pb2.PAYMENT_STATE_RECORDED):
            listed = await _list_all(payments_stub, beta, state=state)
            assert all(p.client_id == beta.client_id for p in listed)
            assert created.payment.id not in {p.id for p in listed}
            # newest first, every client's: the payment just created leads the auditor's first page
            page = await payments_stub.ListPayments(
                payments_pb2.ListPaymentsRequest(page_size=50, state=state), metadata=auditor.metadata, timeout=5
            )
            assert created.payment.id in {p.id for p in page.payments}

    @pytest.mark.parametrize(
        "token",
        [
            pytest.param("garbage", id="not-base64-json"),
            pytest.param("=", id="padding-only"),
            pytest.param("====", id="more-padding"),
            pytest.param("%%%%", id="outside-the-alphabet"),
            pytest.param("é", id="non-ascii"),
            pytest.param("\x00", id="nul"),
            pytest.param(base64.urlsafe_b64encode(b"\xff\xfe\xfd").decode(), id="not-utf8"),
            pytest.param(page_token(None), id="json-null"),
            pytest.param(page_token(42), id="json-number"),
            pytest.param(page_token("a string"), id="json-string"),
            pytest.param(page_token([1, 2, 3]), id="json-array"),
            pytest.param(page_token({}), id="json-empty-object"),
            pytest.param(page_token({"s": None, "t": "2026-01-01T00:00:00+00:00"}), id="no-id"),
            pytest.param(page_token({"s": None, "t": "not a time", "i": str(uuid.UUID(int=0))}), id="t-not-a-time"),
            pytest.param(page_token({"s": None, "t": 1_700_000_000, "i": str(uuid.UUID(int=0))}), id="t-a-number"),
            pytest.param(page_token({"s": None, "t": "2026-01-01T00:00:00+00:00", "i": "no"}), id="i-not-a-uuid"),
            pytest.param(page_token({"s": None, "t": "2026-01-01T00:00:00+00:00", "i": None}), id="i-null"),
            pytest.param(page_token({"s": None, "t": "2026-01-01T00:00:00+00:00", "i": 5}), id="i-a-number"),
            pytest.param(page_token({"s": None, "t": "2026-01-01T00:00:00+00:00", "i": ["x"]}), id="i-an-array"),
            pytest.param(
                page_token({"s": None, "t": "0001-01-01T00:00:00+01:00", "i": str(uuid.UUID(int=0))}),
                id="t-before-year-1-in-utc",
            ),
            pytest.param(
                page_token({"s": None, "t": "9999-12-31T23:59:59-01:00", "i": str(uuid.UUID(int=0))}),
                id="t-after-year-9999-in-utc",
            ),
            pytest.param(
                page_token({"s": "RECORDED", "t": "2026-01-01T00:00:00+00:00", "i": str(uuid.UUID(int=0))}),
                id="issued-for-a-state-filter",
            ),
            pytest.param(base64.urlsafe_b64encode(b"[" * 100_000).decode(), id="deeply-nested-array"),
            pytest.param(base64.urlsafe_b64encode(b'{"s":' * 100_000).decode(), id="deeply-nested-object"),
        ],
    )
    async def test_a_forged_or_tampered_page_token_is_invalid_argument_naming_page_token(
        self, payments_stub: Stub, alpha: Caller, token: str
    ) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await payments_stub.ListPayments(
                payments_pb2.ListPaymentsRequest(page_token=token), metadata=alpha.metadata, timeout=5
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
        assert field_violations(caught.value) == {"page_token"}

    @pytest.mark.parametrize(
        "state",
        [state for state in payments_pb2.PaymentState.values() if state != payments_pb2.PAYMENT_STATE_UNSPECIFIED],
    )
    async def test_every_state_is_a_filter_that_lists_only_payments_in_it(
        self, payments_stub: Stub, alpha: Caller, state: int
    ) -> None:
        page = await payments_stub.ListPayments(
            payments_pb2.ListPaymentsRequest(state=state),  # type: ignore[arg-type]
            metadata=alpha.metadata,
            timeout=5,
        )
        assert all(payment.state == state for payment in page.payments)

    @pytest.mark.parametrize("state", [_PAST_THE_LAST_STATE, 99, -1, 2**31 - 1])
    async def test_an_unknown_state_filter_is_invalid_argument_naming_state(
        self, payments_stub: Stub, alpha: Caller, state: int
    ) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await payments_stub.ListPayments(
                payments_pb2.ListPaymentsRequest(state=state),  # type: ignore[arg-type]
                metadata=alpha.metadata,
                timeout=5,
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field_violations(caught.value) == {"state"}

    async def test_a_fresh_client_sees_an_empty_first_page_with_no_token(
        self, own_stub: Stub, own_callers: dict[str, Caller]
    ) -> None:
        page = await own_stub.ListPayments(
            payments_pb2.ListPaymentsRequest(), metadata=own_callers["fresh"].metadata, timeout=5
        )
        assert list(page.payments) == []
        assert page.next_page_token == ""

    async def test_a_client_whose_payments_carry_the_most_text_allowed_can_still_page_through_them_all(
        self, own_stub: Stub, own_callers: dict[str, Caller]
    ) -> None:
        """Each payment may legally carry ~113 KB of text; a page of 50 (the default) would be ~5.6 MB, over the
        4 MiB message limit, so pages stop short of page_size and the token resumes after the last one sent."""
        bulky = own_callers["bulky"]
        for _ in range(60):
            await own_stub.CreatePayment(
                create_payment_request(
                    key="🔑" * 200 + uuid.uuid4().hex,
                    description="𝄞" * 1000,
                    merchant_reference="😀" * 255,
                    metadata=metadata_at_the_limits("😀"),
                ),
                metadata=bulky.metadata,
                timeout=10,
            )
        seen: list[str] = []
        token = ""
        for _ in range(60):
            page = await own_stub.ListPayments(
                payments_pb2.ListPaymentsRequest(page_token=token), metadata=bulky.metadata, timeout=10
            )
            assert 1 <= len(page.payments) <= 50
            seen.extend(payment.id for payment in page.payments)
            token = page.next_page_token
            if not token:
                break
        assert len(seen) == len(set(seen)) == 60


# --------------------------------------------------------------------------------------------- authentication


class TestAuthentication:
    @pytest.mark.parametrize(
        "mangle",
        [
            lambda t: (("authorization", f"Bearer {t}x"),),
            lambda t: (("authorization", f"Bearer {t[:-1]}"),),
            lambda t: (("authorization", f"Bearer {t.upper()}"),),
            lambda t: (("authorization", t),),
            lambda t: (("authorization", f"Token {t}"),),
            lambda t: (("authorization", f"Bearer: {t}"),),
            lambda t: (("x-authorization", f"Bearer {t}"),),
            lambda t: (("authorization", "Bearer"),),
        ],
    )
    async def test_every_rpc_refuses_a_mangled_token_and_create_writes_nothing(
        self, payments_stub: Stub, alpha: Caller, pool: asyncpg.Pool, mangle: Any
    ) -> None:
        metadata = mangle(alpha.token)
        before = await payment_rows_of(pool, alpha.client_id)
        calls = [
            payments_stub.CreatePayment(create_payment_request(), metadata=metadata, timeout=5),
            payments_stub.GetPayment(
                payments_pb2.GetPaymentRequest(payment_id=str(uuid.uuid4())), metadata=metadata, timeout=5
            ),
            payments_stub.ListPayments(payments_pb2.ListPaymentsRequest(), metadata=metadata, timeout=5),
        ]
        for call in calls:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert await payment_rows_of(pool, alpha.client_id) == before

    async def test_an_auditor_cannot_create_whatever_the_request_and_nothing_is_written(
        self, payments_stub: Stub, auditor: Caller, pool: asyncpg.Pool
    ) -> None:
        before = await payment_rows_of(pool, auditor.client_id)
        for request in (
            create_payment_request(),
            create_payment_request(value="-1"),
            payments_pb2.CreatePaymentRequest(),
            create_payment_request("😀" * 255, description="𝄞" * 1000),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await payments_stub.CreatePayment(request, metadata=auditor.metadata, timeout=5)
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        outcomes = await asyncio.gather(
            *(
                payments_stub.CreatePayment(create_payment_request(), metadata=auditor.metadata, timeout=5)
                for _ in range(20)
            ),
            return_exceptions=True,
        )
        assert all(
            isinstance(o, grpc.aio.AioRpcError) and o.code() == grpc.StatusCode.PERMISSION_DENIED for o in outcomes
        )
        assert await payment_rows_of(pool, auditor.client_id) == before == (0, 0)


# --------------------------------------------------------------------------------------------- deadlines


class TestDeadlines:
    @pytest.mark.parametrize("deadline_s", [0.001, 0.01, 0.021, 0.05])
    async def test_every_rpc_answers_a_tiny_deadline_in_time(
        self, payments_stub: Stub, alpha: Caller, deadline_s: float
    ) -> None:
        created = await payments_stub.CreatePayment(create_payment_request(), metadata=alpha.metadata, timeout=5)
        calls = {
            "create": lambda: payments_stub.CreatePayment(
                create_payment_request(), metadata=alpha.metadata, timeout=deadline_s
            ),
            "get": lambda: payments_stub.GetPayment(
                payments_pb2.GetPaymentRequest(payment_id=created.payment.id),
                metadata=alpha.metadata,
                timeout=deadline_s,
            ),
            "list": lambda: payments_stub.ListPayments(
                payments_pb2.ListPaymentsRequest(page_size=500), metadata=alpha.metadata, timeout=deadline_s
            ),
        }
        for name, call in calls.items():
            started = time.monotonic()
            try:
                await asyncio.wait_for(call(), timeout=deadline_s + 1)
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED, (name, error)
            assert time.monotonic() - started < deadline_s + 0.5, name

    async def test_a_crowd_blocked_behind_a_held_key_all_answer_within_their_deadline_and_the_key_then_works(
        self, payments_stub: Stub, alpha: Caller, pool: asyncpg.Pool
    ) -> None:
        """More blocked callers than the pool has connections: the surplus waits for one, and still answers in time."""
        request = create_payment_request(f"crowd-{uuid.uuid4()}")
        async with pool.acquire() as holder:
            transaction = holder.transaction()
            await transaction.start()
            await insert_idempotency_key(holder, alpha.client_id, request.idempotency_key)

            async def call() -> tuple[grpc.StatusCode, float]:
                started = time.monotonic()
                try:
                    await payments_stub.CreatePayment(request, metadata=alpha.metadata, timeout=1.0)
                except grpc.aio.AioRpcError as error:
                    return error.code(), time.monotonic() - started
                return grpc.StatusCode.OK, time.monotonic() - started

            outcomes = await asyncio.wait_for(asyncio.gather(*(call() for _ in range(80))), timeout=10)
            await transaction.rollback()
        assert {code for code, _ in outcomes} == {grpc.StatusCode.DEADLINE_EXCEEDED}
        assert max(elapsed for _, elapsed in outcomes) < 1.5
        # DEADLINE_EXCEEDED means "outcome unknown": a statement still queued on the lock when the
        # holder let go may have created the payment after its caller gave up (PostgreSQL gets the
        # cancel a moment after the deadline). Retrying with the key must then find it, never a second.
        created = await payments_stub.CreatePayment(request, metadata=alpha.metadata, timeout=5)
        assert created.payment.amount.value == request.amount.value
        assert await payments_with_key(pool, alpha.client_id, request.idempotency_key) == 1

    async def test_a_call_without_a_deadline_is_answered_within_the_servers_request_timeout(
        self, own_stub: Stub, own_callers: dict[str, Caller], pool: asyncpg.Pool
    ) -> None:
        slow = own_callers["slow"]
        request = create_payment_request(f"no-deadline-{uuid.uuid4()}")
        async with pool.acquire() as holder:
            transaction = holder.transaction()
            await transaction.start()
            await insert_idempotency_key(holder, slow.client_id, request.idempotency_key)
            started = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await asyncio.wait_for(own_stub.CreatePayment(request, metadata=slow.metadata), timeout=10)
            elapsed_s = time.monotonic() - started
            await transaction.rollback()
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert elapsed_s < OWN_REQUEST_TIMEOUT_MS / 1000 + 0.5
        created = await own_stub.CreatePayment(request, metadata=slow.metadata, timeout=5)
        assert not created.replayed

    async def test_calls_cancelled_by_their_callers_mid_wait_leave_one_payment_per_key_and_a_working_server(
        self, payments_stub: Stub, alpha: Caller, pool: asyncpg.Pool
    ) -> None:
        request = create_payment_request(f"cancelled-{uuid.uuid4()}")
        async with pool.acquire() as holder:
            transaction = holder.transaction()
            await transaction.start()
            await insert_idempotency_key(holder, alpha.client_id, request.idempotency_key)
            calls = [payments_stub.CreatePayment(request, metadata=alpha.metadata, timeout=5) for _ in range(70)]
            await asyncio.sleep(0.3)
            for call in calls:
                call.cancel()
            outcomes = await asyncio.gather(*calls, return_exceptions=True)
            await transaction.rollback()
        assert all(isinstance(o, asyncio.CancelledError) for o in outcomes), outcomes
        # Every connection the cancelled calls held came back: a full pool's worth of new payments goes through.
        fresh = [create_payment_request() for _ in range(60)]
        created = await asyncio.gather(
            *(payments_stub.CreatePayment(r, metadata=alpha.metadata, timeout=5) for r in fresh)
        )
        assert len({c.payment.id for c in created}) == 60
        retried = await payments_stub.CreatePayment(request, metadata=alpha.metadata, timeout=5)
        assert retried.payment.idempotency_key == request.idempotency_key
        assert await payments_with_key(pool, alpha.client_id, request.idempotency_key) == 1


async def test_a_client_id_the_settings_accept_can_create_and_read_its_payments(
    pool: asyncpg.Pool, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The tables hold client ids of 1 to 128 characters: settings must refuse longer ones, or they must work."""
    from server.settings import SettingsError

    caller = Caller("c" * 129, f"long-client-token-{uuid.uuid4().hex}")
    try:
        settings = load_settings(
            {
                "BALLAST_GRPC_PORT": "0",
                "BALLAST_API_TOKENS": f"{caller.token}={caller.client_id}:service",
                "BALLAST_DATA_DIR": str(tmp_path_factory.mktemp("long-client")),
                "DATABASE_URL": "postgresql://unused/unused",
            }
        )
    except SettingsError:
        return  # refused at start-up, naming the variable: fine
    server, _, port = build_server(settings, Database(pool))
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = payments_pb2_grpc.PaymentServiceStub(channel)
            created = await stub.CreatePayment(create_payment_request(), metadata=caller.metadata, timeout=5)
            assert created.payment.client_id == caller.client_id
    finally:
        await server.stop(None)
