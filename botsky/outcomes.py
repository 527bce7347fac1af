"""OutcomeWatcher: what happened to each mention, read off the firehose.

What counts, for each open mention:

- a post by the mentioned user whose thread root is the mention's root → **success**
  (the mention closes as ``succeeded``);
- a like, repost or quote of the bot's reply → engagement; a reply to the bot's reply by the
  original author → ``author_reply``;
- a block of the bot by the author or the mentioned user → ``block`` (a negative).

A mention stays indexed until its window closes, even after success, so engagement that comes
later is still counted; at window end an open mention is closed as ``expired``. Every outcome is
written to the ledger once (the ledger's unique key makes replays idempotent).

**Memory.** 10^6 mentions can be open at once (a day's window), so the watcher keeps only what
matching needs, in columns (``array``) addressed by a row number, and no Python object per
mention: the ledger id, the creation time, open/succeeded, the bot (an index into the few bot
DIDs) and 64-bit digests of the reply URI, the thread root, the author and the mentioned user.
Three indexes find rows by digest: reply URI (likes, reposts, quotes, author replies), author
and mentioned user (success, blocks); each is a table of bucket heads plus one link per row
(``_Chains``). Rows are numbered in tracking order and expire in that order, and every chain runs
newest first, so a walk stops at the first expired row: nothing is ever unlinked, expiry only
moves a boundary, and the expired front of the columns is cut off in bulk. The tables grow one
bucket at a time (linear hashing): rehashing 10^6 rows at once in Python would stall the event
loop ~0.4 s per index. Dicts would not do: at 10^6 entries a dict costs ~42 B per entry plus a
32-36 B int key, ~320 B per mention for three indexes; nor would preshed (its map never reuses
deleted cells, it doubles instead, and it does not pickle). ``bench/bench_outcomes.py`` (RSS
growth while tracking 10^6 mentions): 2,908 MB with ``Mention`` objects and string-keyed dicts,
97 MB now (97 B per mention: 37 B of row columns, 48 B of chain keys and links, ~12 B of bucket
heads). Per event at 10^6 open mentions (best of 3, same sitting, busy 2-core machine): an
unrelated like 1.2 µs as before (a like's subject outside the bots' repositories is rejected
before any digest), a top-level post 0.4 µs (3.0: it is no longer parsed), an unrelated reply
5.1 µs (4.1: one digest of the poster); hits, rare on the firehose and dominated by the
``Outcome`` and its log line: a like of a bot reply 8.3 µs (6.2), a success 13.8 µs (12.4).
The cost does not grow with the number of open mentions.

**Exactness.** Digests are blake2b, stable across processes (a simulation checkpoint pickles the
index; ``hash()`` is salted per process). Only URIs in a bot's repository reach the reply
index, but count as if every like, repost, quote and reply on the network did (~4·10^9 a day at
50k events/s): reply URIs get 128 bits, the chain key and a second 64-bit check, and a wrong hit
needs both to collide: ~10^6 · 2^-128 ≈ 3·10^-33 per look-up. Every other comparison is one
64-bit digest on a path that is already narrow. A success needs the poster's digest to equal the
mentioned user's *and* the root's to equal the mention's root: for a post by that very user in
another thread 2^-64, and mentioned users post a few million replies a day, ~10^-13 a day. An
author reply is an exact (128-bit) reply to the bot's reply whose poster's digest equals the
author's: 2^-64 per reply to a bot's reply. A block names one of the bots exactly (a dict of
bot DIDs), then the blocker's digest must equal an author's or a mentioned user's: ≤ 2·10^6 ·
2^-64 ≈ 10^-13 per block of a bot. A wrong outcome is thus far less likely than a hardware
fault. Distinct strings with one 64-bit chain key simply share a chain: the index itself is
never wrong.
"""

from __future__ import annotations

import struct
from array import array
from hashlib import blake2b
from typing import Any, ClassVar, Final

import structlog

from botsky.events import BLOCK, LIKE, POST, REPOST, Event, PostRef, uri_authority
from botsky.ledger.base import Ledger, Mention, Outcome

__all__ = ["OutcomeWatcher"]

log = structlog.get_logger("botsky.outcomes")

_TWO_WORDS: Final = struct.Struct(">QQ").unpack
_MIN_BUCKETS: Final = 8  # a power of two
_SLACK: Final = 1024  # expired rows kept before cutting the columns' front, beyond live // 4
_NONE: Final[tuple[int, ...]] = ()


def _digest(text: str) -> int:
    return int.from_bytes(blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest())


def _digest2(text: str) -> tuple[int, int]:
    """128 bits as (chain key, check)."""
    key, check = _TWO_WORDS(blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest())
    return key, check


class _Chains:
    """Row numbers by a 64-bit key: bucket heads plus one link per row (a linear-hashing table).

    A row number below the caller's ``first`` is dead and ends a walk: rows die oldest first and
    each chain runs newest first, so dead rows only ever sit at chain tails. The table grows by
    one bucket per row added past two rows per bucket (linear hashing: bucket ``split`` is split
    in two), so an insertion never rehashes everything and never stalls the event loop.
    ``keys``/``links`` are columns like the watcher's: physical index = row - ``base``.
    """

    __slots__ = ("heads", "keys", "links", "mask", "split")

    def __init__(self) -> None:
        self.keys = array("Q")
        self.links = array("q")
        self._reset(_MIN_BUCKETS)

    def _reset(self, buckets: int) -> None:
        self.heads = array("q", [-1]) * buckets
        self.mask = buckets - 1
        self.split = 0

    def snapshot(self) -> tuple[array[int], array[int], array[int], int, int]:
        """(heads, keys, links, mask, split), copied."""
        return self.heads[:], self.keys[:], self.links[:], self.mask, self.split

    def restore(self, state: tuple[array[int], array[int], array[int], int, int]) -> None:
        heads, keys, links, self.mask, self.split = state
        self.heads, self.keys, self.links = heads[:], keys[:], links[:]

    def _bucket(self, key: int) -> int:
        b = key & self.mask
        return key & (self.mask << 1 | 1) if b < self.split else b

    def add(self, row: int, key: int, live: int, first: int, base: int) -> None:
        b = self._bucket(key)
        self.keys.append(key)
        self.links.append(self.heads[b])
        self.heads[b] = row
        if live > 2 * len(self.heads):
            self._split_one(first, base)

    def rows(self, key: int, first: int, base: int) -> tuple[int, ...] | list[int]:
        """Live rows with this key, newest first."""
        r = self.heads[self._bucket(key)]
        if r < first:
            return _NONE  # the common case: an event about no open mention
        out: list[int] = []
        keys, links = self.keys, self.links
        while r >= first:
            i = r - base
            if keys[i] == key:
                out.append(r)
            r = links[i]
        return out

    def cut(self, n: int) -> None:
        """Forget the first ``n`` stored rows (all dead)."""
        del self.keys[:n]
        del self.links[:n]

    def shrink(self, live: int, first: int, base: int) -> None:
        """After many rows expired: rebuild with fewer buckets (O(live), live being small)."""
        if len(self.heads) <= _MIN_BUCKETS or 8 * live >= len(self.heads):
            return
        buckets = _MIN_BUCKETS
        while buckets < live:
            buckets *= 2
        self._reset(buckets)
        heads, keys, links, mask = self.heads, self.keys, self.links, self.mask
        for i in range(first - base, len(keys)):  # oldest first, so chains end newest first
            b = keys[i] & mask
            links[i] = heads[b]
            heads[b] = i + base

    def _split_one(self, first: int, base: int) -> None:
        s, high = self.split, self.mask + 1  # bucket s splits into s and s + high
        keys, links = self.keys, self.links
        heads: list[int] = [-1, -1]  # new chains (stay, move), built in the same newest-first order
        tails: list[int] = [-1, -1]
        r = self.heads[s]
        while r >= first:
            i = r - base
            side = 1 if keys[i] & high else 0
            if tails[side] < 0:
                heads[side] = r
            else:
                links[tails[side] - base] = r
            tails[side] = r
            r = links[i]
        for tail in tails:
            if tail >= 0:
                links[tail - base] = -1  # ends the chain here, before the other side's rows
        self.heads[s] = heads[0]
        self.heads.append(heads[1])
        self.split = s + 1
        if self.split == high:
            self.mask, self.split = (high << 1) - 1, 0


class OutcomeWatcher:
    """The open mentions of the window and what happens to them (see the module docstring)."""

    STATE_VERSION: ClassVar[int] = 1  # of ``snapshot``'s value: bump when its keys change

    def __init__(self, ledger: Ledger, *, window_s: float = 86_400.0) -> None:
        self.ledger = ledger
        self.window_us = int(window_s * 1e6)
        self.counts: dict[str, int] = {}
        # Rows [_first, _base + stored) are live; [_base, _first) expired, awaiting a bulk cut.
        self._base = 0
        self._first = 0
        self._ids = array("q")  # ledger mention id
        self._created = array("q")  # created_us
        self._open = bytearray()  # 1 while the mention is open, 0 once it succeeded
        self._bot = array("I")  # index into _bots
        self._root = array("Q")  # digest of the thread root URI
        self._check = array("Q")  # second 64 bits of the reply URI's digest
        self._by_reply = _Chains()
        self._by_author = _Chains()
        self._by_mentioned = _Chains()
        self._bots: list[str] = []  # bot DIDs (a handful)
        self._bot_index: dict[str, int] = {}

    def __len__(self) -> int:
        return self._base + len(self._ids) - self._first

    def snapshot(self) -> dict[str, Any]:
        """The watched mentions as plain values, for ``restore`` (simulation checkpoints).

        Keys: ``counts`` (outcomes recorded by kind), ``base``/``first`` (row numbering), the
        row columns ``ids``/``created``/``open``/``bot``/``root``/``check``, the three indexes
        ``by_reply``/``by_author``/``by_mentioned`` (``_Chains`` columns) and ``bots`` (bot DIDs
        in index order). Rows keep their numbers, so the indexes stay valid as they are; the
        digests are blake2b, the same in every process. Not the ledger nor the window (the
        configuration). Nothing in it is shared with the watcher.
        """
        return {
            "counts": dict(self.counts),
            "base": self._base,
            "first": self._first,
            "ids": self._ids[:],
            "created": self._created[:],
            "open": bytes(self._open),
            "bot": self._bot[:],
            "root": self._root[:],
            "check": self._check[:],
            "by_reply": self._by_reply.snapshot(),
            "by_author": self._by_author.snapshot(),
            "by_mentioned": self._by_mentioned.snapshot(),
            "bots": list(self._bots),
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Watch what ``state`` (a ``snapshot``) describes; the value stays the caller's."""
        self.counts = dict(state["counts"])
        self._base, self._first = state["base"], state["first"]
        self._ids = state["ids"][:]
        self._created = state["created"][:]
        self._open = bytearray(state["open"])
        self._bot = state["bot"][:]
        self._root = state["root"][:]
        self._check = state["check"][:]
        self._by_reply.restore(state["by_reply"])
        self._by_author.restore(state["by_author"])
        self._by_mentioned.restore(state["by_mentioned"])
        self._bots = list(state["bots"])
        self._bot_index = {did: k for k, did in enumerate(self._bots)}

    async def load(self) -> int:
        """Index every open mention still in its window (after a restart)."""
        for m in await self.ledger.open_mentions():
            self.track(m)
        return len(self)

    def track(self, m: Mention) -> None:
        """Start watching a recorded mention."""
        key, check = _digest2(m.reply_uri)
        first, base = self._first, self._base
        for r in self._by_reply.rows(key, first, base):
            if self._ids[r - base] == m.id:
                return  # already watched (a takeover re-reads every open mention)
        bot_did = uri_authority(m.reply_uri)  # the bot's reply is in the bot's repository
        bot = self._bot_index.get(bot_did)
        if bot is None:
            bot = self._bot_index[bot_did] = len(self._bots)
            self._bots.append(bot_did)
        row = base + len(self._ids)
        self._ids.append(m.id)
        self._created.append(m.created_us)
        self._open.append(1 if m.status == "open" else 0)
        self._bot.append(bot)
        self._root.append(_digest(m.root_uri))
        self._check.append(check)
        live = row + 1 - first
        self._by_reply.add(row, key, live, first, base)
        self._by_author.add(row, _digest(m.post_author), live, first, base)
        self._by_mentioned.add(row, _digest(m.mentioned_did), live, first, base)

    async def observe(self, event: Event) -> None:
        """Record whatever this event means for the mentions being watched."""
        # (not self._ids: nothing stored at all, the cheap test; expired rows are skipped later)
        if event.kind != "commit" or event.operation != "create" or not self._ids:
            return
        col = event.collection
        if col == POST:
            record = event.record
            # A top-level post without an embed can mean nothing here: skip parsing it.
            if isinstance(record, dict) and ("reply" in record or "embed" in record):
                await self._on_post(event, event.post)
        elif col in (LIKE, REPOST):
            r = self._reply_row(event.subject_uri())
            if r >= 0:
                mid = self._ids[r - self._base]
                await self._record(mid, "like" if col == LIKE else "repost", event)
        elif col == BLOCK:
            target = event.subject_did()
            bot = self._bot_index.get(target) if target is not None else None
            if bot is not None:  # blocks of anyone but a bot cost this dict look-up only
                await self._on_block(event, bot)

    async def expire(self, now_us: int) -> list[int]:
        """Stop watching mentions whose window closed; close the open ones as ``expired``.

        Returns the ids of the mentions this call closed as expired.
        """
        expired: list[int] = []
        cutoff = now_us - self.window_us
        while self._first < self._base + len(self._ids):
            i = self._first - self._base
            if self._created[i] > cutoff:
                break
            self._first += 1  # dead from now on, before the await: no one else handles it
            mid = self._ids[i]
            if self._open[i] and await self.ledger.close_mention(mid, "expired", now_us):
                expired.append(mid)
                log.info("mention_closed", mention_id=mid, status="expired", time_us=now_us)
        self._cut()
        return expired

    # internals --------------------------------------------------------------------------
    # Awaits (ledger calls) may let expire() or track() run; both keep row numbers valid, but a
    # row may die and the columns' front may be cut, so column reads after an await go through
    # _slot (physical index, or -1 for a dead row).
    def _slot(self, row: int) -> int:
        return row - self._base if row >= self._first else -1

    def _reply_row(self, uri: str | None) -> int:
        """The live row whose bot reply is ``uri``, or -1."""
        # Bot replies live in the bots' repositories: any other URI (nearly every like on the
        # network) is a miss without computing a digest.
        if not uri or uri_authority(uri) not in self._bot_index:
            return -1
        key, check = _digest2(uri)
        base = self._base
        for r in self._by_reply.rows(key, self._first, base):
            if self._check[r - base] == check:
                return r  # newest first, as a dict keyed by reply URI would have kept
        return -1

    async def _on_post(self, event: Event, post: PostRef) -> None:
        did = -1  # the poster's digest, computed at most once, when needed
        if post.root_uri is not None:
            did = _digest(event.did)
            rows = self._by_mentioned.rows(did, self._first, self._base)
            if rows:
                root = _digest(post.root_uri)
                for r in reversed(rows):  # oldest first, the order mentions were tracked in
                    i = self._slot(r)
                    if i >= 0 and self._root[i] == root:
                        await self._succeed(r, event)
        parent = self._reply_row(post.parent_uri)
        if parent >= 0:
            i = parent - self._base
            if did < 0:
                did = _digest(event.did)
            if self._by_author.keys[i] == did:
                await self._record(self._ids[i], "author_reply", event)
        quoted = self._reply_row(post.quote_uri)
        if quoted >= 0:
            await self._record(self._ids[quoted - self._base], "quote", event)

    async def _on_block(self, event: Event, bot: int) -> None:
        did = _digest(event.did)
        first, base = self._first, self._base
        rows = {*self._by_author.rows(did, first, base), *self._by_mentioned.rows(did, first, base)}
        mids = [self._ids[r - base] for r in sorted(rows) if self._bot[r - base] == bot]
        for mid in mids:
            await self._record(mid, "block", event)

    async def _succeed(self, row: int, event: Event) -> None:
        i = self._slot(row)
        if i < 0 or event.time_us - self._created[i] > self.window_us:
            return
        mid = self._ids[i]
        await self._record(mid, "success", event)
        # If the row expired meanwhile, the ledger decides (close_mention is atomic).
        i = self._slot(row)
        if (i < 0 or self._open[i]) and await self.ledger.close_mention(
            mid, "succeeded", event.time_us
        ):
            i = self._slot(row)
            if i >= 0:
                self._open[i] = 0
            log.info("mention_closed", mention_id=mid, status="succeeded", time_us=event.time_us)

    async def _record(self, mid: int, kind: str, event: Event) -> None:
        outcome = Outcome(mid, kind, event.did, event.uri, event.time_us)
        if await self.ledger.record_outcome(outcome):
            self.counts[kind] = self.counts.get(kind, 0) + 1
            log.info(
                "outcome_recorded",
                mention_id=mid,
                kind=kind,
                actor=event.did,
                uri=event.uri,
                time_us=event.time_us,
            )

    def _cut(self) -> None:
        """Drop the expired front of the columns once it outweighs a quarter of the live rows
        (a memmove of the live part, so amortized O(1) per expired row)."""
        dead = self._first - self._base
        live = len(self)
        if dead < _SLACK + live // 4:
            return
        for column in (self._ids, self._created, self._bot, self._root, self._check):
            del column[:dead]
        del self._open[:dead]
        self._base = self._first
        for chains in (self._by_reply, self._by_author, self._by_mentioned):
            chains.cut(dead)
            chains.shrink(live, self._first, self._base)
