"""The ledger contract: what botsky remembers across restarts and replicas.

Two backends implement it (``sqlite`` embedded, ``postgres`` for production and replicas); one
contract test suite runs against both. All times are microseconds in the stream's clock.

Tables (numbered migrations in each backend):
- ``claims``: one row per post botsky decided to answer; ``post_uri`` is UNIQUE, which is what
  makes a second reply impossible across restarts and replicas. ``status``: ``posting`` (intent
  recorded, post call not yet confirmed: in flight, or left by a crash), ``retry`` (a create or
  lookup whose outcome is unknown: ``attempts`` so far, the next one due at ``next_try_us``,
  wall-clock µs), ``posted``, ``failed`` (with its ``reason``).
- ``mentions``: one row per posted bot reply and the user it @-mentioned.
- ``outcomes``: success / engagement / negative events tied to a mention; UNIQUE on
  ``(mention_id, kind, uri)`` so replaying the same event records it once.
- ``cursors``: source name → its low-water mark (the position before the oldest event whose
  work is unfinished; see ``botsky.watermark``), and the warm-start position beside it.
- ``opt_outs``: DIDs that must never be answered or mentioned again (permanent).
- ``opt_ins``: DIDs that consented (followed or mentioned a bot, or are on the allow list), with
  the first reason; read on start, so consent survives restarts. An opt-out wins over it.
- ``write_spends`` and ``account_blocks``: each account's write-budget spends (wall-clock µs)
  and the server's 429 resets, shared by restarts and replicas (``botsky.posting.budget``).
- ``account_status``: the last ``#account`` status seen for a DID that was ever inactive
  (deactivated, taken down, suspended, deleted...): never answered or mentioned while inactive,
  until an ``#account`` event reactivates it. Newer events win; an older one is ignored.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, runtime_checkable

__all__ = [
    "CLAIM_STATUSES",
    "MENTION_LOG_FIELDS",
    "MENTION_STATUSES",
    "OUTCOME_KINDS",
    "AccountStatus",
    "Claim",
    "Ledger",
    "Mention",
    "Outcome",
    "SpendDecision",
    "WriteSpends",
    "mention_from_log",
    "mention_log_fields",
]

CLAIM_STATUSES = ("posting", "retry", "posted", "failed")
MENTION_STATUSES = ("open", "succeeded", "expired")
# success: the mentioned user posted in the thread. like/repost/quote: of the bot's reply.
# author_reply: the original author replied to the bot. block: a negative (either party blocked).
OUTCOME_KINDS = ("success", "like", "repost", "quote", "author_reply", "block")


@dataclass(slots=True)
class Mention:
    """A posted bot reply and the user it recommended. ``id`` is 0 until recorded."""

    post_uri: str
    post_cid: str
    post_author: str
    root_uri: str
    root_cid: str
    bot: str
    model: str
    provider: str
    persona: str
    picker: str
    reply_uri: str
    reply_cid: str
    reply_text: str
    mentioned_did: str
    mentioned_handle: str
    candidates: list[str]  # DIDs offered, in similarity order
    rank: int  # similarity rank of the chosen candidate (0 = most similar)
    created_us: int
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    latency_ms: float = 0.0
    status: str = "open"
    outcome_us: int | None = None  # when it succeeded or expired
    id: int = 0
    extra: dict[str, object] = field(default_factory=dict)  # free-form, stored as JSON


# The ``reply_posted`` log line, one per posted reply: ``mention_log_fields`` writes it (the
# dispatcher) and ``mention_from_log`` reads it back (``botsky scores --logs``), both from this
# tuple. The Mention fields it carries, in order, with the type the reader accepts; besides them
# the line holds ``mention_id`` (the id), ``candidates`` (how many were offered: the DIDs stay in
# the ledger), ``repaired`` (compose's repairs, from ``extra``) and ``window_s`` (the outcome
# window the mention is watched under, from ``extra``: scoring reads it with that window). Not in
# it: the CIDs, the reply text and the status (``mention_closed`` lines carry that).
MENTION_LOG_FIELDS: Final[tuple[tuple[str, type], ...]] = (
    ("bot", str),
    ("model", str),
    ("provider", str),
    ("persona", str),
    ("picker", str),
    ("post_uri", str),
    ("post_author", str),
    ("root_uri", str),
    ("reply_uri", str),
    ("mentioned_did", str),
    ("mentioned_handle", str),
    ("rank", int),
    ("created_us", int),
    ("prompt_tokens", int),
    ("completion_tokens", int),
    ("cost_usd", float),
    ("latency_ms", float),
)


def mention_log_fields(m: Mention) -> dict[str, Any]:
    """The fields of ``m``'s ``reply_posted`` line (see ``MENTION_LOG_FIELDS``)."""
    out: dict[str, Any] = {"mention_id": m.id}
    for name, _ in MENTION_LOG_FIELDS:
        out[name] = getattr(m, name)
    out["candidates"] = len(m.candidates)
    out["repaired"] = m.extra.get("repaired", [])
    out["window_s"] = m.extra.get("window_s")
    if "redrawn_from" in m.extra:  # the bot first drawn for the post was paused (health.py)
        out["redrawn_from"] = m.extra["redrawn_from"]
    return out


def mention_from_log(rec: Mapping[str, Any]) -> Mention | None:
    """A ``reply_posted`` line as an open Mention, or None if its id or time is unusable.

    A field that is missing or of another type reads as empty (``""``, 0); what the line does
    not carry is empty too (CIDs, reply text, candidate DIDs).
    """
    mention_id, created_us = _log_value(rec, "mention_id", int), _log_value(rec, "created_us", int)
    if mention_id is None or created_us is None:
        return None
    repaired, redrawn_from = rec.get("repaired"), rec.get("redrawn_from")
    window = _log_value(rec, "window_s", float)
    extra: dict[str, object] = {}
    if isinstance(repaired, list) and repaired:
        extra["repaired"] = repaired
    if isinstance(redrawn_from, str):
        extra["redrawn_from"] = redrawn_from
    if window is not None and window > 0:  # absent in logs of older versions
        extra["window_s"] = window
    # Empty, then filled from the line's fields.
    m = Mention(
        post_uri="", post_cid="", post_author="", root_uri="", root_cid="", bot="", model="",
        provider="", persona="", picker="", reply_uri="", reply_cid="", reply_text="",
        mentioned_did="", mentioned_handle="", candidates=[], rank=0, created_us=created_us,
        id=mention_id, extra=extra,
    )  # fmt: skip
    for name, kind in MENTION_LOG_FIELDS:
        value = _log_value(rec, name, kind)
        setattr(m, name, kind() if value is None else value)
    return m


def _log_value(rec: Mapping[str, Any], name: str, kind: type) -> Any:
    """``rec[name]`` if it is a ``kind`` (an int for a float), else None."""
    value: Any = rec.get(name)
    # A JSON true is never a count, time or amount (bool is an int subclass).
    fits = isinstance(value, int | float) if kind is float else isinstance(value, kind)
    if isinstance(value, bool) or not fits:
        return None
    return float(value) if kind is float else value


@dataclass(frozen=True, slots=True)
class Outcome:
    """Something that happened to a mention: success, engagement or a negative."""

    mention_id: int
    kind: str  # one of OUTCOME_KINDS
    actor: str  # DID that did it
    uri: str  # the record that did it (reply post, like, block)
    time_us: int


@dataclass(frozen=True, slots=True)
class Claim:
    """One claim as stored: who answers the post, where it stands, what it was about to post."""

    post_uri: str
    owner: str  # the bot's name
    status: str  # one of CLAIM_STATUSES
    intent: dict[str, Any] | None
    attempts: int = 0  # settle attempts whose outcome was unknown
    next_try_us: int = 0  # wall-clock µs when a 'retry' claim is due
    reason: str = ""  # why it waits ('retry') or why it failed


@dataclass(frozen=True, slots=True)
class WriteSpends:
    """What a write-budget decision reads, in one transaction: ``account``'s spends
    ``(time_us, cost)`` since the account window's start, the times of every account's spends
    since the global window's start (both oldest first), and the account's block (0: none)."""

    account: list[tuple[int, int]]
    everyone: list[int]
    blocked_until_us: int = 0


SpendDecision = Callable[[WriteSpends], float]
"""Given the spends, how many seconds until the new spend fits (0 or less: it fits now)."""


@dataclass(frozen=True, slots=True)
class AccountStatus:
    """What an ``#account`` event said about a DID: active or not, and why not."""

    did: str
    active: bool
    status: str  # "active", or the reason: deactivated, takendown, suspended, deleted...
    time_us: int  # the event's time: a newer status replaces an older one, never the reverse


@runtime_checkable
class Ledger(Protocol):
    """Persistent state. Every method is safe to call concurrently from one event loop."""

    async def open(self) -> None:
        """Connect and apply pending migrations. Idempotent."""

    async def close(self) -> None:
        """Release connections. Idempotent."""

    # claims ---------------------------------------------------------------------------------
    async def claim(
        self, post_uri: str, owner: str, time_us: int, intent: dict[str, Any] | None = None
    ) -> bool:
        """Atomically claim a post for a reply. True for exactly one caller, ever, per post.

        ``intent`` records what is about to be posted, for crash recovery: anything orjson
        encodes (dataclasses included); ``pending_claims`` gives it back as plain JSON values.
        """

    async def is_claimed(self, post_uri: str) -> bool:
        """Whether any claim exists for the post (a cheap check before paying for a model)."""

    async def finish_claim(self, post_uri: str, status: str, reason: str = "") -> None:
        """Set a claim's status (``posted`` or ``failed``) and why; ValueError for an unknown
        status."""

    async def claims_with_status(self, status: str) -> list[tuple[str, str]]:
        """``(post_uri, owner)`` of every claim in ``status`` (e.g. ``posting`` after a crash)."""

    async def pending_claims(self) -> list[tuple[str, str, dict[str, Any] | None]]:
        """``(post_uri, owner, intent)`` of every claim still ``posting``, oldest first."""

    async def claims(self, status: str) -> list[Claim]:
        """Every claim in ``status``, oldest first, with its intent, attempts and reason."""

    async def retry_claim(
        self, post_uri: str, attempts: int, next_try_us: int, reason: str
    ) -> bool:
        """Move a ``posting`` claim to ``retry``: its outcome is unknown, settle it again at
        ``next_try_us`` (wall-clock µs). False if the claim was not ``posting``."""

    async def due_claims(self, now_us: int, limit: int = 100) -> list[Claim]:
        """``retry`` claims due at ``now_us``, the longest-waiting first, at most ``limit``."""

    async def take_claim(self, post_uri: str, attempts: int, replica: str) -> dict[str, Any] | None:
        """Atomically move a ``retry`` claim that still has ``attempts`` back to ``posting``,
        held by ``replica`` (written into its intent, so recovery knows whose it is); its
        intent, or None if another process took or settled it first."""

    # write budgets ----------------------------------------------------------------------------
    async def write_spends(
        self, account: str, since_us: int, everyone_since_us: int
    ) -> WriteSpends:
        """The spends a decision for ``account`` reads (a snapshot; nothing is spent)."""

    async def spend_write(
        self,
        account: str,
        cost: int,
        time_us: int,
        *,
        since_us: int,
        everyone_since_us: int,
        decide: SpendDecision,
    ) -> float:
        """Atomically, across processes and replicas: read the spends, ask ``decide`` how long
        until ``cost`` fits, and record the spend at ``time_us`` if it fits now. Returns that
        wait (0 or less: spent). Spends of ``account`` older than both windows are dropped."""

    async def block_account(self, key: str, until_us: int, reason: str) -> None:
        """Remember a server block (a 429's reset, wall-clock µs); a later one wins."""

    async def account_blocks(self) -> dict[str, tuple[int, str]]:
        """Every block as ``key -> (until_us, reason)``, past ones included."""

    # mentions -------------------------------------------------------------------------------
    async def record_mention(self, mention: Mention) -> int:
        """Store a mention and mark its post's claim ``posted``, in one transaction.

        If the post was never claimed, a ``posted`` claim owned by ``mention.bot`` is created,
        so the post can never be claimed again. Returns the new id (also set on ``mention.id``).
        """

    async def open_mentions(self) -> list[Mention]:
        """Every mention whose status is ``open``, oldest first."""

    async def mentions(self) -> list[Mention]:
        """Every mention, oldest first (for scoring)."""

    async def mentioned_since(self, since_us: int) -> list[tuple[str, int]]:
        """``(mentioned_did, created_us)`` of mentions created at or after ``since_us``."""

    async def close_mention(self, mention_id: int, status: str, time_us: int) -> bool:
        """Move an open mention to ``succeeded`` or ``expired``; False if it was not open.

        Any other ``status`` is a caller bug: ValueError.
        """

    # outcomes -------------------------------------------------------------------------------
    async def record_outcome(self, outcome: Outcome) -> bool:
        """Store an outcome once; False if this (mention, kind, uri) was already recorded.

        ``mention_id`` must be a recorded mention (a foreign key): LedgerError otherwise.
        """

    async def outcomes(self) -> list[Outcome]:
        """Every outcome, oldest first."""

    # cursors --------------------------------------------------------------------------------
    async def save_cursor(self, source: str, cursor: int) -> None:
        """Remember a source's position (64-bit: relay sequence numbers exceed 2^31)."""

    async def load_cursor(self, source: str) -> int | None:
        """The saved position, or None if this source never saved one."""

    # opt-outs -------------------------------------------------------------------------------
    async def add_opt_out(self, did: str, reason: str, time_us: int) -> bool:
        """Record a permanent opt-out; False if the DID had already opted out."""

    async def opt_outs(self) -> dict[str, str]:
        """Every opted-out DID with its reason."""

    # opt-ins --------------------------------------------------------------------------------
    async def add_opt_in(self, did: str, reason: str, time_us: int) -> bool:
        """Record consent (a follow or a mention of a bot, an allow-list entry); False if the
        DID had already opted in (the first reason is kept)."""

    async def opt_ins(self) -> dict[str, tuple[str, int]]:
        """Every opted-in DID with its reason and the stream time it was given (a post older
        than that is not answered; an opt-out still wins over it)."""

    async def withdraw_opt_in(self, did: str, reason: str) -> bool:
        """Forget ``did``'s opt-in if it was given for ``reason`` (an allow-list entry that was
        removed); False if there was no such opt-in."""

    # account status -------------------------------------------------------------------------
    async def set_account_status(self, status: AccountStatus) -> bool:
        """Store a DID's account status; False (nothing changed) if the stored one is newer."""

    async def inactive_accounts(self) -> list[AccountStatus]:
        """Every DID whose stored status is inactive, oldest first."""
