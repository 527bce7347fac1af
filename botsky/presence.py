"""Presence: who is online right now and what they talk about.

Any commit counts as activity. Users are kept in last-activity order, so expiring the ones
that left the window is O(expired) and the ``max_users`` cap evicts the least recently active.
Each user who posts gets a small interest profile: the top ``terms_per_user`` TF-IDF terms of
their recent posts with exponential decay (new posts matter more), plus their languages. An
inverted index (term → users) lets the recommender score only users sharing a term with a post
instead of every online user.

**Memory.** Presence must hold the whole network's active users (10^6 DIDs in a window), so
users are stored in columns, not objects: a position per DID, and per position the DID, the
last activity (``array('q')``) and, for users who posted, one small ``_Interest`` (terms as a
tuple of interned strings with an ``array('d')`` of weights, languages, texts as a tuple).
Recency order is an append-only log of (DID, sequence number) with lazy deletion; the index
keeps lists of DIDs, also with lazy deletion, swept when stale entries outnumber live ones.
``Profile`` objects are built on demand (a snapshot). BENCHMARKS.md has the numbers.
"""

from __future__ import annotations

import math
import random
import sys
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Final

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
_SLACK: Final = 1024  # stale log and index entries tolerated before a sweep, beyond 1× live


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
    """What one online user looks like to the recommender (a snapshot, built on demand)."""

    did: str
    last_us: int
    terms: dict[str, float] = field(default_factory=dict)  # normalized, at most terms_per_user
    langs: tuple[str, ...] = ()
    texts: tuple[str, ...] = ()  # recent post texts, oldest first
    posts: int = 0

    def top_terms(self, n: int = 5) -> list[str]:
        return [t for t, _ in sorted(self.terms.items(), key=lambda kv: -kv[1])[:n]]


class _Interest:
    """The profile of a user who posted: what ``Profile`` shows, stored compactly."""

    __slots__ = ("langs", "posts", "terms", "texts", "weights")

    def __init__(self) -> None:
        self.terms: tuple[str, ...] = ()  # interned, in the order of their weights' ranking
        self.weights: array[float] = array("d")
        self.langs: tuple[str, ...] = ()
        self.texts: tuple[str, ...] = ()
        self.posts = 0


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
        # Columns by position. Positions are dense (a leaving user's place is taken by the
        # last one), which makes uniform sampling one randrange.
        self._pos: dict[str, int] = {}
        self._dids: list[str] = []
        self._last = array("q")
        self._seq = array("Q")  # the sequence number of the user's live entry in the log
        self._interest: list[_Interest | None] = []
        # Recency log: (DID, sequence number) per activity that moved a user to the front;
        # an entry is live if its number is still the user's. Consumed from ``_head``.
        self._log: list[str] = []
        self._log_seq = array("Q")
        self._head = 0
        self._next_seq = 0
        self._index: dict[str, list[str]] = {}  # term -> DIDs that held it (some no longer)
        self._indexed = 0  # entries in the index, live or stale
        self._live_terms = 0  # terms held by profiles: live index entries

    def __len__(self) -> int:
        return len(self._dids)

    def __contains__(self, did: object) -> bool:
        return did in self._pos

    def observe(self, event: Event) -> None:
        """Note activity; on a new post, fold its text into the author's profile."""
        if event.time_us > self.now_us:
            self.now_us = event.time_us
        if event.kind != "commit":
            return
        i = self._touch(event.did, event.time_us)
        if event.collection == POST and event.operation == "create":
            post = PostRef.of(event.record)
            self._learn(i, post.text, post.langs)
        self.expire()

    def profile(self, did: str) -> Profile | None:
        i = self._pos.get(did)
        return None if i is None else self._profile(i)

    def is_online(self, did: str) -> bool:
        i = self._pos.get(did)
        return i is not None and self._last[i] >= self.now_us - self.window_us

    def online(self) -> Iterator[Profile]:
        """Online users, most recently active first."""
        cutoff = self.now_us - self.window_us
        log, log_seq, pos, seq, last = self._log, self._log_seq, self._pos, self._seq, self._last
        for k in range(len(log) - 1, self._head - 1, -1):
            i = pos.get(log[k])
            if i is None or seq[i] != log_seq[k]:
                continue
            if last[i] < cutoff:
                break
            yield self._profile(i)

    def users_sharing(self, terms: Iterable[str]) -> set[str]:
        """DIDs of users whose profile holds at least one of ``terms``."""
        found: set[str] = set()
        pos, interest = self._pos, self._interest
        for term in terms:
            for did in self._index.get(term, ()):
                i = pos.get(did)
                if i is not None:
                    held = interest[i]
                    if held is not None and term in held.terms:
                        found.add(did)
        return found

    def candidates(self, terms: Iterable[str], limit: int) -> set[str]:
        """Up to ``limit`` users sharing a term, found rarest term first, newest holder first.

        ``users_sharing`` when that has at most ``limit`` users. The bound is what keeps a
        recommendation cheap on the whole network, where a common word is held by 10^5 users:
        rare terms say the most about a match and are looked at first.
        """
        index = self._index
        found: set[str] = set()
        pos, interest = self._pos, self._interest
        # Fewest holders first (stable: ties keep the post's order).
        for term in sorted(terms, key=lambda t: len(index.get(t, ()))):
            for did in reversed(index.get(term, ())):
                if did in found:
                    continue
                i = pos.get(did)
                if i is not None:
                    held = interest[i]
                    if held is not None and term in held.terms:
                        if len(found) >= limit:
                            return found
                        found.add(did)
        return found

    def similarity(self, did: str, vec: dict[str, float]) -> float:
        """``sum(w * profile.terms.get(t, 0.0) for t, w in vec.items())``, without the Profile.

        The same products added in the same order (absent terms add 0.0), so the same float.
        """
        i = self._pos.get(did)
        held = None if i is None else self._interest[i]
        if held is None:
            return sum(w * 0.0 for w in vec.values())
        get = {t: w for t, w in zip(held.terms, held.weights, strict=True) if t in vec}.get
        return sum(w * get(t, 0.0) for t, w in vec.items())

    def langs_of(self, did: str) -> tuple[str, ...]:
        i = self._pos.get(did)
        held = None if i is None else self._interest[i]
        return () if held is None else held.langs

    def last_seen(self, did: str) -> int:
        """The user's last activity (``time_us``); 0 for an unknown user."""
        i = self._pos.get(did)
        return 0 if i is None else self._last[i]

    def terms_of(self, did: str) -> dict[str, float]:
        """The term weights of ``did``'s profile (empty for unknown users and non-posters)."""
        i = self._pos.get(did)
        held = None if i is None else self._interest[i]
        return {} if held is None else dict(zip(held.terms, held.weights, strict=True))

    def sample(self, rng: random.Random, tries: int = 64) -> Profile | None:
        """A uniformly random online user (rejection sampling over the dense positions)."""
        if not self._dids:
            return None
        for _ in range(tries):
            i = rng.randrange(len(self._dids))
            if self._last[i] >= self.now_us - self.window_us:
                return self._profile(i)
        return None

    def expire(self) -> int:
        """Forget users who left the window, and the least active past ``max_users``."""
        cutoff = self.now_us - self.window_us
        removed = 0
        log, log_seq, pos, seq, last = self._log, self._log_seq, self._pos, self._seq, self._last
        head = self._head
        while head < len(log):
            did = log[head]
            i = pos.get(did)
            if i is None or seq[i] != log_seq[head]:
                head += 1  # stale: the user moved on or left
                continue
            if last[i] >= cutoff and len(pos) <= self.max_users:
                break
            self._forget(did, i)
            head += 1
            removed += 1
        self._head = head
        if head > _SLACK and head * 2 > len(log):
            del log[:head]
            del log_seq[:head]
            self._head = 0
        return removed

    # internals --------------------------------------------------------------------------
    def _profile(self, i: int) -> Profile:
        held = self._interest[i]
        if held is None:
            return Profile(did=self._dids[i], last_us=self._last[i])
        return Profile(
            did=self._dids[i],
            last_us=self._last[i],
            terms=dict(zip(held.terms, held.weights, strict=True)),
            langs=held.langs,
            texts=held.texts,
            posts=held.posts,
        )

    def _touch(self, did: str, time_us: int) -> int:
        i = self._pos.get(did)
        if i is None:
            # Not interned: the interning table would cost as much as the position map.
            i = len(self._dids)
            self._pos[did] = i
            self._dids.append(did)
            self._last.append(time_us)
            self._seq.append(0)
            self._interest.append(None)
        elif time_us >= self._last[i]:
            self._last[i] = time_us
            did = self._dids[i]
        else:
            return i
        # The user moves to the front of the recency order: a new live log entry.
        seq = self._next_seq
        self._next_seq = seq + 1
        self._seq[i] = seq
        self._log.append(did)
        self._log_seq.append(seq)
        if len(self._log) - self._head > 2 * len(self._dids) + _SLACK:
            self._compact_log()
        return i

    def _compact_log(self) -> None:
        pos, seq = self._pos, self._seq
        keep = [
            (did, s)
            for did, s in zip(self._log[self._head :], self._log_seq[self._head :], strict=True)
            if (i := pos.get(did)) is not None and seq[i] == s
        ]
        self._log = [did for did, _ in keep]
        self._log_seq = array("Q", [s for _, s in keep])
        self._head = 0

    def _learn(self, i: int, text: str, langs: tuple[str, ...]) -> None:
        terms = tokenize(text)
        self.stats.add(set(terms))
        held = self._interest[i]
        if held is None:
            held = self._interest[i] = _Interest()
        held.posts += 1
        if langs:
            held.langs = _shared(tuple(dict.fromkeys(langs + held.langs))[:3])
        if text:
            texts = (*held.texts, text[:_TEXT_CHARS])
            held.texts = texts[max(0, len(texts) - self.texts_per_user) :]
        if not terms:
            return
        merged = {t: w * _DECAY for t, w in zip(held.terms, held.weights, strict=True)}
        for t, w in weigh(terms, self.stats).items():
            merged[t] = merged.get(t, 0.0) + w
        top = sorted(merged.items(), key=lambda kv: -kv[1])[: self.terms_per_user]
        norm = math.sqrt(sum(w * w for _, w in top)) or 1.0
        old = held.terms
        new = tuple(sys.intern(t) for t, _ in top)
        held.terms = new
        held.weights = array("d", [w / norm for _, w in top])
        did = self._dids[i]
        added = set(new).difference(old)
        for t in added:
            self._index.setdefault(t, []).append(did)
        # Terms that left the profile stay in the index as stale entries until the sweep.
        self._indexed += len(added)
        self._live_terms += len(new) - len(old)
        if self._indexed > 2 * self._live_terms + _SLACK:
            self._sweep_index()

    def _sweep_index(self) -> None:
        """Drop stale index entries (users gone, terms left their profile) and duplicates."""
        pos, interest = self._pos, self._interest
        index: dict[str, list[str]] = {}
        total = 0
        for term, holders in self._index.items():
            live = []
            for did in dict.fromkeys(holders):
                i = pos.get(did)
                held = None if i is None else interest[i]
                if held is not None and term in held.terms:
                    live.append(did)
            if live:
                index[term] = live
                total += len(live)
        self._index = index
        self._indexed = total

    def _forget(self, did: str, i: int) -> None:
        held = self._interest[i]
        if held is not None:
            self._live_terms -= len(held.terms)
        # The last user takes the leaver's position (swap-remove keeps positions dense).
        j = len(self._dids) - 1
        if i != j:
            moved = self._dids[j]
            self._dids[i] = moved
            self._last[i] = self._last[j]
            self._seq[i] = self._seq[j]
            self._interest[i] = self._interest[j]
            self._pos[moved] = i
        self._dids.pop()
        self._last.pop()
        self._seq.pop()
        self._interest.pop()
        del self._pos[did]


_LANGS: dict[tuple[str, ...], tuple[str, ...]] = {}


def _shared(langs: tuple[str, ...]) -> tuple[str, ...]:
    """One tuple object per distinct language list (a few dozen), not one per user."""
    if len(_LANGS) > 10_000:
        _LANGS.clear()
    return _LANGS.setdefault(langs, langs)
