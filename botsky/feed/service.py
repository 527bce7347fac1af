"""The feed service: the pool, sessions, auth, limits, recording and engagement, in-process.

``FeedService`` is what the HTTP routes (``botsky.feed.routes``) and, in-process, the
simulation call: ``skeleton`` is ``app.bsky.feed.getFeedSkeleton`` (auth, limits, the page,
its record) and returns an ``Answer`` (status + JSON body); ``page`` is the synchronous part
that builds a page for a session; ``interactions`` is ``app.bsky.feed.sendInteractions``.

Sessions: a page without cursor starts a session with a fresh 64-bit seed; the session
remembers its viewer and the mentions it was served (in memory, bounded, with the ledger as the
fallback after a restart or on another replica), so its pages never repeat an item. A cursor
of another viewer's session, or of an unknown one, gets an empty page and no cursor: nobody
learns what someone else was shown.

Recording: every page is queued for the ledger (``record_feed_pages``) before it is answered and
written behind the answer: one writer, every ``record_batch_s``, takes every page queued
meanwhile in one transaction (a group commit), so a request never waits for the ledger's thread
or a commit (that wait was most of a page's latency). A failed write is kept and retried (with
backoff) until it succeeds; while the last write failed, or a queued page has waited longer than
``record_timeout_s``, new pages are refused with 503 before anything is counted, so the backlog
stays bounded. ``stop`` writes everything still queued (within ``record_timeout_s`` of retries;
pages it cannot write are logged as lost, with their count). What is not guaranteed: a process
killed without ``stop`` (SIGKILL, a crash) loses the pages answered in its last
``record_batch_s`` plus the write in flight. Whatever reads the ledger for pages already
answered first waits for them (``sync``): ``sendInteractions``, a session recalled from the
ledger, and the engagement joins of ``refresh``/``flush``.

Engagement: ``observe`` (called for every firehose event by the App) queues likes, reposts,
replies and quotes of items the feed served; ``refresh`` (every ``refresh_s``) joins them to
the actor's latest exposure of the item within ``attribution_window_s``, adds new bot replies
to the pool, drops those older than ``max_age_s``, and purges viewer DIDs older than
``viewer_retention_s``.

A simulation drives the service in process (``botsky.sim.feed``): ``skeleton`` and
``interactions`` with the viewer's ``Verdict`` instead of a token, ``refresh`` on its own
clock, and ``snapshot``/``restore`` for its checkpoints.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Generic, TypeVar

import structlog

from botsky.events import LIKE, POST, REPOST, Event
from botsky.feed.auth import ServiceAuth, Verdict
from botsky.feed.core import Cursor, Item, Page, Pool, build_page
from botsky.feed.limits import RateLimiter
from botsky.feed.scores import FeedScore, feed_score_fields, feed_scores
from botsky.ledger.feed import (
    Exposure,
    FeedCandidate,
    FeedLedger,
    FeedPage,
    Interaction,
)

__all__ = [
    "DESCRIBE",
    "GET_SKELETON",
    "SEND_INTERACTIONS",
    "Answer",
    "Built",
    "FeedService",
]

log = structlog.get_logger("botsky.feed")

GET_SKELETON: Final = "app.bsky.feed.getFeedSkeleton"
SEND_INTERACTIONS: Final = "app.bsky.feed.sendInteractions"
DESCRIBE: Final = "app.bsky.feed.describeFeedGenerator"
GENERATOR: Final = "app.bsky.feed.generator"
_DEFAULT_LIMIT: Final = 50  # the lexicon's default
_MAX_INTERACTIONS: Final = 500
_S: Final = 1_000_000
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Answer:
    """An XRPC answer: HTTP status and JSON body."""

    status: int
    body: dict[str, Any]

    @classmethod
    def error(cls, status: int, name: str, message: str) -> Answer:
        return cls(status, {"error": name, "message": message})


@dataclass(frozen=True, slots=True)
class Built:
    """A page built for a session, with what ``record_feed_pages`` stores."""

    page: Page
    req_id: str
    session_id: str
    viewer: str | None
    served_us: int

    def records(self) -> tuple[FeedPage, list[Exposure]]:
        p = self.page
        record = FeedPage(
            self.req_id, self.session_id, self.viewer, p.first_slot, len(p.slots), self.served_us
        )
        exposures = [
            Exposure(
                self.req_id,
                s.item.mention_id,
                s.item.uri,
                s.item.arm,
                self.viewer,
                s.pos,
                s.slot,
                self.served_us,
            )
            for s in p.slots
        ]
        return record, exposures

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "feed": [{"post": s.item.uri, "feedContext": s.feed_context} for s in self.page.slots],
            "reqId": self.req_id,
        }
        if self.page.next is not None:
            body["cursor"] = self.page.next.encode()
        return body


@dataclass(slots=True)
class _Session:
    viewer: str | None
    served: set[int]
    touched_us: int


@dataclass
class _Counts:
    requests: Counter[str] = field(default_factory=Counter)  # by result
    auth: Counter[str] = field(default_factory=Counter)  # by verdict reason
    served: Counter[str] = field(default_factory=Counter)  # items by arm
    interactions: Counter[str] = field(default_factory=Counter)  # by event
    engagement_joined: Counter[str] = field(default_factory=Counter)  # firehose, by kind


class FeedService:
    """One feed (``feed_uri``) served by ``service_did`` (see the module docstring)."""

    def __init__(
        self,
        *,
        ledger: FeedLedger,
        service_did: str,
        feed_uri: str,
        auth: ServiceAuth,
        arm_by: str = "model",
        max_age_s: float = 48 * 3600.0,
        max_impressions: int = 200,
        viewer_limit: RateLimiter | None = None,
        ip_limit: RateLimiter | None = None,
        viewer_retention_s: float = 7 * 86400.0,
        attribution_window_s: float = 86400.0,
        refresh_s: float = 5.0,
        purge_every_s: float = 3600.0,
        session_ttl_s: float = 3600.0,
        max_sessions: int = 20_000,
        record_timeout_s: float = 5.0,
        record_batch_s: float = 0.01,
        service_endpoint: str = "",
        links: dict[str, str] | None = None,
        clock: Callable[[], int] = lambda: time.time_ns() // 1000,
        rng: random.Random | None = None,
        opted_out: Callable[[str], bool] = lambda did: False,
        score_interval_s: float = 60.0,
    ) -> None:
        self.ledger = ledger
        self.service_did = service_did
        self.feed_uri = feed_uri
        self.auth = auth
        self.arm_by = arm_by
        self.max_age_us = int(max_age_s * _S)
        self.pool = Pool(max_impressions=max_impressions)
        # (Not ``or``: an empty limiter has length 0 and is falsy.)
        self.viewer_limit = RateLimiter(5.0, 30) if viewer_limit is None else viewer_limit
        self.ip_limit = RateLimiter(20.0, 60) if ip_limit is None else ip_limit
        self.viewer_retention_us = int(viewer_retention_s * _S)
        self.attribution_us = int(attribution_window_s * _S)
        self.refresh_s = refresh_s
        self.purge_every_us = int(purge_every_s * _S)
        self.session_ttl_us = int(session_ttl_s * _S)
        self.max_sessions = max_sessions
        self.record_timeout_s = record_timeout_s
        self.service_endpoint = service_endpoint
        self.links = links or {}
        self.clock = clock
        # Session seeds and reqIds: a PRNG seeded from the OS, not a system call per page (uuid4
        # was a sixth of a page's time). Unpredictable enough: a cursor is honoured only for its
        # own viewer, and a reqId only names a page.
        self.rng = rng or random.Random(int.from_bytes(os.urandom(16)))
        self.opted_out = opted_out
        self.counts = _Counts()
        self._sessions: OrderedDict[str, _Session] = OrderedDict()
        self._served_uris: dict[str, int] = {}  # item URI -> last served, oldest first
        self._engagement: deque[tuple[str, str, str, int]] = deque(maxlen=100_000)
        self._last_id = 0
        self._last_purge_us: int | None = None
        self._task: asyncio.Task[None] | None = None
        self.score_interval_s = score_interval_s
        self.scores: list[FeedScore] = []
        self.scores_at: float | None = None  # time.monotonic() of the last load
        self._scores_lock = asyncio.Lock()
        self._pages: _WriteBehind[tuple[FeedPage, list[Exposure]]] = _WriteBehind(
            ledger.record_feed_pages, batch_s=record_batch_s, timeout_s=record_timeout_s
        )

    # --- checkpoints (botsky.sim.checkpoint's Stateful contract) ------------------------
    STATE_VERSION: ClassVar[int] = 1

    def snapshot(self) -> dict[str, Any]:
        """What the service holds in memory, as plain values: the pool (``Pool.snapshot``),
        the state of the RNG that draws session seeds and reqIds, the sessions, the served
        URIs, the engagement not yet joined, the last candidate id and the last purge.
        Counters, scores and rate-limit buckets are not kept (buckets restart full, which only
        ever errs towards serving)."""
        return {
            "pool": self.pool.snapshot(),
            "rng": self.rng.getstate(),
            "sessions": [
                (sid, s.viewer, sorted(s.served), s.touched_us) for sid, s in self._sessions.items()
            ],
            "served_uris": dict(self._served_uris),
            "engagement": list(self._engagement),
            "last_id": self._last_id,
            "last_purge_us": self._last_purge_us,
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Put a ``snapshot`` back (a service built with the same configuration)."""
        self.pool.restore(state["pool"])
        self.rng.setstate(state["rng"])
        self._sessions = OrderedDict(
            (sid, _Session(viewer, set(served), touched))
            for sid, viewer, served, touched in state["sessions"]
        )
        self._served_uris = dict(state["served_uris"])
        self._engagement.clear()
        self._engagement.extend(state["engagement"])
        self._last_id = state["last_id"]
        self._last_purge_us = state["last_purge_us"]

    @property
    def session_count(self) -> int:
        """Sessions held in memory."""
        return len(self._sessions)

    # --- life cycle ---------------------------------------------------------------------
    async def start(self) -> None:
        """Load the pool (and its impressions) from the ledger; start the refresh loop."""
        now = self.clock()
        since = now - self.max_age_us
        counts = await self.ledger.feed_impressions(since)
        await self._load(since, counts)
        await self._purge(now)
        await self.load_scores()
        log.info("feed_started", feed=self.feed_uri, items=len(self.pool), arms=self.pool.sizes())
        if self.refresh_s > 0 and self._task is None:
            self._task = asyncio.create_task(self._loop(), name="botsky-feed")

    async def stop(self) -> None:
        """Stop the loop, finish the page writes, join the engagement still queued."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        lost = await self._pages.close()
        if lost:
            log.error("feed_pages_lost", pages=lost, reason="the ledger would not take them")
        try:
            await self.flush()
            await self.log_scores()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # shutting down: the ledger may be gone; never block the rest
            log.warning("feed_stop_incomplete", error=f"{type(exc).__name__}: {exc}")

    async def _loop(self) -> None:
        last_log = time.monotonic()
        while True:
            await asyncio.sleep(self.refresh_s)
            try:
                await self.refresh()
                if time.monotonic() - last_log >= self.score_interval_s:
                    last_log = time.monotonic()
                    await self.log_scores()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("feed_refresh_failed")

    async def load_scores(self, max_age_s: float = 0.0) -> list[FeedScore]:
        """Per-arm figures from the ledger, reloaded if older than ``max_age_s``."""
        async with self._scores_lock:
            age = None if self.scores_at is None else time.monotonic() - self.scores_at
            if age is None or age >= max_age_s:
                self.scores = feed_scores(await self.ledger.feed_arm_counts())
                self.scores_at = time.monotonic()
        return self.scores

    async def log_scores(self) -> None:
        """One ``feed_score`` line per arm (fresh from the ledger)."""
        for s in await self.load_scores():
            fields = feed_score_fields(s, self.arm_by)
            log.info(fields.pop("event"), **fields)

    async def refresh(self) -> None:
        """New bot replies in, old ones out, engagement joined, old viewers purged (after the
        pages answered so far are written, so none escapes the purge or the joins)."""
        async with asyncio.timeout(self.record_timeout_s):
            await self._pages.sync()
        now = self.clock()
        since = now - self.max_age_us
        await self._load(since, {})
        self.pool.expire(since)
        await self.flush()
        # Oldest serve first (``page`` moves a served URI to the end): stop at the first
        # that is recent enough instead of walking them all on every refresh.
        cut, served = now - self.attribution_us, self._served_uris
        while served:
            uri = next(iter(served))
            if served[uri] >= cut:
                break
            del served[uri]
        self._drop_sessions(now)
        if self._last_purge_us is None or now - self._last_purge_us >= self.purge_every_us:
            await self._purge(now)

    async def _load(self, since_us: int, counts: dict[int, int]) -> None:
        rows = await self.ledger.feed_candidates(self._last_id, since_us)
        for row in rows:
            self._last_id = max(self._last_id, row.mention_id)
            item = self._item(row)
            if item is not None:
                self.pool.add(item, counts.get(row.mention_id, 0))

    def _item(self, row: FeedCandidate) -> Item | None:
        if not row.reply_uri.startswith("at://"):
            return None
        return Item(
            mention_id=row.mention_id,
            uri=row.reply_uri,
            arm=str(getattr(row, self.arm_by)),
            created_us=row.created_us,
            post_author=row.post_author,
            mentioned_did=row.mentioned_did,
        )

    async def _purge(self, now: int) -> None:
        self._last_purge_us = now
        purged = await self.ledger.purge_feed_viewers(now - self.viewer_retention_us)
        if purged:
            log.info("feed_viewers_purged", rows=purged)

    # --- getFeedSkeleton ----------------------------------------------------------------
    async def skeleton(
        self,
        *,
        feed: str | None,
        limit: str | int | None = None,
        cursor: str | None = None,
        authorization: str | None = None,
        ip: str | None = None,
        verdict: Verdict | None = None,
    ) -> Answer:
        """``app.bsky.feed.getFeedSkeleton``. Never raises for anything a client sends.

        ``verdict`` replaces the token check for in-process callers that know the viewer
        (the simulation); HTTP requests always go through ``auth``.
        """
        if not feed:
            return self._refuse(400, "InvalidRequest", "feed is required")
        if feed != self.feed_uri:
            return self._refuse(400, "UnknownFeed", "this service does not serve that feed")
        n = _limit(limit)
        if n is None:
            return self._refuse(400, "InvalidRequest", "limit must be an integer from 1 to 100")
        if verdict is None:
            verdict = await self.auth.verify(authorization, GET_SKELETON)
        self.counts.auth[verdict.reason] += 1
        if not self._allowed(verdict.viewer, ip):
            return self._refuse(429, "RateLimitExceeded", "too many requests; slow down")
        try:
            parsed = Cursor.decode(cursor) if cursor else None
        except ValueError:
            return self._refuse(400, "InvalidRequest", "malformed cursor")
        if parsed is not None and parsed.session_id not in self._sessions:
            await self._recall(parsed.session_id)
        if not self._pages.accepting():  # before the page: nothing counted, nothing served
            return self._refuse(503, "ServiceUnavailable", "the feed cannot record pages now")
        built = self.page(verdict.viewer, parsed, n)
        self._pages.put(built.records())  # written behind the answer (module docstring)
        self.counts.requests["ok"] += 1
        for s in built.page.slots:
            self.counts.served[s.item.arm] += 1
        return Answer(200, built.body())

    def page(self, viewer: str | None, cursor: Cursor | None, limit: int) -> Built:
        """Build (and count) the next page of ``cursor``'s session, or of a new session.

        Synchronous: the page is built and its impressions counted without yielding to the
        event loop. A cursor whose session is unknown here or belongs to another viewer gets
        an empty page without cursor.
        """
        now = self.clock()
        req_id = f"{self.rng.getrandbits(128):032x}"
        if cursor is None:
            cursor = Cursor(seed=self.rng.getrandbits(64))
            session = _Session(viewer, set(), now)
            self._sessions[cursor.session_id] = session
        else:
            found = self._sessions.get(cursor.session_id)
            if found is None or found.viewer != viewer:
                empty = Page((), None, cursor.served)
                return Built(empty, req_id, cursor.session_id, viewer, now)
            session = found
        self._sessions.move_to_end(cursor.session_id)
        session.touched_us = now
        page = build_page(self.pool, cursor, limit, session.served, self._allowed_item)
        served = self._served_uris
        for s in page.slots:
            session.served.add(s.item.mention_id)
            served.pop(s.item.uri, None)
            served[s.item.uri] = now
        self._drop_sessions(now)
        return Built(page, req_id, cursor.session_id, viewer, now)

    async def sync(self) -> None:
        """Wait until every page answered so far is in the ledger (retrying failed writes)."""
        await self._pages.sync()

    async def _recall(self, session_id: str) -> None:
        """A session this process does not know (restart, another replica): the ledger's."""
        try:
            async with asyncio.timeout(self.record_timeout_s):
                await self._pages.sync()  # its latest pages may still be queued here
                stored = await self.ledger.feed_session(session_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("feed_session_unavailable", error=f"{type(exc).__name__}: {exc}")
            return
        if stored is not None and session_id not in self._sessions:
            self._sessions[session_id] = _Session(
                stored.viewer, set(stored.mention_ids), self.clock()
            )

    def _allowed_item(self, item: Item) -> bool:
        # Consent outlives the reply: once the author or the mentioned user opts out, the reply
        # is no longer shown to anyone.
        return not (self.opted_out(item.post_author) or self.opted_out(item.mentioned_did))

    def _allowed(self, viewer: str | None, ip: str | None) -> bool:
        if viewer is not None:
            return self.viewer_limit.allow(viewer)
        return self.ip_limit.allow(ip or "unknown")

    def _drop_sessions(self, now: int) -> None:
        sessions = self._sessions
        while sessions:
            oldest = next(iter(sessions.values()))
            if len(sessions) <= self.max_sessions and now - oldest.touched_us < self.session_ttl_us:
                break
            sessions.popitem(last=False)

    def _refuse(self, status: int, name: str, message: str) -> Answer:
        self.counts.requests[name] += 1
        return Answer.error(status, name, message)

    # --- sendInteractions ---------------------------------------------------------------
    async def interactions(
        self,
        body: object,
        *,
        authorization: str | None = None,
        ip: str | None = None,
        verdict: Verdict | None = None,
    ) -> Answer:
        """``app.bsky.feed.sendInteractions``: needs a verified viewer; applies to their own
        exposures only. ``verdict`` replaces the token check for in-process callers that know
        the viewer (the simulation), as in ``skeleton``."""
        if verdict is None:
            verdict = await self.auth.verify(authorization, SEND_INTERACTIONS)
        if not self._allowed(verdict.viewer, ip):
            return self._refuse(429, "RateLimitExceeded", "too many requests; slow down")
        if verdict.viewer is None:
            return self._refuse(401, "AuthenticationRequired", "a valid service token is needed")
        parsed = _interactions(body)
        if parsed is None:
            return self._refuse(400, "InvalidRequest", "interactions must be a list of objects")
        if len(parsed) > _MAX_INTERACTIONS:
            return self._refuse(400, "InvalidRequest", "too many interactions in one call")
        try:
            async with asyncio.timeout(self.record_timeout_s):
                await self._pages.sync()  # the pages they name may still be queued
                await self.ledger.record_feed_interactions(verdict.viewer, parsed, self.clock())
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("feed_interactions_not_recorded", error=f"{type(exc).__name__}: {exc}")
            return self._refuse(503, "ServiceUnavailable", "the feed cannot record now")
        for i in parsed:
            self.counts.interactions[i.event.rpartition("#")[2] or i.event] += 1
        return Answer(200, {})

    # --- describeFeedGenerator and the DID document -------------------------------------
    def describe(self) -> dict[str, Any]:
        body: dict[str, Any] = {"did": self.service_did, "feeds": [{"uri": self.feed_uri}]}
        if self.links:
            body["links"] = dict(self.links)
        return body

    def did_document(self) -> dict[str, Any]:
        return {
            "@context": ["https://www.w3.org/ns/did/v1"],
            "id": self.service_did,
            "service": [
                {
                    "id": "#bsky_fg",
                    "type": "BskyFeedGenerator",
                    "serviceEndpoint": self.service_endpoint,
                }
            ],
        }

    # --- engagement from the firehose ---------------------------------------------------
    def observe(self, event: Event) -> None:
        """Queue a like, repost, reply or quote of a served item (cheap for everything else)."""
        if event.operation != "create" or not self._served_uris:
            return
        collection = event.collection
        if collection in (LIKE, REPOST):
            uri = event.subject_uri()
            if uri is not None and uri in self._served_uris:
                kind = "like" if collection == LIKE else "repost"
                self._engagement.append((uri, event.did, kind, event.time_us))
        elif collection == POST:
            post = event.post
            if post.parent_uri is not None and post.parent_uri in self._served_uris:
                self._engagement.append((post.parent_uri, event.did, "reply", event.time_us))
            if post.quote_uri is not None and post.quote_uri in self._served_uris:
                self._engagement.append((post.quote_uri, event.did, "quote", event.time_us))

    async def flush(self) -> None:
        """Join the queued engagement to exposures in the ledger (pages written first)."""
        if self._engagement:
            async with asyncio.timeout(self.record_timeout_s):
                await self._pages.sync()
        while self._engagement:
            uri, actor, kind, time_us = self._engagement.popleft()
            joined = await self.ledger.mark_feed_engagement(
                uri, actor, kind, time_us, self.attribution_us
            )
            if joined:
                self.counts.engagement_joined[kind] += 1


class _WriteBehind(Generic[_T]):
    """Items written in the background, in order, by one writer task: each write, every
    ``batch_s``, takes every item queued meanwhile (a group commit). A failed write keeps its
    items at the front of the queue and is retried with backoff."""

    _RETRY_S: Final = (0.05, 1.0)  # first and longest wait between failed writes

    def __init__(
        self,
        write: Callable[[list[_T]], Awaitable[None]],
        *,
        batch_s: float,
        timeout_s: float,
        max_queued: int = 100_000,
    ) -> None:
        self._write = write
        self.batch_s = batch_s
        self.timeout_s = timeout_s
        self.max_queued = max_queued
        self._queue: deque[tuple[_T, float]] = deque()  # (item, time.monotonic() queued)
        self._inflight_since: float | None = None
        self._writer: asyncio.Task[None] | None = None
        self._put = 0  # items queued so far
        self._done = 0  # items written so far (in queue order)
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._closing = False
        self._hurry = asyncio.Event()  # set by sync and close: write now, do not wait batch_s
        self.failure: BaseException | None = None  # of the last write, None once one succeeds
        self.written_batches = 0

    def __len__(self) -> int:
        """Items queued or being written."""
        return self._put - self._done

    def accepting(self) -> bool:
        """False while the last write failed, the oldest item has waited ``timeout_s``, or the
        queue is full: the caller should refuse new work rather than queue it."""
        if self.failure is not None or len(self) >= self.max_queued:
            return False
        oldest = self._inflight_since
        if oldest is None and self._queue:
            oldest = self._queue[0][1]
        return oldest is None or time.monotonic() - oldest < self.timeout_s

    def put(self, item: _T) -> None:
        """Queue ``item``; the writer writes it within ``batch_s`` (plus the writes before)."""
        self._queue.append((item, time.monotonic()))
        self._put += 1
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._run(), name="botsky-feed-pages")

    async def sync(self) -> None:
        """Wait until every item queued before this call is written."""
        target = self._put
        if self._done >= target:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((target, future))
        self._hurry.set()
        if self._writer is None or self._writer.done():  # (only after a cancelled writer)
            self._writer = asyncio.create_task(self._run(), name="botsky-feed-pages")
        try:
            await future
        finally:
            self._waiters = [(t, f) for t, f in self._waiters if f is not future]

    async def close(self) -> int:
        """Write what is queued, retrying for up to ``timeout_s``; stop the writer. Returns how
        many items could not be written (and are dropped)."""
        self._closing = True
        self._hurry.set()
        try:
            async with asyncio.timeout(self.timeout_s):
                await self.sync()
        except TimeoutError:
            pass
        writer, self._writer = self._writer, None
        if writer is not None and not writer.done():
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        lost = len(self)
        self._queue.clear()
        self._done = self._put
        return lost

    async def _run(self) -> None:
        retry = self._RETRY_S[0]
        while self._queue:
            if self.batch_s > 0 and self.failure is None and not self._hurry.is_set():
                with contextlib.suppress(TimeoutError):  # let the next moments' pages join
                    async with asyncio.timeout(self.batch_s):
                        await self._hurry.wait()
            if not self._closing:
                self._hurry.clear()
            batch = list(self._queue)
            self._queue.clear()
            self._inflight_since = batch[0][1]
            try:
                await self._write([item for item, _ in batch])
            except BaseException as exc:
                self._queue.extendleft(reversed(batch))  # first again, in order
                self._inflight_since = None
                if isinstance(exc, asyncio.CancelledError):
                    raise
                if self.failure is None:
                    log.warning("feed_pages_not_written", error=f"{type(exc).__name__}: {exc}")
                self.failure = exc
                await asyncio.sleep(retry)
                retry = min(retry * 2, self._RETRY_S[1])
                continue
            self._inflight_since = None
            if self.failure is not None:
                log.info("feed_pages_written_again", pages=len(batch))
            self.failure = None
            retry = self._RETRY_S[0]
            self._done += len(batch)
            self.written_batches += 1
            for target, future in self._waiters:
                if target <= self._done and not future.done():
                    future.set_result(None)


def _limit(raw: str | int | None) -> int | None:
    if raw is None or raw == "":
        return _DEFAULT_LIMIT
    try:
        value = int(raw)
    except (TypeError, ValueError):
        return None
    return value if 1 <= value <= 100 else None


def _interactions(body: object) -> list[Interaction] | None:
    if not isinstance(body, dict):
        return None
    raw = body.get("interactions")
    if not isinstance(raw, list):
        return None
    out = []
    for i in raw:
        if not isinstance(i, dict):
            return None
        item, event = i.get("item"), i.get("event")
        if not isinstance(item, str) or not isinstance(event, str):
            continue  # both are optional in the lexicon; without them nothing can be applied
        req_id = i.get("reqId")
        context = i.get("feedContext")
        out.append(
            Interaction(
                item_uri=item[:8192],
                event=event[:512],
                req_id=req_id[:100] if isinstance(req_id, str) else None,
                feed_context=context[:2000] if isinstance(context, str) else None,
            )
        )
    return out
