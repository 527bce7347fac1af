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
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool

from botsky.errors import BotskyError, ConfigError, LedgerError, LedgerUnavailable
from botsky.ledger.base import CLAIM_STATUSES, Mention, Outcome
from botsky.ledger.feed_postgres import PostgresFeedMixin
from botsky.ledger.migrations import (
    CLOSED_STATUSES,
    MENTION_COLUMNS,
    SCHEMA_MIGRATIONS,
    check_status,
    mention_from_row,
    mention_to_row,
    pending,
    statements,
)

__all__ = ["PostgresLedger"]

# pg_advisory_xact_lock takes a bigint key shared by the whole database: b"botskymg" as one.
_MIGRATION_LOCK = int.from_bytes(b"botskymg", "big")

_COLUMNS = ", ".join(MENTION_COLUMNS)
_INSERT_MENTION = (
    f"INSERT INTO mentions ({_COLUMNS}) VALUES ({', '.join('%s' for _ in MENTION_COLUMNS)})"
    " ON CONFLICT (post_uri) DO NOTHING"
)
_SELECT_MENTIONS = f"SELECT id, {_COLUMNS} FROM mentions"
# A recorded mention means the post was answered, so the claim must say "posted" even if the
# caller never claimed it: otherwise a later claim() could succeed and reply a second time.
_MARK_POSTED = """
    INSERT INTO claims (post_uri, owner, status, created_us, updated_us)
    VALUES (%s, %s, 'posted', %s, %s)
    ON CONFLICT (post_uri) DO UPDATE SET status = 'posted', updated_us = excluded.updated_us
"""


class PostgresLedger(PostgresFeedMixin):
    """The ledger in the PostgreSQL database at ``dsn``, through a pool of connections.

    ``timeout`` is how many seconds ``open()`` and each call wait for a connection before
    raising LedgerUnavailable.
    """

    def __init__(
        self, dsn: str, min_size: int = 1, max_size: int = 4, *, timeout: float = 10.0
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
                open=False,
            )
            try:
                try:
                    await pool.open(wait=True, timeout=self.timeout)
                    async with pool.connection() as conn:
                        await _migrate(conn)
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

    # claims ---------------------------------------------------------------------------------
    async def claim(
        self, post_uri: str, owner: str, time_us: int, intent: dict[str, Any] | None = None
    ) -> bool:
        """Atomically claim a post for a reply. True for exactly one caller, ever, per post."""
        # One statement, atomic on its own: concurrent INSERTs of the same key wait for the
        # first to commit, then do nothing.
        encoded = orjson.dumps(intent).decode() if intent is not None else None
        changed = await self._execute(
            """INSERT INTO claims (post_uri, owner, status, created_us, updated_us, intent)
               VALUES (%s, %s, 'posting', %s, %s, %s) ON CONFLICT (post_uri) DO NOTHING""",
            (post_uri, owner, time_us, time_us, encoded),
        )
        if changed == 1:
            return True
        # A retry of our own claim whose commit went through is still ours; anyone else's is not.
        rows = await self._fetchall(
            "SELECT owner, status, intent FROM claims WHERE post_uri = %s", (post_uri,)
        )
        return encoded is not None and [tuple(r) for r in rows] == [(owner, "posting", encoded)]

    async def is_claimed(self, post_uri: str) -> bool:
        """Whether any claim exists for the post."""
        rows = await self._fetchall("SELECT 1 FROM claims WHERE post_uri = %s LIMIT 1", (post_uri,))
        return bool(rows)

    async def finish_claim(self, post_uri: str, status: str) -> None:
        """Set a claim's status (``posted`` or ``failed``)."""
        check_status(status, CLAIM_STATUSES)
        await self._execute(
            "UPDATE claims SET status = %s, updated_us = %s WHERE post_uri = %s",
            (status, _now_us(), post_uri),
        )

    async def claims_with_status(self, status: str) -> list[tuple[str, str]]:
        """``(post_uri, owner)`` of every claim in ``status``, oldest first."""
        rows = await self._fetchall(
            "SELECT post_uri, owner FROM claims WHERE status = %s ORDER BY created_us, post_uri",
            (status,),
        )
        return [(uri, owner) for uri, owner in rows]

    async def pending_claims(self) -> list[tuple[str, str, dict[str, Any] | None]]:
        """``(post_uri, owner, intent)`` of every claim still ``posting``, oldest first."""
        rows = await self._fetchall(
            "SELECT post_uri, owner, intent FROM claims WHERE status = 'posting' "
            "ORDER BY created_us, post_uri",
            (),
        )
        return [
            (uri, owner, orjson.loads(intent) if intent else None) for uri, owner, intent in rows
        ]

    # mentions -------------------------------------------------------------------------------
    async def record_mention(self, mention: Mention) -> int:
        """Store a mention and mark its post's claim ``posted``, in one transaction."""
        async with self._connection() as conn, conn.transaction():
            await conn.execute(_INSERT_MENTION, mention_to_row(mention))
            await conn.execute(
                _MARK_POSTED,
                (mention.post_uri, mention.bot, mention.created_us, mention.created_us),
            )
            # The existing row's id when this post's mention was already recorded (a retry).
            cursor = await conn.execute(
                "SELECT id FROM mentions WHERE post_uri = %s", (mention.post_uri,)
            )
            row = await cursor.fetchone()
        assert row is not None  # inserted just now or earlier
        mention.id = row[0]
        return mention.id

    async def open_mentions(self) -> list[Mention]:
        """Every mention whose status is ``open``, oldest first."""
        rows = await self._fetchall(f"{_SELECT_MENTIONS} WHERE status = 'open' ORDER BY id", ())
        return [mention_from_row(row[0], row[1:]) for row in rows]

    async def mentions(self) -> list[Mention]:
        """Every mention, oldest first (for scoring)."""
        rows = await self._fetchall(f"{_SELECT_MENTIONS} ORDER BY id", ())
        return [mention_from_row(row[0], row[1:]) for row in rows]

    async def mentioned_since(self, since_us: int) -> list[tuple[str, int]]:
        """``(mentioned_did, created_us)`` of mentions created at or after ``since_us``."""
        rows = await self._fetchall(
            "SELECT mentioned_did, created_us FROM mentions WHERE created_us >= %s ORDER BY id",
            (since_us,),
        )
        return [(did, created_us) for did, created_us in rows]

    async def close_mention(self, mention_id: int, status: str, time_us: int) -> bool:
        """Move an open mention to ``succeeded`` or ``expired``; False if it was not open."""
        check_status(status, CLOSED_STATUSES)
        changed = await self._execute(
            "UPDATE mentions SET status = %s, outcome_us = %s WHERE id = %s AND status = 'open'",
            (status, time_us, mention_id),
        )
        return changed == 1

    # outcomes -------------------------------------------------------------------------------
    async def record_outcome(self, outcome: Outcome) -> bool:
        """Store an outcome once; False if this (mention, kind, uri) was already recorded."""
        changed = await self._execute(
            """INSERT INTO outcomes (mention_id, kind, actor, uri, time_us)
               VALUES (%s, %s, %s, %s, %s) ON CONFLICT (mention_id, kind, uri) DO NOTHING""",
            (outcome.mention_id, outcome.kind, outcome.actor, outcome.uri, outcome.time_us),
        )
        return changed == 1

    async def outcomes(self) -> list[Outcome]:
        """Every outcome, oldest first."""
        rows = await self._fetchall(
            "SELECT mention_id, kind, actor, uri, time_us FROM outcomes ORDER BY id", ()
        )
        return [Outcome(*row) for row in rows]

    # cursors --------------------------------------------------------------------------------
    async def save_cursor(self, source: str, cursor: int) -> None:
        """Remember a source's position (a BIGINT column)."""
        await self._execute(
            """INSERT INTO cursors (source, cursor, updated_us) VALUES (%s, %s, %s)
               ON CONFLICT (source) DO UPDATE
               SET cursor = excluded.cursor, updated_us = excluded.updated_us""",
            (source, cursor, _now_us()),
        )

    async def load_cursor(self, source: str) -> int | None:
        """The saved position, or None if this source never saved one."""
        rows = await self._fetchall("SELECT cursor FROM cursors WHERE source = %s", (source,))
        return rows[0][0] if rows else None

    # opt-outs -------------------------------------------------------------------------------
    async def add_opt_out(self, did: str, reason: str, time_us: int) -> bool:
        """Record a permanent opt-out; False if the DID had already opted out."""
        changed = await self._execute(
            """INSERT INTO opt_outs (did, reason, time_us) VALUES (%s, %s, %s)
               ON CONFLICT (did) DO NOTHING""",
            (did, reason, time_us),
        )
        return changed == 1

    async def opt_outs(self) -> dict[str, str]:
        """Every opted-out DID with its reason."""
        rows = await self._fetchall("SELECT did, reason FROM opt_outs ORDER BY time_us, did", ())
        return {did: reason for did, reason in rows}

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


def _now_us() -> int:
    """Wall-clock microseconds, for bookkeeping columns the contract gives no time for."""
    return time.time_ns() // 1000


async def _migrate(conn: psycopg.AsyncConnection[Any]) -> None:
    async with conn.transaction():
        # Replicas starting together queue here; the lock ends with the transaction.
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        await conn.execute(SCHEMA_MIGRATIONS)
        cursor = await conn.execute("SELECT version FROM schema_migrations")
        applied = {version for (version,) in await cursor.fetchall()}
        for migration in pending(applied):
            for sql in statements(migration, "postgres"):
                await conn.execute(sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, applied_us) VALUES (%s, %s)",
                (migration.version, _now_us()),
            )
