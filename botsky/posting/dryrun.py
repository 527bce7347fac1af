"""The dry-run poster: logs what it would post and keeps the replies in a JSONL "repo"."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import IO

import orjson
import structlog

from botsky.errors import PostError
from botsky.events import POST, at_uri
from botsky.posting.base import Posted, ReplyPost, reply_rkey

__all__ = ["DryRunPoster"]

log = structlog.get_logger("botsky.posting")


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
        self._read_upto = 0
        self._refresh()

    def _refresh(self) -> None:
        """Read lines appended since the last look (by this or another process)."""
        if self.path is None or not self.path.exists():
            return
        with self.path.open("rb") as fh:
            fh.seek(self._read_upto)
            data = fh.read()
        end = data.rfind(b"\n") + 1  # a line still being written is read next time
        self._read_upto += end
        for line in data[:end].splitlines():
            try:
                row = orjson.loads(line)
                posted = Posted(row["uri"], row["cid"])
                self._repo[(row["did"], row["rkey"])] = (posted, row["parent"])
            except (orjson.JSONDecodeError, KeyError, TypeError):
                continue  # a line torn by a crash mid-write: that reply never returned

    async def reply(self, post: ReplyPost) -> Posted:
        rkey = post.rkey or reply_rkey(0, f"{post.bot_did}|{post.parent.uri}")
        self._refresh()
        known = self._repo.get((post.bot_did, rkey))
        if known is not None:
            if known[1] != post.parent.uri:
                # Like createRecord on a taken rkey: never pass off another post's reply.
                raise PostError(f"record key {rkey} already holds a reply to {known[1]}")
            return known[0]  # the same reply again (a retry after a crash): idempotent
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
        self._refresh()
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
