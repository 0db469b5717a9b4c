"""The ceilings: a bare grpc.aio server answering PaymentService.CreatePayment with one asyncpg transaction.

No authentication, validation, idempotency logic, error mapping or deadline budget: per call it
borrows a connection from a pool of the same size as Ballast's and runs

    BEGIN; INSERT INTO bare_idempotency_keys ...; INSERT INTO bare_payments ...; COMMIT

then answers with a CreatePaymentResponse built from the request. With --uvloop --one-statement it is
the strongest ceiling: the same rows written by one statement (one round trip) on uvloop, the best one
Python process does here. It uses the generated servicer
base and registration function, so the wire format is the one Ballast speaks.

    DATABASE_URL=postgresql://... python -m bench.bare_server --port 50099 --pool-size 20
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import uuid
from decimal import Decimal

import asyncpg
import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy.engine import make_url

from ballast.payments.v1 import payments_pb2, payments_pb2_grpc

SCHEMA = """
CREATE TABLE IF NOT EXISTS bare_idempotency_keys (
    idempotency_key text PRIMARY KEY,
    payment_id uuid NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS bare_payments (
    id uuid PRIMARY KEY,
    idempotency_key text NOT NULL,
    amount numeric NOT NULL,
    currency_code text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
"""

#: The strongest ceiling's one statement: the key and the payment written together, one round trip.
_INSERT_BOTH = """
WITH key AS (INSERT INTO bare_idempotency_keys (idempotency_key, payment_id) VALUES ($2, $1))
INSERT INTO bare_payments (id, idempotency_key, amount, currency_code) VALUES ($1, $2, $3, $4)
RETURNING created_at
"""
_INSERT_KEY = "INSERT INTO bare_idempotency_keys (idempotency_key, payment_id) VALUES ($1, $2)"
_INSERT_PAYMENT = """
INSERT INTO bare_payments (id, idempotency_key, amount, currency_code) VALUES ($1, $2, $3, $4)
RETURNING created_at
"""


class BarePaymentServicer(payments_pb2_grpc.PaymentServiceServicer):
    def __init__(self, pool: asyncpg.Pool, *, one_statement: bool = False) -> None:
        self._pool = pool
        self._one_statement = one_statement

    async def CreatePayment(
        self, request: payments_pb2.CreatePaymentRequest, context: grpc.aio.ServicerContext
    ) -> payments_pb2.CreatePaymentResponse:
        payment_id = uuid.uuid4()
        amount = Decimal(request.amount.value)
        if self._one_statement:  # one round trip, its own transaction
            created_at = await self._pool.fetchval(
                _INSERT_BOTH, payment_id, request.idempotency_key, amount, request.amount.currency_code
            )
        else:
            async with self._pool.acquire() as connection, connection.transaction():
                await connection.execute(_INSERT_KEY, request.idempotency_key, payment_id)
                created_at = await connection.fetchval(
                    _INSERT_PAYMENT, payment_id, request.idempotency_key, amount, request.amount.currency_code
                )
        timestamp = Timestamp()
        timestamp.FromDatetime(created_at)
        payment = payments_pb2.Payment(
            id=str(payment_id),
            idempotency_key=request.idempotency_key,
            amount=request.amount,
            state=payments_pb2.PAYMENT_STATE_RECORDED,
            create_time=timestamp,
            update_time=timestamp,
        )
        return payments_pb2.CreatePaymentResponse(payment=payment)


async def serve(database_url: str, port: int, pool_size: int, *, one_statement: bool = False) -> None:
    dsn = make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
    pool = await asyncpg.create_pool(dsn, min_size=min(pool_size, 2), max_size=pool_size)
    if pool is None:
        raise RuntimeError("asyncpg.create_pool returned no pool")
    try:
        async with pool.acquire() as connection:
            await connection.execute(SCHEMA)
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        servicer = BarePaymentServicer(pool, one_statement=one_statement)
        payments_pb2_grpc.add_PaymentServiceServicer_to_server(servicer, server)
        if server.add_insecure_port(f"127.0.0.1:{port}") == 0:
            raise OSError(f"could not bind 127.0.0.1:{port}")
        await server.start()
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopping.set)
        await stopping.wait()
        await server.stop(1.0)
    finally:
        await pool.close()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bare_server", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pool-size", type=int, required=True)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop instead of asyncio's own loop")
    parser.add_argument("--one-statement", action="store_true", help="write the key and the payment in one statement")
    args = parser.parse_args(argv)
    database_url = os.environ.get("DATABASE_URL", "").strip()
    if not database_url:
        print("DATABASE_URL is required", file=sys.stderr)
        return 2
    serving = serve(database_url, args.port, args.pool_size, one_statement=args.one_statement)
    if args.uvloop:
        import uvloop

        uvloop.run(serving)
    else:
        asyncio.run(serving)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
