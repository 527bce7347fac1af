"""Presence: who is online right now and what they talk about.

Any commit counts as activity. Users are kept in last-activity order, so expiring the ones
that left the window is O(expired) and the ``max_users`` cap evicts the least recently active.
Each user who posts gets a small interest profile: the top ``terms_per_user`` TF-IDF terms of
their recent posts with exponential decay (new posts matter more), plus their languages. An
inverted index (term → users) lets the recommender score only users sharing a term with a post
instead of every online user.
"""

from __future__ import annotations

import math
import random
import sys
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import regex

from botsky.events import POST, Event, PostRef

__all__ = ["Presence", "Profile", "TermStats", "tokenize"]

# Words that say nothing about interests. Kept short on purpose: IDF does most of the work.
_STOPWORDS = frozenset(
    # One string keeps the list readable; split once at import.
    """a about after again all also am an and any are as at be because been but by can could
    did do does doing for from get got had has have he her here hers him his how i if in into is
    it its just like me more most my no not now of on one only or our out over own really same
    she should so some such than that the their them then there these they this those to too
    under up very was we were what when where which while who why will with would you your
    yours im dont thats youre ive ill cant wont isnt lol yes yeah oh ok okay""".split()  # noqa: SIM905
)
_TOKEN = regex.compile(r"(?:https?://\S+|www\.\S+|@\S+)|(\p{L}[\p{L}\p{M}\p{N}_'-]{2,})")
_DECAY = 0.7  # weight kept by old terms when a user posts again
_TEXT_CHARS = 240  # recent texts are for the prompt; a few hundred chars are plenty


def tokenize(text: str) -> list[str]:
    """Lower-case word tokens of 3+ letters, without URLs, @mentions and stopwords."""
    out: list[str] = []
    for match in _TOKEN.finditer(text.lower()):
        word = match.group(1)
        if word is not None:
            word = word.strip("'-")
            if len(word) >= 3 and word not in _STOPWORDS:
                out.append(word)
    return out


class TermStats:
    """Approximate document frequencies over recent posts, for IDF weights.

    Bounded: past ``max_terms`` the rare half is dropped and counts are halved, which also makes
    the statistics follow what the network talks about now.
    """

    def __init__(self, max_terms: int = 200_000) -> None:
        self.max_terms = max_terms
        self.docs = 0
        self._df: dict[str, int] = {}

    def add(self, terms: Iterable[str]) -> None:
        self.docs += 1
        df = self._df
        for term in terms:
            df[term] = df.get(term, 0) + 1
        if len(df) > self.max_terms:
            self._prune()

    def idf(self, term: str) -> float:
        return math.log((self.docs + 1) / (self._df.get(term, 0) + 1)) + 1.0

    def _prune(self) -> None:
        keep = sorted(self._df.items(), key=lambda kv: kv[1], reverse=True)[: self.max_terms // 2]
        self._df = {t: max(1, c // 2) for t, c in keep}
        self.docs = max(1, self.docs // 2)


def weigh(terms: list[str], stats: TermStats) -> dict[str, float]:
    """L2-normalized TF-IDF vector of one text's terms."""
    tf: dict[str, float] = {}
    for term in terms:
        tf[term] = tf.get(term, 0.0) + 1.0
    vec = {t: c * stats.idf(t) for t, c in tf.items()}
    norm = math.sqrt(sum(w * w for w in vec.values())) or 1.0
    return {t: w / norm for t, w in vec.items()}


@dataclass(slots=True)
class Profile:
    """What one online user looks like to the recommender."""

    did: str
    last_us: int
    terms: dict[str, float] = field(default_factory=dict)  # normalized, at most terms_per_user
    langs: tuple[str, ...] = ()
    texts: deque[str] = field(default_factory=deque)
    posts: int = 0

    def top_terms(self, n: int = 5) -> list[str]:
        return [t for t, _ in sorted(self.terms.items(), key=lambda kv: -kv[1])[:n]]


class Presence:
    """Online users within a sliding window of stream time, with interest profiles."""

    def __init__(
        self,
        *,
        window_s: float = 1800.0,
        max_users: int = 1_000_000,
        terms_per_user: int = 48,
        texts_per_user: int = 3,
        stats: TermStats | None = None,
    ) -> None:
        self.window_us = int(window_s * 1e6)
        self.max_users = max_users
        self.terms_per_user = terms_per_user
        self.texts_per_user = texts_per_user
        self.stats = stats or TermStats()
        self.now_us = 0  # the stream clock: the latest event time seen
        self._users: OrderedDict[str, Profile] = OrderedDict()
        self._index: dict[str, set[str]] = {}  # term -> DIDs whose profile holds it
        # Parallel list for O(1) uniform sampling (swap-remove keeps it dense).
        self._slots: list[str] = []
        self._slot_of: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._users)

    def __contains__(self, did: object) -> bool:
        return did in self._users

    def observe(self, event: Event) -> None:
        """Note activity; on a new post, fold its text into the author's profile."""
        if event.time_us > self.now_us:
            self.now_us = event.time_us
        if event.kind != "commit":
            return
        profile = self._touch(event.did, event.time_us)
        if event.collection == POST and event.operation == "create":
            post = PostRef.of(event.record)
            self._learn(profile, post.text, post.langs)
        self.expire()

    def profile(self, did: str) -> Profile | None:
        return self._users.get(did)

    def is_online(self, did: str) -> bool:
        p = self._users.get(did)
        return p is not None and p.last_us >= self.now_us - self.window_us

    def online(self) -> Iterator[Profile]:
        """Online users, most recently active first."""
        cutoff = self.now_us - self.window_us
        for p in reversed(self._users.values()):
            if p.last_us < cutoff:
                break
            yield p

    def users_sharing(self, terms: Iterable[str]) -> set[str]:
        """DIDs of users whose profile holds at least one of ``terms``."""
        found: set[str] = set()
        for term in terms:
            found |= self._index.get(term, set())
        return found

    def sample(self, rng: random.Random, tries: int = 64) -> Profile | None:
        """A uniformly random online user (rejection sampling over the dense slot list)."""
        if not self._slots:
            return None
        for _ in range(tries):
            p = self._users[self._slots[rng.randrange(len(self._slots))]]
            if self.is_online(p.did):
                return p
        return None

    def expire(self) -> int:
        """Forget users who left the window, and the least active past ``max_users``."""
        cutoff = self.now_us - self.window_us
        removed = 0
        users = self._users
        while users:
            did, p = next(iter(users.items()))
            if p.last_us >= cutoff and len(users) <= self.max_users:
                break
            self._forget(did, p)
            removed += 1
        return removed

    # internals --------------------------------------------------------------------------
    def _touch(self, did: str, time_us: int) -> Profile:
        p = self._users.get(did)
        if p is None:
            p = Profile(did=sys.intern(did), last_us=time_us)
            self._users[p.did] = p
            self._slot_of[p.did] = len(self._slots)
            self._slots.append(p.did)
        elif time_us >= p.last_us:
            p.last_us = time_us
            self._users.move_to_end(did)
        return p

    def _learn(self, p: Profile, text: str, langs: tuple[str, ...]) -> None:
        terms = tokenize(text)
        self.stats.add(set(terms))
        p.posts += 1
        if langs:
            p.langs = tuple(dict.fromkeys(langs + p.langs))[:3]
        if text:
            p.texts.append(text[:_TEXT_CHARS])
            while len(p.texts) > self.texts_per_user:
                p.texts.popleft()
        if not terms:
            return
        merged = {t: w * _DECAY for t, w in p.terms.items()}
        for t, w in weigh(terms, self.stats).items():
            merged[t] = merged.get(t, 0.0) + w
        top = sorted(merged.items(), key=lambda kv: -kv[1])[: self.terms_per_user]
        norm = math.sqrt(sum(w * w for _, w in top)) or 1.0
        new_terms = {sys.intern(t): w / norm for t, w in top}
        for t in p.terms.keys() - new_terms.keys():
            self._unindex(t, p.did)
        for t in new_terms.keys() - p.terms.keys():
            self._index.setdefault(t, set()).add(p.did)
        p.terms = new_terms

    def _unindex(self, term: str, did: str) -> None:
        holders = self._index.get(term)
        if holders is not None:
            holders.discard(did)
            if not holders:
                del self._index[term]

    def _forget(self, did: str, p: Profile) -> None:
        del self._users[did]
        for t in p.terms:
            self._unindex(t, did)
        i = self._slot_of.pop(did)
        last = self._slots.pop()
        if last != did:
            self._slots[i] = last
            self._slot_of[last] = i
