"""CreatePayment over gRPC (in-process server, real PostgreSQL): what it takes, what it refuses and why.

Each spec states a promise of the README or the proto contract and tries to break it: odd amount spellings,
Unicode at the length limits, NUL bytes. Bad input is INVALID_ARGUMENT naming every field at fault, and
writes nothing.
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import asyncpg
import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from ballast.common.v1.money_pb2 import Money
from ballast.payments.v1 import payments_pb2, payments_pb2_grpc
from tests.support import field_violations
from tests.support.probes import payment_rows_of, payments_of, payments_with_key
from tests.support.requests import create_payment_request, metadata_at_the_limits
from tests.support.rpc import assert_invalid_argument_writing_nothing
from tests.support.servers import Caller

Stub = payments_pb2_grpc.PaymentServiceStub


class TestCreatePayment:
    async def test_creates_a_recorded_payment_for_the_calling_client(self, payments_stub: Stub, alpha: Caller) -> None:
        response = await payments_stub.CreatePayment(
            create_payment_request(value="12.3", description="books", metadata={"order": "42"}),
            metadata=alpha.metadata,
            timeout=5,
        )
        payment = response.payment
        assert not response.replayed
        assert payment.client_id == alpha.client_id
        assert payment.state == payments_pb2.PAYMENT_STATE_RECORDED
        assert (payment.amount.value, payment.amount.currency_code) == ("12.30", "EUR")
        assert dict(payment.metadata) == {"order": "42"}
        assert uuid.UUID(payment.id)
        assert payment.create_time.seconds > 0

    async def test_a_retry_replays_the_same_payment(self, payments_stub: Stub, alpha: Caller) -> None:
        request = create_payment_request()
        first = await payments_stub.CreatePayment(request, metadata=alpha.metadata, timeout=5)
        again = await payments_stub.CreatePayment(request, metadata=alpha.metadata, timeout=5)
        assert again.replayed
        assert again.payment == first.payment

    async def test_reusing_a_key_with_other_parameters_is_failed_precondition_naming_the_key(
        self, payments_stub: Stub, alpha: Caller
    ) -> None:
        key = f"reused-{uuid.uuid4()}"
        await payments_stub.CreatePayment(
            create_payment_request(key, value="10.00"), metadata=alpha.metadata, timeout=5
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await payments_stub.CreatePayment(
                create_payment_request(key, value="11.00"), metadata=alpha.metadata, timeout=5
            )
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert key in (caught.value.details() or "")
        status = rpc_status.from_call(caught.value)  # type: ignore[arg-type]
        failure = error_details_pb2.PreconditionFailure()
        assert status is not None and status.details[0].Unpack(failure)
        assert failure.violations[0].subject == f"idempotency_key:{key}"

    @pytest.mark.parametrize(
        ("request_fields", "field"),
        [
            ({"value": "0"}, "amount.value"),
            ({"value": "-1.00"}, "amount.value"),
            ({"value": "1.234"}, "amount.value"),
            ({"value": "100.5", "currency": "JPY"}, "amount.value"),
            ({"value": "1e2"}, "amount.value"),
            ({"currency": "ZZZ"}, "amount.currency_code"),
            ({"currency": ""}, "amount.currency_code"),
            ({"key": ""}, "idempotency_key"),
            ({"key": "k" * 256}, "idempotency_key"),
            ({"key": "   "}, "idempotency_key"),
            ({"description": "d" * 1001}, "description"),
            ({"merchant_reference": "r" * 256}, "merchant_reference"),
            ({"metadata": {"k": "v" * 501}}, "metadata[k]"),
        ],
    )
    async def test_bad_input_is_invalid_argument_naming_the_field_and_writes_nothing(
        self, payments_stub: Stub, alpha: Caller, pool: asyncpg.Pool, request_fields: dict[str, object], field: str
    ) -> None:
        before = await payments_of(pool, alpha.client_id)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await payments_stub.CreatePayment(
                create_payment_request(**request_fields), metadata=alpha.metadata, timeout=5
            )  # type: ignore[arg-type]
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in field_violations(caught.value)
        assert await payments_of(pool, alpha.client_id) == before

    async def test_a_missing_amount_is_invalid_argument(self, payments_stub: Stub, alpha: Caller) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await payments_stub.CreatePayment(
                payments_pb2.CreatePaymentRequest(idempotency_key="no-amount"), metadata=alpha.metadata, timeout=5
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "amount" in field_violations(caught.value)


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
