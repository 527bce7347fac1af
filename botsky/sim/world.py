"""The simulated network ("Mock Threads"): users, follows, posts, threads, notifications.

The world is a ``Source`` (it emits Jetstream-shaped ``Event``s: identity events with handles,
posts/likes/follows with DIDs, TID rkeys and ``createdAt`` in simulated time) and a ``Poster``
(a bot's reply lands in the thread it answers, and its @-mention becomes a notification of the
mentioned user), so the pipeline under test is the production pipeline.

Content is generated one simulated day at a time. ``new_per_day`` users join each day (and each
user may leave with probability ``churn``); every user gets a random logon time and, in logon
order, reads (1) notifications (replies to them, bot mentions), (2) posts by accounts they
follow, (3) recent posts by anyone, at most ``reads`` of each; the engine rates each item and
updates the hidden state; the user rolls to reply, like or follow, then writes a new post.

**Ground truth.** Whether a mentioned user answers depends on how well the thread's topics fit
their hidden interests, their responsiveness (archetype) and fatigue (every recent mention
beyond the first multiplies it by ``FATIGUE``) and mood::

    p = responsiveness * (FLOOR + (1 - FLOOR) * fit(interests, thread topics))
        * FATIGUE ** (mentions in the last day - 1) * (0.7 + 0.3 * mood)

At each mention the world also records what the **oracle** (the best-fitting online user,
without fatigue or mood) would have scored: an upper bound on any picker's expected rate.

After the last day a *settle* day lets every user read (and answer) their notifications
without writing new posts, and a final clock tick past the outcome window closes every mention,
so all mentions mature and none is scored before its user could answer.

The world must be driven in lockstep (the consumer finishes with one event, including any bot
reply, before asking for the next); then one seed gives one history.
"""

from __future__ import annotations

import hashlib
import random
import time
from bisect import insort
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import accumulate
from operator import mul
from pathlib import Path
from typing import Any, Final

from botsky.events import FOLLOW, LIKE, POST, Event, PostRef, at_uri
from botsky.ids import BASE32_SORTABLE as _B32
from botsky.ids import synthetic_cid as fake_cid
from botsky.ids import tid
from botsky.posting import Posted, ReplyPost
from botsky.sim.archetypes import Archetype, load_archetypes, mix
from botsky.sim.engines import Engine, Item, StochasticEngine, main_topic
from botsky.sim.state import DEFAULT_LIMITS, StateLimits, merge_state
from botsky.sim.topics import TOPIC_NAMES, fit
from botsky.sources.base import SourceStats

__all__ = ["FATIGUE", "FLOOR", "SimPost", "SimUser", "Truth", "World", "WorldConfig"]

DAY_US: Final = 86_400_000_000
FLOOR: Final = 0.01  # a user answers a mention on a topic they do not care about this rarely
FATIGUE: Final = 0.8
_START_US: Final = 1_767_571_200_000_000  # 2026-01-05T00:00:00Z
_STEP_US: Final = 1_000  # events are at least 1 ms apart: strictly increasing time and TIDs
_KEEP_DAYS: Final = 3  # posts older than this are forgotten (notifications are read sooner)
# Archetype propensities are relative; these scale them to about one reply and two likes per
# user and day, in the range of an active small network.
_REPLY_SCALE: Final = 0.35
_LIKE_SCALE: Final = 0.5
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
    ``outcome_window_s`` its outcome window (for the final clock tick)."""

    users: int = 300
    days: int = 7
    seed: int = 1
    new_per_day: int = 1
    churn: float = 0.0
    reads: int = 10
    presence_window_s: float = 10_800.0
    outcome_window_s: float = 180_000.0
    settle: bool = True
    archetypes: Path | None = None
    limits: StateLimits = DEFAULT_LIMITS


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
    joined_day: int
    state: dict[str, Any] = field(default_factory=dict)  # the free-form hidden state (bounded)
    active: bool = True
    follows: dict[str, None] = field(default_factory=dict)  # an ordered set of DIDs
    posts: list[str] = field(default_factory=list)  # own recent post URIs, newest last
    notifications: list[tuple[str, str]] = field(default_factory=list)  # (kind, post uri)
    mentions: list[int] = field(default_factory=list)  # times of bot mentions received
    last_active_us: int = 0
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
            self.joined_day, self.state, self.active, self.follows, self.posts,
            self.notifications, self.mentions, self.last_active_us, self.last_logon_us,
        )  # fmt: skip

    def fit(self, post: SimPost) -> float:
        """``fit(interests, post.topics)``, looked up for a single-topic post."""
        return self.fits[post.topic] if post.topic >= 0 else fit(self.interests, post.topics)


@dataclass
class Truth:
    """Per bot: mentions, the summed ground-truth upper bound of its picks and the oracle's."""

    mentions: int = 0
    expected: float = 0.0
    oracle: float = 0.0


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
        self.posts: dict[str, SimPost] = {}
        self.recent: list[str] = []  # non-bot post URIs of the last day, oldest first
        self.bot_dids: set[str] = set()
        # (did, rkey) → (uri, cid, parent uri) of a bot's reply; plain strings pickle fastest
        self.bot_posts: dict[tuple[str, str], tuple[str, str, str]] = {}
        self.day = 0
        self.clock_us = _START_US
        self.counts: dict[str, int] = dict.fromkeys(
            ("posts", "replies", "likes", "follows", "mentions", "mention_replies", "joined"), 0
        )
        self.truth: dict[str, Truth] = {}
        self.user_days = 0  # sessions simulated (one user logging on for one day)
        self.pending: deque[Event] = deque()
        self.on_day: Callable[[int], Awaitable[None]] | None = None
        self.finished = False
        self._ranked: dict[tuple[float, ...], list[tuple[float, int]]] = {}  # see _best_online

    # pickling (checkpoints): the engine may hold a network client; the caller re-attaches it.
    # Caches and the DID index are rebuilt rather than stored.
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for name in ("engine", "on_day", "by_did", "_ranked"):
            del state[name]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.engine = StochasticEngine()
        self.on_day = None
        self.by_did = {u.did: u for u in self.users}
        self._ranked = {}

    # ground truth --------------------------------------------------------------------------
    def upper_bound(self, user: SimUser, topics: tuple[float, ...]) -> float:
        """The answer probability without fatigue or mood (what the oracle maximizes)."""
        k = _TOPIC_OF.get(topics, -1)
        match = user.fits[k] if k >= 0 else fit(user.interests, topics)
        return user.traits["responsiveness"] * (FLOOR + (1 - FLOOR) * match)

    def mention_probability(self, user: SimUser, topics: tuple[float, ...], now_us: int) -> float:
        """The probability that ``user`` answers a mention in a thread on ``topics`` now."""
        recent = sum(1 for t in user.mentions if t >= now_us - DAY_US)
        mood = user.state.get("mood", 0.5)
        mood = min(1.0, max(0.0, float(mood))) if isinstance(mood, int | float) else 0.5
        fatigue = FATIGUE ** max(0, recent - 1)
        return self.upper_bound(user, topics) * fatigue * (0.7 + 0.3 * mood)

    def _best_online(self, topics: tuple[float, ...], since_us: int, author: str) -> float:
        """The oracle: the highest ``upper_bound`` among users active since ``since_us``.

        Interests and traits never change after a user joins, so the users are ranked by their
        bound once per thread topic vector (new users are inserted as they join); the first
        eligible one in that order has the highest bound, usually within a few places.
        """
        ranked = self._ranked.get(topics)
        if ranked is None:
            ranked = self._ranked[topics] = []
        users = self.users
        for u in users[len(ranked) :]:
            insort(ranked, (-self.upper_bound(u, topics), u.index))
        for neg_bound, i in ranked:
            u = users[i]
            if u.active and u.last_active_us >= since_us and u.did != author:
                return -neg_bound
        return 0.0

    def oracle_rate(self) -> float | None:
        n = sum(t.mentions for t in self.truth.values())
        return sum(t.oracle for t in self.truth.values()) / n if n else None

    # Source --------------------------------------------------------------------------------
    def __aiter__(self) -> AsyncIterator[Event]:
        return self._run()

    async def aclose(self) -> None:
        return None

    async def _run(self) -> AsyncIterator[Event]:
        while self.day <= self.config.days and not self.finished:
            # Before the day boundary's checkpoint, which then holds only what is still needed.
            self._forget_old(_START_US + self.day * DAY_US)
            if self.on_day is not None:
                await self.on_day(self.day)
            settle = self.day == self.config.days
            if settle and not self.config.settle:
                break
            async for event in self._day(settle):
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
                            did=u.did, time_us=t, kind="account", cursor=t, active=False,
                            status="deactivated",
                        )  # fmt: skip
        # Logons in the first 22 h, so a session never runs into the next day.
        logons = sorted(
            (start + rng.randrange(22 * 3600 * 10**6), u.index) for u in self.users if u.active
        )
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
        handle = f"{label.split('+')[0]}{i:05d}.sim.test"
        user = SimUser(i, did, handle, label, traits, interests, self.day)
        user.state = merge_state({}, await self.engine.init_state(user, rng), self.config.limits)
        self.users.append(user)
        self.by_did[did] = user
        self.counts["joined"] += 1
        t = self._tick(self.clock_us)
        yield Event(did=did, time_us=t, kind="identity", cursor=t, handle=handle)
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
        self.user_days += 0 if settle else 1
        u.last_active_us = now
        notes, u.notifications = u.notifications[:reads], u.notifications[reads:]
        mentions = [posts[uri] for kind, uri in notes if kind == "mention" and uri in posts]
        items = [self._item(u, "reply", posts[uri]) for kind, uri in notes
                 if kind == "reply" and uri in posts]  # fmt: skip
        if not settle:
            items += [self._item(u, "feed", p) for p in self._feed(u)]
            items += [
                self._item(u, "recent", p) for p in self._recent(u, {i.post.uri for i in items})
            ]
        probs, update = await engine.rate(u, items, rng)
        u.state = merge_state(u.state, update, self.config.limits)
        for post in mentions:
            root = posts.get(post.root_uri, post)
            if rng.random() < self.mention_probability(u, root.topics, now):
                self.counts["mention_replies"] += 1
                yield await self._reply(u, post)
        random, follows = rng.random, u.follows
        reply, like, follow = u.traits["reply"], u.traits["like"], u.traits["follow"]
        for item, p in zip(items, probs, strict=True):
            post = item.post
            if random() < p * reply * _REPLY_SCALE:
                yield await self._reply(u, post)
            if random() < p * like * _LIKE_SCALE:
                self.counts["likes"] += 1
                yield self._commit(u, LIKE, {"subject": {"uri": post.uri, "cid": post.cid}})
            if (
                post.did not in follows
                and post.did != u.did
                and not post.by_bot
                and random() < p * follow
            ):
                yield self._follow(u, post.did, self._tick(self.clock_us))
        if not settle:
            topic = rng.choices(_TOPICS, cum_weights=u.cum_interests)[0]
            text = await engine.write_post(u, topic, rng)
            yield self._post(u, text, _ONE_HOT[topic], topic, None)
        u.last_logon_us = now

    # reading --------------------------------------------------------------------------------
    def _item(self, u: SimUser, kind: str, post: SimPost) -> Item:
        author = self.by_did.get(post.did)
        return Item(kind, post, author.traits["toxicity"] if author else 0.0, post.did in u.follows)

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
        n = len(pool)
        out: list[SimPost] = []
        for _ in range(min(n, 2 * self.config.reads)):
            post = posts.get(pool[randrange(n)])
            if post is not None and post.did != u.did and post.uri not in seen:
                seen.add(post.uri)
                out.append(post)
                if len(out) >= self.config.reads:
                    break
        return out

    # writing --------------------------------------------------------------------------------
    async def _reply(self, u: SimUser, parent: SimPost) -> Event:
        self.counts["replies"] += 1
        text = await self.engine.write_reply(u, parent, self.rng)
        root = self.posts.get(parent.root_uri, parent)
        return self._post(u, text, root.topics, root.topic, parent)

    def _post(
        self,
        u: SimUser,
        text: str,
        topics: tuple[float, ...],
        topic: int,
        parent: SimPost | None,
    ) -> Event:
        record: dict[str, Any] = {"$type": POST, "text": text, "langs": ["en"]}
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

    def _commit(self, u: SimUser, collection: str, body: dict[str, Any], t: int = 0) -> Event:
        t = t or self._tick(self.clock_us)
        u.last_active_us = t
        record = {"$type": collection, **body, "createdAt": _created_at(t)}
        rkey = tid(t)
        uri = f"at://{u.did}/{collection}/{rkey}"
        return Event(
            did=u.did,
            time_us=t,
            kind="commit",
            cursor=t,
            operation="create",
            collection=collection,
            rkey=rkey,
            cid=fake_cid(uri),
            record=record,
            rev=_rev(rkey),
        )

    def _remember(self, post: SimPost) -> None:
        self.posts[post.uri] = post
        if not post.by_bot:
            self.recent.append(post.uri)

    def _forget_old(self, now_us: int) -> None:
        # "Recent" is the last day; posts are kept a few days for threads and notifications.
        cutoff = now_us - _KEEP_DAYS * DAY_US
        self.posts = {uri: p for uri, p in self.posts.items() if p.time_us >= cutoff}
        recent_cutoff = now_us - DAY_US
        self.recent = [
            uri
            for uri in self.recent
            if uri in self.posts and self.posts[uri].time_us >= recent_cutoff
        ]

    def _tick(self, target_us: int) -> int:
        self.clock_us = max(self.clock_us + _STEP_US, target_us)
        return self.clock_us

    # Poster ---------------------------------------------------------------------------------
    async def reply(self, rp: ReplyPost) -> Posted:
        """A bot's reply lands in its thread; its mention becomes a notification."""
        self.bot_dids.add(rp.bot_did)
        rkey = rp.rkey or tid(self.clock_us + _STEP_US)
        known = self.bot_posts.get((rp.bot_did, rkey))
        if known is not None:
            return Posted(uri=known[0], cid=known[1])  # idempotent, like createRecord
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
        if parent is not None and parent.did in self.by_did:
            self.by_did[parent.did].notifications.append(("reply", uri))
        truth = self.truth.setdefault(rp.bot, Truth())
        window = int(self.config.presence_window_s * 1e6)
        author = parent.did if parent is not None else ""
        for did in PostRef.of(record).mention_dids:
            user = self.by_did.get(did)
            if user is None:
                continue
            user.notifications.append(("mention", uri))
            del user.notifications[:-50]
            user.mentions = [*user.mentions[-31:], t]
            self.counts["mentions"] += 1
            picked = self.upper_bound(user, topics)
            best = self._best_online(topics, t - window, author)
            truth.mentions += 1
            truth.expected += picked
            truth.oracle += max(best, picked)
        self.pending.append(
            Event(
                did=rp.bot_did,
                time_us=t,
                kind="commit",
                cursor=t,
                operation="create",
                collection=POST,
                rkey=rkey,
                cid=cid,
                record=record,
                rev=tid(t, 1),
            )
        )
        return Posted(uri=uri, cid=cid)

    async def lookup(self, bot_did: str, rkey: str, parent_uri: str) -> Posted | None:
        """The bot reply stored under ``rkey`` if it answers ``parent_uri`` (crash recovery)."""
        known = self.bot_posts.get((bot_did, rkey))
        if known is None or known[2] != parent_uri:
            return None
        return Posted(uri=known[0], cid=known[1])


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
