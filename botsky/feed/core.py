"""The feed's pure core: the pool of servable bot replies and the page builder. No I/O.

**Arms.** An item's arm is the value of one mention field (``arm_by``, ``model`` by default:
the leaderboard's headline grouping, where control arms carry their own model label such as
``template-similar``), so "equal exposure" holds between exactly the groups the leaderboard
compares.

**Slots.** A session (one scroll through the feed, from a page without cursor) draws its arm
order as a randomized round-robin: slot ``s`` is round ``s // n`` position ``s % n`` of ``n``
arms, and each round is an independent uniform random permutation of the arms (a team draft,
drawn without replacement per round). The permutation is a pure function of the session seed,
the round number and the arm set (arms sorted by a keyed hash: ``round_order``), so a cursor
(seed + round + position) continues the draft exactly, on any replica, after a restart.
Every complete round gives each arm one slot, and by symmetry each arm is equally likely to hold
any position, top slots included.

**Items within an arm**: fewest impressions first; among equals, the one that reached that
count first (a queue per count), so an arm's items are dealt round-robin. An item is served at
most ``max_impressions`` times (then it leaves the pool) and never twice in one session. When an
arm has nothing left for a session, the page stops before that arm's slot, so no arm ever gets
a slot another arm could not fill in the same round: a session's feed ends there.

The pool is mutated only by ``commit`` (impressions) and the add/remove/expire calls; page
building is synchronous, so concurrent requests on one event loop never interleave in it.
"""

from __future__ import annotations

import base64
import functools
import heapq
import struct
from collections import Counter, deque
from collections.abc import Callable, Container, Iterable, Sequence
from dataclasses import dataclass, field
from hashlib import blake2b
from typing import Any, Final

__all__ = [
    "Cursor",
    "Item",
    "Page",
    "Pool",
    "Slot",
    "arm_token",
    "arms_digest",
    "build_page",
    "round_order",
]

_CURSOR: Final = struct.Struct(">BQIHII")  # version, seed, round, position, served, arms digest
_VERSION: Final = 1


@dataclass(frozen=True, slots=True)
class Item:
    """A servable bot reply."""

    mention_id: int
    uri: str
    arm: str
    created_us: int
    post_author: str = ""
    mentioned_did: str = ""


def _h(text: str, size: int = 8) -> bytes:
    return blake2b(text.encode("utf-8", "surrogatepass"), digest_size=size).digest()


@functools.lru_cache(maxsize=1024)
def arm_token(arm: str) -> str:
    """A short stable token for an arm (what ``feedContext`` carries, not the arm's name)."""
    return _h(f"arm:{arm}", 4).hex()


def arms_digest(arms: Sequence[str]) -> int:
    """32 bits naming an arm set (sorted), stored in the cursor."""
    return int.from_bytes(_h("\x00".join(sorted(arms)), 4))


def round_order(seed: int, rnd: int, arms: Sequence[str]) -> list[str]:
    """Round ``rnd``'s arm order for a session: the arms sorted by a keyed 64-bit hash, which
    is a uniform random permutation for a hash that behaves as a random function."""
    return sorted(arms, key=lambda a: _h(f"{seed}:{rnd}:{a}"))


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a session is: its seed, the next slot's round and position, slots served so far
    and the arm set its current round was drawn for. Opaque to clients (``encode``)."""

    seed: int
    round: int = 0
    pos: int = 0
    served: int = 0
    arms: int = 0

    def encode(self) -> str:
        raw = _CURSOR.pack(_VERSION, self.seed, self.round, self.pos, self.served, self.arms)
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        """Raises ValueError for anything ``encode`` did not make."""
        if len(text) > 64:
            raise ValueError("cursor too long")
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            version, seed, rnd, pos, served, arms = _CURSOR.unpack(raw)
        except (ValueError, struct.error) as exc:
            raise ValueError("malformed cursor") from exc
        if version != _VERSION:
            raise ValueError(f"unknown cursor version {version}")
        return cls(seed, rnd, pos, served, arms)

    @property
    def session_id(self) -> str:
        return f"{self.seed:016x}"


@dataclass(slots=True)
class _Arm:
    buckets: dict[int, deque[int]] = field(default_factory=dict)  # count -> queue of ids
    live: int = 0
    low: int = 0  # no valid entry below this count
    high: int = 0  # none above


class Pool:
    """Servable items by arm with their impression counts (see the module docstring)."""

    def __init__(self, *, max_impressions: int) -> None:
        if max_impressions < 1:
            raise ValueError("max_impressions must be at least 1")
        self.max_impressions = max_impressions
        self._items: dict[int, Item] = {}
        self._count: dict[int, int] = {}
        self._by_uri: dict[str, int] = {}
        self._arms: dict[str, _Arm] = {}
        self._ages: list[tuple[int, int]] = []  # heap of (created_us, mention_id)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, mention_id: object) -> bool:
        return mention_id in self._items

    def by_uri(self, uri: str) -> Item | None:
        """The live item with this reply URI, if any (the engagement watcher's look-up)."""
        mid = self._by_uri.get(uri)
        return None if mid is None else self._items.get(mid)

    def impressions(self, mention_id: int) -> int:
        return self._count.get(mention_id, 0)

    def arms(self) -> tuple[str, ...]:
        """Arms with at least one live item, sorted."""
        return tuple(sorted(a for a, s in self._arms.items() if s.live > 0))

    def sizes(self) -> dict[str, int]:
        """Live items per arm."""
        return {a: s.live for a, s in sorted(self._arms.items()) if s.live > 0}

    def add(self, item: Item, impressions: int = 0) -> bool:
        """Add an item with its impressions so far; False if present or already capped."""
        if item.mention_id in self._items or impressions >= self.max_impressions:
            return False
        self._items[item.mention_id] = item
        self._count[item.mention_id] = impressions
        self._by_uri[item.uri] = item.mention_id
        arm = self._arms.setdefault(item.arm, _Arm())
        if arm.live == 0:
            arm.low = arm.high = impressions
        arm.live += 1
        arm.buckets.setdefault(impressions, deque()).append(item.mention_id)
        arm.low = min(arm.low, impressions)
        arm.high = max(arm.high, impressions)
        heapq.heappush(self._ages, (item.created_us, item.mention_id))
        return True

    def remove(self, mention_id: int) -> None:
        """Take an item out (its queue entries go stale and are dropped lazily)."""
        item = self._items.pop(mention_id, None)
        if item is None:
            return
        del self._count[mention_id]
        if self._by_uri.get(item.uri) == mention_id:
            del self._by_uri[item.uri]
        arm = self._arms[item.arm]
        arm.live -= 1
        if arm.live == 0:
            del self._arms[item.arm]

    def expire(self, before_us: int) -> int:
        """Remove items created before ``before_us``; returns how many."""
        removed = 0
        while self._ages and self._ages[0][0] < before_us:
            _, mid = heapq.heappop(self._ages)
            if mid in self._items:
                self.remove(mid)
                removed += 1
        return removed

    def pick(
        self,
        arm: str,
        k: int,
        exclude: Container[int] = (),
        allowed: Callable[[Item], bool] | None = None,
    ) -> list[Item]:
        """Up to ``k`` of the arm's items with the fewest impressions, not in ``exclude``,
        oldest-at-their-count first. Does not count them: ``commit`` does. Items that
        ``allowed`` refuses leave the pool for good."""
        state = self._arms.get(arm)
        out: list[Item] = []
        if state is None or k <= 0:
            return out
        chosen: set[int] = set()
        refused: list[int] = []
        count = self._count
        for c in range(state.low, state.high + 1):
            queue = state.buckets.get(c)
            if queue is None:
                if c == state.low:
                    state.low = c + 1
                continue
            while queue and count.get(queue[0]) != c:
                queue.popleft()  # stale: served since, or removed
            if not queue:
                del state.buckets[c]
                if c == state.low:
                    state.low = c + 1
                continue
            for mid in queue:
                if count.get(mid) != c or mid in chosen or mid in exclude:
                    continue
                item = self._items[mid]
                if allowed is not None and not allowed(item):
                    refused.append(mid)
                    chosen.add(mid)
                    continue
                out.append(item)
                chosen.add(mid)
                if len(out) == k:
                    break
            if len(out) == k:
                break
        for mid in refused:
            self.remove(mid)
        return out

    def snapshot(self) -> dict[str, Any]:
        """The pool as plain values (a simulation checkpoint): items with their counts, each
        arm's queues in their order, and the age heap. ``restore`` puts it back exactly, so
        the next pages are the ones the pool would have built."""
        return {
            "items": [
                (i.mention_id, i.uri, i.arm, i.created_us, i.post_author, i.mentioned_did)
                for i in self._items.values()
            ],
            "counts": dict(self._count),
            "arms": {
                arm: (
                    [(c, list(q)) for c, q in s.buckets.items()],
                    s.live,
                    s.low,
                    s.high,
                )
                for arm, s in self._arms.items()
            },
            "ages": list(self._ages),
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Replace the pool's content with a ``snapshot``."""
        self._items = {row[0]: Item(*row) for row in state["items"]}
        self._count = dict(state["counts"])
        self._by_uri = {i.uri: mid for mid, i in self._items.items()}
        self._arms = {
            arm: _Arm({c: deque(q) for c, q in buckets}, live, low, high)
            for arm, (buckets, live, low, high) in state["arms"].items()
        }
        self._ages = list(state["ages"])

    def commit(self, items: Iterable[Item]) -> None:
        """Count one impression of each item; an item reaching the cap leaves the pool."""
        for item in items:
            mid = item.mention_id
            if mid not in self._items:
                continue
            c = self._count[mid] + 1
            if c >= self.max_impressions:
                self.remove(mid)
                continue
            self._count[mid] = c
            state = self._arms[item.arm]
            state.buckets.setdefault(c, deque()).append(mid)
            state.high = max(state.high, c)


@dataclass(frozen=True, slots=True)
class Slot:
    """One item on a page: its position on the page and in the session."""

    item: Item
    pos: int
    slot: int

    @property
    def feed_context(self) -> str:
        """What the client echoes in interactions: the arm's token and the session slot."""
        return f"{arm_token(self.item.arm)}.{self.slot}"


@dataclass(frozen=True, slots=True)
class Page:
    """A built page; ``next`` is None at the end of the feed."""

    slots: tuple[Slot, ...]
    next: Cursor | None
    first_slot: int


def build_page(
    pool: Pool,
    cursor: Cursor,
    limit: int,
    exclude: Container[int] = (),
    allowed: Callable[[Item], bool] | None = None,
) -> Page:
    """The next ``limit`` slots of the session at ``cursor``; commits their impressions.

    Stops early (and ends the feed) at the first slot whose arm has no item left for this
    session. If the arm set changed since the cursor's round was drawn, a new round starts,
    so no arm gets two slots in one round.
    """
    arms = pool.arms()
    if not arms or limit <= 0:
        return Page((), None, cursor.served)
    digest = arms_digest(arms)
    rnd, pos = cursor.round, cursor.pos
    if digest != cursor.arms and pos:
        rnd, pos = rnd + 1, 0
    n = len(arms)
    sequence: list[tuple[str, int, int]] = []  # (arm, round, position) per slot
    order = round_order(cursor.seed, rnd, arms)
    for _ in range(limit):
        sequence.append((order[pos], rnd, pos))
        pos += 1
        if pos == n:
            rnd, pos = rnd + 1, 0
            order = round_order(cursor.seed, rnd, arms)
    need = Counter(arm for arm, _, _ in sequence)
    picked = {arm: pool.pick(arm, k, exclude, allowed) for arm, k in need.items()}
    used = dict.fromkeys(picked, 0)
    slots: list[Slot] = []
    stop: tuple[int, int] | None = None
    for i, (arm, r, p) in enumerate(sequence):
        if used[arm] >= len(picked[arm]):
            stop = (r, p)
            break
        slots.append(Slot(picked[arm][used[arm]], i, cursor.served + i))
        used[arm] += 1
    pool.commit(s.item for s in slots)
    served = cursor.served + len(slots)
    if stop is not None:
        # An arm ran out: the feed ends here (the next page of this cursor is empty).
        nxt = None if not slots else Cursor(cursor.seed, stop[0], stop[1], served, digest)
    else:
        nxt = Cursor(cursor.seed, rnd, pos, served, digest)
    return Page(tuple(slots), nxt, cursor.served)
