"""The production ledger: PostgreSQL through psycopg 3's async driver and a connection pool.

Many replicas share one database, so every guarantee comes from the database itself: ``claim``
is one ``INSERT ... ON CONFLICT DO NOTHING`` on a UNIQUE key, multi-statement writes run in a
transaction, and migrations take a transaction-scoped advisory lock so replicas starting
together apply them once. Connections are autocommit; ``conn.transaction()`` marks where a
transaction is meant. The schema is whatever ``search_path`` the DSN selects (``public`` by
default; ``options=-csearch_path=...`` for another).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool

from botsky.errors import BotskyError, ConfigError, LedgerError, LedgerUnavailable
from botsky.ledger._sql import SqlLedger, Statements, now_us
from botsky.ledger.base import Mention, SpendDecision, WriteSpends
from botsky.ledger.feed_postgres import PostgresFeedMixin
from botsky.ledger.migrations import SCHEMA_MIGRATIONS, mention_to_row, pending, statements

__all__ = ["PostgresLedger"]

# pg_advisory_xact_lock takes a bigint key shared by the whole database: b"botskymg" as one.
_MIGRATION_LOCK = int.from_bytes(b"botskymg", "big")
_SQL = Statements().spelled("postgres")


class PostgresLedger(PostgresFeedMixin, SqlLedger):
    """The ledger in the PostgreSQL database at ``dsn``, through a pool of connections.

    ``timeout`` is how many seconds ``open()`` and each call wait for a connection before
    raising LedgerUnavailable. ``read_only``: for readers (``botsky scores``): no migration;
    ``open()`` fails unless the tables exist with the current schema, and every session is
    read-only on the server.
    """

    sql = _SQL

    def __init__(
        self,
        dsn: str,
        min_size: int = 1,
        max_size: int = 4,
        *,
        timeout: float = 10.0,
        read_only: bool = False,
    ) -> None:
        try:
            conninfo_to_dict(dsn)
        except psycopg.ProgrammingError as exc:
            # The DSN may hold a password, so the message does not repeat it.
            raise ConfigError(
                "the PostgreSQL DSN cannot be parsed; expected "
                "postgresql://user@host:port/dbname or key=value pairs"
            ) from exc
        self.dsn = dsn
        self.min_size = min_size
        self.max_size = max_size
        self.timeout = timeout
        self.read_only = read_only
        self._pool: AsyncConnectionPool | None = None
        self._opening = asyncio.Lock()

    async def open(self) -> None:
        """Fill the pool and apply pending migrations. Idempotent."""
        async with self._opening:
            if self._pool is not None:
                return
            # Built here, not in __init__: a pool cannot be reopened once closed.
            pool = AsyncConnectionPool(
                self.dsn,
                min_size=self.min_size,
                max_size=self.max_size,
                timeout=self.timeout,
                kwargs={"autocommit": True},
                configure=_read_only_session if self.read_only else None,
                open=False,
            )
            try:
                try:
                    await pool.open(wait=True, timeout=self.timeout)
                    async with pool.connection() as conn:
                        await (_check_schema(conn) if self.read_only else _migrate(conn))
                except psycopg.Error as exc:
                    raise _translate(exc) from exc
            except BaseException:
                await pool.close()
                raise
            self._pool = pool

    async def close(self) -> None:
        """Close every connection. Idempotent."""
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    # what needs a transaction of its own; the rest is SqlLedger's ------------------------
    async def record_mention(self, mention: Mention) -> int:
        """Store a mention and mark its post's claim ``posted``, in one transaction."""
        m = mention
        async with self._connection() as conn, conn.transaction():
            await conn.execute(_SQL.insert_mention, mention_to_row(m))
            await conn.execute(_SQL.mark_posted, (m.post_uri, m.bot, m.created_us, m.created_us))
            row = await (await conn.execute(_SQL.mention_id, (m.post_uri,))).fetchone()
        assert row is not None  # inserted just now or earlier
        mention.id = row[0]
        return mention.id

    async def spend_write(
        self,
        account: str,
        cost: int,
        time_us: int,
        *,
        since_us: int,
        everyone_since_us: int,
        decide: SpendDecision,
    ) -> float:
        """Read the spends, decide, and spend if it fits, in one transaction that first locks
        ``write_spends`` against other spenders (SHARE ROW EXCLUSIVE conflicts with itself and
        with inserts, not with plain reads): replicas draw on one budget, one at a time. A
        table lock is scoped to the schema, unlike an advisory lock key."""
        async with self._connection() as conn, conn.transaction():
            await conn.execute("LOCK TABLE write_spends IN SHARE ROW EXCLUSIVE MODE")
            row = await (await conn.execute(_SQL.blocked_until, (account,))).fetchone()
            mine = await (await conn.execute(_SQL.account_spends, (account, since_us))).fetchall()
            cur = await conn.execute(_SQL.everyone_spends, (everyone_since_us,))
            spends = WriteSpends(
                account=[(t, c) for t, c in mine],
                everyone=[t for (t,) in await cur.fetchall()],
                blocked_until_us=row[0] if row else 0,
            )
            wait = decide(spends)
            if wait <= 0:
                await conn.execute(_SQL.insert_spend, (account, time_us, cost))
                await conn.execute(_SQL.prune_spends, (account, min(since_us, everyone_since_us)))
        return wait

    # plumbing -------------------------------------------------------------------------------
    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled connection; psycopg errors inside the block are translated, once, here."""
        if self._pool is None:
            raise LedgerError("the PostgreSQL ledger is not open")
        try:
            async with self._pool.connection() as conn:
                yield conn
        except psycopg.Error as exc:
            raise _translate(exc) from exc

    async def _execute(self, sql: str, params: tuple[Any, ...]) -> int:
        """One autocommitted statement; returns the number of rows it changed."""
        async with self._connection() as conn:
            cursor = await conn.execute(sql, params)
            return cursor.rowcount

    async def _fetchall(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        async with self._connection() as conn:
            cursor = await conn.execute(sql, params)
            return await cursor.fetchall()


def _translate(exc: psycopg.Error) -> BotskyError:
    """Connection trouble is transient; anything else is a schema or SQL problem.

    psycopg raises OperationalError for a lost or refused connection, a pool timeout, a server
    shutting down, a serialization failure or a deadlock: all worth retrying.
    """
    if isinstance(exc, psycopg.OperationalError):
        return LedgerUnavailable(f"PostgreSQL is unavailable: {exc}")
    return LedgerError(f"PostgreSQL error: {exc}")


async def _read_only_session(conn: psycopg.AsyncConnection[Any]) -> None:
    # The server refuses every write of a read-only transaction, whatever the code does.
    await conn.execute("SET SESSION default_transaction_read_only = on")


async def _check_schema(conn: psycopg.AsyncConnection[Any]) -> None:
    """For readers: the ledger's tables exist with the current schema (nothing is created)."""
    cursor = await conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
    row = await cursor.fetchone()
    if not row or not row[0]:
        raise LedgerError("no botsky ledger in this PostgreSQL database yet")
    cursor = await conn.execute("SELECT version FROM schema_migrations")
    if pending({version for (version,) in await cursor.fetchall()}):
        raise LedgerError(
            "the PostgreSQL ledger was written by an older botsky: run botsky (run or "
            "simulate) with this configuration once to upgrade it, then read it"
        )


async def _migrate(conn: psycopg.AsyncConnection[Any]) -> None:
    async with conn.transaction():
        # Replicas starting together queue here; the lock ends with the transaction.
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        await conn.execute(SCHEMA_MIGRATIONS)
        cursor = await conn.execute(_SQL.applied_migrations)
        applied = {version for (version,) in await cursor.fetchall()}
        for migration in pending(applied):
            for sql in statements(migration, "postgres"):
                await conn.execute(sql)
            await conn.execute(_SQL.record_migration, (migration.version, now_us()))
