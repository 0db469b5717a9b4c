"""Reading the ledger over gRPC (in-process server, real PostgreSQL): a service reads only its own merchant
account, balances are exact sums in every currency's digits, and page tokens cannot be forged.

Every spec uses clients of its own (the `world` fixture starts an in-process server for brand-new
callers, or a fresh Principal is used with the use cases directly), so nothing here reads or moves
the shared `alpha` and `beta`.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import asyncpg
import grpc
import pytest

from ballast.ledger.v1 import ledger_pb2
from server.db.database import Database
from tests.support import rpc_error
from tests.support.evidence import captured_payment
from tests.support.faults import OneConnectionPool
from tests.support.servers import World, isolated_server

Code = grpc.StatusCode


# --------------------------------------------------------------------------------------------- ledger reads


class TestLedgerReads:
    @pytest.mark.parametrize(
        "account",
        [
            "provider_clearing",
            "merchant_payable:{other}",
            "merchant_payable:{merchant}:x",
            "merchant_payable:{upper}",
            "merchant_payable",
            "merchant_payable:{merchant}.",
        ],
    )
    async def test_a_service_reads_no_account_but_merchant_payable_of_its_own_client_id(
        self, world: World, database: Database, account: str
    ) -> None:
        await captured_payment(world, database, "3.00", "EUR")
        await captured_payment(world, database, "4.00", "EUR", caller=world.other)
        name = account.format(
            merchant=world.merchant.client_id, other=world.other.client_id, upper=world.merchant.client_id.upper()
        )
        for call in (
            world.ledger.GetBalance(
                ledger_pb2.GetBalanceRequest(account=name, currency_code="EUR"),
                metadata=world.merchant.metadata,
                timeout=5,
            ),
            world.ledger.ListEntries(
                ledger_pb2.ListEntriesRequest(account=name), metadata=world.merchant.metadata, timeout=5
            ),
        ):
            assert (await rpc_error(call)).code() == Code.PERMISSION_DENIED
        own = await world.ledger.GetBalance(
            ledger_pb2.GetBalanceRequest(account=f"merchant_payable:{world.merchant.client_id}", currency_code="EUR"),
            metadata=world.merchant.metadata,
            timeout=5,
        )
        assert own.balance.value == "-3.00"
        listed = await world.ledger.ListEntries(
            ledger_pb2.ListEntriesRequest(), metadata=world.merchant.metadata, timeout=5
        )
        assert [line.amount.value for entry in listed.entries for line in entry.lines] == ["3.00", "-3.00"]

    async def test_balances_are_exact_sums_in_every_currencys_digits(self, world: World, database: Database) -> None:
        captures = [
            ("999999999999999.99", "EUR"),
            ("999999999999999.99", "EUR"),
            ("999999999999999.99", "EUR"),
            ("0.03", "EUR"),
            ("1000000000000000", "JPY"),
            ("1", "JPY"),
            ("0.001", "KWD"),
            ("0.009", "KWD"),
            ("123456789012345.6789", "CLF"),
            ("0.0001", "CLF"),
        ]
        for amount, currency in captures:
            await captured_payment(world, database, amount, currency)
        account = f"merchant_payable:{world.merchant.client_id}"
        expected = {
            "EUR": "-3000000000000000.00",
            "JPY": "-1000000000000001",
            "KWD": "-0.010",
            "CLF": "-123456789012345.6790",
        }
        for currency, value in expected.items():
            for caller in (world.merchant, world.auditor):
                response = await world.ledger.GetBalance(
                    ledger_pb2.GetBalanceRequest(account=account, currency_code=currency),
                    metadata=caller.metadata,
                    timeout=5,
                )
                assert (response.balance.value, response.balance.currency_code) == (value, currency)
        listed = await world.ledger.ListEntries(
            ledger_pb2.ListEntriesRequest(account=account), metadata=world.merchant.metadata, timeout=5
        )
        assert [(entry.lines[1].amount.value, entry.lines[1].amount.currency_code) for entry in listed.entries] == [
            (f"-{amount}", currency) for amount, currency in captures
        ]

    async def test_a_balance_beyond_twenty_eight_significant_digits_is_reported_exactly(
        self, pool: asyncpg.Pool, tmp_path: Path
    ) -> None:
        """Raw SQL can post any balanced amount; a ledger read must show it exactly, never fail or round."""
        suffix = uuid.uuid4().hex[:12]
        amount = "12345678901234567890123456789.01"
        async with pool.acquire() as connection:
            transaction = connection.transaction()
            await transaction.start()
            try:
                entry_id = uuid.uuid4()
                await connection.execute(
                    "INSERT INTO ledger_entries (id, event_key) VALUES ($1, $2)", entry_id, f"huge:{suffix}"
                )
                for number, (account, value) in enumerate(
                    [(f"huge_a:{suffix}", amount), (f"huge_b:{suffix}", f"-{amount}")], start=1
                ):
                    await connection.execute(
                        "INSERT INTO ledger_lines (entry_id, line_number, account, currency_code, amount)"
                        " VALUES ($1, $2, $3, 'EUR', $4::numeric)",
                        entry_id,
                        number,
                        account,
                        value,
                    )
                async with isolated_server(OneConnectionPool(connection), tmp_path) as world:  # type: ignore[arg-type]
                    balance = await world.ledger.GetBalance(
                        ledger_pb2.GetBalanceRequest(account=f"huge_b:{suffix}", currency_code="EUR"),
                        metadata=world.auditor.metadata,
                        timeout=5,
                    )
                    assert balance.balance.value == f"-{amount}"
                    listed = await world.ledger.ListEntries(
                        ledger_pb2.ListEntriesRequest(account=f"huge_a:{suffix}"),
                        metadata=world.auditor.metadata,
                        timeout=5,
                    )
                    assert [line.amount.value for line in listed.entries[0].lines] == [amount, f"-{amount}"]
            finally:
                await transaction.rollback()
