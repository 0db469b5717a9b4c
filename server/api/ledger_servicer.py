"""ballast.ledger.v1.LedgerService: parse the request, call the use case, map the result."""

from __future__ import annotations

from decimal import Decimal

import grpc

from ballast.common.v1 import money_pb2
from ballast.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from server.api.handlers import ServicerBase, fit_page, timestamp_of, translate_errors
from server.domain.identity import Permission
from server.services import ledger
from server.services.ledger import LedgerEntryRecord


def signed_money(amount: Decimal, currency_code: str) -> money_pb2.Money:
    return money_pb2.Money(value=ledger.signed_amount(amount, currency_code), currency_code=currency_code)


def entry_to_proto(entry: LedgerEntryRecord) -> ledger_pb2.LedgerEntry:
    return ledger_pb2.LedgerEntry(
        id=str(entry.id),
        event_key=entry.event_key,
        payment_id="" if entry.payment_id is None else str(entry.payment_id),
        description=entry.description,
        posted_time=timestamp_of(entry.posted_at),
        lines=[
            ledger_pb2.LedgerEntryLine(account=line.account, amount=signed_money(line.amount, line.currency_code))
            for line in entry.lines
        ],
    )


class LedgerServicer(ServicerBase, ledger_pb2_grpc.LedgerServiceServicer):
    """Read-only. The handlers ask only for the least a ledger reader needs (reading its own payments);
    which accounts the caller may read is decided by server.services.ledger.readable_account."""

    @translate_errors
    async def GetBalance(
        self, request: ledger_pb2.GetBalanceRequest, context: grpc.aio.ServicerContext
    ) -> ledger_pb2.GetBalanceResponse:
        principal = self._authenticator.authorize(context, Permission.READ_PAYMENTS)
        query = ledger.validate_balance_request(request.account, request.currency_code)
        balance = await ledger.get_balance(self._database, principal, query, self._budget(context))
        return ledger_pb2.GetBalanceResponse(
            balance=signed_money(balance.amount, balance.currency_code),
            as_of_time=timestamp_of(balance.as_of),
            last_entry_id="" if balance.last_entry_id is None else str(balance.last_entry_id),
        )

    @translate_errors
    async def ListEntries(
        self, request: ledger_pb2.ListEntriesRequest, context: grpc.aio.ServicerContext
    ) -> ledger_pb2.ListEntriesResponse:
        principal = self._authenticator.authorize(context, Permission.READ_PAYMENTS)
        query = ledger.validate_entries_request(
            page_size=request.page_size,
            page_token=request.page_token,
            account=request.account,
            payment_id=request.payment_id,
        )
        page = await ledger.list_entries(self._database, principal, query, self._budget(context))
        listed, token = fit_page(page.entries, entry_to_proto, page.token_after, page.next_page_token)
        return ledger_pb2.ListEntriesResponse(entries=listed, next_page_token=token)
