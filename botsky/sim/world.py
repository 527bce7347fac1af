"""The simulated network ("Mock Threads"): users, follows, posts, threads, notifications.

The world is a ``Source`` (it emits Jetstream-shaped ``Event``s: identity events with handles,
profiles, posts/likes/follows with DIDs, TID rkeys and ``createdAt`` in simulated time) and a
``Poster`` (a bot's reply lands in the thread it answers, and its @-mention becomes a
notification of the mentioned user), so the pipeline under test is the production pipeline.
Everything it emits is what a real network shows: name-like handles, display names and bios,
sentences; no archetype, trait or interest weight (``tests/test_sim_leaks.py``).

**Days and sessions.** ``new_per_day`` users join each day (each user may leave with
probability ``churn``). A user is *around* on a given day with a probability that grows with
their activity, and when around logs on ``1 + Poisson(λ)`` times at hours drawn from a daily
rhythm (few at night, most in the evening); λ grows with activity, so heavy users log on many
times a day and lurkers on some days once. At each logon the user reads (1) notifications
(replies to them, bot mentions), (2) new posts by accounts they follow, (3) a few recent posts
by anyone, (4) if they subscribe to botsky's feed, a page of it, read through the feed service
(``botsky.sim.feed``, which also says how its truth is kept); the engine rates each item and
updates the hidden state and mood; the user rolls to reply, like (in botsky's feed also
repost) or follow, and sometimes writes a post (heavy users more often).

**Answering a mention.** A mention is read at the user's next logon. The probability that they
answer it then is::

    p = upper * FATIGUE ** (bot mentions they got in the last day - 1) * (0.7 + 0.3 * mood)
    upper = min(CAP, responsiveness * (FLOOR + (1 - FLOOR) * fit(interests, thread))
                     * FOLLOW_TIE [they follow the thread's author]
                     * TALK_TIE   [they exchanged replies with the author before]
                     * BOT_TIE)   [they answered this bot before]

``upper`` (the *upper bound*) is fixed when the mention arrives; it is what the user would do
reading it at once, fresh and in a perfect mood. Whether they read it at all within the outcome
window depends on when they next log on: lurkers often miss it.

**Truth.** For every bot mention the world records the probability it used when the mentioned
user decided, and 0 if they never decided within the outcome window; in general, the sum of
the probabilities of every decision that would have put a post of theirs into the thread
(answering the mention, or replying to a post of the thread they came across), up to the first
such post, within the window. Its expectation is exactly the probability that the pipeline
scores the mention a success (it is the compensator of that event), so per arm the mean of
these numbers is the **true expected rate** the arm's success rate estimates. Likewise for
engagement: the summed probabilities of every like and repost of the bot's reply and every
reply to it by the author, decided within the window, are the true expected likes, reposts and
author replies. At each
mention the world also records the **oracle**: the highest upper bound among the users the
pipeline could have seen online (public activity within the presence window), the post's
author excepted; no picker's upper bound beats it.

After the last day, *settle* days (as many as the outcome window spans) let every user read
(and answer) their notifications without writing new posts, and a final clock tick past the
outcome window closes every mention, so all mentions mature.

The world must be driven in lockstep (the consumer finishes with one event, including any bot
reply, before asking for the next); then one seed gives one history.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import random
import time
from bisect import insort
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from itertools import accumulate
from operator import mul
from pathlib import Path
from typing import Any, Final

from botsky.events import (
    FOLLOW,
    LIKE,
    POST,
    PROFILE,
    REPOST,
    Event,
    PostRef,
    at_uri,
    commit_event,
)
from botsky.ids import BASE32_SORTABLE as _B32
from botsky.ids import synthetic_cid as fake_cid
from botsky.ids import tid
from botsky.posting import Posted, ReplyPost
from botsky.sim.archetypes import Archetype, load_archetypes, mix
from botsky.sim.engines import Engine, Item, StochasticEngine, main_topic
from botsky.sim.feed import (
    ENGAGED,
    FEED_KIND,
    KINDS,
    ExposureTruth,
    FeedClient,
    FeedTruth,
)
from botsky.sim.state import DEFAULT_LIMITS, StateLimits, merge_state
from botsky.sim.text import bio, display_name, handle_stem
from botsky.sim.topics import REGISTERS, TOPIC_NAMES, fit
from botsky.sources.base import SourceStats

__all__ = [
    "BOT_TIE",
    "CAP",
    "FATIGUE",
    "FLOOR",
    "FOLLOW_TIE",
    "TALK_TIE",
    "MentionTruth",
    "SimPost",
    "SimUser",
    "Truth",
    "World",
    "WorldConfig",
]

DAY_US: Final = 86_400_000_000
FLOOR: Final = 0.01  # a user answers a mention on a topic they do not care about this rarely
FATIGUE: Final = 0.8
FOLLOW_TIE: Final = 1.4
TALK_TIE: Final = 1.5
BOT_TIE: Final = 1.3
CAP: Final = 0.95
_TIE_MAX: Final = FOLLOW_TIE * TALK_TIE * BOT_TIE
_START_US: Final = 1_767_571_200_000_000  # 2026-01-05T00:00:00Z
_STEP_US: Final = 1_000  # events are at least 1 ms apart: strictly increasing time and TIDs
_KEEP_DAYS: Final = 3  # posts older than this are forgotten (notifications are read sooner)
# Archetype propensities are relative; these scale them, per item read, to about one reply,
# two likes and a follow every few days per user and day: an active small network.
_REPLY_SCALE: Final = 0.2
_LIKE_SCALE: Final = 0.3
_FOLLOW_SCALE: Final = 0.5
# Reposts are rarer than likes (botsky's feed is where the world's users repost a bot's reply).
_REPOST_SCALE: Final = 0.1
# On a page of botsky's feed, each position down the page keeps this much of the attention of
# the one above (the feed's team-draft order gives every arm the same positions on average).
_FEED_ATTENTION: Final = 0.95
# How many hours of the day people log on in (relative weights, 00:00 to 23:00 UTC; one time
# zone): few at night, a morning bump, most in the evening.
_TO_NOON: Final = (0.3, 0.2, 0.1, 0.1, 0.1, 0.2, 0.5, 0.9, 1.0, 1.0, 1.0, 1.1)
_FROM_NOON: Final = (1.2, 1.1, 1.0, 1.0, 1.1, 1.2, 1.4, 1.6, 1.7, 1.5, 1.0, 0.6)
_HOURS: Final = tuple(accumulate((*_TO_NOON, *_FROM_NOON)))
_HOUR_US: Final = 3_600_000_000
# A post is about one topic (a reply, about its thread's): these vectors are shared by all posts,
# which also makes a checkpoint store each once.
_ONE_HOT: Final = tuple(
    tuple(1.0 if k == j else 0.0 for k in range(len(TOPIC_NAMES))) for j in range(len(TOPIC_NAMES))
)
_TOPIC_OF: Final = {v: j for j, v in enumerate(_ONE_HOT)}
_TOPICS: Final = range(len(TOPIC_NAMES))


@dataclass(frozen=True, slots=True)
class WorldConfig:
    """The world's shape. ``presence_window_s`` should be the pipeline's (for the oracle) and
    ``outcome_window_s`` its outcome window (truth is counted within it; settle days span it).
    ``reads``: at most this many notifications and feed posts per logon; ``recent_reads``:
    recent posts by anyone per logon. ``feed_subscribers``: the share of users who subscribe
    to botsky's feed (``World.feed`` serves it), who read a page of ``feed_page`` items of it
    at every logon; ``feed_attribution_s``: the feed's attribution window (its truth's)."""

    users: int = 300
    days: int = 7
    seed: int = 1
    new_per_day: int = 1
    churn: float = 0.0
    reads: int = 10
    recent_reads: int = 4
    presence_window_s: float = 3_600.0
    outcome_window_s: float = 86_400.0
    settle: bool = True
    archetypes: Path | None = None
    limits: StateLimits = DEFAULT_LIMITS
    feed_subscribers: float = 0.0
    feed_page: int = 10
    feed_attribution_s: float = 86_400.0
    # Keep every mention's truth record after its window closed (``World.closed_truth``): the
    # validation study (``botsky.sim.study``) reads the true rate of the mentions decided at
    # each reading. Off by default: a long run would carry every record in its checkpoints.
    keep_mention_truth: bool = False


@dataclass(slots=True)
class SimPost:
    uri: str
    cid: str
    did: str
    time_us: int
    text: str
    topics: tuple[float, ...]
    root_uri: str
    root_cid: str
    by_bot: bool = False
    topic: int = -1  # the one topic of ``topics`` if it has one (all posts but a bot's orphans)

    # A checkpoint holds thousands of posts: as argument tuples they pickle about 3x faster
    # than as the slot dicts of the default protocol.
    def __reduce__(self) -> tuple[type[SimPost], tuple[Any, ...]]:
        return SimPost, (
            self.uri, self.cid, self.did, self.time_us, self.text, self.topics, self.root_uri,
            self.root_cid, self.by_bot, self.topic,
        )  # fmt: skip


@dataclass(slots=True)
class SimUser:
    index: int
    did: str
    handle: str
    archetype: str
    traits: dict[str, float]
    interests: tuple[float, ...]  # the hidden ground truth: topic weights summing to 1
    registers: tuple[int, ...]  # which of each topic's vocabularies the user writes in
    joined_day: int
    around: float  # chance of logging on at all on a given day
    sessions: float  # λ: logons on a day they are around are 1 + Poisson(λ)
    post_rate: float  # chance of writing a post at a logon
    state: dict[str, Any] = field(default_factory=dict)  # the free-form hidden state (bounded)
    mood: float = 0.6  # 0 awful .. 1 great
    active: bool = True
    follows: dict[str, None] = field(default_factory=dict)  # an ordered set of DIDs
    posts: list[str] = field(default_factory=list)  # own recent post URIs, newest last
    notifications: list[tuple[str, str]] = field(default_factory=list)  # (kind, post uri)
    mentions: list[int] = field(default_factory=list)  # times of bot mentions received
    talked: dict[str, int] = field(default_factory=dict)  # DID -> replies exchanged (bounded)
    last_seen_us: int = 0  # last public activity (a commit): what "online" means to anyone
    last_logon_us: int = 0
    # Derived from ``interests``, which never change: how well a post on each single topic fits,
    # the favourite topic and the cumulative weights to draw a post's topic with.
    fits: tuple[float, ...] = field(init=False, repr=False, compare=False)
    favourite: int = field(init=False, repr=False, compare=False)
    cum_interests: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.fits = tuple(fit(self.interests, one) for one in _ONE_HOT)
        self.favourite = main_topic(self.interests)
        self.cum_interests = tuple(accumulate(self.interests))

    # Pickled as the constructor's arguments: what is derived is recomputed, not stored.
    def __reduce__(self) -> tuple[type[SimUser], tuple[Any, ...]]:
        return SimUser, (
            self.index, self.did, self.handle, self.archetype, self.traits, self.interests,
            self.registers, self.joined_day, self.around, self.sessions, self.post_rate,
            self.state, self.mood, self.active, self.follows, self.posts, self.notifications,
            self.mentions, self.talked, self.last_seen_us, self.last_logon_us,
        )  # fmt: skip

    def fit(self, post: SimPost) -> float:
        """``fit(interests, post.topics)``, looked up for a single-topic post."""
        return self.fits[post.topic] if post.topic >= 0 else fit(self.interests, post.topics)


@dataclass(slots=True)
class MentionTruth:
    """One bot mention while its outcome window is open: what the truth needs to count."""

    bot: str
    did: str  # the mentioned user
    author: str  # of the post the bot answered
    root_uri: str
    created_us: int  # the pipeline's creation time (the stream time of the answered post)
    ends_us: int  # created_us + the outcome window
    upper: float
    suggestion: float  # how well the mentioned user fits the thread (their hidden fit)
    answered: bool = False  # the mentioned user posted in the thread within the window
    expected: float = 0.0  # this mention's true answer probability (so far)
    oracle: float = 0.0  # the oracle's upper bound at the same post
    likes: float = 0.0  # true expected likes of the bot's reply (so far)
    author_replies: float = 0.0  # true expected replies to it by the post's author (so far)
    reposts: float = 0.0  # true expected reposts of it (so far; readers of botsky's feed)


@dataclass
class Truth:
    """Per bot, sums over its mentions (divide by ``mentions`` for per-mention means).

    ``expected``: true answer probabilities (see the module docstring); ``upper``: upper
    bounds of its picks; ``oracle``: the oracle's upper bounds at the same posts; ``likes``,
    ``reposts`` and ``author_replies``: true expected numbers of likes and reposts of its
    replies and replies to them by the post's author, within the window.
    """

    mentions: int = 0
    expected: float = 0.0
    upper: float = 0.0
    oracle: float = 0.0
    likes: float = 0.0
    author_replies: float = 0.0
    reposts: float = 0.0


def _poisson(lam: float, rng: random.Random) -> int:
    # Knuth's method: fine for the small means used here (λ < 10).
    limit, k, prod = math.exp(-lam), 0, rng.random()
    while prod > limit:
        k += 1
        prod *= rng.random()
    return k


class World:
    """See the module docstring. Iterate it (Source) and hand it to the app (Poster)."""

    def __init__(self, config: WorldConfig, engine: Engine | None = None) -> None:
        self.config = config
        self.engine: Engine = engine or StochasticEngine()
        self.name = f"sim:{config.seed}"
        self.stats = SourceStats()
        self.rng = random.Random(config.seed)
        self.archetypes: tuple[Archetype, ...] = load_archetypes(config.archetypes)
        self.users: list[SimUser] = []
        self.by_did: dict[str, SimUser] = {}
        self.handles: set[str] = set()
        self.posts: dict[str, SimPost] = {}
        self.recent: list[str] = []  # non-bot post URIs of the last day, oldest first
        self.bot_dids: set[str] = set()
        # (did, rkey) → (uri, cid, parent uri) of a bot's reply; plain strings pickle fastest
        self.bot_posts: dict[tuple[str, str], tuple[str, str, str]] = {}
        self.day = 0
        self.clock_us = _START_US
        self.counts: dict[str, int] = dict.fromkeys(
            (
                "posts",
                "replies",
                "likes",
                "follows",
                "mentions",
                "mention_replies",
                "joined",
                "logons",
                "reposts",
                "feed_pages",
                "feed_seen",
            ),
            0,
        )
        self.truth: dict[str, Truth] = {}
        self.mention_truth: dict[str, MentionTruth] = {}  # bot reply URI → its open mention
        # bot reply URI → the record of a mention gone from mention_truth (keep_mention_truth)
        self.closed_truth: dict[str, MentionTruth] = {}
        self._watch: dict[str, list[MentionTruth]] = {}  # mentioned DID → their open mentions
        # The truth of mentions whose window has closed (``decided_truth``), and the mentions
        # not yet folded into it: a heap on (window end, sequence number).
        self.decided: dict[str, Truth] = {}
        self._closing: list[tuple[int, int, MentionTruth]] = []
        self.user_days = 0  # (user, day) pairs simulated, settle days excluded
        self.pending: deque[Event] = deque()
        # botsky's feed (botsky.sim.feed): the subscribers' app, who subscribes (user indexes),
        # the latest exposure per (viewer, item) and the truth per bot over seen exposures.
        self.feed: FeedClient | None = None
        self.subscribers: set[int] = set()
        self.exposed: dict[tuple[str, str], ExposureTruth] = {}
        self.feed_truth: dict[str, FeedTruth] = {}
        self.bot_names: dict[str, str] = {}  # bot DID -> bot name
        self.on_day: Callable[[int], Awaitable[None]] | None = None
        self.finished = False
        self._ranked: dict[tuple[float, ...], list[tuple[float, int]]] = {}  # see _best_online

    # pickling (checkpoints): the engine may hold a network client; the caller re-attaches it.
    # Caches and the DID index are rebuilt rather than stored.
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for name in ("engine", "on_day", "by_did", "_ranked", "feed"):
            del state[name]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.engine = StochasticEngine()
        self.on_day = None
        self.feed = None
        self.by_did = {u.did: u for u in self.users}
        self._ranked = {}

    @property
    def settle_days(self) -> int:
        """Days after the last one during which users only read (the outcome window's span)."""
        return max(1, math.ceil(self.config.outcome_window_s * 1e6 / DAY_US))

    # ground truth --------------------------------------------------------------------------
    def static_bound(self, user: SimUser, topics: tuple[float, ...]) -> float:
        """``responsiveness * (FLOOR + (1 - FLOOR) * fit)``: the upper bound without ties."""
        k = _TOPIC_OF.get(topics, -1)
        match = user.fits[k] if k >= 0 else fit(user.interests, topics)
        return user.traits["responsiveness"] * (FLOOR + (1 - FLOOR) * match)

    def ties(self, user: SimUser, author: str, bot_did: str) -> float:
        """The factor for what ``user`` has to do with the post's author and the bot."""
        tie = FOLLOW_TIE if author in user.follows else 1.0
        talked = user.talked
        if talked:
            if author in talked:
                tie *= TALK_TIE
            if bot_did in talked:
                tie *= BOT_TIE
        return tie

    def upper_bound(
        self, user: SimUser, topics: tuple[float, ...], author: str = "", bot_did: str = ""
    ) -> float:
        """The answer probability without fatigue and at the best mood (what the oracle
        maximizes), for a mention under a post by ``author`` in a thread on ``topics``."""
        return min(CAP, self.static_bound(user, topics) * self.ties(user, author, bot_did))

    def answer_probability(self, user: SimUser, rec: MentionTruth, now_us: int) -> float:
        """The probability that ``user`` answers the mention ``rec`` when reading it now."""
        recent = sum(1 for t in user.mentions if t >= now_us - DAY_US)
        fatigue = FATIGUE ** max(0, recent - 1)
        return rec.upper * fatigue * (0.7 + 0.3 * min(1.0, max(0.0, user.mood)))

    def _best_online(
        self, topics: tuple[float, ...], since_us: int, author: str, bot_did: str
    ) -> float:
        """The oracle: the highest ``upper_bound`` among users seen since ``since_us``.

        Interests and traits never change after a user joins, so users are ranked by their
        bound without ties once per thread topic vector (new users are inserted as they join).
        Ties multiply a bound by at most ``_TIE_MAX``, so the walk stops at the first user whose
        tie-free bound times that cannot beat the best found.
        """
        ranked = self._ranked.get(topics)
        if ranked is None:
            ranked = self._ranked[topics] = []
        users = self.users
        for u in users[len(ranked) :]:
            insort(ranked, (-self.static_bound(u, topics), u.index))
        best = 0.0
        for neg_bound, i in ranked:
            if -neg_bound * _TIE_MAX <= best or best >= CAP:
                break
            u = users[i]
            if u.active and u.last_seen_us >= since_us and u.did != author:
                b = min(CAP, -neg_bound * self.ties(u, author, bot_did))
                if b > best:
                    best = b
        return best

    def decided_truth(self, as_of_us: int | None = None) -> dict[str, Truth]:
        """Per bot, the truth of its mentions whose outcome window had closed at ``as_of_us``
        (default: the world's clock), the rule by which the pipeline calls a mention decided
        (``created + window <= as_of``): the truth beside a reading taken mid-run. Once every
        window has closed it equals ``truth`` (likes and author replies included).

        Mentions are folded in for good: at the times asked, and at each day boundary those
        closed ``_KEEP_DAYS`` before it (so that a long run keeps no record longer). A time
        earlier than one folded reads as that later one, so readings are exact from
        ``_KEEP_DAYS`` before the current day on. A time past the world's clock reads as the
        clock (the future is unknown).
        """
        self._fold(self.clock_us if as_of_us is None else min(as_of_us, self.clock_us))
        return {bot: replace(d) for bot, d in self.decided.items()}

    def _fold(self, t: int) -> None:
        closing = self._closing
        while closing and closing[0][0] <= t:
            rec = heapq.heappop(closing)[2]
            d = self.decided.setdefault(rec.bot, Truth())
            d.mentions += 1
            d.expected += rec.expected
            d.upper += rec.upper
            d.oracle += rec.oracle
            d.likes += rec.likes
            d.author_replies += rec.author_replies
            d.reposts += rec.reposts

    def oracle_rate(self) -> float | None:
        n = sum(t.mentions for t in self.truth.values())
        return sum(t.oracle for t in self.truth.values()) / n if n else None

    def fits(self, post_uri: str, bot_did: str, dids: Sequence[str]) -> list[float]:
        """The upper bound of each of ``dids`` for a mention by ``bot_did`` under ``post_uri``
        (0 for unknown users or posts): the truth hook of the ``noisy_oracle`` picker."""
        post = self.posts.get(post_uri)
        if post is None:
            return [0.0] * len(dids)
        topics = self.posts.get(post.root_uri, post).topics
        by_did = self.by_did
        return [
            self.upper_bound(u, topics, post.did, bot_did) if (u := by_did.get(d)) else 0.0
            for d in dids
        ]

    # Source --------------------------------------------------------------------------------
    def __aiter__(self) -> AsyncIterator[Event]:
        return self._run()

    async def aclose(self) -> None:
        return None

    async def _run(self) -> AsyncIterator[Event]:
        last = self.config.days + (self.settle_days if self.config.settle else 0)
        while self.day < last and not self.finished:
            # Before the day boundary's checkpoint, which then holds only what is still needed.
            self._forget_old(_START_US + self.day * DAY_US)
            if self.on_day is not None:
                await self.on_day(self.day)
            async for event in self._day(settle=self.day >= self.config.days):
                self.stats.events += 1
                yield event
                while self.pending:
                    self.stats.events += 1
                    yield self.pending.popleft()
            self.day += 1
        if not self.finished:
            self.finished = True
            # Past the outcome window: the app closes every mention that is still open.
            if self.users:
                u = self.users[0]
                t = self._tick(self.clock_us + int(self.config.outcome_window_s * 1e6) + 1)
                self.stats.events += 1
                yield Event(did=u.did, time_us=t, kind="identity", cursor=t, handle=u.handle)

    async def _day(self, settle: bool) -> AsyncIterator[Event]:
        cfg, rng = self.config, self.rng
        start = _START_US + self.day * DAY_US
        self._tick(start)
        if not settle:
            joining = cfg.users if self.day == 0 else cfg.new_per_day
            for _ in range(joining):
                async for event in self._join():
                    yield event
            if cfg.churn > 0 and self.day > 0:
                for u in self.users:
                    if u.active and rng.random() < cfg.churn:
                        u.active = False
                        t = self._tick(self.clock_us)
                        yield Event(
                            did=u.did,
                            time_us=t,
                            kind="account",
                            cursor=t,
                            active=False,
                            status="deactivated",
                        )
        logons: list[tuple[int, int]] = []
        random, choices, hours, last = rng.random, rng.choices, range(24), _HOUR_US - _STEP_US * 64
        for u in self.users:
            if not u.active:
                continue
            if not settle:
                self.user_days += 1
            if random() >= u.around:
                continue
            for hour in choices(hours, cum_weights=_HOURS, k=1 + _poisson(u.sessions, rng)):
                # Not in the last few ms of the day, so a session never runs into the next.
                logons.append((start + hour * _HOUR_US + int(random() * last), u.index))
        logons.sort()
        for t, i in logons:
            async for event in self._session(self.users[i], t, settle):
                yield event

    async def _join(self) -> AsyncIterator[Event]:
        rng = self.rng
        i = len(self.users)
        digest = hashlib.sha256(f"{self.config.seed}/{i}".encode()).digest()
        bits = int.from_bytes(digest, "big")
        did = "did:plc:" + "".join(_B32[(bits >> (5 * k)) & 31] for k in range(24))
        label, traits, (lo, hi) = mix(self.archetypes, rng)
        k = len(TOPIC_NAMES)
        chosen = rng.sample(range(k), rng.randint(lo, hi))
        raw = [rng.uniform(0.3, 1.0) if j in chosen else 0.0 for j in range(k)]
        total = sum(raw)
        interests = tuple(round(w / total, 4) for w in raw)
        registers = tuple(rng.randrange(REGISTERS) for _ in range(k))
        # How often they are around and log on, from their activity, with a personal spread
        # (lognormal) so that users of one archetype differ: about 1.7 logons on 53% of days
        # at activity 0.3, 6 logons on 84% of days at 0.8.
        activity = traits["activity"]
        around = min(1.0, max(0.1, 0.35 + 0.6 * activity + rng.gauss(0.0, 0.08)))
        sessions = 7.0 * activity * activity * rng.lognormvariate(0.0, 0.35)
        posts_per_day = (0.4 + 1.4 * activity) * rng.lognormvariate(0.0, 0.3)
        post_rate = min(1.0, posts_per_day / (1.0 + sessions))
        stem = handle_stem(rng)
        handle = f"{stem}.sim.test"
        n = 2
        while handle in self.handles:
            handle = f"{stem}{n}.sim.test"
            n += 1
        self.handles.add(handle)
        user = SimUser(
            i,
            did,
            handle,
            label,
            traits,
            interests,
            registers,
            self.day,
            around,
            sessions,
            post_rate,
            mood=round(rng.uniform(0.4, 0.9), 3),
        )
        user.state = merge_state({}, await self.engine.init_state(user, rng), self.config.limits)
        self.users.append(user)
        self.by_did[did] = user
        self.counts["joined"] += 1
        if self._subscribes(i):
            self.subscribers.add(i)
        t = self._tick(self.clock_us)
        yield Event(did=did, time_us=t, kind="identity", cursor=t, handle=handle)
        profile = {"displayName": display_name(stem), "description": bio(interests, registers, rng)}
        yield self._commit(user, PROFILE, profile, rkey="self")
        # Follow a few earlier users, preferring those who share interests.
        if len(self.users) > 1:
            others = self.users[:-1]
            # 0.05 + fit(interests, o.interests), inlined: one new user is weighed against
            # every earlier one (the same floats, in a fraction of the time).
            top = max(interests)
            weights = [0.05 + min(1.0, sum(map(mul, interests, o.interests)) / top) for o in others]
            for other in rng.choices(others, weights=weights, k=min(len(others), 5)):
                if other.did not in user.follows and other.active:
                    yield self._follow(user, other.did, self._tick(self.clock_us))

    async def _session(self, u: SimUser, logon_us: int, settle: bool) -> AsyncIterator[Event]:
        rng, engine, reads, posts = self.rng, self.engine, self.config.reads, self.posts
        now = self._tick(logon_us)
        self.counts["logons"] += 1
        notes, u.notifications = u.notifications[:reads], u.notifications[reads:]
        mentions = [posts[uri] for kind, uri in notes if kind == "mention" and uri in posts]
        items = [self._item(u, "reply", posts[uri]) for kind, uri in notes
                 if kind == "reply" and uri in posts]  # fmt: skip
        if not settle:
            items += [self._item(u, "feed", p) for p in self._feed(u)]
            items += [
                self._item(u, "recent", p) for p in self._recent(u, {i.post.uri for i in items})
            ]
            if self.feed is not None and u.index in self.subscribers:
                items += await self._read_botsky_feed(u, now)
        probs, update, mood = await engine.rate(u, items, rng)
        if update:
            u.state = merge_state(u.state, update, self.config.limits)
        if mood is not None:
            u.mood = 0.8 * u.mood + 0.2 * mood
        for post in mentions:
            async for event in self._read_mention(u, post):
                yield event
        random, follows, watch = rng.random, u.follows, self._watch.get(u.did)
        reply = u.traits["reply"] * _REPLY_SCALE
        like = u.traits["like"] * _LIKE_SCALE
        repost = u.traits["like"] * _REPOST_SCALE
        follow = u.traits["follow"] * _FOLLOW_SCALE
        exposed = self.exposed
        for item, p in zip(items, probs, strict=True):
            post = item.post
            p_repost = 0.0
            if item.position >= 0:  # on a page of botsky's feed: attention fades down the page
                p *= _FEED_ATTENTION**item.position
                p_repost = min(1.0, p * repost)
            p_reply = min(1.0, p * reply)
            p_like = min(1.0, p * like)
            if post.by_bot:
                self._engaged(u, post.uri, p_like, p_reply, p_repost)
            in_play = self._thread_decision(watch, post.root_uri, p_reply) if watch else None
            hit = random() < p_reply
            if exposed and post.by_bot:
                self._feed_decision(u, post.uri, "reply", p_reply, hit)
            if hit:
                if in_play:
                    self._answered(in_play)
                yield await self._reply(u, post)
            hit = random() < p_like
            if exposed and post.by_bot:
                self._feed_decision(u, post.uri, "like", p_like, hit)
            if hit:
                self.counts["likes"] += 1
                yield self._commit(u, LIKE, {"subject": {"uri": post.uri, "cid": post.cid}})
            if p_repost > 0.0:
                hit = random() < p_repost
                self._feed_decision(u, post.uri, "repost", p_repost, hit)
                if hit:
                    self.counts["reposts"] += 1
                    yield self._commit(u, REPOST, {"subject": {"uri": post.uri, "cid": post.cid}})
            if (
                post.did not in follows
                and post.did != u.did
                and not post.by_bot
                and random() < p * follow
            ):
                yield self._follow(u, post.did, self._tick(self.clock_us))
        if not settle and random() < u.post_rate:
            topic = rng.choices(_TOPICS, cum_weights=u.cum_interests)[0]
            text = await engine.write_post(u, topic, rng)
            yield self._post(u, text, _ONE_HOT[topic], topic, None)
        u.last_logon_us = now

    async def _read_mention(self, u: SimUser, post: SimPost) -> AsyncIterator[Event]:
        """``u`` reads a bot's mention: answer it (the truth's decision) and perhaps like it."""
        rec = self.mention_truth.get(post.uri)
        if rec is None:  # not a mention the world posted (records live as long as posts)
            return
        rng = self.rng
        p = self.answer_probability(u, rec, self.clock_us)
        in_play = self._thread_decision([rec], rec.root_uri, p)
        hit = rng.random() < p
        if self.exposed:
            self._feed_decision(u, post.uri, "reply", p, hit)
        if hit:
            self.counts["mention_replies"] += 1
            if in_play:
                self._answered(in_play)
            _talk(u, post.did)
            yield await self._reply(u, post)
        # Being recommended to a thread that suits you is flattering.
        p_like = min(1.0, u.traits["like"] * _LIKE_SCALE * (0.3 + 0.7 * rec.suggestion))
        self._engaged(u, post.uri, p_like, 0.0)
        hit = rng.random() < p_like
        if self.exposed:
            self._feed_decision(u, post.uri, "like", p_like, hit)
        if hit:
            self.counts["likes"] += 1
            yield self._commit(u, LIKE, {"subject": {"uri": post.uri, "cid": post.cid}})

    def _thread_decision(
        self, watch: list[MentionTruth], root_uri: str, p: float
    ) -> list[MentionTruth]:
        """Count a decision of a watched user that would post into ``root_uri`` with
        probability ``p``: it adds ``p`` to the truth of each open mention in that thread
        (within its window, not yet answered). Returns those mentions."""
        # The answer would be the next event: one step after the clock.
        t = self.clock_us + _STEP_US
        in_play = [r for r in watch if r.root_uri == root_uri and not r.answered and t <= r.ends_us]
        for rec in in_play:
            rec.expected += p
            self.truth[rec.bot].expected += p
        return in_play

    def _answered(self, in_play: list[MentionTruth]) -> None:
        for rec in in_play:
            rec.answered = True

    def _engaged(
        self, u: SimUser, reply_uri: str, p_like: float, p_reply: float, p_repost: float = 0.0
    ) -> None:
        """Count a decision to like (``p_like``), repost or reply to (``p_reply``) a bot's
        reply."""
        rec = self.mention_truth.get(reply_uri)
        if rec is None or self.clock_us + _STEP_US > rec.ends_us:
            return
        truth = self.truth[rec.bot]
        truth.likes += p_like
        rec.likes += p_like
        truth.reposts += p_repost
        rec.reposts += p_repost
        if u.did == rec.author:
            truth.author_replies += p_reply
            rec.author_replies += p_reply

    # botsky's feed ----------------------------------------------------------------------------
    def _subscribes(self, index: int) -> bool:
        """Whether user ``index`` subscribes to botsky's feed: a hash of the seed and the user
        (no draw from the world's RNG, so the share changes nothing else)."""
        share = self.config.feed_subscribers
        if share <= 0.0:
            return False
        digest = hashlib.sha256(f"{self.config.seed}/{index}/botsky-feed".encode()).digest()
        return int.from_bytes(digest[:8]) < share * 2.0**64

    async def _read_botsky_feed(self, u: SimUser, now: int) -> list[Item]:
        """``u`` opens botsky's feed: one page through the feed service, of which they scroll
        past the first few items (reported seen); every served item becomes the latest
        exposure of that item to them (``botsky.sim.feed``), the seen ones are read."""
        assert self.feed is not None
        page = await self.feed.page(u.did, self.config.feed_page)
        self.counts["feed_pages"] += 1
        if not page.items:
            return []
        # Scrolling on: busier users read further down the page.
        keep, random, n = 0.7 + 0.25 * u.traits["activity"], self.rng.random, 1
        while n < len(page.items) and random() < keep:
            n += 1
        posts, names, out = self.posts, self.bot_names, []
        for pos, (uri, _) in enumerate(page.items):
            post = posts.get(uri)
            bot = names.get(uri.split("/", 3)[2], "")
            seen = pos < n and post is not None
            self.exposed[(u.did, uri)] = ExposureTruth(bot, now, seen)
            truth = self.feed_truth.setdefault(bot, FeedTruth())
            truth.served += 1
            if seen:
                assert post is not None
                truth.seen += 1
                item = self._item(u, FEED_KIND, post)
                item.position = pos
                out.append(item)
        self.counts["feed_seen"] += len(out)
        await self.feed.seen(u.did, page, n)
        return out

    def _feed_decision(self, u: SimUser, uri: str, kind: str, p: float, hit: bool) -> None:
        """A decision of ``u`` that would like, repost or reply to ``uri`` with probability
        ``p`` (drawn: ``hit``): add ``p`` to the truth of the exposure the feed would join it
        to, unless that exposure already has one of that kind (see ``botsky.sim.feed``)."""
        exp = self.exposed.get((u.did, uri))
        if exp is None or self.clock_us + _STEP_US - exp.served_us > self._attribution_us:
            return
        bit = KINDS[kind]
        if exp.done & bit:
            return
        if exp.seen:
            truth = self.feed_truth[exp.bot]
            truth.add(kind, p)
            if not exp.done & ENGAGED:
                truth.engaged += p
        if hit:
            exp.done |= bit | ENGAGED

    # reading --------------------------------------------------------------------------------
    def _item(self, u: SimUser, kind: str, post: SimPost) -> Item:
        author = self.by_did.get(post.did)
        item = Item(kind, post, author.traits["toxicity"] if author else 0.0, post.did in u.follows)
        if post.by_bot:
            rec = self.mention_truth.get(post.uri)
            if rec is not None:
                item.suggestion = rec.suggestion
        return item

    def _feed(self, u: SimUser) -> list[SimPost]:
        posts, by_did, since = self.posts, self.by_did, u.last_logon_us
        found: list[SimPost] = []
        for did in u.follows:
            for uri in by_did[did].posts[-3:]:
                post = posts.get(uri)
                if post is not None and post.time_us > since:
                    found.append(post)
        found.sort(key=lambda p: (-p.time_us, p.uri))
        return found[: self.config.reads]

    def _recent(self, u: SimUser, seen: set[str]) -> list[SimPost]:
        pool, posts, randrange = self.recent, self.posts, self.rng.randrange
        n, want = len(pool), self.config.recent_reads
        out: list[SimPost] = []
        for _ in range(min(n, 2 * want)):
            post = posts.get(pool[randrange(n)])
            if post is not None and post.did != u.did and post.uri not in seen:
                seen.add(post.uri)
                out.append(post)
                if len(out) >= want:
                    break
        return out

    # writing --------------------------------------------------------------------------------
    async def _reply(self, u: SimUser, parent: SimPost) -> Event:
        self.counts["replies"] += 1
        text = await self.engine.write_reply(u, parent, self.rng)
        root = self.posts.get(parent.root_uri, parent)
        if parent.did != u.did and not parent.by_bot:
            _talk(u, parent.did)
            author = self.by_did.get(parent.did)
            if author is not None:
                _talk(author, u.did)
        return self._post(u, text, root.topics, root.topic, parent)

    def _post(
        self,
        u: SimUser,
        text: str,
        topics: tuple[float, ...],
        topic: int,
        parent: SimPost | None,
    ) -> Event:
        record: dict[str, Any] = {"text": text, "langs": ["en"]}
        if parent is not None:
            record["reply"] = {
                "root": {"uri": parent.root_uri, "cid": parent.root_cid},
                "parent": {"uri": parent.uri, "cid": parent.cid},
            }
        event = self._commit(u, POST, record)
        uri, cid = event.uri, event.cid or ""
        root_uri, root_cid = (parent.root_uri, parent.root_cid) if parent else (uri, cid)
        post = SimPost(
            uri, cid, u.did, event.time_us, text, topics, root_uri, root_cid, False, topic
        )
        self._remember(post)
        u.posts = [*u.posts[-19:], post.uri]
        if parent is not None:
            author = self.by_did.get(parent.did)
            if author is not None and author is not u:
                author.notifications.append(("reply", post.uri))
                del author.notifications[:-50]
        else:
            self.counts["posts"] += 1
        return event

    def _follow(self, u: SimUser, did: str, t: int) -> Event:
        u.follows[did] = None
        self.counts["follows"] += 1
        return self._commit(u, FOLLOW, {"subject": did}, t)

    def _commit(
        self, u: SimUser, collection: str, body: dict[str, Any], t: int = 0, rkey: str = ""
    ) -> Event:
        t = t or self._tick(self.clock_us)
        u.last_seen_us = t
        record = {"$type": collection, **body, "createdAt": _created_at(t)}
        key = rkey or tid(t)
        uri = f"at://{u.did}/{collection}/{key}"
        rev = _rev(key) if not rkey else tid(t, 1)
        return commit_event(u.did, t, t, "create", collection, key, fake_cid(uri), record, rev)

    def _remember(self, post: SimPost) -> None:
        self.posts[post.uri] = post
        if not post.by_bot:
            self.recent.append(post.uri)

    def _forget_old(self, now_us: int) -> None:
        # "Recent" is the last day; posts are kept a few days for threads and notifications.
        cutoff = now_us - _KEEP_DAYS * DAY_US
        self._fold(cutoff)  # records of mentions closed that long ago are not needed again
        self.posts = {uri: p for uri, p in self.posts.items() if p.time_us >= cutoff}
        recent_cutoff = now_us - DAY_US
        self.recent = [
            uri
            for uri in self.recent
            if uri in self.posts and self.posts[uri].time_us >= recent_cutoff
        ]
        # Mentions whose window closed count no more; their records go with their posts.
        if self.config.keep_mention_truth:
            self.closed_truth.update(
                (u, r) for u, r in self.mention_truth.items() if u not in self.posts
            )
        self.mention_truth = {u: r for u, r in self.mention_truth.items() if u in self.posts}
        watch: dict[str, list[MentionTruth]] = {}
        for did, recs in self._watch.items():
            kept = [r for r in recs if not r.answered and r.ends_us >= now_us]
            if kept:
                watch[did] = kept
        self._watch = watch
        # An exposure older than the attribution window takes no engagement any more.
        cut = now_us - self._attribution_us
        self.exposed = {k: e for k, e in self.exposed.items() if e.served_us >= cut}

    @property
    def _attribution_us(self) -> int:
        return int(self.config.feed_attribution_s * 1e6)

    def _tick(self, target_us: int) -> int:
        self.clock_us = max(self.clock_us + _STEP_US, target_us)
        return self.clock_us

    # Poster ---------------------------------------------------------------------------------
    async def reply(self, rp: ReplyPost) -> Posted:
        """A bot's reply lands in its thread; its mention becomes a notification."""
        self.bot_dids.add(rp.bot_did)
        self.bot_names[rp.bot_did] = rp.bot
        rkey = rp.rkey or tid(self.clock_us + _STEP_US)
        known = self.bot_posts.get((rp.bot_did, rkey))
        if known is not None:
            return Posted(uri=known[0], cid=known[1])  # idempotent, like createRecord
        # In lockstep the clock is still at the answered post: the pipeline's creation time.
        created = self.clock_us
        t = self._tick(self.clock_us)
        uri = at_uri(rp.bot_did, POST, rkey)
        cid = fake_cid(uri)
        self.bot_posts[(rp.bot_did, rkey)] = (uri, cid, rp.parent.uri)
        record = rp.record()
        parent = self.posts.get(rp.parent.uri)
        root = self.posts.get(rp.root.uri) or parent
        topics, topic = (root.topics, root.topic) if root else ((), -1)
        post = SimPost(
            uri, cid, rp.bot_did, t, rp.text, topics, rp.root.uri, rp.root.cid, True, topic
        )
        self._remember(post)
        author = parent.did if parent is not None else ""
        if parent is not None and parent.did in self.by_did:
            self.by_did[parent.did].notifications.append(("reply", uri))
        truth = self.truth.setdefault(rp.bot, Truth())
        # Online as the pipeline saw it when it chose: public activity within its window.
        since = created - int(self.config.presence_window_s * 1e6)
        ends = created + int(self.config.outcome_window_s * 1e6)
        for did in PostRef.of(record).mention_dids:
            user = self.by_did.get(did)
            if user is None:
                continue
            user.notifications.append(("mention", uri))
            del user.notifications[:-50]
            user.mentions = [*user.mentions[-31:], t]
            self.counts["mentions"] += 1
            picked = self.upper_bound(user, topics, author, rp.bot_did)
            best = self._best_online(topics, since, author, rp.bot_did)
            truth.mentions += 1
            truth.upper += picked
            truth.oracle += max(best, picked)
            rec = MentionTruth(
                rp.bot, did, author, rp.root.uri, created, ends, picked, user.fit(post),
                oracle=max(best, picked),
            )  # fmt: skip
            self.mention_truth[uri] = rec
            heapq.heappush(self._closing, (ends, self.counts["mentions"], rec))
            self._watch.setdefault(did, []).append(rec)
        self.pending.append(
            commit_event(rp.bot_did, t, t, "create", POST, rkey, cid, record, tid(t, 1))
        )
        return Posted(uri=uri, cid=cid)

    async def lookup(self, bot_did: str, rkey: str, parent_uri: str) -> Posted | None:
        """The bot reply stored under ``rkey`` if it answers ``parent_uri`` (crash recovery)."""
        known = self.bot_posts.get((bot_did, rkey))
        if known is None or known[2] != parent_uri:
            return None
        return Posted(uri=known[0], cid=known[1])


def _talk(u: SimUser, other: str) -> None:
    """Note a reply exchanged with ``other`` (the 64 most recent partners are kept)."""
    talked = u.talked
    talked[other] = talked.pop(other, 0) + 1
    if len(talked) > 64:
        del talked[next(iter(talked))]


def _rev(rkey: str) -> str:
    """``tid(t, 1)`` for ``rkey == tid(t)``: the clock id is the low bits, the last character."""
    return rkey[:-1] + _B32[1]


def _created_at(time_us: int) -> str:
    s = time_us // 1_000_000
    return f"{_hour_prefix(s // 3600)}{s // 60 % 60:02d}:{s % 60:02d}.000Z"


@lru_cache(maxsize=32)
def _hour_prefix(hour: int) -> str:
    # Formatting a date is most of the cost of a timestamp, and events come hours at a time.
    return time.strftime("%Y-%m-%dT%H:", time.gmtime(hour * 3600))
