"""``FeedLedger`` for SQLite: mixed into ``SqliteLedger`` (its worker thread, its transactions).

The SQL is in ``botsky.ledger.feed``; this module only runs it on the connection's thread.
"""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from botsky.ledger import feed as q
from botsky.ledger.feed import (
    ArmCounts,
    Exposure,
    ExposureRow,
    FeedCandidate,
    FeedPage,
    FeedSession,
    Interaction,
)

__all__ = ["SqliteFeedMixin"]

_T = TypeVar("_T")


class SqliteFeedMixin:
    """The feed's ledger methods; the host class provides ``_run`` (see ``SqliteLedger``)."""

    _run: Callable[..., Any]

    async def feed_candidates(self, after_id: int, since_us: int) -> list[FeedCandidate]:
        rows = await self._run(_all, q.CANDIDATES, (after_id, since_us))
        return [q.candidate_from_row(r) for r in rows]

    async def feed_impressions(self, since_us: int) -> dict[int, int]:
        rows = await self._run(_all, q.IMPRESSIONS, (since_us,))
        return {int(m): int(n) for m, n in rows}

    async def record_feed_pages(self, pages: Sequence[tuple[FeedPage, Sequence[Exposure]]]) -> None:
        await self._run(_record_pages, list(pages))

    async def feed_session(self, session_id: str) -> FeedSession | None:
        return await self._run(_session, session_id)

    async def record_feed_interactions(
        self, viewer: str, interactions: Sequence[Interaction], time_us: int
    ) -> int:
        return await self._run(_interactions, viewer, list(interactions), time_us)

    async def mark_feed_engagement(
        self, item_uri: str, viewer: str, kind: str, time_us: int, window_us: int
    ) -> bool:
        column = q.check_kind(kind)
        params = (time_us, item_uri, viewer, time_us + q.SKEW_US, time_us - window_us)
        changed = await self._run(_change, q.apply_latest(column, mark_seen=False), params)
        return bool(changed)

    async def purge_feed_viewers(self, before_us: int) -> int:
        return await self._run(_purge, before_us)

    async def feed_arm_counts(self, since_us: int | None = None) -> list[ArmCounts]:
        rows = await self._run(_all, q.ARM_COUNTS, (since_us if since_us is not None else 0,))
        return [q.arm_counts_row(r) for r in rows]

    async def feed_exposures(self, req_id: str | None = None) -> list[ExposureRow]:
        if req_id is None:
            rows = await self._run(_all, q.EXPOSURES_ALL, ())
        else:
            rows = await self._run(_all, q.EXPOSURES_OF_PAGE, (req_id,))
        return [q.exposure_row(r) for r in rows]


# --- on the connection's thread ------------------------------------------------------------


def _all(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> list[Any]:
    return conn.execute(sql, params).fetchall()


def _change(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> int:
    return conn.execute(sql, params).rowcount


def _record_pages(
    conn: sqlite3.Connection, pages: list[tuple[FeedPage, Sequence[Exposure]]]
) -> None:
    from botsky.ledger.sqlite import _immediate  # the host module, loaded by now

    with _immediate(conn):
        conn.executemany(q.INSERT_PAGE, [q.page_params(p) for p, _ in pages])
        conn.executemany(
            q.INSERT_EXPOSURE, [q.exposure_params(e) for _, exps in pages for e in exps]
        )


def _session(conn: sqlite3.Connection, session_id: str) -> FeedSession | None:
    row = conn.execute(q.SESSION_PAGES, (session_id,)).fetchone()
    if row is None:
        return None
    ids = tuple(int(m) for (m,) in conn.execute(q.SESSION_ITEMS, (session_id,)))
    return FeedSession(viewer=row[0], mention_ids=ids)


def _interactions(
    conn: sqlite3.Connection, viewer: str, interactions: list[Interaction], time_us: int
) -> int:
    from botsky.ledger.sqlite import _immediate

    steps = [q.interaction_steps(viewer, i, time_us) for i in interactions]
    updates = (update for _, update in steps if update is not None)
    changed = 0
    with _immediate(conn):
        conn.executemany(q.INSERT_INTERACTION, [log for log, _ in steps])
        # A run of one statement (a page's interactionSeen events) is one executemany, in the
        # order given; the raw log rows touch no exposure, so they may go first. (A statement
        # per event was most of the feed's cost in a simulation: 12 of 18 per page.)
        for sql, run in itertools.groupby(updates, key=lambda u: u[0]):
            changed += conn.executemany(sql, [params for _, params in run]).rowcount
    return changed


def _purge(conn: sqlite3.Connection, before_us: int) -> int:
    from botsky.ledger.sqlite import _immediate

    with _immediate(conn):
        return sum(conn.execute(sql, (before_us,)).rowcount for sql in q.PURGE)
