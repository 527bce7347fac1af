"""The low-water mark: where a restart resumes, so the cursor never passes unfinished work.

A source's saved cursor used to be the last event read. Events are read long before their
work is done (a post waits in the dispatch queue, then seconds for a model), so a crash or a
stop lost the posts read but not yet answered: the next start resumed after them.

``Watermark`` tracks, for one process, the position it has read up to and the work it holds:
each post handed to dispatch is *held* from the moment it is queued until its worker is done
with it (posted, parked as a ``retry`` claim, or refused), and only then *released*. A post
whose reply was cancelled (a shutdown deadline) or never started (the queue discarded at a
stop) is never released. The mark is the position *before* the oldest held post, or the read
position when nothing is held; it is what gets saved, and a restart resumes right after it.
What lies between the mark and the read position is read again: the ledger's claims make that
idempotent (a claimed post is skipped before any model call; outcomes, opt-outs, opt-ins and
account statuses are keyed so a second recording is a no-op).

"The position before an event" depends on the source (``before``): for the relay it is
``seq - 1`` (subscribeRepos resumes after the cursor, so the whole commit is read again); for
Jetstream ``time_us - 1`` (its cursor is a time; the source also rewinds ``rewind_s`` on every
dial, which covers events that arrive out of time order); for a replay, the position of the
event read before it (byte offsets of line ends).

**Replicas.** Each partition has its own mark, saved by the replica that owns it under
``<name>#p<partition>``: the position before the oldest post of that partition this replica
holds, else its read position. A replica never writes the mark of a partition it does not own;
a (re)started replica resumes from the lowest mark of all partitions, so it re-reads whatever
any owner, dead or alive, left unfinished (and re-offers it when it takes that partition over).

**Warm start.** ``advance`` samples the read position about once a second of stream time;
``warm_position`` gives the position of the newest sample at least ``window_us`` of stream
time older than the mark (the stream time of the oldest held post, else of the latest event).
Saved beside the mark (``<name>#warm``), it is where a restart starts reading, so presence,
interests, handles and consent are rebuilt from that window of stream before the mark in
observe-only mode (see ``botsky.runtime``). Without a sample that old, it stays where the run
started reading.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from botsky.events import Event

__all__ = ["Resume", "Watermark", "load_resume", "partition_key", "warm_key"]

_SAMPLE_US = 1_000_000  # one warm-start sample per second of stream time
_MAX_SAMPLES = 86_400  # a day of them


def partition_key(name: str, partition: int) -> str:
    """The ledger key of one partition's mark."""
    return f"{name}#p{partition}"


def warm_key(name: str) -> str:
    """The ledger key of the warm-start position."""
    return f"{name}#warm"


@dataclass(frozen=True, slots=True)
class Resume:
    """Where a run starts reading and where its observe-only part ends.

    ``start``: the position to read after (None: the live tip). ``marks``: partition → mark;
    a post of partition p at or before ``marks[p]`` (less ``slack``, Jetstream's rewind: an
    event near the mark may have arrived after it) was finished before, so it is only observed.
    ``default``: the mark of a partition with none of its own.
    """

    start: int | None = None
    marks: dict[int, int] = field(default_factory=dict)
    default: int | None = None
    slack: int = 0

    def observe_only(self, cursor: int, partition: int) -> bool:
        """Whether a post at ``cursor`` in ``partition`` is before the mark: feed state, no
        reply."""
        mark = self.marks.get(partition, self.default)
        return mark is not None and cursor <= mark - self.slack

    def _all(self) -> list[int]:
        return [*self.marks.values(), *([] if self.default is None else [self.default])]

    @property
    def warm(self) -> bool:
        """Whether the run starts before a mark (an observe-only part to read first)."""
        return self.start is not None and any(self.start < m - self.slack for m in self._all())

    def past_marks(self, cursor: int) -> bool:
        """Whether ``cursor`` is past every mark: the observe-only part is over."""
        return all(cursor > m - self.slack for m in self._all())


class Watermark:
    """The read position, the posts held, and the mark they give (see the module docstring).

    ``start`` is the position the run resumes after (None: unknown, the live tip); ``before``
    gives the position before an event, from the event and the position read before it.
    """

    def __init__(
        self,
        start: int | None = None,
        *,
        before: Callable[[Event, int | None], int | None] | None = None,
        window_us: int = 0,
    ) -> None:
        self.read: int | None = start
        self._before = before or (lambda event, previous: previous)
        # token → (position before the post, its partition, its stream time)
        self._held: dict[int, tuple[int | None, int, int]] = {}
        self._next = 0
        self.window_us = window_us
        self._warm_start = start
        # (stream time, position before an event of that time), about one a second; bounded
        # (a mark held back longer than that starts its warm window at the oldest sample).
        self._samples: deque[tuple[int, int]] = deque(maxlen=_MAX_SAMPLES)
        self.latest_us = 0

    def advance(self, event: Event) -> int | None:
        """Note that ``event`` was read and routed (``begin`` then ``passed``); returns the
        position before it."""
        before = self.begin(event)
        self.passed(event)
        return before

    def passed(self, event: Event) -> None:
        """``event`` was routed to the end (its post, if any, is held or refused): the read
        position may move past it. Until then the mark stays before it, so a run stopped
        while routing it (a reader cancelled at an await) reads it again."""
        if self.read is None or event.cursor > self.read:
            self.read = event.cursor

    def begin(self, event: Event) -> int | None:
        """``event`` is being routed; returns the position before it (for ``hold``). The read
        position does not move until ``passed``."""
        before = self._before(event, self.read)
        if self._warm_start is None:
            self._warm_start = before  # a run begun at the live tip: its first event
        t = event.time_us
        if t > self.latest_us:
            self.latest_us = t
            samples = self._samples
            if before is not None and (not samples or t - samples[-1][0] >= _SAMPLE_US):
                samples.append((t, before))
        return before

    def hold(self, before: int | None, partition: int = 0, time_us: int = 0) -> int:
        """Hold work that starts at ``before`` (from ``advance``), of an event of stream time
        ``time_us``; returns its token."""
        token = self._next
        self._next += 1
        self._held[token] = (before, partition, time_us)
        return token

    def release(self, token: int) -> None:
        """The held work is done (a token released twice is ignored)."""
        self._held.pop(token, None)

    @property
    def held(self) -> int:
        """How many posts are held."""
        return len(self._held)

    def mark(self, partition: int | None = None) -> int | None:
        """The position before the oldest held post (of ``partition``, if given), else the
        read position; None while nothing is known (a run started at the live tip that holds
        a post whose position before it is unknown)."""
        mark = self.read
        for before, p, _ in self._held.values():
            if partition is not None and p != partition:
                continue
            if before is None:
                return None
            if mark is None or before < mark:
                mark = before
        return mark

    def marks(self, partitions: Iterable[int]) -> dict[int, int]:
        """The mark of each of ``partitions`` (those with one)."""
        out = {}
        for p in partitions:
            m = self.mark(p)
            if m is not None:
                out[p] = m
        return out

    def mark_time_us(self) -> int:
        """The stream time at the mark: that of the oldest held post, else the latest."""
        return min((t for _, _, t in self._held.values()), default=self.latest_us)

    def warm_position(self, mark: int | None) -> int | None:
        """Where a restart should start reading to see ``window_us`` of stream before the
        mark (``mark``, the one saved), and never after it."""
        if self.window_us <= 0:
            return mark  # no window: a restart resumes at the mark, cold
        cutoff = self.mark_time_us() - self.window_us
        samples = self._samples
        # Keep one sample at or before the window's start: the newest such is the position.
        while len(samples) >= 2 and samples[1][0] <= cutoff:
            samples.popleft()
        if samples and samples[0][0] <= cutoff:
            warm: int | None = samples[0][1]
        else:
            warm = self._warm_start
        if warm is None:
            return mark
        return warm if mark is None else min(warm, mark)


class _Cursors(Protocol):
    async def load_cursor(self, source: str) -> int | None: ...


async def load_resume(
    ledger: _Cursors, name: str, *, partitions: int | None = None, slack: int = 0
) -> Resume:
    """Where a restart of the source ``name`` reads from: the warm-start position, or the
    lowest mark when there is none (``partitions``: the number of partitions when replicas
    share the stream, each with its mark; a partition without one uses the source's own key,
    the mark of a run without replicas). ``slack`` is Jetstream's rewind, in µs."""
    default = await ledger.load_cursor(name)
    marks: dict[int, int] = {}
    for p in range(partitions or 0):
        mark = await ledger.load_cursor(partition_key(name, p))
        if mark is not None:
            marks[p] = mark
    lows = list(marks.values())
    if default is not None and (partitions is None or len(marks) < partitions):
        lows.append(default)
    if not lows:
        return Resume(slack=slack)  # never saved: the live tip (or the top of a replay)
    start = min(lows)
    warm = await ledger.load_cursor(warm_key(name))
    if warm is not None:
        start = min(start, warm)
    return Resume(start=start, marks=marks, default=default, slack=slack)
