"""Posters publish a bot's reply. This module holds the contract and the dry-run poster.

The live atproto poster (sessions, write budgets, 429 handling) is its own backend; the
simulation's world is a poster too, so the pipeline under test is the production pipeline.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import structlog

from botsky.events import POST, at_uri

__all__ = ["DryRunPoster", "Posted", "Poster", "ReplyPost", "StrongRef"]

log = structlog.get_logger("botsky.posting")


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

    async def aclose(self) -> None: ...


@dataclass
class DryRunPoster:
    """Logs what it would post and invents a deterministic URI, so outcomes can still match.

    The rkey and CID are derived from the parent, so a replay that is run twice produces the
    same URIs.
    """

    posted: list[ReplyPost] = field(default_factory=list)

    async def reply(self, post: ReplyPost) -> Posted:
        digest = hashlib.sha256(f"{post.bot_did}|{post.parent.uri}".encode()).hexdigest()
        rkey = "dry" + digest[:10]
        posted = Posted(uri=at_uri(post.bot_did, POST, rkey), cid="dry-" + digest[:24])
        self.posted.append(post)
        log.info(
            "dry_run_reply",
            bot=post.bot,
            parent=post.parent.uri,
            text=post.text,
            facets=post.facets,
            uri=posted.uri,
        )
        return posted

    async def aclose(self) -> None:
        return None
