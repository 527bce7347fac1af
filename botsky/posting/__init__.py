"""Posting a bot's reply: the contract (``base``) and its backends.

- ``dryrun``: ``DryRunPoster`` logs what it would post and keeps a crash-safe JSONL "repo";
- ``atproto``: ``open_live_poster`` logs each bot in to its PDS (``AtprotoPoster``);
- ``budget``: the write budget the live poster spends (``WriteBudget``).

The live backend imports the atproto SDK only when it is used.
"""

from __future__ import annotations

from botsky.posting.atproto import (
    AtprotoPoster,
    BotSession,
    LiveAccount,
    bot_sessions,
    open_live_poster,
    session_path,
)
from botsky.posting.base import Posted, Poster, ReplyPost, StrongRef, reply_rkey
from botsky.posting.budget import CREATE_COST, WriteBudget
from botsky.posting.dryrun import DryRunPoster

__all__ = [
    "CREATE_COST",
    "AtprotoPoster",
    "BotSession",
    "DryRunPoster",
    "LiveAccount",
    "Posted",
    "Poster",
    "ReplyPost",
    "StrongRef",
    "WriteBudget",
    "bot_sessions",
    "open_live_poster",
    "reply_rkey",
    "session_path",
]
