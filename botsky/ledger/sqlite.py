"""The embedded ledger: one SQLite file in WAL mode.

sqlite3 calls block, so every call runs on one dedicated worker thread that owns the connection
(created, used and closed only there). One thread also serializes the calls, so the
transactions of concurrent coroutines never interleave on the connection. ``inline=True`` runs
the calls on the event loop's own thread instead (each call is synchronous, so they cannot
interleave either): for lockstep runs (simulations, replays) where the loop has nothing else to
do while a statement runs, and the thread hand-off (about 0.3 ms per call, more than the
statement) was half of a simulation's time. A live run keeps the thread, so a slow disk or a
lock held by another process never stalls the reader. Other processes and
other ``SqliteLedger`` objects on the same file are kept apart by SQLite's own file locks:
``claim`` is a single ``INSERT ... ON CONFLICT DO NOTHING`` on a UNIQUE key, atomic across
processes, and read-then-write transactions start with ``BEGIN IMMEDIATE`` so they take the
write lock up front instead of failing to upgrade a read lock halfway through.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import orjson

from botsky.errors import BotskyError, LedgerError, LedgerUnavailable
from botsky.ledger.base import CLAIM_STATUSES, Mention, Outcome
from botsky.ledger.feed_sqlite import SqliteFeedMixin
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

__all__ = ["SqliteLedger"]

_T = TypeVar("_T")

_COLUMNS = ", ".join(MENTION_COLUMNS)
_INSERT_MENTION = (
    f"INSERT INTO mentions ({_COLUMNS}) VALUES ({', '.join('?' for _ in MENTION_COLUMNS)})"
    " ON CONFLICT (post_uri) DO NOTHING"
)
_SELECT_MENTIONS = f"SELECT id, {_COLUMNS} FROM mentions"
# A recorded mention means the post was answered, so the claim must say "posted" even if the
# caller never claimed it: otherwise a later claim() could succeed and reply a second time.
_MARK_POSTED = """
    INSERT INTO claims (post_uri, owner, status, created_us, updated_us)
    VALUES (?, ?, 'posted', ?, ?)
    ON CONFLICT (post_uri) DO UPDATE SET status = 'posted', updated_us = excluded.updated_us
"""


class SqliteLedger(SqliteFeedMixin):
    """The ledger in one SQLite file at ``path`` (its directory is created if missing).

    ``busy_timeout`` is how many seconds a write waits for another connection's lock before the
    call raises LedgerUnavailable. ``inline``: run the calls on the loop's thread (see above).
    """

    def __init__(self, path: Path, *, busy_timeout: float = 10.0, inline: bool = False) -> None:
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        self.inline = inline
        self._open = False
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None  # only touched on the worker thread

    async def open(self) -> None:
        """Open the file, switch it to WAL and apply pending migrations. Idempotent."""
        if self._open:
            return
        if not self.inline:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="botsky-sqlite")
        self._open = True
        try:
            await self._run(self._connect)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Close the connection and stop the worker thread. Idempotent."""
        if not self._open:
            return
        self._open = False
        executor, self._executor = self._executor, None
        if executor is None:
            self._disconnect()
            return
        try:
            await asyncio.get_running_loop().run_in_executor(executor, self._disconnect)
        finally:
            # The close was the last job, so joining the now idle thread returns at once.
            executor.shutdown(wait=True)

    # claims ---------------------------------------------------------------------------------
    async def claim(
        self, post_uri: str, owner: str, time_us: int, intent: dict[str, Any] | None = None
    ) -> bool:
        """Atomically claim a post for a reply. True for exactly one caller, ever, per post."""
        encoded = orjson.dumps(intent).decode() if intent is not None else None
        return await self._run(_claim, post_uri, owner, time_us, encoded)

    async def is_claimed(self, post_uri: str) -> bool:
        """Whether any claim exists for the post."""
        rows = await self._run(
            _fetchall, "SELECT 1 FROM claims WHERE post_uri = ? LIMIT 1", (post_uri,)
        )
        return bool(rows)

    async def finish_claim(self, post_uri: str, status: str) -> None:
        """Set a claim's status (``posted`` or ``failed``)."""
        check_status(status, CLAIM_STATUSES)
        await self._run(
            _execute,
            "UPDATE claims SET status = ?, updated_us = ? WHERE post_uri = ?",
            (status, _now_us(), post_uri),
        )

    async def claims_with_status(self, status: str) -> list[tuple[str, str]]:
        """``(post_uri, owner)`` of every claim in ``status``, oldest first."""
        rows = await self._run(
            _fetchall,
            "SELECT post_uri, owner FROM claims WHERE status = ? ORDER BY created_us, post_uri",
            (status,),
        )
        return [(uri, owner) for uri, owner in rows]

    async def pending_claims(self) -> list[tuple[str, str, dict[str, Any] | None]]:
        """``(post_uri, owner, intent)`` of every claim still ``posting``, oldest first."""
        rows = await self._run(
            _fetchall,
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
        mention.id = await self._run(_record_mention, mention)
        return mention.id

    async def open_mentions(self) -> list[Mention]:
        """Every mention whose status is ``open``, oldest first."""
        rows = await self._run(
            _fetchall, f"{_SELECT_MENTIONS} WHERE status = 'open' ORDER BY id", ()
        )
        return [mention_from_row(row[0], row[1:]) for row in rows]

    async def mentions(self) -> list[Mention]:
        """Every mention, oldest first (for scoring)."""
        rows = await self._run(_fetchall, f"{_SELECT_MENTIONS} ORDER BY id", ())
        return [mention_from_row(row[0], row[1:]) for row in rows]

    async def mentioned_since(self, since_us: int) -> list[tuple[str, int]]:
        """``(mentioned_did, created_us)`` of mentions created at or after ``since_us``."""
        rows = await self._run(
            _fetchall,
            "SELECT mentioned_did, created_us FROM mentions WHERE created_us >= ? ORDER BY id",
            (since_us,),
        )
        return [(did, created_us) for did, created_us in rows]

    async def close_mention(self, mention_id: int, status: str, time_us: int) -> bool:
        """Move an open mention to ``succeeded`` or ``expired``; False if it was not open."""
        check_status(status, CLOSED_STATUSES)
        changed = await self._run(
            _execute,
            "UPDATE mentions SET status = ?, outcome_us = ? WHERE id = ? AND status = 'open'",
            (status, time_us, mention_id),
        )
        return changed == 1

    # outcomes -------------------------------------------------------------------------------
    async def record_outcome(self, outcome: Outcome) -> bool:
        """Store an outcome once; False if this (mention, kind, uri) was already recorded."""
        changed = await self._run(
            _execute,
            """INSERT INTO outcomes (mention_id, kind, actor, uri, time_us) VALUES (?, ?, ?, ?, ?)
               ON CONFLICT (mention_id, kind, uri) DO NOTHING""",
            (outcome.mention_id, outcome.kind, outcome.actor, outcome.uri, outcome.time_us),
        )
        return changed == 1

    async def outcomes(self) -> list[Outcome]:
        """Every outcome, oldest first."""
        rows = await self._run(
            _fetchall, "SELECT mention_id, kind, actor, uri, time_us FROM outcomes ORDER BY id", ()
        )
        return [Outcome(*row) for row in rows]

    # cursors --------------------------------------------------------------------------------
    async def save_cursor(self, source: str, cursor: int) -> None:
        """Remember a source's position (SQLite integers are 64-bit)."""
        await self._run(
            _execute,
            """INSERT INTO cursors (source, cursor, updated_us) VALUES (?, ?, ?)
               ON CONFLICT (source) DO UPDATE
               SET cursor = excluded.cursor, updated_us = excluded.updated_us""",
            (source, cursor, _now_us()),
        )

    async def load_cursor(self, source: str) -> int | None:
        """The saved position, or None if this source never saved one."""
        rows = await self._run(_fetchall, "SELECT cursor FROM cursors WHERE source = ?", (source,))
        return rows[0][0] if rows else None

    # opt-outs -------------------------------------------------------------------------------
    async def add_opt_out(self, did: str, reason: str, time_us: int) -> bool:
        """Record a permanent opt-out; False if the DID had already opted out."""
        changed = await self._run(
            _execute,
            "INSERT INTO opt_outs (did, reason, time_us) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
            (did, reason, time_us),
        )
        return changed == 1

    async def opt_outs(self) -> dict[str, str]:
        """Every opted-out DID with its reason."""
        rows = await self._run(
            _fetchall, "SELECT did, reason FROM opt_outs ORDER BY time_us, did", ()
        )
        return {did: reason for did, reason in rows}

    # the worker thread ----------------------------------------------------------------------
    async def _run(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run ``fn(connection, *args)`` on the worker thread."""
        if not self._open:
            raise LedgerError(f"the SQLite ledger {self.path} is not open")
        if self._executor is None:
            return self._call(fn, *args)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call, fn, *args)

    def _call(self, fn: Callable[..., _T], *args: Any) -> _T:
        """The connection's thread: call ``fn`` and translate sqlite3 errors, once, here."""
        try:
            return fn(self._conn, *args)
        except sqlite3.Error as exc:
            raise self._translate(exc) from exc

    def _connect(self, _no_connection_yet: None) -> None:
        """The connection's thread: open the file, set it up, migrate."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LedgerError(f"cannot create {self.path.parent}: {exc}") from exc
        # isolation_level=None: no implicit transactions; we say BEGIN where we mean it.
        # timeout is SQLite's busy timeout: how long a statement waits for a lock.
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None)
        try:
            mode = _switch_to_wal(conn, self.busy_timeout)
            if mode != "wal":
                raise LedgerError(f"{self.path} cannot use WAL mode (journal_mode is {mode})")
            # NORMAL is durable in WAL mode except for the last transactions on power loss;
            # claims stay consistent either way, and it saves an fsync per commit.
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            _migrate(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _disconnect(self) -> None:
        """The connection's thread: close the connection if there is one."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _translate(self, exc: sqlite3.Error) -> BotskyError:
        """A busy or locked database is transient; every other sqlite3 error is fatal."""
        if _is_busy(exc):
            return LedgerUnavailable(f"{self.path} is locked: {exc}")
        if _primary_code(exc) in (sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_READONLY):
            # SQLite's "unable to open database file" does not say why; the usual reason does.
            return LedgerError(f"{self.path}: {exc}{_why_not_writable(self.path)}")
        return LedgerError(f"{self.path}: {exc}")


def _why_not_writable(path: Path) -> str:
    """`` (read-only file system)`` or `` (no write permission on ...)`` when that is so."""
    try:
        if os.statvfs(path.parent).f_flag & os.ST_RDONLY:
            return " (read-only file system)"
    except OSError:
        return ""
    # WAL needs the directory too: SQLite creates -wal and -shm files next to the database.
    for target in (path, path.parent):
        if target.exists() and not os.access(target, os.W_OK):
            return f" (no write permission on {target})"
    return ""


def _primary_code(exc: sqlite3.Error) -> int | None:
    # The low byte is the primary result code; extended codes such as SQLITE_BUSY_SNAPSHOT
    # share it.
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else code & 0xFF


def _is_busy(exc: sqlite3.Error) -> bool:
    """A busy or locked database: transient."""
    return _primary_code(exc) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _switch_to_wal(conn: sqlite3.Connection, patience_s: float) -> str:
    """``PRAGMA journal_mode = WAL``, retried while another connection holds the file.

    Switching a new file needs an exclusive lock, and SQLite answers SQLITE_BUSY at once
    (without its busy handler) when connections opening the same new file collide; the
    collision ends as soon as one of them has switched it, so a short wait settles it.
    """
    deadline = time.monotonic() + patience_s
    while True:
        try:
            (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
            return str(mode)
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


def _now_us() -> int:
    """Wall-clock microseconds, for bookkeeping columns the contract gives no time for."""
    return time.time_ns() // 1000


@contextmanager
def _immediate(conn: sqlite3.Connection) -> Iterator[None]:
    """A transaction that takes the write lock at BEGIN, so it cannot deadlock on upgrade."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        # SQLite rolls back by itself after some errors (disk full, I/O); then there is
        # nothing left to roll back.
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _migrate(conn: sqlite3.Connection) -> None:
    with _immediate(conn):
        conn.execute(SCHEMA_MIGRATIONS)
        applied = {version for (version,) in conn.execute("SELECT version FROM schema_migrations")}
        for migration in pending(applied):
            for sql in statements(migration, "sqlite"):
                conn.execute(sql)
            conn.execute(
                "INSERT INTO schema_migrations (version, applied_us) VALUES (?, ?)",
                (migration.version, _now_us()),
            )


def _execute(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> int:
    """One autocommitted statement; returns the number of rows it changed."""
    return conn.execute(sql, params).rowcount


def _fetchall(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> list[Any]:
    return conn.execute(sql, params).fetchall()


def _claim(
    conn: sqlite3.Connection, post_uri: str, owner: str, time_us: int, intent: str | None
) -> bool:
    # One statement, so atomic on its own: the UNIQUE key lets exactly one INSERT through,
    # whichever connection or process it comes from.
    cursor = conn.execute(
        """INSERT INTO claims (post_uri, owner, status, created_us, updated_us, intent)
           VALUES (?, ?, 'posting', ?, ?, ?) ON CONFLICT (post_uri) DO NOTHING""",
        (post_uri, owner, time_us, time_us, intent),
    )
    if cursor.rowcount == 1:
        return True
    # A retry of our own claim whose commit went through is still ours; anyone else's is not.
    row = conn.execute(
        "SELECT owner, status, intent FROM claims WHERE post_uri = ?", (post_uri,)
    ).fetchone()
    return intent is not None and row == (owner, "posting", intent)


def _record_mention(conn: sqlite3.Connection, mention: Mention) -> int:
    with _immediate(conn):
        conn.execute(_INSERT_MENTION, mention_to_row(mention))
        conn.execute(
            _MARK_POSTED, (mention.post_uri, mention.bot, mention.created_us, mention.created_us)
        )
        # The existing row's id when this post's mention was already recorded (a retry).
        (mention_id,) = conn.execute(
            "SELECT id FROM mentions WHERE post_uri = ?", (mention.post_uri,)
        ).fetchone()
    return int(mention_id)
