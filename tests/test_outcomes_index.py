"""OutcomeWatcher's compact index: exact against a naive scan, at scale, under collisions,
across a checkpoint pickle and with expiry running while a match awaits the ledger."""

from __future__ import annotations

import asyncio
import pickle
from collections.abc import Iterable
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import botsky.outcomes as outcomes_mod
from botsky.events import BLOCK, LIKE, POST, REPOST, Event, PostRef
from botsky.ledger.base import Mention, Outcome
from botsky.outcomes import OutcomeWatcher
from tests.support import T0

USERS = [f"did:plc:user{i}" for i in range(4)]  # few, so mentions share users and threads
BOTS = ["did:plc:bota", "did:plc:botb"]
ROOTS = [f"at://{USERS[i]}/app.bsky.feed.post/root{i}" for i in range(2)]


class MemoryLedger:
    """The two ledger calls the watcher makes, with the real contract (unique outcomes,
    atomic open → closed), plus ``open_mentions`` for ``load``."""

    def __init__(self, mentions: Iterable[Mention] = ()) -> None:
        self.status: dict[int, str] = {}
        self.outcomes: list[Outcome] = []
        self._seen: set[tuple[int, str, str]] = set()
        self._mentions: list[Mention] = []
        for m in mentions:
            self.add(m)

    def add(self, m: Mention) -> None:
        self.status.setdefault(m.id, m.status)
        self._mentions.append(m)

    async def record_outcome(self, outcome: Outcome) -> bool:
        key = (outcome.mention_id, outcome.kind, outcome.uri)
        if key in self._seen:
            return False
        self._seen.add(key)
        self.outcomes.append(outcome)
        return True

    async def close_mention(self, mention_id: int, status: str, time_us: int) -> bool:
        if self.status.get(mention_id) != "open":
            return False
        self.status[mention_id] = status
        return True

    async def open_mentions(self) -> list[Mention]:
        return [m for m in self._mentions if self.status[m.id] == "open"]


def mention(mid: int, author: str, mentioned: str, root: str, bot: str, created_us: int) -> Mention:
    return Mention(
        post_uri=root, post_cid="c", post_author=author, root_uri=root, root_cid="c",
        bot="b", model="m", provider="p", persona="x", picker="llm",
        reply_uri=f"at://{bot}/app.bsky.feed.post/reply{mid}", reply_cid="c", reply_text="hi",
        mentioned_did=mentioned, mentioned_handle="h", candidates=[mentioned], rank=0,
        created_us=created_us, id=mid,
    )  # fmt: skip


def commit(did: str, t: int, collection: str, record: dict[str, Any], n: int) -> Event:
    return Event(
        did=did, time_us=t, kind="commit", cursor=t, operation="create",
        collection=collection, rkey=f"k{n}", cid="c", record=record,
    )  # fmt: skip


def post_event(
    did: str, t: int, n: int, root: str | None, parent: str | None, quote: str | None
) -> Event:
    record: dict[str, Any] = {"text": "x"}
    if root is not None or parent is not None:
        reply: dict[str, Any] = {}
        if root is not None:
            reply["root"] = {"uri": root, "cid": "c"}
        if parent is not None:
            reply["parent"] = {"uri": parent, "cid": "c"}
        record["reply"] = reply
    if quote is not None:
        record["embed"] = {"$type": "app.bsky.embed.record", "record": {"uri": quote, "cid": "c"}}
    return commit(did, t, POST, record, n)


def like_event(did: str, t: int, n: int, subject: str, kind: str = LIKE) -> Event:
    return commit(did, t, kind, {"subject": {"uri": subject, "cid": "c"}}, n)


class NaiveWatcher:
    """The matching rules as a plain scan over the watched mentions (the oracle)."""

    def __init__(self, ledger: MemoryLedger, window_us: int) -> None:
        self.ledger, self.window_us = ledger, window_us
        self.live: list[Mention] = []
        self.open: dict[int, bool] = {}
        self.counts: dict[str, int] = {}

    def track(self, m: Mention) -> None:
        if all(x.id != m.id for x in self.live):
            self.live.append(m)
            self.open[m.id] = m.status == "open"

    def _by_reply(self, uri: str | None) -> Mention | None:
        found = [m for m in self.live if uri and m.reply_uri == uri]
        return found[-1] if found else None

    async def _record(self, m: Mention, kind: str, e: Event) -> None:
        if await self.ledger.record_outcome(Outcome(m.id, kind, e.did, e.uri, e.time_us)):
            self.counts[kind] = self.counts.get(kind, 0) + 1

    async def observe(self, e: Event) -> None:
        if e.kind != "commit" or e.operation != "create" or not self.live:
            return
        if e.collection == POST:
            p = PostRef.of(e.record)
            for m in list(self.live):
                if p.root_uri == m.root_uri and e.did == m.mentioned_did:
                    if e.time_us - m.created_us > self.window_us:
                        continue
                    await self._record(m, "success", e)
                    if self.open[m.id] and await self.ledger.close_mention(
                        m.id, "succeeded", e.time_us
                    ):
                        self.open[m.id] = False
            parent = self._by_reply(p.parent_uri)
            if parent is not None and e.did == parent.post_author:
                await self._record(parent, "author_reply", e)
            quoted = self._by_reply(p.quote_uri)
            if quoted is not None:
                await self._record(quoted, "quote", e)
        elif e.collection in (LIKE, REPOST):
            m = self._by_reply(e.subject_uri())
            if m is not None:
                await self._record(m, "like" if e.collection == LIKE else "repost", e)
        elif e.collection == BLOCK:
            for m in list(self.live):
                bot = m.reply_uri[5:].split("/", 1)[0]
                if e.did in (m.post_author, m.mentioned_did) and e.subject_did() == bot:
                    await self._record(m, "block", e)

    async def expire(self, now_us: int) -> list[int]:
        out: list[int] = []
        while self.live and self.live[0].created_us <= now_us - self.window_us:
            m = self.live.pop(0)
            if self.open[m.id] and await self.ledger.close_mention(m.id, "expired", now_us):
                out.append(m.id)
        return out


# One step of a random script; indexes pick users, bots, roots or earlier mentions.
_i = st.integers(0, 50)
_uri_pick = st.one_of(st.none(), st.tuples(st.sampled_from(["root", "reply", "other"]), _i))
_step = st.one_of(
    st.tuples(st.just("track"), _i, _i, _i, _i),
    st.tuples(st.just("retrack"), _i),
    st.tuples(st.just("post"), _i, _uri_pick, _uri_pick, _uri_pick),
    st.tuples(st.sampled_from(["like", "repost"]), _i, _uri_pick),
    st.tuples(st.just("block"), _i, st.booleans(), _i),
    st.tuples(st.just("tick"), st.integers(1, 6)),
    st.tuples(st.just("expire")),
)


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(st.lists(_step, min_size=20, max_size=150), st.sampled_from([0, 1, 1024]))
def test_the_index_matches_a_naive_scan(script: list[tuple[Any, ...]], slack: int) -> None:
    """Random tracks, posts, likes, reposts, blocks and expiries: same outcomes, same order,
    same closes and counts as scanning every watched mention (small tables and an eager cut
    make splits, cuts and shrinks happen within a few dozen mentions)."""
    with (
        mock.patch.object(outcomes_mod, "_SLACK", slack),
        mock.patch.object(outcomes_mod, "_MIN_BUCKETS", 1),
    ):
        asyncio.run(_run_script(script))


async def _run_script(script: list[tuple[Any, ...]]) -> None:
    window = 10
    real_ledger, naive_ledger = MemoryLedger(), MemoryLedger()
    watcher = OutcomeWatcher(real_ledger, window_s=window / 1e6)  # type: ignore[arg-type]
    naive = NaiveWatcher(naive_ledger, window)
    made: list[Mention] = []
    now = T0

    def uri(pick: tuple[str, int] | None) -> str | None:
        if pick is None:
            return None
        kind, i = pick
        if kind == "root":
            return ROOTS[i % len(ROOTS)]
        if kind == "reply" and made:
            return made[i % len(made)].reply_uri
        return f"at://did:plc:else/app.bsky.feed.post/{i}"

    for n, step in enumerate(script):
        op = step[0]
        if op == "track":
            _, a, b, r, bot = step
            m = mention(
                len(made) + 1,
                USERS[a % len(USERS)],
                USERS[b % len(USERS)],
                ROOTS[r % len(ROOTS)],
                BOTS[bot % 2],
                now,
            )
            made.append(m)
            real_ledger.add(m)
            naive_ledger.add(m)
            watcher.track(m)
            naive.track(m)
        elif op == "retrack":
            if made:
                m = made[step[1] % len(made)]
                watcher.track(m)
                naive.track(m)
        elif op == "tick":
            now += step[1]
        elif op == "expire":
            assert await watcher.expire(now) == await naive.expire(now)
        else:
            if op == "post":
                e = post_event(
                    USERS[step[1] % len(USERS)], now, n, uri(step[2]), uri(step[3]), uri(step[4])
                )
            elif op in ("like", "repost"):
                subject = uri(step[2]) or "at://did:plc:else/app.bsky.feed.post/x"
                e = like_event(
                    USERS[step[1] % len(USERS)], now, n, subject, LIKE if op == "like" else REPOST
                )
            else:
                target = BOTS[step[3] % 2] if step[2] else USERS[step[3] % len(USERS)]
                e = commit(USERS[step[1] % len(USERS)], now, BLOCK, {"subject": target}, n)
            await watcher.observe(e)
            await naive.observe(e)
        assert len(watcher) == len(naive.live)
    assert real_ledger.outcomes == naive_ledger.outcomes
    assert real_ledger.status == naive_ledger.status
    assert watcher.counts == naive.counts


async def test_thousands_of_mentions_through_growth_cut_and_shrink() -> None:
    """3,000 mentions split the tables hundreds of times; expiring most of them cuts the
    columns and shrinks the tables; every live mention is still found, no expired one is."""
    ledger = MemoryLedger()
    watcher = OutcomeWatcher(ledger, window_s=3600)  # type: ignore[arg-type]
    made = [
        mention(i + 1, f"did:plc:a{i}", f"did:plc:m{i}", f"at://did:plc:a{i}/p/{i}", BOTS[i % 2],
                T0 + i)
        for i in range(3000)
    ]  # fmt: skip
    for m in made:
        ledger.add(m)
        watcher.track(m)
    assert len(watcher) == 3000
    for i, m in enumerate(made):
        await watcher.observe(like_event("did:plc:fan", T0 + 10_000, i, m.reply_uri))
    assert [o.mention_id for o in ledger.outcomes] == [m.id for m in made]

    closed = await watcher.expire(T0 + 3_600_000_000 + 2_989)  # all but the last 10
    assert closed == [m.id for m in made[:2990]]
    assert len(watcher) == 10
    assert len(watcher._ids) == 10  # the expired front was cut
    assert len(watcher._by_reply.heads) == 16  # and the tables shrank
    ledger.outcomes.clear()
    for i, m in enumerate(made):
        await watcher.observe(like_event("did:plc:fan2", T0 + 20_000, i, m.reply_uri))
        await watcher.observe(post_event(m.mentioned_did, T0 + 20_000, i, m.root_uri, None, None))
    assert {o.mention_id for o in ledger.outcomes} == {m.id for m in made[2990:]}
    assert sum(s == "succeeded" for s in ledger.status.values()) == 10


async def test_reply_uris_sharing_a_chain_key_are_told_apart_by_the_check() -> None:
    """Even if every reply URI had the same 64-bit chain key, the second 64 bits pick the right
    mention (the index is exact; only a full 128-bit collision could confuse it)."""
    real = outcomes_mod._digest2
    with mock.patch.object(outcomes_mod, "_digest2", lambda s: (7, real(s)[1])):
        ledger = MemoryLedger()
        watcher = OutcomeWatcher(ledger)  # type: ignore[arg-type]
        made = [mention(i + 1, USERS[0], USERS[1], ROOTS[0], BOTS[0], T0) for i in range(40)]
        for m in made:
            watcher.track(m)
        for i in (5, 0, 39, 17):
            await watcher.observe(like_event(USERS[2], T0 + 1, i, made[i].reply_uri))
        await watcher.observe(like_event(USERS[2], T0 + 1, 99, f"{made[0].reply_uri}x"))
    assert [o.mention_id for o in ledger.outcomes] == [6, 1, 40, 18]


async def test_the_index_survives_a_checkpoint_pickle() -> None:
    """A pickled ``snapshot()`` restored into a fresh watcher (the checkpoint's contract) holds
    the same rows and indexes: matching goes on as before."""
    ledger = MemoryLedger()
    watcher = OutcomeWatcher(ledger, window_s=60)  # type: ignore[arg-type]
    n = len(USERS)
    made = [
        mention(i + 1, USERS[i % n], USERS[(i + 1) % n], ROOTS[i % 2], BOTS[i % 2], T0 + i)
        for i in range(50)
    ]
    for m in made:
        ledger.add(m)
        watcher.track(m)
    await watcher.expire(T0 + 60_000_000 + 5)  # the first rows expire: base and first move
    fresh = OutcomeWatcher(ledger, window_s=60)  # type: ignore[arg-type]
    fresh.restore(pickle.loads(pickle.dumps(watcher.snapshot())))
    assert fresh.snapshot() == watcher.snapshot()
    assert len(fresh) == 44
    await fresh.observe(like_event(USERS[0], T0 + 100, 1, made[7].reply_uri))
    await fresh.observe(commit(USERS[3], T0 + 101, BLOCK, {"subject": BOTS[1]}, 2))
    blocked = sorted(m.id for m in made[6:] if m.reply_uri.startswith(f"at://{BOTS[1]}/")
                     and USERS[3] in (m.post_author, m.mentioned_did))  # fmt: skip
    assert blocked
    assert [(o.mention_id, o.kind) for o in ledger.outcomes] == [(8, "like")] + [
        (mid, "block") for mid in blocked
    ]


class GatedLedger(MemoryLedger):
    """Holds the first success outcome until ``gate`` is set (so expiry can run meanwhile)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.waiting = asyncio.Event()

    async def record_outcome(self, outcome: Outcome) -> bool:
        if outcome.kind == "success" and not self.gate.is_set():
            self.waiting.set()
            await self.gate.wait()
        return await super().record_outcome(outcome)


async def test_a_match_awaiting_the_ledger_survives_expiry_cutting_the_columns() -> None:
    """While a success waits on the ledger, expiry closes 2,000 older mentions and cuts the
    columns (row positions shift): the success still closes the right mention, once."""
    ledger = GatedLedger()
    watcher = OutcomeWatcher(ledger, window_s=3600)  # type: ignore[arg-type]
    old = [mention(i + 1, f"did:plc:a{i}", f"did:plc:m{i}", ROOTS[0], BOTS[0], T0)
           for i in range(2000)]  # fmt: skip
    late = mention(5000, USERS[0], USERS[1], ROOTS[1], BOTS[1], T0 + 3_000_000_000)
    for m in [*old, late]:
        ledger.add(m)
        watcher.track(m)
    success = post_event(USERS[1], T0 + 3_100_000_000, 1, ROOTS[1], late.reply_uri, None)
    pending = asyncio.create_task(watcher.observe(success))
    await ledger.waiting.wait()
    assert len(await watcher.expire(T0 + 3_700_000_000)) == 2000
    assert watcher._base == 2000 and len(watcher._ids) == 1  # the front was cut
    ledger.gate.set()
    await pending
    assert ledger.status[5000] == "succeeded"
    again = post_event(USERS[1], T0 + 3_200_000_000, 2, ROOTS[1], None, None)
    await watcher.observe(again)  # a second success: recorded, but no second close
    assert [o.kind for o in ledger.outcomes if o.mention_id == 5000] == ["success", "success"]
    assert not watcher._open[0]
