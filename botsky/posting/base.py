"""The poster contract: what a bot's reply is, where it landed, and how a poster is called.

Backends: ``dryrun`` (logs, and keeps a JSONL "repo"), ``atproto`` (each bot's PDS; sessions,
429 handling, with the write budget of ``budget``); the simulation's world is a poster too, so
the pipeline under test is the production pipeline.

Every reply carries a record key chosen before posting (a TID derived from the claim), so
posting is idempotent: after a crash between the post call and the ledger write, ``lookup``
finds the reply under that key in the bot's repo, or learns that it was never posted.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from botsky.events import POST
from botsky.ids import tid

__all__ = ["Posted", "Poster", "ReplyPost", "StrongRef", "reply_rkey"]


def reply_rkey(time_us: int, key: str) -> str:
    """A TID record key for one bot's reply to one post, chosen before posting.

    ``time_us`` is the answered post's own time and ``key`` names the bot and the post: the
    timestamp keeps its millisecond, the sub-millisecond part (1000 values) and the 10-bit
    clock id come from a hash of ``key``. Distinct replies then collide only if their posts
    share a millisecond *and* 20 hash bits; stream time would not do, since a replay or a
    takeover answers hundreds of posts at one frozen stream time.
    """
    h = hashlib.sha256(key.encode()).digest()
    micros = (time_us // 1000) * 1000 + int.from_bytes(h[:2], "big") % 1000
    return tid(micros, int.from_bytes(h[2:4], "big"))


@dataclass(frozen=True, slots=True)
class StrongRef:
    uri: str
    cid: str


@dataclass(frozen=True, slots=True)
class ReplyPost:
    """A reply ready to publish: text, facets and thread refs are final."""

    bot: str  # the bot's name in bots.yaml
    bot_did: str
    text: str
    facets: list[dict[str, Any]]
    langs: list[str]
    root: StrongRef
    parent: StrongRef
    created_at: str  # RFC 3339, in the stream's clock
    rkey: str = ""  # chosen before posting (see reply_rkey); empty lets the PDS choose

    def record(self) -> dict[str, Any]:
        """The ``app.bsky.feed.post`` record this reply becomes."""
        rec: dict[str, Any] = {
            "$type": POST,
            "text": self.text,
            "createdAt": self.created_at,
            "reply": {
                "root": {"uri": self.root.uri, "cid": self.root.cid},
                "parent": {"uri": self.parent.uri, "cid": self.parent.cid},
            },
        }
        if self.facets:
            rec["facets"] = self.facets
        if self.langs:
            rec["langs"] = self.langs
        return rec


@dataclass(frozen=True, slots=True)
class Posted:
    """Where the reply landed."""

    uri: str
    cid: str


@runtime_checkable
class Poster(Protocol):
    async def reply(self, post: ReplyPost) -> Posted:
        """Publish ``post``; raise ``PostRateLimited`` (retry later) or ``PostError`` (give up)."""

    async def lookup(self, bot_did: str, rkey: str, parent_uri: str) -> Posted | None:
        """The reply stored under ``rkey`` in the bot's repo if it answers ``parent_uri``."""

    async def aclose(self) -> None: ...
