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

from botsky.errors import BotskyError, LedgerError, LedgerUnavailable
from botsky.ledger._sql import SqlLedger, Statements, now_us
from botsky.ledger.base import Mention, SpendDecision, WriteSpends
from botsky.ledger.feed_sqlite import SqliteFeedMixin
from botsky.ledger.migrations import SCHEMA_MIGRATIONS, mention_to_row, pending, statements

__all__ = ["SqliteLedger"]

_T = TypeVar("_T")
_SQL = Statements()


class SqliteLedger(SqliteFeedMixin, SqlLedger):
    """The ledger in one SQLite file at ``path`` (its directory is created if missing).

    ``busy_timeout`` is how many seconds a write waits for another connection's lock before the
    call raises LedgerUnavailable. ``inline``: run the calls on the loop's thread (see above).
    ``read_only``: for readers (``botsky scores``): the file must exist and carry the current
    schema; it is opened with ``mode=ro`` and never created, migrated or written (SQLite may add
    the ``-wal``/``-shm`` companions of a WAL database, which a writer uses anyway).
    """

    sql = _SQL

    def __init__(
        self,
        path: Path,
        *,
        busy_timeout: float = 10.0,
        inline: bool = False,
        read_only: bool = False,
    ) -> None:
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        self.inline = inline
        self.read_only = read_only
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

    # what needs a transaction of its own; the rest is SqlLedger's ------------------------
    async def record_mention(self, mention: Mention) -> int:
        """Store a mention and mark its post's claim ``posted``, in one transaction."""
        mention.id = await self._run(_record_mention, mention)
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
        """Read the spends, decide, and spend if it fits, in one BEGIN IMMEDIATE transaction
        (the write lock is taken first, so concurrent spenders on the file queue up)."""
        return await self._run(
            _spend_write, account, cost, time_us, since_us, everyone_since_us, decide
        )

    # the worker thread ----------------------------------------------------------------------
    async def _execute(self, sql: str, params: tuple[Any, ...]) -> int:
        return await self._run(_execute, sql, params)

    async def _fetchall(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        return await self._run(_fetchall, sql, params)

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
        if self.read_only:
            self._conn = _connect_read_only(self.path, self.busy_timeout)
            return
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


def _connect_read_only(path: Path, busy_timeout: float) -> sqlite3.Connection:
    if not path.is_file():
        raise LedgerError(f"no ledger at {path}: nothing has been recorded there yet")
    uri = f"{path.absolute().as_uri()}?mode=ro"
    conn = sqlite3.connect(uri, uri=True, timeout=busy_timeout, isolation_level=None)
    try:
        try:
            rows = conn.execute("SELECT version FROM schema_migrations").fetchall()
        except sqlite3.DatabaseError as exc:  # no such table, or not a database at all
            raise LedgerError(f"{path} is not a botsky ledger ({exc})") from exc
        if pending({version for (version,) in rows}):
            raise LedgerError(
                f"{path} was written by an older botsky: run botsky (run or simulate) with this "
                "configuration once to upgrade it, then read it"
            )
    except BaseException:
        conn.close()
        raise
    return conn


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
        applied = {version for (version,) in conn.execute(_SQL.applied_migrations)}
        for migration in pending(applied):
            for sql in statements(migration, "sqlite"):
                conn.execute(sql)
            conn.execute(_SQL.record_migration, (migration.version, now_us()))


def _execute(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> int:
    """One autocommitted statement; returns the number of rows it changed."""
    return conn.execute(sql, params).rowcount


def _fetchall(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> list[Any]:
    return conn.execute(sql, params).fetchall()


def _spend_write(
    conn: sqlite3.Connection,
    account: str,
    cost: int,
    time_us: int,
    since_us: int,
    everyone_since_us: int,
    decide: SpendDecision,
) -> float:
    with _immediate(conn):
        blocked = conn.execute(_SQL.blocked_until, (account,)).fetchone()
        spends = WriteSpends(
            account=conn.execute(_SQL.account_spends, (account, since_us)).fetchall(),
            everyone=[t for (t,) in conn.execute(_SQL.everyone_spends, (everyone_since_us,))],
            blocked_until_us=blocked[0] if blocked else 0,
        )
        wait = decide(spends)
        if wait <= 0:
            conn.execute(_SQL.insert_spend, (account, time_us, cost))
            conn.execute(_SQL.prune_spends, (account, min(since_us, everyone_since_us)))
    return wait


def _record_mention(conn: sqlite3.Connection, mention: Mention) -> int:
    with _immediate(conn):
        conn.execute(_SQL.insert_mention, mention_to_row(mention))
        m = mention
        conn.execute(_SQL.mark_posted, (m.post_uri, m.bot, m.created_us, m.created_us))
        (mention_id,) = conn.execute(_SQL.mention_id, (m.post_uri,)).fetchone()
    return int(mention_id)
