"""Audience policy: consent decides whom botsky may answer and whom it may mention.

Bluesky's developer guidelines forbid unsolicited automated replies and mentions, so the
default is ``opt_in``: a user opts in by following a bot, by mentioning a bot in a post, or by
being on the configured allow list. ``open`` answers anyone and is only for networks you
operate (configuration requires an explicit acknowledgement). In every mode an opt-out wins and
is permanent (recorded in the ledger by the app): blocking any bot, replying to a bot with a
stop phrase, or ``#nobot`` in the profile description. An account that its host says is not
active (an ``#account`` event with ``active: false``: deactivated, taken down, suspended,
deleted...) is neither answered nor mentioned until an ``#account`` event reactivates it; the app
records each change in the ledger, so the status survives restarts.

On top of consent: daily caps (mentions per target, replies per author) on a sliding 24 h
window of the stream clock, and a kill switch (a file or an environment variable) that pauses
all posting while ingestion goes on.
"""

from __future__ import annotations

import os
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from botsky.events import BLOCK, FOLLOW, POST, PROFILE, Event, uri_authority
from botsky.ledger.base import AccountStatus

__all__ = [
    "DAY_US",
    "INACTIVE_STATUSES",
    "OPT_IN_REASONS",
    "OPT_OUT_REASONS",
    "AccountStatus",
    "AudiencePolicy",
    "KillSwitch",
    "OptIn",
    "OptOut",
    "account_status",
]

DAY_US = 86_400_000_000

# The reasons an ``OptOut`` gives.
BLOCKED = "blocked a bot"
ASKED_TO_STOP = "asked a bot to stop"
NOBOT_PROFILE = "nobot in profile"
OPT_OUT_REASONS = (BLOCKED, ASKED_TO_STOP, NOBOT_PROFILE)

# The reasons an ``OptIn`` gives (kept in the ledger's ``opt_ins``).
FOLLOWED = "followed a bot"
MENTIONED = "mentioned a bot"
ALLOW_LIST = "allow list"
OPT_IN_REASONS = (FOLLOWED, MENTIONED, ALLOW_LIST)


@dataclass(frozen=True, slots=True)
class OptIn:
    """A user who just opted in, and why (one of ``OPT_IN_REASONS``)."""

    did: str
    reason: str


@dataclass(frozen=True, slots=True)
class OptOut:
    """A user who just opted out, and why (one of ``OPT_OUT_REASONS``)."""

    did: str
    reason: str


# Account statuses that mean "not active" even on an event that leaves ``active`` out (the
# lexicon's known values; ``desynchronized`` and ``throttled`` are host states that come with
# ``active: false`` when they apply, so they need no entry here).
INACTIVE_STATUSES = frozenset({"deactivated", "takendown", "suspended", "deleted"})


def account_status(event: Event) -> AccountStatus | None:
    """What an ``#account`` event says about its DID, or None when it says nothing usable.

    ``active: false`` is inactive whatever the status (an unknown status included: the host
    says the account is not active); ``active: true`` is active. Without ``active``, a known
    inactive status still counts.
    """
    if event.kind != "account":
        return None
    status = (event.status or "").strip().lower()
    if event.active is True:
        return AccountStatus(event.did, True, "active", event.time_us)
    if event.active is False or status in INACTIVE_STATUSES:
        return AccountStatus(event.did, False, status or "inactive", event.time_us)
    return None


# How long a kill-switch reading is trusted: posting stops within this (plus one post).
_KILL_SWITCH_TTL_S = 0.5


def _phrase_pattern(phrases: Iterable[str]) -> re.Pattern[str] | None:
    # Whole words, any case, any run of whitespace between the words of a phrase.
    alts = [r"\s+".join(re.escape(w) for w in p.split()) for p in phrases if p.strip()]
    if not alts:
        return None
    return re.compile(r"(?<!\w)(?:" + "|".join(alts) + r")(?!\w)", re.IGNORECASE)


def _tag_pattern(tag: str) -> re.Pattern[str] | None:
    if not tag.strip():
        return None
    # "#nobot" but not "#nobots" or "a#nobot"; the '#' itself is not a word character.
    return re.compile(r"(?<![\w#])" + re.escape(tag.strip()) + r"(?!\w)", re.IGNORECASE)


class KillSwitch:
    """True while ``file`` exists or the env var ``env`` is non-empty; read at most every 0.5 s."""

    def __init__(
        self,
        *,
        file: Path | None = None,
        env: str | None = None,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.file = file
        self.env = env
        self.environ = os.environ if environ is None else environ
        self.clock = clock
        self._checked_at: float | None = None
        self._on = False

    def __call__(self) -> bool:
        now = self.clock()
        if self._checked_at is None or now - self._checked_at >= _KILL_SWITCH_TTL_S:
            self._checked_at = now
            self._on = bool(self.env and self.environ.get(self.env)) or bool(
                self.file is not None and self.file.exists()
            )
        return self._on


class AudiencePolicy:
    """Consent decisions.

    ``observe`` returns an ``OptOut`` (who and why) the first time a user opts out.
    ``note_reply`` is called after each posted mention, so the
    daily caps hold; ``posting_paused`` is the kill switch.
    """

    STATE_VERSION: ClassVar[int] = 1  # of ``snapshot``'s value: bump when its keys change

    def __init__(
        self,
        *,
        mode: str = "opt_in",
        bot_dids: Iterable[str] = (),
        allow_list: Iterable[str] = (),
        opted_in: Iterable[str] | Mapping[str, int] = (),
        opted_out: Iterable[str] = (),
        inactive: Iterable[AccountStatus] = (),
        handle_of: Callable[[str], str | None] = lambda did: None,
        stop_phrases: Iterable[str] = (),
        nobot_tag: str = "#nobot",
        mentions_per_target_per_day: int | None = None,
        replies_per_author_per_day: int | None = None,
        clock: Callable[[], int] | None = None,
        kill_switch: Callable[[], bool] | None = None,
    ) -> None:
        if mode not in ("opt_in", "open"):
            raise ValueError(f"unknown audience mode {mode!r}")
        self.mode = mode
        self.bot_dids = frozenset(bot_dids)
        # The allow list may name DIDs or handles; handles are checked through identity.
        allowed = [a.strip().lower() for a in allow_list]
        self.allowed_dids = frozenset(a for a in allowed if a.startswith("did:"))
        # Consent given so far: the allow list's DIDs and the opt-ins kept in the ledger, with
        # when it was given (stream µs; 0: always): a post older than its author's opt-in is
        # not answered, whenever it is read (a restart reads posts again).
        given = opted_in if isinstance(opted_in, Mapping) else dict.fromkeys(opted_in, 0)
        self._opted_in_us: dict[str, int] = {**dict.fromkeys(self.allowed_dids, 0), **given}
        self.opted_in: set[str] = set(self._opted_in_us)
        self.allowed_handles = frozenset(a.lstrip("@") for a in allowed if not a.startswith("did:"))
        self.handle_of = handle_of
        self.opted_out: set[str] = set(opted_out)
        # DID → (status, time of the event that said so). Only inactive accounts are kept: on
        # the whole network they are a small share of the accounts #account events name.
        self.inactive: dict[str, tuple[str, int]] = {
            s.did: (s.status, s.time_us) for s in inactive if not s.active
        }
        self._stop = _phrase_pattern(stop_phrases)
        self._nobot = _tag_pattern(nobot_tag)
        # Caps: None is unlimited, 0 allows nothing.
        self.mentions_per_target_per_day = mentions_per_target_per_day
        self.replies_per_author_per_day = replies_per_author_per_day
        # The stream clock (µs); without one, the newest time seen in note_reply is "now".
        self.clock = clock
        self._latest_us = 0
        self._mentions: dict[str, deque[int]] = {}
        self._replies: dict[str, deque[int]] = {}
        self._kill_switch = kill_switch or (lambda: False)

    def snapshot(self) -> dict[str, Any]:
        """What the policy learned, as plain values for ``restore`` (checkpoints).

        Keys: ``opted_in`` and ``opted_out`` (sorted DIDs), ``inactive`` (DID → [status, time
        of the event], accounts whose host says they are not active), and the daily caps'
        counts: ``latest_us`` (the newest reply time, the clock without one) and
        ``mentions``/``replies`` (DID → posting times, oldest first). Not the mode, lists,
        phrases or caps themselves (configuration), nor the kill switch (read live).
        """
        return {
            "opted_in": sorted(self.opted_in),
            "opted_out": sorted(self.opted_out),
            "inactive": {did: [st, t] for did, (st, t) in sorted(self.inactive.items())},
            "latest_us": self._latest_us,
            "mentions": {did: list(times) for did, times in self._mentions.items()},
            "replies": {did: list(times) for did, times in self._replies.items()},
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Know what ``state`` (a ``snapshot``) holds, in place of what was learned so far."""
        self.opted_in = set(state["opted_in"])
        self._opted_in_us = dict.fromkeys(self.opted_in, 0)
        self.opted_out = set(state["opted_out"])
        self.inactive = {did: (st, t) for did, (st, t) in state.get("inactive", {}).items()}
        self._latest_us = state["latest_us"]
        self._mentions = {did: deque(times) for did, times in state["mentions"].items()}
        self._replies = {did: deque(times) for did, times in state["replies"].items()}

    # -- decisions -------------------------------------------------------------------------

    def may_answer(self, did: str, at_us: int | None = None) -> bool:
        """Consent to answer ``did``'s post (made at ``at_us``: consent given after it does not
        count), and ``did`` is under its daily reply cap."""
        return self._consents(did, at_us) and self._under(
            self._replies, did, self.replies_per_author_per_day
        )

    def may_mention(self, did: str) -> bool:
        """Consent to mention ``did``, and ``did`` is under its daily mention cap."""
        return self._consents(did) and self._under(
            self._mentions, did, self.mentions_per_target_per_day
        )

    def is_active(self, did: str) -> bool:
        """False while ``did``'s host says the account is not active (see ``observe_account``)."""
        return did not in self.inactive

    def has_opted_out(self, did: str) -> bool:
        """``did`` opted out (asked again right before each post: consent can end meanwhile)."""
        return did in self.opted_out

    def posting_paused(self) -> bool:
        """The kill switch: while true, post nothing (reading the stream goes on)."""
        return self._kill_switch()

    def _consents(self, did: str, at_us: int | None = None) -> bool:
        if did in self.opted_out or did in self.bot_dids or did in self.inactive:
            return False
        if self.mode == "open":
            return True
        if did in self.opted_in and (at_us is None or self._opted_in_us.get(did, 0) <= at_us):
            return True
        return bool(self.allowed_handles) and self.handle_of(did) in self.allowed_handles

    # -- caps ------------------------------------------------------------------------------

    def note_reply(self, author_did: str, mentioned_did: str, time_us: int) -> None:
        """Count one posted reply to ``author_did`` that mentions ``mentioned_did``."""
        self._latest_us = max(self._latest_us, time_us)
        self._replies.setdefault(author_did, deque()).append(time_us)
        self._mentions.setdefault(mentioned_did, deque()).append(time_us)

    def _now_us(self) -> int:
        return self.clock() if self.clock is not None else self._latest_us

    def _under(self, counts: dict[str, deque[int]], did: str, cap: int | None) -> bool:
        if cap is None:
            return True
        times = counts.get(did)
        if not times:
            return cap > 0
        horizon = self._now_us() - DAY_US
        while times and times[0] <= horizon:
            times.popleft()
        if not times:
            del counts[did]  # memory stays proportional to the last day's posts
            return cap > 0
        return len(times) < cap

    # -- learning from the stream ----------------------------------------------------------

    def observe_account(self, event: Event) -> AccountStatus | None:
        """Learn an account's status from an ``#account`` event; return it when it changes
        whether the account may be answered (for the app to record), else None.

        An event older than the deactivation already known does not reactivate the account (a
        rewound stream replays events); a deactivation is always taken (the safe direction).
        """
        status = account_status(event)
        if status is None:
            return None
        known = self.inactive.get(status.did)
        if status.active:
            if known is None or status.time_us < known[1]:
                return None
            del self.inactive[status.did]
            return status
        if known is not None and (known[1] > status.time_us or known[0] == status.status):
            return None
        self.inactive[status.did] = (status.status, status.time_us)
        return status

    def observe(self, event: Event) -> OptOut | OptIn | None:
        """Learn opt-ins (follow or mention of a bot) and opt-outs; return a new one (for the
        app to record in the ledger), or None.

        Opt-outs: a block of a bot, a reply to a bot containing a stop phrase, ``#nobot`` in a
        profile description (create or update). A user already opted out gives None; so does
        an opt-in of a user who already opted in or out (an opt-out wins, for good).
        """
        if event.kind != "commit" or event.operation not in ("create", "update"):
            return None
        reason: str | None = None
        if event.collection == PROFILE:
            description = (event.record or {}).get("description")
            if self._nobot and isinstance(description, str) and self._nobot.search(description):
                reason = NOBOT_PROFILE
        elif event.operation != "create":
            return None
        elif event.collection == BLOCK:
            if event.subject_did() in self.bot_dids:
                reason = BLOCKED
        elif event.collection == FOLLOW:
            if event.subject_did() in self.bot_dids:
                return self._opt_in(event.did, FOLLOWED, event.time_us)
        elif event.collection == POST:
            post = event.post
            to_bot = uri_authority(post.parent_uri) in self.bot_dids
            if to_bot and self._stop is not None and self._stop.search(post.text):
                reason = ASKED_TO_STOP
            if reason is None and any(d in self.bot_dids for d in post.mention_dids):
                return self._opt_in(event.did, MENTIONED, event.time_us)
        if reason is None or event.did in self.opted_out or event.did in self.bot_dids:
            return None
        self.opted_out.add(event.did)
        self.opted_in.discard(event.did)
        self._opted_in_us.pop(event.did, None)
        return OptOut(event.did, reason)

    def _opt_in(self, did: str, reason: str, time_us: int) -> OptIn | None:
        if did in self.opted_out or did in self.bot_dids:
            return None
        if did in self.opted_in:
            # Read again (a restart) or given again: the earliest time counts.
            self._opted_in_us[did] = min(self._opted_in_us.get(did, 0), time_us)
            return None
        self.opted_in.add(did)
        self._opted_in_us[did] = time_us
        return OptIn(did, reason)
