"""Ledger use cases: an account's balance and the ledger's entries, for the callers allowed to read them.

Who may read what is decided in one place, `readable_account`: a caller with READ_LEDGER reads every
account; any other caller only its own merchant account (and the entries of its own payments in it).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal

import asyncpg

from server.db import ledger_repository, payments_repository
from server.db.database import Budget, Database
from server.db.ledger_repository import LedgerEntryRecord as LedgerEntryRecord  # a result of these use cases
from server.domain.errors import FieldViolation, InvalidArgument, PermissionDenied, echo
from server.domain.identity import Permission, Principal, is_allowed
from server.domain.ledger import ACCOUNT_LENGTH_MAX, ACCOUNT_PATTERN, merchant_payable
from server.domain.money import MoneyError, parse_currency, quantize
from server.services.paging import LIST_PAGE, decode_cursor, encode_cursor
from server.services.payments import parse_payment_id


def signed_amount(amount: Decimal, currency_code: str) -> str:
    """A ledger amount as a signed decimal string with the currency's fraction digits ("-12.50", "0.00").

    A stored amount that does not fit its currency (only raw SQL could write one) is shown exactly as
    stored rather than rounded: a ledger read never alters an amount.
    """
    try:
        magnitude = quantize(amount.copy_abs(), currency_code).to_decimal_string()  # copy_abs never rounds
    except MoneyError:
        magnitude = format(amount.copy_abs(), "f")
    return f"-{magnitude}" if amount < 0 else magnitude


# -- who may read what -----------------------------------------------------------------------------


async def readable_account(
    connection: asyncpg.Connection,
    principal: Principal,
    *,
    account: str | None,
    payment_id: uuid.UUID | None,
    timeout_s: float,
) -> str | None:
    """The one rule of ledger access. Returns the account the caller's reads are confined to (None:
    the whole ledger), or raises PermissionDenied.

    READ_LEDGER reads every account. Without it, a caller that may read its own payments reads only
    `merchant_payable:<its client id>`: asking for another account, or filtering by a payment that is
    not its own (or does not exist: the answer does not tell which), is denied.
    """
    if is_allowed(principal, Permission.READ_LEDGER):
        return None

    def denied(what: str) -> PermissionDenied:
        return PermissionDenied(principal.client_id, principal.role.value, f"{Permission.READ_LEDGER.value} ({what})")

    own_account = merchant_payable(principal.client_id)
    if not is_allowed(principal, Permission.READ_PAYMENTS):
        raise denied("not even its own account")
    if account is not None and account != own_account:
        raise denied(f"account {echo(account, 64)}; its own is {own_account!r}")
    if payment_id is not None:
        payment = await payments_repository.get_payment(
            connection, principal.client_id, payment_id, timeout_s=timeout_s
        )
        if payment is None:
            raise denied(f"payment {payment_id}, which is not one of its own")
    return own_account


# -- validation ------------------------------------------------------------------------------------


def _account_violation(account: str, field: str = "account") -> FieldViolation | None:
    if len(account) > ACCOUNT_LENGTH_MAX or not ACCOUNT_PATTERN.fullmatch(account):
        return FieldViolation(
            field,
            f"{echo(account)} is not an account name such as provider_clearing or merchant_payable:<client id>",
        )
    return None


@dataclass(frozen=True)
class BalanceQuery:
    account: str
    currency_code: str


def validate_balance_request(account: str, currency_code: str) -> BalanceQuery:
    violations = []
    if not account:
        violations.append(FieldViolation("account", "is required, e.g. merchant_payable:<client id>"))
    elif (violation := _account_violation(account)) is not None:
        violations.append(violation)
    try:
        parse_currency(currency_code)
    except MoneyError as error:
        violations.append(FieldViolation("currency_code", str(error)))
    if violations:
        raise InvalidArgument(violations)
    return BalanceQuery(account, currency_code)


@dataclass(frozen=True)
class EntriesQuery:
    limit: int
    account: str | None
    payment_id: uuid.UUID | None
    #: the position to resume after, from the page token
    after: tuple[datetime, uuid.UUID] | None

    @property
    def scope(self) -> str:
        """A digest of the filters, carried in page tokens so that a token is used with its own filters."""
        return filter_scope(self.account, self.payment_id)


def filter_scope(account: str | None, payment_id: uuid.UUID | None) -> str:
    filters = json.dumps([account, None if payment_id is None else str(payment_id)])
    return hashlib.sha256(filters.encode()).hexdigest()[:16]


def validate_entries_request(*, page_size: int, page_token: str, account: str, payment_id: str) -> EntriesQuery:
    """Every problem of the request at once, each naming its field."""
    violations: list[FieldViolation] = []
    if (violation := LIST_PAGE.violation(page_size)) is not None:
        violations.append(violation)
    if account and (violation := _account_violation(account)) is not None:
        violations.append(violation)
    parsed_payment_id = None
    if payment_id:
        try:
            parsed_payment_id = parse_payment_id(payment_id)
        except InvalidArgument as error:
            violations.extend(error.violations)
    query = EntriesQuery(page_size or LIST_PAGE.default, account or None, parsed_payment_id, None)
    after = None
    if page_token:
        try:
            after = decode_cursor(page_token, "ListEntries", scope=query.scope)
        except InvalidArgument as error:
            violations.extend(error.violations)
    if violations:
        raise InvalidArgument(violations)
    return replace(query, after=after)


# -- use cases -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Balance:
    account: str
    #: signed: debits minus credits
    amount: Decimal
    currency_code: str
    as_of: datetime
    last_entry_id: uuid.UUID | None


async def get_balance(database: Database, principal: Principal, query: BalanceQuery, budget: Budget) -> Balance:
    """The balance of an account the caller may read; an account without lines has a balance of zero."""
    async with database.connection(budget) as connection:
        await readable_account(
            connection, principal, account=query.account, payment_id=None, timeout_s=budget.remaining_s()
        )
        found = await ledger_repository.balance(
            connection, query.account, query.currency_code, timeout_s=budget.remaining_s()
        )
    return Balance(query.account, found.total, query.currency_code, found.as_of, found.last_entry_id)


@dataclass(frozen=True)
class EntryPage:
    entries: list[LedgerEntryRecord]
    #: True when entries exist after the last one in this page.
    has_more: bool
    scope: str

    def token_after(self, last: LedgerEntryRecord) -> str:
        """The token of the page that starts after `last` (which may be before the end of this page)."""
        return encode_cursor(last.posted_at, last.id, self.scope)

    @property
    def next_page_token(self) -> str:
        return self.token_after(self.entries[-1]) if self.has_more else ""


async def list_entries(database: Database, principal: Principal, query: EntriesQuery, budget: Budget) -> EntryPage:
    """Entries in posting order, oldest first, among those the caller may read."""
    async with database.connection(budget) as connection:
        confined_to = await readable_account(
            connection, principal, account=query.account, payment_id=query.payment_id, timeout_s=budget.remaining_s()
        )
        # One row more than asked tells whether another page exists without a count query.
        rows = await ledger_repository.list_entries(
            connection,
            account=query.account,
            payment_id=query.payment_id,
            readable_account=confined_to,
            after=query.after,
            limit=query.limit + 1,
            timeout_s=budget.remaining_s(),
        )
    return EntryPage(rows[: query.limit], has_more=len(rows) > query.limit, scope=query.scope)
