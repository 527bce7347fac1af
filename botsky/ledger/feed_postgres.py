"""``FeedLedger`` for PostgreSQL: mixed into ``PostgresLedger`` (its pool, its transactions).

The SQL is in ``botsky.ledger.feed`` with ``?`` placeholders, spelled ``%s`` here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from functools import cache
from typing import Any

import psycopg

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

__all__ = ["PostgresFeedMixin"]


@cache
def _pg(sql: str) -> str:
    # No statement here has a literal "?" or "%": a plain substitution is exact.
    return sql.replace("?", "%s")


class PostgresFeedMixin:
    """The feed's ledger methods; the host provides ``_connection``, ``_execute`` and
    ``_fetchall`` (see ``PostgresLedger``)."""

    _connection: Callable[[], AbstractAsyncContextManager[psycopg.AsyncConnection[Any]]]
    _execute: Callable[..., Any]
    _fetchall: Callable[..., Any]

    async def feed_candidates(self, after_id: int, since_us: int) -> list[FeedCandidate]:
        rows = await self._fetchall(_pg(q.CANDIDATES), (after_id, since_us))
        return [q.candidate_from_row(r) for r in rows]

    async def feed_impressions(self, since_us: int) -> dict[int, int]:
        rows = await self._fetchall(_pg(q.IMPRESSIONS), (since_us,))
        return {int(m): int(n) for m, n in rows}

    async def record_feed_pages(self, pages: Sequence[tuple[FeedPage, Sequence[Exposure]]]) -> None:
        exposures = [q.exposure_params(e) for _, exps in pages for e in exps]
        async with self._connection() as conn, conn.transaction(), conn.cursor() as cur:
            await cur.executemany(_pg(q.INSERT_PAGE), [q.page_params(p) for p, _ in pages])
            if exposures:
                await cur.executemany(_pg(q.INSERT_EXPOSURE), exposures)

    async def feed_session(self, session_id: str) -> FeedSession | None:
        pages = await self._fetchall(_pg(q.SESSION_PAGES), (session_id,))
        if not pages:
            return None
        rows = await self._fetchall(_pg(q.SESSION_ITEMS), (session_id,))
        return FeedSession(viewer=pages[0][0], mention_ids=tuple(int(m) for (m,) in rows))

    async def record_feed_interactions(
        self, viewer: str, interactions: Sequence[Interaction], time_us: int
    ) -> int:
        changed = 0
        async with self._connection() as conn, conn.transaction():
            for i in interactions:
                log, update = q.interaction_steps(viewer, i, time_us)
                await conn.execute(_pg(q.INSERT_INTERACTION), log)
                if update is not None:
                    cur = await conn.execute(_pg(update[0]), update[1])
                    changed += cur.rowcount
        return changed

    async def mark_feed_engagement(
        self, item_uri: str, viewer: str, kind: str, time_us: int, window_us: int
    ) -> bool:
        column = q.check_kind(kind)
        params = (time_us, item_uri, viewer, time_us + q.SKEW_US, time_us - window_us)
        changed = await self._execute(_pg(q.apply_latest(column, mark_seen=False)), params)
        return bool(changed)

    async def purge_feed_viewers(self, before_us: int) -> int:
        changed = 0
        async with self._connection() as conn, conn.transaction():
            for sql in q.PURGE:
                cur = await conn.execute(_pg(sql), (before_us,))
                changed += cur.rowcount
        return changed

    async def feed_arm_counts(self, since_us: int | None = None) -> list[ArmCounts]:
        rows = await self._fetchall(_pg(q.ARM_COUNTS), (since_us if since_us is not None else 0,))
        return [q.arm_counts_row(r) for r in rows]

    async def feed_exposures(self, req_id: str | None = None) -> list[ExposureRow]:
        if req_id is None:
            rows = await self._fetchall(_pg(q.EXPOSURES_ALL), ())
        else:
            rows = await self._fetchall(_pg(q.EXPOSURES_OF_PAGE), (req_id,))
        return [q.exposure_row(r) for r in rows]
