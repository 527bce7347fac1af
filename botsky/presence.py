"""Presence: who is online right now and what they talk about.

Any commit counts as activity. Users are kept in last-activity order, so expiring the ones
that left the window is O(expired) and the ``max_users`` cap evicts the least recently active.
Each user who posts gets a small interest profile: the top ``terms_per_user`` TF-IDF terms of
their recent posts with exponential decay (new posts matter more), plus their languages and a
few recent texts. An inverted index (term → users) lets the recommender score only users
sharing a term with a post instead of every online user.

**Memory.** Presence must hold the whole network's active users (10^6 DIDs in a window), so
nothing is a Python object per user or per entry where bytes in a shared buffer do. Measured
with ``bench/bench_presence.py`` (10^6 DIDs, 3 in 10 post 1-3 texts; B/DID by ``getsizeof``):
608 MB RSS before, when a DID's string (81 B), dict entry (38 B) and position int (28 B) took
147 B/DID, the posters' term tuples, float64 weight arrays, text strings and ``_Interest``
objects 296 B/DID and the index's lists of DIDs 98 B/DID. Now 285 MB RSS (261 B/DID counted):

- A user is a *slot*, a number into columns (``array``), reused once freed. A did:plc DID (all
  but a handful on the network) is kept as its 24 identifier bytes in one ``bytearray``
  (26 B/DID); DID → slot is a fixed number of hash buckets, each a ``bytes`` run of 8-byte
  entries (CRC-32 of the identifier as a fingerprint, slot) searched with ``bytes.find``
  (11 B/DID). Other DIDs go to a plain dict. Last activity, log position, post count,
  language-list id, dense position and back: 25 B/DID; the record column 8 B/DID.
- A poster's profile is one ``bytes`` record (``_record``): term ids (int32, into a
  vocabulary shared by all users), weights (float32) and the recent texts (UTF-8): 470 B for
  22 terms and 2 texts, instead of about 990 (142 B/DID at 3 posters in 10).
- The recency log is an ``array`` of slots (7 B/DID) and the index maps term ids to
  arrays of slots (36 B/DID: 6.8 entries a DID at 4 B, plus headers).

Float32 weights round at the 7th digit, so users whose similarities tied or nearly tied (within
~1e-7) may swap places against float64; everything else ranks the same. A DID lookup is a few
C calls instead of one dict probe (~0.8 µs more an event). ``Profile`` objects are built on
demand (a snapshot). BENCHMARKS.md has the numbers.
"""

from __future__ import annotations

import math
import random
import struct
import sys
import zlib
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice, repeat
from operator import itemgetter, mul, truediv
from typing import Any, ClassVar, Final

import regex

from botsky.events import POST, Event

__all__ = ["Keep", "Match", "Presence", "Profile", "TermStats", "counted", "tokenize", "weigh"]

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
_PLC: Final = "did:plc:"
_KEY: Final = 24  # bytes of a did:plc identifier
_ORDER: Final = sys.byteorder  # records use the native order, like ``array``

Match = tuple[float, int, str]
"""A scored candidate: (similarity, last activity ``time_us``, DID)."""
Keep = Callable[[str, int, tuple[str, ...]], bool]
"""A candidate filter on (DID, last activity ``time_us``, languages)."""


def tokenize(text: str) -> list[str]:
    """Lower-case word tokens of 3+ letters, without URLs, @mentions and stopwords."""
    # ``findall`` gives '' for the URL/mention alternative. A token starts with a letter, so
    # only its end can carry the ' and - that are stripped.
    return [
        word
        for found in _TOKEN.findall(text.lower())
        if found
        if len(word := found.rstrip("'-")) >= 3 and word not in _STOPWORDS
    ]


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

    def snapshot(self) -> dict[str, Any]:
        """The statistics as plain values (document count, frequency per term), for ``restore``."""
        return {"docs": self.docs, "df": dict(self._df)}

    def restore(self, state: dict[str, Any]) -> None:
        """Take the statistics of a ``snapshot`` (copied: the value stays the caller's)."""
        self.docs = state["docs"]
        self._df = dict(state["df"])

    def tf_idf(self, counts: dict[str, int]) -> dict[str, float]:
        """Count × IDF per term, IDF = ln((docs + 1) / (df + 1)) + 1 (smoothed, as in
        scikit-learn's ``TfidfVectorizer``)."""
        docs, df, log = self.docs + 1, self._df, math.log
        return {t: c * (log(docs / (df.get(t, 0) + 1)) + 1.0) for t, c in counts.items()}

    def _prune(self) -> None:
        keep = sorted(self._df.items(), key=lambda kv: kv[1], reverse=True)[: self.max_terms // 2]
        self._df = {t: max(1, c // 2) for t, c in keep}
        self.docs = max(1, self.docs // 2)


def counted(terms: list[str]) -> dict[str, int]:
    """How often each term occurs, in first-occurrence order."""
    tf: dict[str, int] = {}
    for t in terms:  # a plain loop: ``Counter``'s setup costs more on a dozen terms
        tf[t] = tf.get(t, 0) + 1
    return tf


def weigh(terms: list[str] | dict[str, int], stats: TermStats) -> dict[str, float]:
    """L2-normalized TF-IDF vector of one text's terms (a list, or ``counted`` terms)."""
    vec = stats.tf_idf(terms if isinstance(terms, dict) else counted(terms))
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


# A poster's record: n (2 bytes), n term ids (int32), n weights (float32), then the recent
# texts, oldest first, each as a 2-byte length and UTF-8 (surrogatepass: a post's text can hold
# lone surrogates). The functions below are its only readers and writers.


def _count(rec: bytes) -> int:
    return rec[0] | rec[1] << 8


def _record(ids: array[int], weights: array[float], texts: bytes) -> bytes:
    n = len(ids)
    return bytes((n & 255, n >> 8)) + ids.tobytes() + weights.tobytes() + texts


def _terms(rec: bytes | None) -> tuple[array[int], array[float]]:
    ids, weights = array("i"), array("f")
    if rec is not None:
        n = _count(rec)
        ids.frombytes(rec[2 : 2 + 4 * n])
        weights.frombytes(rec[2 + 4 * n : 2 + 8 * n])
    return ids, weights


def _at(rec: bytes, term: bytes, n: int) -> int:
    """Where the term id (as 4 bytes) is among the record's ``n`` ids, or -1."""
    end = 2 + 4 * n
    k = rec.find(term, 2, end)
    while k >= 0 and (k - 2) & 3:  # a match across two ids: look further
        k = rec.find(term, k + 1, end)
    return k if k < 0 else (k - 2) >> 2


def _texts(rec: bytes | None) -> list[bytes]:
    out: list[bytes] = []
    if rec is not None:
        k = 2 + 8 * _count(rec)
        while k < len(rec):
            size = rec[k] | rec[k + 1] << 8
            out.append(rec[k + 2 : k + 2 + size])
            k += 2 + size
    return out


def _pack_texts(texts: list[bytes]) -> bytes:
    return b"".join(len(t).to_bytes(2, "little") + t for t in texts)


class Presence:
    """Online users within a sliding window of stream time, with interest profiles."""

    STATE_VERSION: ClassVar[int] = 1  # of ``snapshot``'s value: bump when its keys change

    def __init__(
        self,
        *,
        window_s: float = 1800.0,
        max_users: int = 1_000_000,
        terms_per_user: int = 48,
        texts_per_user: int = 3,
        stats: TermStats | None = None,
    ) -> None:
        if not 0 < terms_per_user < 1 << 16:
            raise ValueError("terms_per_user must be in 1..65535")
        self.window_us = int(window_s * 1e6)
        self.max_users = max_users
        self.terms_per_user = terms_per_user
        self.texts_per_user = texts_per_user
        self.stats = stats or TermStats()
        self.now_us = 0  # the stream clock: the latest event time seen
        # DID -> slot. About 16 users a bucket at max_users; a bucket is a run of 8-byte
        # entries (CRC-32 of the identifier, slot), both little-endian.
        buckets = 1 << max(8, (max_users // 16).bit_length())
        self._buckets: list[bytes] = [b""] * buckets
        self._mask = buckets - 1
        self._keys = bytearray()  # per slot: the did:plc identifier's 24 bytes
        self._other: dict[str, int] = {}  # DIDs of any other shape -> slot
        self._other_did: dict[int, str] = {}
        # Columns by slot. A freed slot (seq -1, no record) is reused by the next new user.
        self._last = array("q")
        self._seq = array("i")  # log position (from the last renumbering) of the live entry
        self._posts = array("H")  # saturates at 65535
        self._rec: list[bytes | None] = []  # posters' records (see ``_record``)
        self._lang: array[int] = array("H")  # into ``_lang_sets``
        # Distinct language lists (a few dozen in practice); 0 is none. Past 65536 a new one
        # counts as none (so, not a reason to filter a user out).
        self._lang_sets: list[tuple[str, ...]] = [()]
        self._lang_ids: dict[tuple[str, ...], int] = {(): 0}
        self._free = array("i")
        # Dense positions (a leaver's is taken by the last user), for uniform sampling with
        # one randrange: slot by position and position by slot.
        self._dense = array("i")
        self._where = array("i")
        # Recency log: a slot per activity that moved a user to the front; the entry at
        # absolute position ``_base + k`` is live if the slot's seq is that position.
        # Consumed from ``_head``.
        self._log = array("i")
        self._head = 0
        self._base = 0
        # Vocabulary (ids of terms some profile holds) and index term id -> slots that held
        # it (some no longer); ids of terms nobody holds are reused after a sweep.
        self._term_ids: dict[str, int] = {}
        self._words: list[str] = []
        self._free_ids = array("i")
        self._index: dict[int, array[int]] = {}
        self._indexed = 0  # entries in the index, live or stale
        self._live_terms = 0  # terms held by profiles: live index entries

    def __len__(self) -> int:
        return len(self._dense)

    def __contains__(self, did: object) -> bool:
        return isinstance(did, str) and self._find(did) >= 0

    def observe(self, event: Event) -> None:
        """Note activity; on a new post, fold its text into the author's profile."""
        if event.time_us > self.now_us:
            self.now_us = event.time_us
        if event.kind != "commit":
            return
        i = self._touch(event.did, event.time_us)
        if event.collection == POST and event.operation == "create":
            post = event.post
            self._learn(i, post.text, post.langs)
        self.expire()

    def profile(self, did: str) -> Profile | None:
        i = self._find(did)
        return None if i < 0 else self._profile(i)

    def is_online(self, did: str) -> bool:
        i = self._find(did)
        return i >= 0 and self._last[i] >= self.now_us - self.window_us

    def online(self) -> Iterator[Profile]:
        """Online users, most recently active first.

        Only the simulation's planted ``noisy_oracle`` picker walks every online user (the
        other pickers go through ``matches`` and ``sample``); this is also the one readable view
        of the recency order, which the tests check window expiry, the ``max_users`` cap and
        checkpoints against.
        """
        cutoff = self.now_us - self.window_us
        log, seq, last = self._log, self._seq, self._last
        for k in range(len(log) - 1, self._head - 1, -1):
            i = log[k]
            if seq[i] != self._base + k:
                continue
            if last[i] < cutoff:
                break
            yield self._profile(i)

    def users_sharing(self, terms: Iterable[str]) -> set[str]:
        """DIDs of users whose profile holds at least one of ``terms``.

        The exact, unbounded answer of the term index (``matches`` asks it with a bound): kept
        as the reference the tests hold the index, its sweeps and checkpoints to.
        """
        found: set[int] = set()
        rec = self._rec
        for term in terms:
            tid = self._term_ids.get(term)
            if tid is None:
                continue
            tb = tid.to_bytes(4, _ORDER)
            for i in self._index.get(tid, ()):
                r = rec[i]
                if r is not None and _at(r, tb, _count(r)) >= 0:
                    found.add(i)
        return {self._did(i) for i in found}

    def matches(self, vec: dict[str, float], limit: int, keep: Keep) -> list[Match]:
        """(similarity, last activity, DID) of up to ``limit`` users sharing a term of ``vec``
        that ``keep`` accepts.

        The users are found rarest term first, newest holder first: the bound is what keeps a
        recommendation cheap on the whole network, where a common word is held by 10^5 users,
        and rare terms say the most about a match. ``keep(did, last_us, langs)`` is the
        recommender's filter: asked on the columns in one pass (no DID lookup per question),
        and similarity is computed only for users kept.
        """
        query = self._query(vec)
        rec, last, lang, sets = self._rec, self._last, self._lang, self._lang_sets
        keys, other = self._keys, self._other_did
        out: list[Match] = []
        for i in self._candidates(list(vec), limit):
            # ``_did(i)``, inlined.
            did = (
                other[i]
                if other and i in other
                else _PLC + keys[_KEY * i : _KEY * i + _KEY].decode()
            )
            last_us = last[i]
            if keep(did, last_us, sets[lang[i]]):
                out.append((_similarity(rec[i], query), last_us, did))
        return out

    def sample(self, rng: random.Random, tries: int = 64) -> Profile | None:
        """A uniformly random online user (rejection sampling over the dense positions)."""
        dense, last = self._dense, self._last
        if not dense:
            return None
        for _ in range(tries):
            i = dense[rng.randrange(len(dense))]
            if last[i] >= self.now_us - self.window_us:
                return self._profile(i)
        return None

    def expire(self) -> int:
        """Forget users who left the window, and the least active past ``max_users``."""
        cutoff = self.now_us - self.window_us
        removed = 0
        log, seq, last = self._log, self._seq, self._last
        head = self._head
        while head < len(log):
            i = log[head]
            if seq[i] != self._base + head:
                head += 1  # stale: the user moved on or left
                continue
            if last[i] >= cutoff and len(self._dense) <= self.max_users:
                break
            self._forget(i)
            head += 1
            removed += 1
        self._head = head
        if head > _SLACK and head * 2 > len(log):
            del log[:head]
            self._base += head
            self._head = 0
            if self._base > 1 << 30:  # positions must fit ``_seq``'s int32
                self._compact_log()
        return removed

    def snapshot(self) -> dict[str, Any]:
        """Everything the presence knows, as plain values for ``restore`` (checkpoints).

        Keys: ``now_us`` (the stream clock), ``stats`` (``TermStats.snapshot``), and the user
        table as laid out: ``buckets``/``keys``/``other`` (DID → slot), the slot columns
        ``last``/``seq``/``posts``/``rec``/``lang``, ``lang_sets``, the free slots ``free``, the
        dense positions ``dense``, the recency ``log`` with ``head``/``base``, the vocabulary
        ``words``/``free_ids`` and the term ``index``. The layout is kept, not just the users:
        candidates are found in slot and index order, so only the same layout ranks ties the same
        and a resumed simulation stays bit for bit. Maps that follow from these (reverse
        look-ups, counters) are not in it; ``restore`` rebuilds them. Records hold term ids and
        weights in this machine's byte order (like ``array``). Nothing in it is shared with the
        presence: later changes to either do not show in the other.
        """
        return {
            "now_us": self.now_us,
            "stats": self.stats.snapshot(),
            "buckets": list(self._buckets),
            "keys": bytes(self._keys),
            "other": dict(self._other),
            "last": self._last[:],
            "seq": self._seq[:],
            "posts": self._posts[:],
            "rec": list(self._rec),
            "lang": self._lang[:],
            "lang_sets": list(self._lang_sets),
            "free": self._free[:],
            "dense": self._dense[:],
            "log": self._log[:],
            "head": self._head,
            "base": self._base,
            "words": list(self._words),
            "free_ids": self._free_ids[:],
            "index": {tid: slots[:] for tid, slots in self._index.items()},
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Become the presence ``state`` (a ``snapshot``) describes; the value stays the caller's.

        The window, caps and profile sizes stay this presence's own (the configuration); the
        hash table keeps the snapshot's size, so ``max_users`` may differ.
        """
        buckets = list(state["buckets"])
        if not buckets or len(buckets) & (len(buckets) - 1):
            raise ValueError("a presence snapshot needs a power-of-two number of buckets")
        self.now_us = state["now_us"]
        self.stats.restore(state["stats"])
        self._buckets, self._mask = buckets, len(buckets) - 1
        self._keys = bytearray(state["keys"])
        self._other = dict(state["other"])
        self._other_did = {i: did for did, i in self._other.items()}
        self._last = state["last"][:]
        self._seq = state["seq"][:]
        self._posts = state["posts"][:]
        self._rec = list(state["rec"])
        self._lang = state["lang"][:]
        self._lang_sets = list(state["lang_sets"])
        self._lang_ids = {langs: k for k, langs in enumerate(self._lang_sets)}
        self._free = state["free"][:]
        self._dense = state["dense"][:]
        self._where = array("i", [-1]) * len(self._last)  # free slots get theirs when reused
        for k, i in enumerate(self._dense):
            self._where[i] = k
        self._log = state["log"][:]
        self._head, self._base = state["head"], state["base"]
        self._words = list(state["words"])
        self._term_ids = {word: tid for tid, word in enumerate(self._words) if word}  # "": free
        self._free_ids = state["free_ids"][:]
        self._index = {tid: slots[:] for tid, slots in state["index"].items()}
        self._indexed = sum(map(len, self._index.values()))
        self._live_terms = sum(_count(r) for r in self._rec if r is not None)

    # DID <-> slot -------------------------------------------------------------------------
    def _find(self, did: str) -> int:
        """The DID's slot, or -1."""
        if len(did) != 32 or not did.startswith(_PLC):
            return self._other.get(did, -1)
        key = did[8:].encode()
        if len(key) != _KEY:
            return self._other.get(did, -1)
        h = zlib.crc32(key)
        bucket = self._buckets[h & self._mask]
        fp = h.to_bytes(4, "little")
        k = bucket.find(fp)
        keys = self._keys
        while k >= 0:
            if not k & 7:  # an entry's fingerprint, not bytes across two entries
                i = int.from_bytes(bucket[k + 4 : k + 8], "little")
                if keys.startswith(key, _KEY * i):  # the whole key: the slot holds 24 bytes
                    return i
            k = bucket.find(fp, k + 1)
        return -1

    def _bind(self, did: str, i: int) -> None:
        key = did[8:].encode() if len(did) == 32 and did.startswith(_PLC) else b""
        if len(key) != _KEY:
            self._other[did] = i
            self._other_did[i] = did
            return
        self._keys[_KEY * i : _KEY * i + _KEY] = key
        h = zlib.crc32(key)
        self._buckets[h & self._mask] += h.to_bytes(4, "little") + i.to_bytes(4, "little")

    def _unbind(self, i: int) -> None:
        did = self._other_did.pop(i, None)
        if did is not None:
            del self._other[did]
            return
        key = bytes(self._keys[_KEY * i : _KEY * i + _KEY])
        h = zlib.crc32(key)
        b = h & self._mask
        bucket = self._buckets[b]
        entry = h.to_bytes(4, "little") + i.to_bytes(4, "little")
        k = bucket.find(entry)
        while k >= 0 and k & 7:
            k = bucket.find(entry, k + 1)
        if k >= 0:
            self._buckets[b] = bucket[:k] + bucket[k + 8 :]

    def _did(self, i: int) -> str:
        if self._other_did and i in self._other_did:
            return self._other_did[i]
        return _PLC + self._keys[_KEY * i : _KEY * i + _KEY].decode()

    # internals --------------------------------------------------------------------------
    def _profile(self, i: int) -> Profile:
        return Profile(
            did=self._did(i),
            last_us=self._last[i],
            terms=self._term_weights(i),
            langs=self._lang_sets[self._lang[i]],
            texts=tuple(t.decode(errors="surrogatepass") for t in _texts(self._rec[i])),
            posts=self._posts[i],
        )

    def _query(self, vec: dict[str, float]) -> list[tuple[int, float]]:
        """``vec`` as (term id, weight), without the terms no profile holds (they add 0.0)."""
        ids = self._term_ids
        return [(tid, w) for t, w in vec.items() if (tid := ids.get(t)) is not None]

    def _term_weights(self, i: int) -> dict[str, float]:
        ids, weights = _terms(self._rec[i])
        words = self._words
        return {words[t]: w for t, w in zip(ids, weights, strict=True)}

    def _touch(self, did: str, time_us: int) -> int:
        i = self._find(did)
        if i < 0:
            i = self._new_slot()
            self._bind(did, i)
            self._where[i] = len(self._dense)
            self._dense.append(i)
            self._last[i] = time_us
        elif time_us >= self._last[i]:
            self._last[i] = time_us
        else:
            return i
        # The user moves to the front of the recency order: a new live log entry.
        self._seq[i] = self._base + len(self._log)
        self._log.append(i)
        if len(self._log) - self._head > 2 * len(self._dense) + _SLACK:
            self._compact_log()
        return i

    def _new_slot(self) -> int:
        if self._free:
            return self._free.pop()
        self._last.append(0)
        self._seq.append(-1)
        self._posts.append(0)
        self._rec.append(None)
        self._lang.append(0)
        self._where.append(-1)
        self._keys += bytes(_KEY)
        return len(self._last) - 1

    def _compact_log(self) -> None:
        log, seq, base = self._log, self._seq, self._base
        live = array("i", [i for k in range(self._head, len(log)) if seq[i := log[k]] == base + k])
        for k, i in enumerate(live):
            seq[i] = k
        self._log, self._head, self._base = live, 0, 0

    def _candidates(self, terms: list[str], limit: int) -> list[int]:
        """Slots of up to ``limit`` users sharing a term, rarest term first, newest holder
        first (``users_sharing`` when that has at most ``limit`` users), in the order found."""
        index, ids, rec = self._index, self._term_ids, self._rec
        holders = [
            (index.get(tid, ()) if (tid := ids.get(t)) is not None else (), tid) for t in terms
        ]
        found: dict[int, None] = {}
        # Fewest holders first (stable: ties keep the post's order).
        for slots, tid in sorted(holders, key=lambda st: len(st[0])):
            if not slots:
                continue
            tb = tid.to_bytes(4, _ORDER)  # type: ignore[union-attr]
            for i in reversed(slots):
                if i in found or (r := rec[i]) is None:
                    continue
                # ``_at(r, tb, n) >= 0``, inlined: this runs for every index entry visited.
                end = 2 + 4 * (r[0] | r[1] << 8)
                k = r.find(tb, 2, end)
                while k >= 0 and (k - 2) & 3:
                    k = r.find(tb, k + 1, end)
                if k >= 0:
                    if len(found) >= limit:
                        return list(found)
                    found[i] = None
        return list(found)

    def _learn(self, i: int, text: str, langs: tuple[str, ...]) -> None:
        # Counted once: the distinct terms are what the statistics count, the counts what
        # ``weigh`` needs.
        terms = counted(tokenize(text))
        self.stats.add(terms)
        if self._posts[i] < 65535:
            self._posts[i] += 1
        if langs:
            self._lang[i] = self._lang_id(
                tuple(dict.fromkeys(langs + self._lang_sets[self._lang[i]]))[:3]
            )
        rec = self._rec[i]
        if not text and not terms:
            return
        n = 0 if rec is None else _count(rec)
        texts = b"" if rec is None else rec[2 + 8 * n :]
        if text:
            kept = _texts(rec)
            kept.append(text[:_TEXT_CHARS].encode(errors="surrogatepass"))
            texts = _pack_texts(kept[max(0, len(kept) - self.texts_per_user) :])
        old_ids, old_weights = _terms(rec)
        if not terms:
            self._rec[i] = _record(old_ids, old_weights, texts)
            return
        # Old terms by id, new ones by word until they make the top (only those get an id).
        # ``map`` and ``zip`` keep the per-term work in C; the products and sums are the same.
        merged: dict[int | str, float] = dict(
            zip(old_ids, map(_DECAY.__mul__, old_weights), strict=True)
        )
        term_ids = self._term_ids
        for word, w in weigh(terms, self.stats).items():
            key = term_ids.get(word, word)
            merged[key] = merged.get(key, 0.0) + w
        # Heaviest first; ties keep their order (a reverse sort is stable too).
        top = sorted(merged.items(), key=itemgetter(1), reverse=True)[: self.terms_per_user]
        keys, weights = zip(*top, strict=True)
        norm = math.sqrt(sum(map(mul, weights, weights))) or 1.0
        new = [k if type(k) is int else self._term_id(k) for k in keys]
        normed = array("f", map(truediv, weights, repeat(norm)))
        self._rec[i] = _record(array("i", new), normed, texts)
        # ``merged`` starts with the old ids: no int objects made again from the array.
        added = set(new).difference(islice(merged, n))
        index = self._index
        for t in added:
            held = index.get(t)
            if held is None:
                index[t] = array("i", (i,))
            else:
                held.append(i)
        # Terms that left the profile stay in the index as stale entries until the sweep.
        self._indexed += len(added)
        self._live_terms += len(new) - n
        if self._indexed > 2 * self._live_terms + _SLACK:
            self._sweep_index()

    def _lang_id(self, langs: tuple[str, ...]) -> int:
        lid = self._lang_ids.get(langs)
        if lid is None:
            if len(self._lang_sets) > 65535:
                return 0
            lid = self._lang_ids[langs] = len(self._lang_sets)
            self._lang_sets.append(langs)
        return lid

    def _term_id(self, word: str) -> int:
        if self._free_ids:
            tid = self._free_ids.pop()
            self._words[tid] = word
        else:
            tid = len(self._words)
            self._words.append(word)
        self._term_ids[word] = tid
        return tid

    def _sweep_index(self) -> None:
        """Drop stale index entries (users gone, terms left their profile) and duplicates.

        A term left with no holder is held by no profile: its id is freed for a new term.
        """
        rec = self._rec
        index: dict[int, array[int]] = {}
        total = 0
        for tid, holders in self._index.items():
            tb = tid.to_bytes(4, _ORDER)
            live = array(
                "i",
                [
                    i
                    for i in dict.fromkeys(holders)
                    if (r := rec[i]) is not None and _at(r, tb, _count(r)) >= 0
                ],
            )
            if live:
                index[tid] = live
                total += len(live)
            else:
                del self._term_ids[self._words[tid]]
                self._words[tid] = ""
                self._free_ids.append(tid)
        self._index = index
        self._indexed = total

    def _forget(self, i: int) -> None:
        rec = self._rec[i]
        if rec is not None:
            self._live_terms -= _count(rec)
        self._unbind(i)
        self._rec[i] = None
        self._lang[i] = 0
        self._posts[i] = 0
        self._seq[i] = -1
        self._free.append(i)
        dense, where = self._dense, self._where
        moved = dense[-1]
        dense[where[i]] = moved
        where[moved] = where[i]
        dense.pop()


def _similarity(rec: bytes | None, query: list[tuple[int, float]]) -> float:
    """Dot product of a record's weights with ``query`` (term id, weight), in its order.

    The record's terms become a dict with one C-level unpack (a Python loop that searches
    the record's bytes per query term costs ~3× more).
    """
    total = 0.0
    if rec is not None:
        n = rec[0] | rec[1] << 8
        both = (_LAYOUTS.get(n) or _layout(n)).unpack_from(rec, 2)
        get = dict(zip(both[:n], both[n:], strict=True)).get
        for tid, w in query:
            x = get(tid)
            if x is not None:
                total += w * x
    return total


_LAYOUTS: dict[int, struct.Struct] = {}


def _layout(n: int) -> struct.Struct:
    """The struct of a record's ``n`` ids and ``n`` weights (one per ``n`` seen, ≤ 65535)."""
    layout = _LAYOUTS.get(n)
    if layout is None:
        layout = _LAYOUTS[n] = struct.Struct(f"={n}i{n}f")
    return layout
