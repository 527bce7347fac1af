"""Partitions: which replica answers which posts, coordinated by PostgreSQL alone.

Every replica reads the whole firehose. Posts are split into ``count`` partitions by a stable
hash of their URI; a replica answers the posts of the partitions it owns. Ownership is a
session-level advisory lock per partition on a dedicated connection, so a replica that dies
(its session ends) releases everything at once, without a heartbeat table. Each replica also
holds one *membership* lock; counting those in ``pg_locks`` gives the number of live replicas,
and every ``rebalance_s`` each replica moves towards its fair share, ``ceil(count / members)``:
it releases extras when a replica joins and takes free partitions when one leaves.

Ownership can lag reality by a rebalance period; that is safe because the ledger's unique
claim per post makes a second reply impossible whoever answers. The app keeps posts from
partitions it does not own in a bounded buffer and offers them again when it takes a partition
over, so a post seen while its partition was between owners is still answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import random
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from botsky.errors import FatalError

if TYPE_CHECKING:
    import psycopg

__all__ = ["OnAcquire", "Partitions", "PgPartitions", "SinglePartition", "partition_of"]

log = structlog.get_logger("botsky.partition")

OnAcquire = Callable[[frozenset[int]], Awaitable[None]]
"""Called with the partitions a rebalance took over (possibly none, when a replica left)."""

# pg_locks shows a two-key advisory lock as classid = key1, objid = key2, objsubid = 2.
_HELD = """
    SELECT objid::bigint FROM pg_locks
    WHERE locktype = 'advisory' AND granted AND objsubid = 2 AND classid::bigint = %s
      AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


def partition_of(uri: str, count: int) -> int:
    """The partition of a post: stable across processes and restarts (not Python's hash)."""
    return int.from_bytes(hashlib.blake2b(uri.encode(), digest_size=8).digest(), "big") % count


def _key(text: str) -> int:
    """A signed 32-bit advisory-lock key for ``text``."""
    return int.from_bytes(
        hashlib.blake2b(text.encode(), digest_size=4).digest(), "big", signed=True
    )


class Partitions(Protocol):
    """Which posts this replica answers. The runtime calls ``start``, runs ``run`` as a task,
    and at the end ``settle`` (finite sources) and ``stop``; ``on_acquire`` is its hook for
    takeovers (never called when this process owns everything)."""

    on_acquire: OnAcquire | None
    count: int  # how many partitions there are
    owned: set[int]  # the partitions this replica owns now

    @property
    def member(self) -> str:
        """This replica's id, written into each claim's intent."""

    @property
    def single(self) -> bool:
        """True when this process owns every post (no replica can hold a claim of ours)."""

    def owns(self, uri: str) -> bool:
        """Whether this replica answers the post ``uri``."""

    def partition(self, uri: str) -> int:
        """The partition of the post ``uri``."""

    def alive(self) -> frozenset[str]:
        """The members (replicas) alive as of the last check, this one included."""

    async def start(self) -> None:
        """Join (and take a first share) before any event is read."""

    async def run(self) -> None:
        """Keep the share fair until ``stop``; returns at once if there is nothing to do."""

    async def settle(self, timeout_s: float = 60.0) -> None:
        """Before leaving at the end of a finite source: make sure every partition has an owner."""

    async def stop(self) -> None:
        """Leave the group; ends ``run``."""


class SinglePartition:
    """One process owns everything (SQLite, or PostgreSQL without scale-out)."""

    member = "local"
    single = True
    count = 1

    def __init__(self) -> None:
        self.on_acquire: OnAcquire | None = None  # never called: nothing is ever taken over
        self.owned: set[int] = {0}

    def owns(self, uri: str) -> bool:
        return True

    def partition(self, uri: str) -> int:
        return 0

    def alive(self) -> frozenset[str]:
        return frozenset({self.member})

    async def start(self) -> None:
        return None

    async def run(self) -> None:
        return None

    async def settle(self, timeout_s: float = 60.0) -> None:
        return None

    async def stop(self) -> None:
        return None


class PgPartitions:
    """Partition ownership through PostgreSQL advisory locks (psycopg is imported on use).

    ``on_acquire(partitions)`` is awaited after each rebalance that took partitions over, or
    that saw a replica leave (then with the partitions taken, possibly none): the app re-offers
    buffered posts of the taken partitions and settles dead replicas' claims in all it owns.
    """

    def __init__(
        self,
        dsn: str,
        *,
        count: int = 64,
        group: str = "botsky",
        rebalance_s: float = 2.0,
        on_acquire: OnAcquire | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.dsn = dsn
        self.count = count
        self.group = group
        self.rebalance_s = rebalance_s
        self.on_acquire = on_acquire
        self.rng = rng or random.Random()
        self.member_id = self.rng.randrange(1, 2**31)
        self.member = str(self.member_id)
        self.owned: set[int] = set()
        self.members: frozenset[int] = frozenset()
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._leaving = asyncio.Event()
        self._ns_members = 0
        self._ns_parts = 0
        # Held while a rebalance (and the takeover work it triggers) runs, so stop() never
        # cuts a takeover in half: the posts it was re-offering would have no owner.
        self._busy = asyncio.Lock()

    @property
    def single(self) -> bool:
        return False

    def partition(self, uri: str) -> int:
        return partition_of(uri, self.count)

    def owns(self, uri: str) -> bool:
        # While the session is lost we keep answering the partitions we last held: every reply
        # still needs a claim in this same database, whose unique key arbitrates if another
        # replica took a partition over meanwhile. Dropping them instead would leave posts
        # unanswered for as long as the outage lasts.
        return partition_of(uri, self.count) in self.owned

    def alive(self) -> frozenset[str]:
        """Members (replicas) whose session holds its membership lock, as of the last check."""
        return frozenset(str(m) for m in self.members)

    async def start(self) -> None:
        """Join the group and take a first share (``run`` keeps rebalancing)."""
        await self._connect()
        await self.rebalance()

    async def run(self) -> None:
        """Rebalance every ``rebalance_s`` until ``stop``."""
        import psycopg

        while not self._leaving.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._leaving.wait(), self.rebalance_s)
            try:
                async with self._busy:
                    if self._leaving.is_set():
                        return
                    if self._conn is None or self._conn.closed:
                        await self._rejoin()
                    await self.rebalance()
            except psycopg.Error as exc:
                # The session, and our locks with it, is gone; owns() keeps the last view.
                log.warning("partitions_lost", error=str(exc), owned=len(self.owned))
                await self._disconnect(keep_owned=True)
            except FatalError:
                raise  # the takeover work hit a broken ledger: stop (see botsky.errors)
            except Exception:
                # A failure in the takeover work must not end rebalancing for good.
                log.exception("rebalance_failed")

    async def settle(self, timeout_s: float = 60.0) -> None:
        """Before leaving at the end of a finite source: rejoin if the session was lost, and
        take over whatever is free, so posts buffered meanwhile still get an owner."""
        import psycopg

        deadline = asyncio.get_running_loop().time() + timeout_s
        async with self._busy:
            while True:
                try:
                    if self._conn is None or self._conn.closed:
                        await self._rejoin()
                    await self.rebalance()
                    return
                except psycopg.Error as exc:
                    await self._disconnect(keep_owned=True)
                    if asyncio.get_running_loop().time() > deadline:
                        log.error("partitions_unsettled", error=str(exc))
                        return
                    await asyncio.sleep(min(self.rebalance_s, 1.0))

    async def stop(self) -> None:
        """Leave the group (after any takeover in progress): closing the session releases
        every lock at once. ``run`` returns."""
        async with self._busy:
            self._leaving.set()
            await self._disconnect()

    async def rebalance(self) -> frozenset[int]:
        """Move towards the fair share; returns the partitions taken over."""
        conn = self._conn
        if conn is None:
            return frozenset()
        members = frozenset(await self._held(conn, self._ns_members)) | {self.member_id}
        # A replica left: its half-done claims may now be ours to settle, even if this round
        # takes no partition (the one that took them may have seen it still alive).
        someone_left = bool(self.members - members)
        self.members = members
        fair = math.ceil(self.count / len(members))
        if len(self.owned) > fair:
            for p in self.rng.sample(sorted(self.owned), len(self.owned) - fair):
                await conn.execute("SELECT pg_advisory_unlock(%s, %s)", (self._ns_parts, p))
                self.owned.discard(p)
            log.info("partitions_released", owned=len(self.owned), members=len(members))
            if someone_left and self.on_acquire is not None:
                await self.on_acquire(frozenset())
            return frozenset()
        taken: set[int] = set()
        if len(self.owned) < fair:
            held = set(await self._held(conn, self._ns_parts))
            free = [p for p in range(self.count) if p not in held and p not in self.owned]
            self.rng.shuffle(free)
            for p in free:
                if len(self.owned) >= fair:
                    break
                cur = await conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (self._ns_parts, p))
                row = await cur.fetchone()
                if row is not None and row[0]:
                    self.owned.add(p)
                    taken.add(p)
        if taken:
            log.info(
                "partitions_acquired", taken=len(taken), owned=len(self.owned), members=len(members)
            )
        if (taken or someone_left) and self.on_acquire is not None:
            await self.on_acquire(frozenset(taken))
        return frozenset(taken)

    # internals --------------------------------------------------------------------------
    async def _rejoin(self) -> None:
        """After a lost session: reconnect, then take back what we held if it is still free."""
        held_before = set(self.owned)
        await self._disconnect(keep_owned=True)
        await self._connect()
        conn = self._conn
        assert conn is not None
        for p in sorted(held_before):
            cur = await conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (self._ns_parts, p))
            row = await cur.fetchone()
            if not (row is not None and row[0]):
                self.owned.discard(p)  # someone took it over while we were away
        log.info("partitions_rejoined", kept=len(self.owned), held_before=len(held_before))

    async def _connect(self) -> None:
        import psycopg

        conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)
        # The group is scoped to the schema too, so two deployments (or two tests) sharing a
        # database never share partitions.
        cur = await conn.execute("SELECT current_database(), current_schema()")
        row = await cur.fetchone()
        scope = f"{self.group}|{row[0] if row else ''}|{row[1] if row else ''}"
        self._ns_members, self._ns_parts = _key(scope + "|members"), _key(scope + "|partitions")
        await conn.execute("SELECT pg_advisory_lock(%s, %s)", (self._ns_members, self.member_id))
        self._conn = conn
        log.info("partitions_joined", member=self.member_id, partitions=self.count)

    async def _disconnect(self, *, keep_owned: bool = False) -> None:
        conn, self._conn = self._conn, None
        if not keep_owned:
            self.owned.clear()
        if conn is not None:
            await conn.close()

    async def _held(self, conn: psycopg.AsyncConnection[Any], ns: int) -> list[int]:
        # classid is an oid (unsigned); our keys are signed, so compare modulo 2^32.
        cur = await conn.execute(_HELD, (ns % 2**32,))
        return [int(r[0]) for r in await cur.fetchall()]
