"""The feed's part of the ledger: pages served, exposures, interactions (see ``botsky.feed``).

Both backends implement ``FeedLedger`` (``feed_sqlite.SqliteFeedMixin``,
``feed_postgres.PostgresFeedMixin``) over the tables of migration 6, with the SQL written once
here (``?`` placeholders; PostgreSQL's ``%s`` is substituted by its mixin).

- ``feed_pages``: one row per ``getFeedSkeleton`` answer, keyed by its ``reqId``, with the
  session (the cursor's seed), the viewer DID (NULL: anonymous) and the first slot.
- ``feed_exposures``: one row per item on a page: the mention, its arm, the viewer, its
  position on the page and in the session, when it was served, when the client said it was
  seen, and when the viewer liked, reposted, replied to or quoted it (each at most once).
- ``feed_interactions``: every ``sendInteractions`` event as received (the raw log).

Viewer DIDs are personal data: ``purge_feed_viewers`` nulls them in all three tables once
they are older than the retention; counts and joined engagement stay.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol, cast, runtime_checkable

__all__ = [
    "ENGAGEMENT_KINDS",
    "SEEN_EVENT",
    "ArmCounts",
    "Exposure",
    "ExposureRow",
    "FeedCandidate",
    "FeedLedger",
    "FeedPage",
    "FeedSession",
    "Interaction",
    "RetryingFeedMixin",
    "event_column",
]

# What counts as engagement with a feed item, from the firehose or from sendInteractions.
ENGAGEMENT_KINDS: Final = ("like", "repost", "reply", "quote")
_DEFS: Final = "app.bsky.feed.defs#"
SEEN_EVENT: Final = _DEFS + "interactionSeen"
# sendInteractions events that update an exposure, and the column each sets.
_EVENT_COLUMNS: Final = {
    SEEN_EVENT: "seen_us",
    _DEFS + "interactionLike": "like_us",
    _DEFS + "interactionRepost": "repost_us",
    _DEFS + "interactionReply": "reply_us",
    _DEFS + "interactionQuote": "quote_us",
}


def event_column(event: str) -> str | None:
    """The exposure column an interaction event sets (``seen_us``, ``like_us``...), or None."""
    return _EVENT_COLUMNS.get(event)


@dataclass(frozen=True, slots=True)
class FeedCandidate:
    """A posted bot reply the feed may serve: the mention's fields the feed reads."""

    mention_id: int
    reply_uri: str
    post_author: str
    mentioned_did: str
    bot: str
    model: str
    persona: str
    picker: str
    provider: str
    created_us: int


@dataclass(frozen=True, slots=True)
class FeedPage:
    """One served page (``getFeedSkeleton`` answer)."""

    req_id: str
    session_id: str
    viewer: str | None
    first_slot: int
    items: int
    served_us: int


@dataclass(frozen=True, slots=True)
class Exposure:
    """One item on a served page."""

    req_id: str
    mention_id: int
    item_uri: str
    arm: str
    viewer: str | None
    pos: int  # position on the page, 0 first
    slot: int  # position in the session
    served_us: int


@dataclass(frozen=True, slots=True)
class ExposureRow:
    """An exposure as stored, with what happened to it since."""

    exposure: Exposure
    seen_us: int | None
    like_us: int | None
    repost_us: int | None
    reply_us: int | None
    quote_us: int | None


@dataclass(frozen=True, slots=True)
class FeedSession:
    """What the ledger knows of a session: its viewer and the mentions it was served."""

    viewer: str | None
    mention_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Interaction:
    """One ``app.bsky.feed.defs#interaction`` as the client sent it."""

    item_uri: str
    event: str
    req_id: str | None = None
    feed_context: str | None = None


@dataclass(frozen=True, slots=True)
class ArmCounts:
    """Exposure counts of one arm. ``*_seen`` count seen exposures only."""

    arm: str
    served: int
    seen: int
    engaged_served: int  # served exposures with at least one engagement
    engaged_seen: int  # seen exposures with at least one engagement
    likes_seen: int
    reposts_seen: int
    replies_seen: int
    quotes_seen: int


@runtime_checkable
class FeedLedger(Protocol):
    """The feed's ledger methods (both backends)."""

    async def feed_candidates(self, after_id: int, since_us: int) -> list[FeedCandidate]:
        """Mentions with ``id > after_id`` created at or after ``since_us``, by id."""

    async def feed_impressions(self, since_us: int) -> dict[int, int]:
        """Exposures per mention id among those served at or after ``since_us``."""

    async def record_feed_pages(self, pages: Sequence[tuple[FeedPage, Sequence[Exposure]]]) -> None:
        """Store pages and their exposures, all in one transaction (a group commit).

        Idempotent: a page whose ``req_id`` is stored already is left as it is."""

    async def feed_session(self, session_id: str) -> FeedSession | None:
        """The session's viewer and served mentions, or None if no page of it is stored."""

    async def record_feed_interactions(
        self, viewer: str, interactions: Sequence[Interaction], time_us: int
    ) -> int:
        """Log the interactions and apply them to ``viewer``'s exposures; returns how many
        exposures changed. An interaction with a ``req_id`` touches that page's exposure of
        the item; one without, the viewer's latest exposure of it served by ``time_us``.
        A retry changes no exposure twice (each column is set once); the raw log may then
        hold the interactions twice."""

    async def mark_feed_engagement(
        self, item_uri: str, viewer: str, kind: str, time_us: int, window_us: int
    ) -> bool:
        """Join a firehose engagement (``kind`` in ``ENGAGEMENT_KINDS``) to ``viewer``'s
        latest exposure of the item served in ``[time_us - window_us, time_us + 60 s]``;
        False if there is none or it already has one of that kind."""

    async def purge_feed_viewers(self, before_us: int) -> int:
        """Forget the viewer of every page, exposure and interaction older than
        ``before_us``; returns the number of rows changed."""

    async def feed_arm_counts(self, since_us: int | None = None) -> list[ArmCounts]:
        """Exposure counts per arm (served at or after ``since_us``), by arm name."""

    async def feed_exposures(self, req_id: str | None = None) -> list[ExposureRow]:
        """Stored exposures (of one page, or all), in page order."""


# --- the SQL, once for both dialects (``?`` placeholders) -----------------------------------

CANDIDATES = """
    SELECT id, reply_uri, post_author, mentioned_did, bot, model, persona, picker, provider,
           created_us
    FROM mentions WHERE id > ? AND created_us >= ? ORDER BY id"""
IMPRESSIONS = """
    SELECT mention_id, COUNT(*) FROM feed_exposures WHERE served_us >= ? GROUP BY mention_id"""
# Keyed by reqId (and position): a retried write after a lost commit acknowledgement is a no-op.
INSERT_PAGE = """
    INSERT INTO feed_pages (req_id, session_id, viewer, first_slot, items, served_us)
    VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (req_id) DO NOTHING"""
INSERT_EXPOSURE = """
    INSERT INTO feed_exposures
        (req_id, mention_id, item_uri, arm, viewer, pos, slot, served_us)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (req_id, pos) DO NOTHING"""
SESSION_PAGES = "SELECT viewer FROM feed_pages WHERE session_id = ? LIMIT 1"
SESSION_ITEMS = """
    SELECT e.mention_id FROM feed_exposures e JOIN feed_pages p ON p.req_id = e.req_id
    WHERE p.session_id = ? ORDER BY e.slot"""
INSERT_INTERACTION = """
    INSERT INTO feed_interactions (req_id, item_uri, viewer, event, feed_context, time_us)
    VALUES (?, ?, ?, ?, ?, ?)"""
# A client's clock and ours differ: an interaction or engagement may carry a time a little
# before the serve it follows.
SKEW_US: Final = 60_000_000


def apply_by_req(column: str) -> str:
    """UPDATE one exposure named by (req_id, item, viewer): set ``column`` (and ``seen_us``)."""
    seen = "" if column == "seen_us" else ", seen_us = COALESCE(seen_us, ?)"
    return (
        f"UPDATE feed_exposures SET {column} = COALESCE({column}, ?){seen} "
        "WHERE req_id = ? AND item_uri = ? AND viewer = ? "
        f"AND ({column} IS NULL{'' if column == 'seen_us' else ' OR seen_us IS NULL'})"
    )


def apply_latest(column: str, *, mark_seen: bool) -> str:
    """UPDATE the viewer's latest exposure of the item served in a time range."""
    seen = ", seen_us = COALESCE(seen_us, ?)" if mark_seen else ""
    return (
        f"UPDATE feed_exposures SET {column} = COALESCE({column}, ?){seen} WHERE id = ("
        "SELECT id FROM feed_exposures WHERE item_uri = ? AND viewer = ? "
        "AND served_us <= ? AND served_us >= ? ORDER BY served_us DESC, id DESC LIMIT 1"
        f") AND {column} IS NULL"
    )


PURGE = (
    "UPDATE feed_pages SET viewer = NULL WHERE viewer IS NOT NULL AND served_us < ?",
    "UPDATE feed_exposures SET viewer = NULL WHERE viewer IS NOT NULL AND served_us < ?",
    "UPDATE feed_interactions SET viewer = NULL WHERE viewer IS NOT NULL AND time_us < ?",
)
_ENGAGED = " OR ".join(f"{k}_us IS NOT NULL" for k in ENGAGEMENT_KINDS)
_SEEN = "seen_us IS NOT NULL"
ARM_COUNTS = f"""
    SELECT arm,
           COUNT(*),
           SUM(CASE WHEN {_SEEN} THEN 1 ELSE 0 END),
           SUM(CASE WHEN {_ENGAGED} THEN 1 ELSE 0 END),
           SUM(CASE WHEN {_SEEN} AND ({_ENGAGED}) THEN 1 ELSE 0 END),
           SUM(CASE WHEN {_SEEN} AND like_us IS NOT NULL THEN 1 ELSE 0 END),
           SUM(CASE WHEN {_SEEN} AND repost_us IS NOT NULL THEN 1 ELSE 0 END),
           SUM(CASE WHEN {_SEEN} AND reply_us IS NOT NULL THEN 1 ELSE 0 END),
           SUM(CASE WHEN {_SEEN} AND quote_us IS NOT NULL THEN 1 ELSE 0 END)
    FROM feed_exposures WHERE served_us >= ? GROUP BY arm ORDER BY arm"""
_EXPOSURE_COLUMNS = (
    "req_id, mention_id, item_uri, arm, viewer, pos, slot, served_us, "
    "seen_us, like_us, repost_us, reply_us, quote_us"
)
EXPOSURES_OF_PAGE = f"SELECT {_EXPOSURE_COLUMNS} FROM feed_exposures WHERE req_id = ? ORDER BY pos"
EXPOSURES_ALL = f"SELECT {_EXPOSURE_COLUMNS} FROM feed_exposures ORDER BY id"


def candidate_from_row(row: Sequence[object]) -> FeedCandidate:
    return FeedCandidate(*row)  # type: ignore[arg-type]


def exposure_row(row: Sequence[object]) -> ExposureRow:
    e = Exposure(*row[:8])  # type: ignore[arg-type]
    return ExposureRow(e, *row[8:])  # type: ignore[arg-type]


def arm_counts_row(row: Sequence[object]) -> ArmCounts:
    arm, *counts = row
    return ArmCounts(str(arm), *(int(c or 0) for c in counts))  # type: ignore[call-overload]


def exposure_params(e: Exposure) -> tuple[object, ...]:
    return (e.req_id, e.mention_id, e.item_uri, e.arm, e.viewer, e.pos, e.slot, e.served_us)


def page_params(p: FeedPage) -> tuple[object, ...]:
    return (p.req_id, p.session_id, p.viewer, p.first_slot, p.items, p.served_us)


def check_kind(kind: str) -> str:
    """The column of an engagement kind; ValueError for anything else (a caller bug)."""
    if kind not in ENGAGEMENT_KINDS:
        raise ValueError(f"engagement kind must be one of {ENGAGEMENT_KINDS}, not {kind!r}")
    return f"{kind}_us"


def interaction_steps(
    viewer: str, i: Interaction, time_us: int
) -> tuple[tuple[object, ...], tuple[str, tuple[object, ...]] | None]:
    """The log row's parameters and the exposure update (SQL, parameters) of one interaction."""
    log = (i.req_id, i.item_uri, viewer, i.event, i.feed_context, time_us)
    column = event_column(i.event)
    if column is None:
        return log, None
    extra: tuple[object, ...] = () if column == "seen_us" else (time_us,)
    if i.req_id:
        return log, (apply_by_req(column), (time_us, *extra, i.req_id, i.item_uri, viewer))
    # No reqId (an older client): the latest exposure served before it, within a day.
    window = (time_us + SKEW_US, time_us - 86_400_000_000)
    return log, (
        apply_latest(column, mark_seen=column != "seen_us"),
        (time_us, *extra, i.item_uri, viewer, *window),
    )


class RetryingFeedMixin:
    """The feed's methods for ``RetryingLedger``: each call retried like the others."""

    _retry: Callable[[str, Callable[[], Awaitable[Any]]], Awaitable[Any]]

    @property
    def _feed(self) -> FeedLedger:
        # The host's ``inner`` ledger: both backends implement FeedLedger.
        return cast(FeedLedger, self.inner)  # type: ignore[attr-defined]

    async def feed_candidates(self, after_id: int, since_us: int) -> list[FeedCandidate]:
        return await self._retry(
            "feed_candidates", lambda: self._feed.feed_candidates(after_id, since_us)
        )

    async def feed_impressions(self, since_us: int) -> dict[int, int]:
        return await self._retry("feed_impressions", lambda: self._feed.feed_impressions(since_us))

    async def record_feed_pages(self, pages: Sequence[tuple[FeedPage, Sequence[Exposure]]]) -> None:
        await self._retry("record_feed_pages", lambda: self._feed.record_feed_pages(pages))

    async def feed_session(self, session_id: str) -> FeedSession | None:
        return await self._retry("feed_session", lambda: self._feed.feed_session(session_id))

    async def record_feed_interactions(
        self, viewer: str, interactions: Sequence[Interaction], time_us: int
    ) -> int:
        return await self._retry(
            "record_feed_interactions",
            lambda: self._feed.record_feed_interactions(viewer, interactions, time_us),
        )

    async def mark_feed_engagement(
        self, item_uri: str, viewer: str, kind: str, time_us: int, window_us: int
    ) -> bool:
        return await self._retry(
            "mark_feed_engagement",
            lambda: self._feed.mark_feed_engagement(item_uri, viewer, kind, time_us, window_us),
        )

    async def purge_feed_viewers(self, before_us: int) -> int:
        return await self._retry(
            "purge_feed_viewers", lambda: self._feed.purge_feed_viewers(before_us)
        )

    async def feed_arm_counts(self, since_us: int | None = None) -> list[ArmCounts]:
        return await self._retry("feed_arm_counts", lambda: self._feed.feed_arm_counts(since_us))

    async def feed_exposures(self, req_id: str | None = None) -> list[ExposureRow]:
        return await self._retry("feed_exposures", lambda: self._feed.feed_exposures(req_id))
