"""The feed's ledger contract (migration 6), run against SQLite and PostgreSQL alike."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from botsky.errors import LedgerError, LedgerUnavailable
from botsky.ledger import Ledger
from botsky.ledger.feed import (
    SEEN_EVENT,
    Exposure,
    FeedLedger,
    FeedPage,
    Interaction,
)
from botsky.ledger.retry import RetryingLedger
from botsky.ledger.sqlite import SqliteLedger
from tests.test_ledger import T0, ledger, ledgers, make_mention, store

__all__ = ["ledger", "ledgers", "store"]  # fixtures, used by name

S = 1_000_000  # one second in microseconds
DEFS = "app.bsky.feed.defs#"
VIEWER = "did:plc:viewer"


async def _mentions(ledger: Ledger, n: int) -> list[int]:
    ids = []
    for i in range(n):
        m = make_mention(i, model=f"model-{i % 2}", created_us=T0 + i * S)
        ids.append(await ledger.record_mention(m))
    return ids


def _page(req: str, session: str, viewer: str | None, items: list[tuple[int, str]], t: int):
    page = FeedPage(req, session, viewer, first_slot=0, items=len(items), served_us=t)
    exposures = [
        Exposure(req, mid, uri, f"arm-{mid % 2}", viewer, pos, pos, t)
        for pos, (mid, uri) in enumerate(items)
    ]
    return page, exposures


def _uri(i: int) -> str:
    return make_mention(i).reply_uri


class TestFeedLedgerContract:
    """Behaviour both backends share for the feed tables."""

    async def test_is_a_feed_ledger(self, ledger: Ledger) -> None:
        """Each backend satisfies the FeedLedger protocol."""
        assert isinstance(ledger, FeedLedger)

    async def test_candidates_after_id_and_since(self, ledger: Ledger) -> None:
        """feed_candidates returns newer mentions (by id) created at or after ``since_us``."""
        ids = await _mentions(ledger, 4)
        got = await ledger.feed_candidates(ids[0], T0 + 2 * S)
        assert [c.mention_id for c in got] == ids[2:]
        assert got[0].reply_uri == _uri(2) and got[0].model == "model-0"
        assert got[0].created_us == T0 + 2 * S and got[0].picker == "llm"

    async def test_page_roundtrip_impressions_and_session(self, ledger: Ledger) -> None:
        """A recorded page's exposures come back in order, count as impressions and make up
        its session."""
        ids = await _mentions(ledger, 3)
        page, exps = _page("req-1", "sess", VIEWER, [(ids[0], _uri(0)), (ids[1], _uri(1))], T0)
        await ledger.record_feed_pages([(page, exps)])
        page2, exps2 = _page("req-2", "sess", VIEWER, [(ids[0], _uri(0))], T0 + S)
        await ledger.record_feed_pages([(page2, exps2)])
        rows = await ledger.feed_exposures("req-1")
        assert [r.exposure for r in rows] == exps
        assert all(r.seen_us is None and r.like_us is None for r in rows)
        assert await ledger.feed_impressions(T0) == {ids[0]: 2, ids[1]: 1}
        assert await ledger.feed_impressions(T0 + S) == {ids[0]: 1}
        session = await ledger.feed_session("sess")
        assert session is not None and session.viewer == VIEWER
        assert sorted(session.mention_ids) == [ids[0], ids[0], ids[1]]
        assert await ledger.feed_session("other") is None

    async def test_empty_page_is_recorded(self, ledger: Ledger) -> None:
        """A page with no items is still a served page: its session exists."""
        page, _ = _page("req-e", "empty", None, [], T0)
        await ledger.record_feed_pages([(page, [])])
        session = await ledger.feed_session("empty")
        assert session is not None and session.viewer is None and session.mention_ids == ()

    async def test_a_batch_is_written_together_and_a_retry_is_a_no_op(self, ledger: Ledger) -> None:
        """Pages of one batch and their exposures are written together; writing a batch again
        (a retry after a lost acknowledgement) changes nothing."""
        ids = await _mentions(ledger, 1)
        page, exps = _page("req-d", "s", None, [(ids[0], _uri(0))], T0)
        other, other_exps = _page("req-o", "s1", None, [(ids[0], _uri(0))], T0)
        await ledger.record_feed_pages([(page, exps), (other, other_exps)])
        await ledger.record_feed_pages([(page, exps), (other, other_exps)])
        assert len(await ledger.feed_exposures()) == 2
        assert await ledger.feed_impressions(T0) == {ids[0]: 2}

    async def test_a_batch_with_a_bad_row_writes_nothing(self, ledger: Ledger) -> None:
        """One exposure of an unknown mention fails the whole batch: no page of it stays."""
        ids = await _mentions(ledger, 1)
        good, good_exps = _page("req-g", "sg", None, [(ids[0], _uri(0))], T0)
        bad, bad_exps = _page("req-b", "sb", None, [(ids[0] + 999, _uri(9))], T0)
        with pytest.raises(LedgerError):
            await ledger.record_feed_pages([(good, good_exps), (bad, bad_exps)])
        assert await ledger.feed_exposures() == []
        assert await ledger.feed_session("sg") is None

    async def test_interactions_mark_seen_and_engagement_of_own_exposure(
        self, ledger: Ledger
    ) -> None:
        """sendInteractions sets seen and engagement on the viewer's exposure of that page,
        once; another viewer's interactions touch nothing of it."""
        ids = await _mentions(ledger, 2)
        page, exps = _page("req-i", "s", VIEWER, [(ids[0], _uri(0)), (ids[1], _uri(1))], T0)
        await ledger.record_feed_pages([(page, exps)])
        seen = Interaction(_uri(0), SEEN_EVENT, "req-i", "ctx")
        liked = Interaction(_uri(1), DEFS + "interactionLike", "req-i")
        other = Interaction(_uri(0), DEFS + "interactionRepost", "req-i")
        changed = await ledger.record_feed_interactions(
            VIEWER, [seen, liked, Interaction(_uri(1), DEFS + "requestLess", "req-i")], T0 + S
        )
        assert changed == 2
        assert await ledger.record_feed_interactions("did:plc:intruder", [other], T0 + S) == 0
        assert await ledger.record_feed_interactions(VIEWER, [seen], T0 + 2 * S) == 0
        first, second = await ledger.feed_exposures("req-i")
        assert first.seen_us == T0 + S and first.repost_us is None
        assert second.like_us == T0 + S and second.seen_us == T0 + S  # a like implies seen

    async def test_interaction_without_req_id_uses_latest_exposure(self, ledger: Ledger) -> None:
        """An interaction without reqId applies to the viewer's latest exposure of the item."""
        ids = await _mentions(ledger, 1)
        for n, t in enumerate((T0, T0 + 10 * S)):
            page, exps = _page(f"r{n}", f"s{n}", VIEWER, [(ids[0], _uri(0))], t)
            await ledger.record_feed_pages([(page, exps)])
        seen = Interaction(_uri(0), SEEN_EVENT)
        assert await ledger.record_feed_interactions(VIEWER, [seen], T0 + 20 * S) == 1
        rows = await ledger.feed_exposures()
        assert [r.seen_us for r in rows] == [None, T0 + 20 * S]

    async def test_firehose_engagement_joins_latest_exposure_in_window(
        self, ledger: Ledger
    ) -> None:
        """A like joins the viewer's latest exposure served within the window, once; none
        joins for a viewer who was never served the item or outside the window."""
        ids = await _mentions(ledger, 1)
        page, exps = _page("r", "s", VIEWER, [(ids[0], _uri(0))], T0)
        await ledger.record_feed_pages([(page, exps)])
        mark = ledger.mark_feed_engagement
        assert not await mark(_uri(0), "did:plc:stranger", "like", T0 + S, 3600 * S)
        assert not await mark(_uri(0), VIEWER, "like", T0 + 7200 * S, 3600 * S)
        assert await mark(_uri(0), VIEWER, "like", T0 + S, 3600 * S)
        assert not await mark(_uri(0), VIEWER, "like", T0 + 2 * S, 3600 * S)
        assert await mark(_uri(0), VIEWER, "reply", T0 + 3 * S, 3600 * S)
        (row,) = await ledger.feed_exposures()
        assert row.like_us == T0 + S and row.reply_us == T0 + 3 * S and row.seen_us is None
        with pytest.raises(ValueError):
            await mark(_uri(0), VIEWER, "block", T0, S)

    async def test_arm_counts(self, ledger: Ledger) -> None:
        """Per-arm counts: served, seen, engaged among served and among seen, per kind."""
        ids = await _mentions(ledger, 4)
        items = [(m, _uri(i)) for i, m in enumerate(ids)]
        page, exps = _page("r", "s", VIEWER, items, T0)
        await ledger.record_feed_pages([(page, exps)])
        arm = {e.item_uri: e.arm for e in exps}
        await ledger.record_feed_interactions(
            VIEWER,
            [
                Interaction(_uri(0), SEEN_EVENT, "r"),
                Interaction(_uri(1), SEEN_EVENT, "r"),
                Interaction(_uri(2), SEEN_EVENT, "r"),
            ],
            T0 + S,
        )
        await ledger.mark_feed_engagement(_uri(0), VIEWER, "like", T0 + S, 3600 * S)
        await ledger.mark_feed_engagement(_uri(0), VIEWER, "repost", T0 + S, 3600 * S)
        await ledger.mark_feed_engagement(_uri(3), VIEWER, "quote", T0 + S, 3600 * S)
        counts = {c.arm: c for c in await ledger.feed_arm_counts()}
        a0, a1 = counts[arm[_uri(0)]], counts[arm[_uri(1)]]
        assert (a0.served, a0.seen, a0.engaged_seen, a0.engaged_served) == (2, 2, 1, 1)
        assert (a0.likes_seen, a0.reposts_seen, a0.quotes_seen) == (1, 1, 0)
        assert (a1.served, a1.seen, a1.engaged_seen, a1.engaged_served) == (2, 1, 0, 1)
        assert await ledger.feed_arm_counts(T0 + S) == []

    async def test_purge_forgets_old_viewers_only(self, ledger: Ledger) -> None:
        """Purging nulls viewers older than the cut in pages, exposures and interactions, and
        keeps everything else (counts, seen, engagement)."""
        ids = await _mentions(ledger, 1)
        for n, t in enumerate((T0, T0 + 100 * S)):
            page, exps = _page(f"r{n}", f"s{n}", VIEWER, [(ids[0], _uri(0))], t)
            await ledger.record_feed_pages([(page, exps)])
        await ledger.record_feed_interactions(
            VIEWER, [Interaction(_uri(0), SEEN_EVENT, "r0")], T0 + S
        )
        changed = await ledger.purge_feed_viewers(T0 + 50 * S)
        assert changed == 3  # one page, one exposure, one interaction
        old, new = await ledger.feed_exposures()
        assert old.exposure.viewer is None and old.seen_us == T0 + S
        assert new.exposure.viewer == VIEWER
        s0 = await ledger.feed_session("s0")
        assert s0 is not None and s0.viewer is None
        assert await ledger.purge_feed_viewers(T0 + 50 * S) == 0


async def test_feed_tables_survive_reopen(ledgers: Callable[[], Awaitable[Ledger]]) -> None:
    """Pages written by one ledger are read by another on the same database."""
    first = await ledgers()
    ids = await _mentions(first, 1)
    page, exps = _page("r", "s", None, [(ids[0], _uri(0))], T0)
    await first.record_feed_pages([(page, exps)])
    second = await ledgers()
    assert await second.feed_impressions(0) == {ids[0]: 1}


async def test_retrying_ledger_retries_feed_calls(tmp_path: Path) -> None:
    """The feed's ledger calls ride out an unavailable database like the others."""
    inner = SqliteLedger(tmp_path / "l.sqlite3")

    class Flaky:
        """The SQLite ledger, unavailable on the first feed write."""

        failures = 1

        def __getattr__(self, name: str) -> object:
            return getattr(inner, name)

        async def record_feed_pages(self, pages: object) -> None:
            if self.failures:
                self.failures -= 1
                raise LedgerUnavailable("database is restarting")
            await inner.record_feed_pages(pages)  # type: ignore[arg-type]

    async def no_sleep(_: float) -> None:
        return None

    ledger = RetryingLedger(Flaky(), sleep=no_sleep)  # type: ignore[arg-type]
    await ledger.open()
    try:
        ids = await _mentions(ledger, 1)  # type: ignore[arg-type]
        page, exps = _page("r", "s", None, [(ids[0], _uri(0))], T0)
        await ledger.record_feed_pages([(page, exps)])
        assert ledger.retries == 1
        assert [r.exposure for r in await ledger.feed_exposures()] == exps
    finally:
        await ledger.close()
