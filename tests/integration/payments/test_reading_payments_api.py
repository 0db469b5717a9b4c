"""GetPayment and ListPayments over gRPC (in-process server, real PostgreSQL): a client reads its own payments
and nothing of another's (an auditor reads every client's), in every spelling of an id, page by page with
nothing lost or repeated; forged page tokens and unknown filters are INVALID_ARGUMENT.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from typing import Any

import grpc
import pytest

from ballast.payments.v1 import payments_pb2, payments_pb2_grpc
from tests.support import field_violations
from tests.support.requests import create_payment_request, metadata_at_the_limits, page_token
from tests.support.servers import Caller

Stub = payments_pb2_grpc.PaymentServiceStub


#: The first number past the last PaymentState: no state (the newest, EXPIRED, is 9).
_PAST_THE_LAST_STATE = max(payments_pb2.PaymentState.values()) + 1


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

    async def test_get_returns_the_payment(self, payments_stub: Stub, alpha: Caller) -> None:
        created = await payments_stub.CreatePayment(create_payment_request(), metadata=alpha.metadata, timeout=5)
        fetched = await payments_stub.GetPayment(
            payments_pb2.GetPaymentRequest(payment_id=created.payment.id), metadata=alpha.metadata, timeout=5
        )
        assert fetched.payment == created.payment

    async def test_an_unknown_payment_is_not_found(self, payments_stub: Stub, alpha: Caller) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await payments_stub.GetPayment(
                payments_pb2.GetPaymentRequest(payment_id=str(uuid.uuid4())), metadata=alpha.metadata, timeout=5
            )
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND

    async def test_another_clients_payment_is_not_found(self, payments_stub: Stub, alpha: Caller, beta: Caller) -> None:
        created = await payments_stub.CreatePayment(create_payment_request(), metadata=alpha.metadata, timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await payments_stub.GetPayment(
                payments_pb2.GetPaymentRequest(payment_id=created.payment.id), metadata=beta.metadata, timeout=5
            )
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND

    async def test_a_malformed_id_is_invalid_argument(self, payments_stub: Stub, alpha: Caller) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await payments_stub.GetPayment(
                payments_pb2.GetPaymentRequest(payment_id="nope"), metadata=alpha.metadata, timeout=5
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
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

    async def test_list_pages_through_every_payment_of_the_client_once_newest_first(
        self, payments_stub: Stub, beta: Caller
    ) -> None:
        # beta's payments: whatever earlier tests made, plus seven of ours.
        for _ in range(7):
            await payments_stub.CreatePayment(create_payment_request(), metadata=beta.metadata, timeout=5)
        seen: list[payments_pb2.Payment] = []
        token = ""
        for _ in range(100):
            page = await payments_stub.ListPayments(
                payments_pb2.ListPaymentsRequest(page_size=3, page_token=token), metadata=beta.metadata, timeout=5
            )
            assert len(page.payments) <= 3
            seen.extend(page.payments)
            token = page.next_page_token
            if not token:
                break
        ids = [payment.id for payment in seen]
        assert len(ids) == len(set(ids)) >= 7
        assert all(payment.client_id == beta.client_id for payment in seen)
        times = [(p.create_time.seconds, p.create_time.nanos) for p in seen]
        assert times == sorted(times, reverse=True)

    async def test_list_filters_by_state(self, payments_stub: Stub, alpha: Caller) -> None:
        await payments_stub.CreatePayment(create_payment_request(), metadata=alpha.metadata, timeout=5)
        recorded = await payments_stub.ListPayments(
            payments_pb2.ListPaymentsRequest(state=payments_pb2.PAYMENT_STATE_RECORDED),
            metadata=alpha.metadata,
            timeout=5,
        )
        succeeded = await payments_stub.ListPayments(
            payments_pb2.ListPaymentsRequest(state=payments_pb2.PAYMENT_STATE_SUCCEEDED),
            metadata=alpha.metadata,
            timeout=5,
        )
        assert len(recorded.payments) >= 1
        assert list(succeeded.payments) == []

    @pytest.mark.parametrize(
        ("request_fields", "field"),
        [
            ({"page_size": -1}, "page_size"),
            ({"page_size": 501}, "page_size"),
            ({"page_token": "garbage"}, "page_token"),
        ],
    )
    async def test_bad_paging_is_invalid_argument(
        self, payments_stub: Stub, alpha: Caller, request_fields: dict[str, object], field: str
    ) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await payments_stub.ListPayments(
                payments_pb2.ListPaymentsRequest(**request_fields),
                metadata=alpha.metadata,
                timeout=5,  # type: ignore[arg-type]
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in field_violations(caught.value)
