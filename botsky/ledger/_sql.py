"""What the two SQL ledgers share: every statement, written once, and the methods built on them.

Statements are written with ``?`` for parameters (SQLite's spelling); ``Statements.spelled``
gives them with ``%s`` for psycopg (no statement holds a literal ``?`` or ``%``). ``SqlLedger``
implements every Ledger method that is a statement or two and a row mapping; a backend supplies
``_execute`` and ``_fetchall`` (how it runs one statement: SQLite on its worker thread,
PostgreSQL on a pooled connection) and writes only what needs its own transactions
(``record_mention``, migrations), with these same statements.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson

from botsky.ledger.base import (
    CLAIM_STATUSES,
    AccountStatus,
    Claim,
    Mention,
    Outcome,
    WriteSpends,
)
from botsky.ledger.migrations import (
    CLOSED_STATUSES,
    MENTION_COLUMNS,
    Dialect,
    check_status,
    mention_from_row,
)

__all__ = ["SqlLedger", "Statements", "now_us"]

_COLUMNS = ", ".join(MENTION_COLUMNS)
_CLAIM_COLUMNS = "post_uri, owner, status, intent, attempts, next_try_us, reason"


@dataclass(frozen=True, slots=True)
class Statements:
    """Every statement the ledgers run, in SQLite's spelling unless ``spelled`` otherwise."""

    claim: str = """
        INSERT INTO claims (post_uri, owner, status, created_us, updated_us, intent)
        VALUES (?, ?, 'posting', ?, ?, ?) ON CONFLICT (post_uri) DO NOTHING"""
    claim_row: str = "SELECT owner, status, intent FROM claims WHERE post_uri = ?"
    is_claimed: str = "SELECT 1 FROM claims WHERE post_uri = ? LIMIT 1"
    finish_claim: str = (
        "UPDATE claims SET status = ?, reason = ?, updated_us = ? WHERE post_uri = ?"
    )
    claims_with_status: str = (
        "SELECT post_uri, owner FROM claims WHERE status = ? ORDER BY created_us, post_uri"
    )
    pending_claims: str = (
        "SELECT post_uri, owner, intent FROM claims WHERE status = 'posting' "
        "ORDER BY created_us, post_uri"
    )
    claims: str = (
        f"SELECT {_CLAIM_COLUMNS} FROM claims WHERE status = ? ORDER BY created_us, post_uri"
    )
    retry_claim: str = """
        UPDATE claims SET status = 'retry', attempts = ?, next_try_us = ?, reason = ?,
            updated_us = ?
        WHERE post_uri = ? AND status = 'posting'"""
    due_claims: str = (
        f"SELECT {_CLAIM_COLUMNS} FROM claims WHERE status = 'retry' AND next_try_us <= ? "
        "ORDER BY next_try_us, post_uri LIMIT ?"
    )
    # A compare-and-set: only the process that still sees the claim waiting, after as many
    # attempts as it read, takes it.
    take_claim: str = """
        UPDATE claims SET status = 'posting', intent = ?, updated_us = ?
        WHERE post_uri = ? AND status = 'retry' AND attempts = ?"""
    account_spends: str = (
        "SELECT time_us, cost FROM write_spends WHERE account = ? AND time_us > ? "
        "ORDER BY time_us, id"
    )
    everyone_spends: str = "SELECT time_us FROM write_spends WHERE time_us > ? ORDER BY time_us, id"
    blocked_until: str = "SELECT until_us FROM account_blocks WHERE account = ?"
    insert_spend: str = "INSERT INTO write_spends (account, time_us, cost) VALUES (?, ?, ?)"
    prune_spends: str = "DELETE FROM write_spends WHERE account = ? AND time_us <= ?"
    block_account: str = """
        INSERT INTO account_blocks (account, until_us, reason, updated_us) VALUES (?, ?, ?, ?)
        ON CONFLICT (account) DO UPDATE
        SET until_us = excluded.until_us, reason = excluded.reason,
            updated_us = excluded.updated_us
        WHERE excluded.until_us > account_blocks.until_us"""
    account_blocks: str = "SELECT account, until_us, reason FROM account_blocks ORDER BY account"
    insert_mention: str = (
        f"INSERT INTO mentions ({_COLUMNS}) VALUES ({', '.join('?' for _ in MENTION_COLUMNS)})"
        " ON CONFLICT (post_uri) DO NOTHING"
    )
    # A recorded mention means the post was answered, so the claim must say "posted" even if
    # the caller never claimed it: otherwise a later claim() could succeed and reply twice.
    mark_posted: str = """
        INSERT INTO claims (post_uri, owner, status, created_us, updated_us)
        VALUES (?, ?, 'posted', ?, ?)
        ON CONFLICT (post_uri) DO UPDATE SET status = 'posted', updated_us = excluded.updated_us"""
    # The row's id after insert_mention: the existing one when the mention was already recorded.
    mention_id: str = "SELECT id FROM mentions WHERE post_uri = ?"
    open_mentions: str = f"SELECT id, {_COLUMNS} FROM mentions WHERE status = 'open' ORDER BY id"
    mentions: str = f"SELECT id, {_COLUMNS} FROM mentions ORDER BY id"
    mentioned_since: str = (
        "SELECT mentioned_did, created_us FROM mentions WHERE created_us >= ? ORDER BY id"
    )
    close_mention: str = (
        "UPDATE mentions SET status = ?, outcome_us = ? WHERE id = ? AND status = 'open'"
    )
    record_outcome: str = """
        INSERT INTO outcomes (mention_id, kind, actor, uri, time_us) VALUES (?, ?, ?, ?, ?)
        ON CONFLICT (mention_id, kind, uri) DO NOTHING"""
    outcomes: str = "SELECT mention_id, kind, actor, uri, time_us FROM outcomes ORDER BY id"
    save_cursor: str = """
        INSERT INTO cursors (source, cursor, updated_us) VALUES (?, ?, ?)
        ON CONFLICT (source) DO UPDATE
        SET cursor = excluded.cursor, updated_us = excluded.updated_us"""
    load_cursor: str = "SELECT cursor FROM cursors WHERE source = ?"
    add_opt_out: str = (
        "INSERT INTO opt_outs (did, reason, time_us) VALUES (?, ?, ?) ON CONFLICT (did) DO NOTHING"
    )
    opt_outs: str = "SELECT did, reason FROM opt_outs ORDER BY time_us, did"
    add_opt_in: str = (
        "INSERT INTO opt_ins (did, reason, time_us) VALUES (?, ?, ?) ON CONFLICT (did) DO NOTHING"
    )
    opt_ins: str = "SELECT did, reason, time_us FROM opt_ins ORDER BY time_us, did"
    withdraw_opt_in: str = "DELETE FROM opt_ins WHERE did = ? AND reason = ?"
    # Newest event wins: an older status (a rewound stream replaying it) changes nothing.
    set_account_status: str = """
        INSERT INTO account_status (did, active, status, time_us) VALUES (?, ?, ?, ?)
        ON CONFLICT (did) DO UPDATE
        SET active = excluded.active, status = excluded.status, time_us = excluded.time_us
        WHERE excluded.time_us >= account_status.time_us"""
    inactive_accounts: str = (
        "SELECT did, status, time_us FROM account_status WHERE active = 0 ORDER BY time_us, did"
    )
    applied_migrations: str = "SELECT version FROM schema_migrations"
    record_migration: str = "INSERT INTO schema_migrations (version, applied_us) VALUES (?, ?)"

    def spelled(self, dialect: Dialect) -> Statements:
        """These statements with the parameter marks of ``dialect``."""
        if dialect == "sqlite":
            return self
        marks = {f.name: getattr(self, f.name).replace("?", "%s") for f in dataclasses.fields(self)}
        return Statements(**marks)


class SqlLedger:
    """The Ledger methods both SQL backends run the same way (see the module docstring)."""

    sql: ClassVar[Statements]

    async def _execute(self, sql: str, params: tuple[Any, ...]) -> int:
        """Run one autocommitted statement; the number of rows it changed."""
        raise NotImplementedError

    async def _fetchall(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        """Run one query; its rows."""
        raise NotImplementedError

    # claims ---------------------------------------------------------------------------------
    async def claim(
        self, post_uri: str, owner: str, time_us: int, intent: dict[str, Any] | None = None
    ) -> bool:
        """Atomically claim a post for a reply. True for exactly one caller, ever, per post."""
        # One statement, so atomic on its own: the UNIQUE key lets exactly one INSERT through,
        # whichever connection, process or replica it comes from.
        encoded = orjson.dumps(intent).decode() if intent is not None else None
        params = (post_uri, owner, time_us, time_us, encoded)
        if await self._execute(self.sql.claim, params) == 1:
            return True
        # A retry of our own claim whose commit went through is still ours; anyone else's is not.
        rows = await self._fetchall(self.sql.claim_row, (post_uri,))
        return encoded is not None and [tuple(r) for r in rows] == [(owner, "posting", encoded)]

    async def is_claimed(self, post_uri: str) -> bool:
        """Whether any claim exists for the post."""
        return bool(await self._fetchall(self.sql.is_claimed, (post_uri,)))

    async def finish_claim(self, post_uri: str, status: str, reason: str = "") -> None:
        """Set a claim's status (``posted`` or ``failed``) and why."""
        check_status(status, CLAIM_STATUSES)
        await self._execute(self.sql.finish_claim, (status, reason, now_us(), post_uri))

    async def claims_with_status(self, status: str) -> list[tuple[str, str]]:
        """``(post_uri, owner)`` of every claim in ``status``, oldest first."""
        rows = await self._fetchall(self.sql.claims_with_status, (status,))
        return [(uri, owner) for uri, owner in rows]

    async def pending_claims(self) -> list[tuple[str, str, dict[str, Any] | None]]:
        """``(post_uri, owner, intent)`` of every claim still ``posting``, oldest first."""
        rows = await self._fetchall(self.sql.pending_claims, ())
        return [
            (uri, owner, orjson.loads(intent) if intent else None) for uri, owner, intent in rows
        ]

    async def claims(self, status: str) -> list[Claim]:
        """Every claim in ``status``, oldest first."""
        check_status(status, CLAIM_STATUSES)
        return [_claim(row) for row in await self._fetchall(self.sql.claims, (status,))]

    async def retry_claim(
        self, post_uri: str, attempts: int, next_try_us: int, reason: str
    ) -> bool:
        """Move a ``posting`` claim to ``retry``; False if it was not ``posting``."""
        params = (attempts, next_try_us, reason, now_us(), post_uri)
        return await self._execute(self.sql.retry_claim, params) == 1

    async def due_claims(self, now_us: int, limit: int = 100) -> list[Claim]:
        """``retry`` claims due at ``now_us``, the longest-waiting first."""
        return [_claim(row) for row in await self._fetchall(self.sql.due_claims, (now_us, limit))]

    async def take_claim(self, post_uri: str, attempts: int, replica: str) -> dict[str, Any] | None:
        """Move a waiting ``retry`` claim back to ``posting``, held by ``replica``."""
        rows = await self._fetchall(self.sql.claim_row, (post_uri,))
        if not rows or rows[0][1] not in ("retry", "posting") or not rows[0][2]:
            return None
        intent = {**orjson.loads(rows[0][2]), "replica": replica}
        encoded = orjson.dumps(intent).decode()
        if await self._execute(self.sql.take_claim, (encoded, now_us(), post_uri, attempts)) == 1:
            return intent
        # A retry of our own take whose commit went through is still ours (as in claim).
        rows = await self._fetchall(self.sql.claim_row, (post_uri,))
        return intent if rows and tuple(rows[0])[1:] == ("posting", encoded) else None

    # write budgets ----------------------------------------------------------------------------
    async def write_spends(
        self, account: str, since_us: int, everyone_since_us: int
    ) -> WriteSpends:
        """The spends a decision for ``account`` reads (nothing is spent)."""
        mine = await self._fetchall(self.sql.account_spends, (account, since_us))
        everyone = await self._fetchall(self.sql.everyone_spends, (everyone_since_us,))
        blocked = await self._fetchall(self.sql.blocked_until, (account,))
        return WriteSpends(
            account=[(t, c) for t, c in mine],
            everyone=[t for (t,) in everyone],
            blocked_until_us=blocked[0][0] if blocked else 0,
        )

    async def block_account(self, key: str, until_us: int, reason: str) -> None:
        """Remember a server block until ``until_us``; a later one wins."""
        await self._execute(self.sql.block_account, (key, until_us, reason, now_us()))

    async def account_blocks(self) -> dict[str, tuple[int, str]]:
        """Every block as ``key -> (until_us, reason)``."""
        rows = await self._fetchall(self.sql.account_blocks, ())
        return {key: (until_us, reason) for key, until_us, reason in rows}

    # mentions -------------------------------------------------------------------------------
    async def open_mentions(self) -> list[Mention]:
        """Every mention whose status is ``open``, oldest first."""
        rows = await self._fetchall(self.sql.open_mentions, ())
        return [mention_from_row(row[0], row[1:]) for row in rows]

    async def mentions(self) -> list[Mention]:
        """Every mention, oldest first (for scoring)."""
        rows = await self._fetchall(self.sql.mentions, ())
        return [mention_from_row(row[0], row[1:]) for row in rows]

    async def mentioned_since(self, since_us: int) -> list[tuple[str, int]]:
        """``(mentioned_did, created_us)`` of mentions created at or after ``since_us``."""
        rows = await self._fetchall(self.sql.mentioned_since, (since_us,))
        return [(did, created_us) for did, created_us in rows]

    async def close_mention(self, mention_id: int, status: str, time_us: int) -> bool:
        """Move an open mention to ``succeeded`` or ``expired``; False if it was not open."""
        check_status(status, CLOSED_STATUSES)
        return await self._execute(self.sql.close_mention, (status, time_us, mention_id)) == 1

    # outcomes -------------------------------------------------------------------------------
    async def record_outcome(self, outcome: Outcome) -> bool:
        """Store an outcome once; False if this (mention, kind, uri) was already recorded."""
        o = outcome
        params = (o.mention_id, o.kind, o.actor, o.uri, o.time_us)
        return await self._execute(self.sql.record_outcome, params) == 1

    async def outcomes(self) -> list[Outcome]:
        """Every outcome, oldest first."""
        return [Outcome(*row) for row in await self._fetchall(self.sql.outcomes, ())]

    # cursors --------------------------------------------------------------------------------
    async def save_cursor(self, source: str, cursor: int) -> None:
        """Remember a source's position (a 64-bit integer: relay seqs exceed 2^31)."""
        await self._execute(self.sql.save_cursor, (source, cursor, now_us()))

    async def load_cursor(self, source: str) -> int | None:
        """The saved position, or None if this source never saved one."""
        rows = await self._fetchall(self.sql.load_cursor, (source,))
        return rows[0][0] if rows else None

    # opt-outs -------------------------------------------------------------------------------
    async def add_opt_out(self, did: str, reason: str, time_us: int) -> bool:
        """Record a permanent opt-out; False if the DID had already opted out."""
        return await self._execute(self.sql.add_opt_out, (did, reason, time_us)) == 1

    async def opt_outs(self) -> dict[str, str]:
        """Every opted-out DID with its reason."""
        return {did: reason for did, reason in await self._fetchall(self.sql.opt_outs, ())}

    # opt-ins --------------------------------------------------------------------------------
    async def add_opt_in(self, did: str, reason: str, time_us: int) -> bool:
        """Record consent; False if the DID had already opted in (the first reason stays)."""
        return await self._execute(self.sql.add_opt_in, (did, reason, time_us)) == 1

    async def opt_ins(self) -> dict[str, tuple[str, int]]:
        """Every opted-in DID with the reason it first opted in and when (stream µs)."""
        rows = await self._fetchall(self.sql.opt_ins, ())
        return {did: (reason, time_us) for did, reason, time_us in rows}

    async def withdraw_opt_in(self, did: str, reason: str) -> bool:
        """Forget ``did``'s opt-in if it was given for ``reason``; False if there was none."""
        return await self._execute(self.sql.withdraw_opt_in, (did, reason)) == 1

    # account status -------------------------------------------------------------------------
    async def set_account_status(self, status: AccountStatus) -> bool:
        """Store a DID's account status; False (nothing changed) if the stored one is newer."""
        s = status
        params = (s.did, int(s.active), s.status, s.time_us)
        return await self._execute(self.sql.set_account_status, params) == 1

    async def inactive_accounts(self) -> list[AccountStatus]:
        """Every DID whose stored status is inactive, oldest first."""
        rows = await self._fetchall(self.sql.inactive_accounts, ())
        return [AccountStatus(did, False, status, t) for did, status, t in rows]


def _claim(row: Any) -> Claim:
    uri, owner, status, intent, attempts, next_try_us, reason = row
    return Claim(
        uri, owner, status, orjson.loads(intent) if intent else None, attempts, next_try_us, reason
    )


def now_us() -> int:
    """Wall-clock microseconds, for bookkeeping columns the contract gives no time for."""
    return time.time_ns() // 1000
