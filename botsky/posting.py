"""Posters publish a bot's reply. This module holds the contract and the dry-run poster.

The live atproto poster (sessions, write budgets, 429 handling) is its own backend; the
simulation's world is a poster too, so the pipeline under test is the production pipeline.

Every reply carries a record key chosen before posting (a TID derived from the claim), so
posting is idempotent: after a crash between the post call and the ledger write, ``lookup``
finds the reply under that key in the bot's repo, or learns that it was never posted.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol, runtime_checkable

import orjson
import structlog

from botsky.events import POST, at_uri

__all__ = ["DryRunPoster", "Posted", "Poster", "ReplyPost", "StrongRef", "reply_rkey"]

_B32 = "234567abcdefghijklmnopqrstuvwxyz"


def reply_rkey(time_us: int, post_uri: str, attempt: int = 0) -> str:
    """A TID record key for the reply to ``post_uri``, chosen at claim time.

    The timestamp part is the claim's stream time; the 10-bit clock id comes from the post URI,
    so two replies claimed in the same microsecond still get different keys.
    """
    clock_id = int.from_bytes(hashlib.sha256(post_uri.encode()).digest()[:2], "big") & 0x3FF
    n = ((time_us + attempt) << 10) | clock_id
    return "".join(_B32[(n >> (5 * i)) & 31] for i in range(12, -1, -1))


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


class DryRunPoster:
    """Logs what it would post; with ``path``, also keeps the replies in a JSONL "repo".

    URIs are ``at://<bot did>/app.bsky.feed.post/<rkey>`` and CIDs are derived from the record,
    so outcomes can be matched against them and a replay run twice produces the same URIs. The
    file makes the dry run crash-safe like a real repo: a reply written before a crash is found
    again by ``lookup``. Each line is flushed and fsynced before ``reply`` returns.
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.posted: list[ReplyPost] = []
        self._repo: dict[tuple[str, str], tuple[Posted, str]] = {}
        self._file: IO[bytes] | None = None
        if path is not None and path.exists():
            for line in path.read_bytes().splitlines():
                try:
                    row = orjson.loads(line)
                    posted = Posted(row["uri"], row["cid"])
                    self._repo[(row["did"], row["rkey"])] = (posted, row["parent"])
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    continue  # a line torn by a crash mid-write: that reply never returned

    async def reply(self, post: ReplyPost) -> Posted:
        rkey = post.rkey or reply_rkey(0, f"{post.bot_did}|{post.parent.uri}")
        known = self._repo.get((post.bot_did, rkey))
        if known is not None:
            return known[0]  # idempotent, like createRecord with an existing rkey
        record = post.record()
        cid = "dry" + hashlib.sha256(orjson.dumps(record)).hexdigest()[:40]
        posted = Posted(uri=at_uri(post.bot_did, POST, rkey), cid=cid)
        if self.path is not None:
            row = {"did": post.bot_did, "rkey": rkey, "parent": post.parent.uri, "uri": posted.uri}
            self._append(orjson.dumps({**row, "cid": cid, "bot": post.bot, "record": record}))
        self._repo[(post.bot_did, rkey)] = (posted, post.parent.uri)
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

    async def lookup(self, bot_did: str, rkey: str, parent_uri: str) -> Posted | None:
        known = self._repo.get((bot_did, rkey))
        return known[0] if known is not None and known[1] == parent_uri else None

    def _append(self, line: bytes) -> None:
        if self._file is None:
            assert self.path is not None
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("ab")
        self._file.write(line + b"\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    async def aclose(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
