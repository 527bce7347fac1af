"""OutcomeWatcher: what happened to each mention, read off the firehose.

Open mentions are indexed by thread root, by the bot's reply URI and by the DIDs involved, so
each event costs O(1) dictionary look-ups whatever the number of open mentions:

- a post by the mentioned user whose thread root is the mention's root → **success**
  (the mention closes as ``succeeded``);
- a like, repost or quote of the bot's reply → engagement; a reply to the bot's reply by the
  original author → ``author_reply``;
- a block of the bot by the author or the mentioned user → ``block`` (a negative).

A mention stays indexed until its window closes, even after success, so engagement that comes
later is still counted; at window end an open mention is closed as ``expired``. Every outcome is
written to the ledger once (the ledger's unique key makes replays idempotent).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

import structlog

from botsky.events import BLOCK, LIKE, POST, REPOST, Event, PostRef
from botsky.ledger.base import Ledger, Mention, Outcome

__all__ = ["OutcomeWatcher"]

log = structlog.get_logger("botsky.outcomes")


class OutcomeWatcher:
    def __init__(self, ledger: Ledger, *, window_s: float = 86_400.0) -> None:
        self.ledger = ledger
        self.window_us = int(window_s * 1e6)
        self.counts: dict[str, int] = {}
        self._by_id: dict[int, Mention] = {}
        self._by_root: dict[str, list[int]] = {}
        self._by_reply: dict[str, int] = {}
        self._by_did: dict[str, list[int]] = {}  # author and mentioned user → mention ids
        self._order: deque[int] = deque()  # ids by creation time, for expiry

    def __len__(self) -> int:
        return len(self._by_id)

    async def load(self) -> int:
        """Index every open mention still in its window (after a restart)."""
        for m in await self.ledger.open_mentions():
            self.track(m)
        return len(self._by_id)

    def track(self, m: Mention) -> None:
        """Start watching a recorded mention."""
        if m.id in self._by_id:
            return
        self._by_id[m.id] = m
        self._by_root.setdefault(m.root_uri, []).append(m.id)
        self._by_reply[m.reply_uri] = m.id
        for did in {m.post_author, m.mentioned_did}:
            self._by_did.setdefault(did, []).append(m.id)
        self._order.append(m.id)

    async def observe(self, event: Event) -> None:
        """Record whatever this event means for the mentions being watched."""
        if event.kind != "commit" or event.operation != "create" or not self._by_id:
            return
        col = event.collection
        if col == POST:
            await self._on_post(event)
        elif col in (LIKE, REPOST):
            mid = self._by_reply.get(event.subject_uri() or "")
            if mid is not None:
                await self._record(mid, "like" if col == LIKE else "repost", event)
        elif col == BLOCK:
            target = event.subject_did()
            for mid in self._by_did.get(event.did, ()):
                m = self._by_id[mid]
                if target == _bot_did(m):
                    await self._record(mid, "block", event)

    async def expire(self, now_us: int) -> list[Mention]:
        """Stop watching mentions whose window closed; close the open ones as ``expired``."""
        expired: list[Mention] = []
        cutoff = now_us - self.window_us
        while self._order:
            m = self._by_id.get(self._order[0])
            if m is not None and m.created_us > cutoff:
                break
            self._order.popleft()
            if m is None:
                continue
            if m.status == "open" and await self.ledger.close_mention(m.id, "expired", now_us):
                m.status, m.outcome_us = "expired", now_us
                expired.append(m)
                log.info("mention_closed", mention_id=m.id, status="expired", time_us=now_us)
            self._untrack(m)
        return expired

    # internals --------------------------------------------------------------------------
    async def _on_post(self, event: Event) -> None:
        post = PostRef.of(event.record)
        if post.root_uri is not None:
            for mid in tuple(self._by_root.get(post.root_uri, ())):
                m = self._by_id[mid]
                if event.did == m.mentioned_did:
                    await self._succeed(m, event)
        parent = self._by_reply.get(post.parent_uri or "")
        if parent is not None and event.did == self._by_id[parent].post_author:
            await self._record(parent, "author_reply", event)
        quoted = self._by_reply.get(post.quote_uri or "")
        if quoted is not None:
            await self._record(quoted, "quote", event)

    async def _succeed(self, m: Mention, event: Event) -> None:
        if event.time_us - m.created_us > self.window_us:
            return
        await self._record(m.id, "success", event)
        if m.status == "open" and await self.ledger.close_mention(m.id, "succeeded", event.time_us):
            m.status, m.outcome_us = "succeeded", event.time_us
            log.info("mention_closed", mention_id=m.id, status="succeeded", time_us=event.time_us)

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

    def _untrack(self, m: Mention) -> None:
        del self._by_id[m.id]
        _remove(self._by_root, m.root_uri, m.id)
        self._by_reply.pop(m.reply_uri, None)
        for did in {m.post_author, m.mentioned_did}:
            _remove(self._by_did, did, m.id)


def _bot_did(m: Mention) -> str:
    # The bot's DID is the authority of its reply's AT-URI: at://<did>/app.bsky.feed.post/<rkey>.
    return m.reply_uri[5:].split("/", 1)[0]


def _remove(index: dict[str, list[int]], key: str, mid: int) -> None:
    ids: Iterable[int] | None = index.get(key)
    if ids is not None:
        rest = [i for i in ids if i != mid]
        if rest:
            index[key] = rest
        else:
            del index[key]
