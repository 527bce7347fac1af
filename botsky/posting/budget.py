"""Write budgets: how fast the bots may post, per account and in total, remembered by the ledger.

The PDS allows 5000 points per hour and 35000 per day per account; a create costs 3 points.
botsky uses only ``headroom`` of that (default 80%), counted over a *sliding* window of the last
hour and the last day, so no window of the server's, however it is aligned, sees more than
``headroom`` × the limit. On top, a global cap of posts per minute across all bots: ``n =
floor(posts_per_minute)`` posts (at least one) in any window of ``60·n/posts_per_minute`` s.

Every spend is recorded in a ``SpendStore``, the ledger in production, by one transaction that
reads the windows, decides and writes (``Ledger.spend_write``): a restart remembers what was
spent in the last hour and day, and replicas on one PostgreSQL ledger draw on one budget, one
spend at a time, instead of guessing a share each. Times are wall-clock microseconds, since a
monotonic clock means nothing to the next process (replicas' clocks are assumed in step, as NTP
keeps them). ``WriteBudget.slot(account)`` waits for room up to ``max_wait_s`` and raises
``PostRateLimited`` (``retry_after``, ``reason``) instead of waiting longer. A server 429 is
recorded by ``server_limited`` with its ``ratelimit-reset``: no process spends for that account
(or, for a ``login:<handle>`` key, logs in as that identifier) before the reset.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from botsky.errors import PostRateLimited
from botsky.ledger.base import SpendDecision, WriteSpends

__all__ = ["CREATE_COST", "MemorySpendStore", "SpendStore", "WriteBudget", "login_key"]

CREATE_COST = 3  # PDS write points for one createRecord
_HOUR_US = 3_600_000_000
_DAY_US = 86_400_000_000
_DEFAULT_429_BLOCK_S = 60.0  # a 429 without ratelimit-reset / retry-after


def login_key(handle: str) -> str:
    """The block key of logins (createSession) as ``handle``: the PDS limits them per
    identifier, not per account."""
    return f"login:{handle.lower()}"


class SpendStore(Protocol):
    """Where spends and blocks live: the ledger (``botsky.ledger.base.Ledger`` has these
    methods), or ``MemorySpendStore`` for a process that needs no memory of them."""

    async def write_spends(
        self, account: str, since_us: int, everyone_since_us: int
    ) -> WriteSpends: ...

    async def spend_write(
        self,
        account: str,
        cost: int,
        time_us: int,
        *,
        since_us: int,
        everyone_since_us: int,
        decide: SpendDecision,
    ) -> float: ...

    async def block_account(self, key: str, until_us: int, reason: str) -> None: ...

    async def account_blocks(self) -> dict[str, tuple[int, str]]: ...


class MemorySpendStore:
    """Spends and blocks in this process's memory (``botsky accounts``, tests): forgotten at
    exit, so a live run uses the ledger instead."""

    def __init__(self) -> None:
        self._spends: list[tuple[str, int, int]] = []  # (account, time_us, cost), oldest first
        self._blocks: dict[str, tuple[int, str]] = {}

    async def write_spends(
        self, account: str, since_us: int, everyone_since_us: int
    ) -> WriteSpends:
        return WriteSpends(
            account=[(t, c) for a, t, c in self._spends if a == account and t > since_us],
            everyone=[t for _, t, _ in self._spends if t > everyone_since_us],
            blocked_until_us=self._blocks.get(account, (0, ""))[0],
        )

    async def spend_write(
        self,
        account: str,
        cost: int,
        time_us: int,
        *,
        since_us: int,
        everyone_since_us: int,
        decide: SpendDecision,
    ) -> float:
        # No await between the read and the write: atomic on one event loop.
        wait = decide(await self.write_spends(account, since_us, everyone_since_us))
        if wait <= 0:
            self._spends.append((account, time_us, cost))
            cutoff = min(since_us, everyone_since_us)
            self._spends = [s for s in self._spends if s[0] != account or s[1] > cutoff]
        return wait

    async def block_account(self, key: str, until_us: int, reason: str) -> None:
        if until_us > self._blocks.get(key, (0, ""))[0]:
            self._blocks[key] = (until_us, reason)

    async def account_blocks(self) -> dict[str, tuple[int, str]]:
        return dict(self._blocks)


def _window_wait(
    spends: Sequence[tuple[int, int]], limit: float, cost: int, span_us: int, now_us: int
) -> float:
    """Seconds until ``cost`` fits under ``limit`` in the window of ``span_us`` ending now,
    given its ``(time_us, cost)`` spends oldest first (0: now, ``inf``: never)."""
    if cost > limit:
        return math.inf
    live = [(t, c) for t, c in spends if t > now_us - span_us]
    need = sum(c for _, c in live) + cost - limit
    if need <= 0:
        return 0.0
    for t, c in live:
        need -= c
        if need <= 0:
            return (t + span_us - now_us) / 1e6
    return math.inf  # pragma: no cover - cost <= limit guarantees the loop returns


@dataclass
class WriteBudget:
    """Per-account write budget plus a global posts-per-minute cap; see the module docstring.

    ``clock`` is wall-clock seconds (spends outlive the process); ``sleep`` is injected so
    tests run on a fake clock.
    """

    points_per_hour: int = 5000
    points_per_day: int = 35_000
    headroom: float = 0.8
    posts_per_minute: float = 10.0
    max_wait_s: float = 30.0
    store: SpendStore = field(default_factory=MemorySpendStore)
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], Any] = asyncio.sleep
    counts: Counter[str] = field(default_factory=Counter)
    _per_minute: int = field(init=False)
    _minute_span_us: int = field(init=False)

    def __post_init__(self) -> None:
        if not 0 < self.headroom <= 1:
            raise ValueError("headroom must be in (0, 1]")
        # n posts per window of 60·n/ppm seconds is exactly ppm per minute, also below 1.
        self._per_minute = max(1, math.floor(self.posts_per_minute))
        self._minute_span_us = round(60e6 * self._per_minute / self.posts_per_minute)

    @property
    def hour_limit(self) -> float:
        """Points this budget may spend per account in any hour."""
        return self.points_per_hour * self.headroom

    @property
    def day_limit(self) -> float:
        """Points this budget may spend per account in any day."""
        return self.points_per_day * self.headroom

    def _now_us(self) -> int:
        return int(self.clock() * 1e6)

    def _wait(self, spends: WriteSpends, cost: int, now_us: int) -> tuple[float, str]:
        """Seconds until ``cost`` fits for the account, and what it waits for."""
        waits = {
            "rate_limited": max(0.0, (spends.blocked_until_us - now_us) / 1e6),
            "budget_spent": max(
                _window_wait(spends.account, self.hour_limit, cost, _HOUR_US, now_us),
                _window_wait(spends.account, self.day_limit, cost, _DAY_US, now_us),
            ),
            "posts_per_minute": _window_wait(
                [(t, 1) for t in spends.everyone],
                self._per_minute,
                1,
                self._minute_span_us,
                now_us,
            ),
        }
        reason = max(waits, key=lambda k: waits[k])
        return waits[reason], reason

    async def wait_time(self, account: str, cost: int = CREATE_COST) -> float:
        """Seconds until ``account`` may spend ``cost`` (0: now); spends nothing."""
        now = self._now_us()
        spends = await self.store.write_spends(account, now - _DAY_US, now - self._minute_span_us)
        return self._wait(spends, cost, now)[0]

    async def remaining(self, account: str) -> tuple[float, float]:
        """Points left now in the hour and day windows."""
        now = self._now_us()
        spends = await self.store.write_spends(account, now - _DAY_US, now)
        hour = sum(c for t, c in spends.account if t > now - _HOUR_US)
        return self.hour_limit - hour, self.day_limit - sum(c for _, c in spends.account)

    @contextlib.asynccontextmanager
    async def slot(self, account: str, cost: int = CREATE_COST) -> AsyncIterator[None]:
        """Wait (at most ``max_wait_s``) for room, spend ``cost``, then run the body.

        The spend is recorded before the body runs (the PDS counts a create it receives, even
        one that fails), so a create that never reached the PDS still costs its points.
        """
        while True:
            wait, reason = await self._try_spend(account, cost)
            if wait <= 0:
                break
            if wait > self.max_wait_s:
                self.counts[f"refused_{reason}"] += 1
                raise PostRateLimited(
                    f"{account} may not write for {wait:.0f} s ({reason})",
                    retry_after=wait,
                    reason=reason,
                )
            self.counts["waited"] += 1
            await self.sleep(wait)
        self.counts["spent"] += 1
        yield

    async def _try_spend(self, account: str, cost: int) -> tuple[float, str]:
        """Spend now if it fits (one ledger transaction); the wait and what it waits for."""
        now = self._now_us()
        why = ["budget_spent"]

        def decide(spends: WriteSpends) -> float:
            wait, why[0] = self._wait(spends, cost, now)
            return wait

        wait = await self.store.spend_write(
            account,
            cost,
            now,
            since_us=now - _DAY_US,
            everyone_since_us=now - self._minute_span_us,
            decide=decide,
        )
        return wait, why[0]

    async def server_limited(
        self, key: str, reset_epoch_s: float | None, reason: str = "429"
    ) -> float:
        """Record a server block of ``key`` (an account's DID, or a ``login_key``) until the
        server's reset; returns the seconds until then."""
        now = self.clock()
        wait = max(0.0, reset_epoch_s - now) if reset_epoch_s is not None else _DEFAULT_429_BLOCK_S
        await self.store.block_account(key, int((now + wait) * 1e6), reason)
        self.counts["server_limited"] += 1
        return wait

    async def blocked_for(self, key: str) -> float:
        """Seconds until the block of ``key`` ends (0: not blocked)."""
        until_us, _ = (await self.store.account_blocks()).get(key, (0, ""))
        return max(0.0, (until_us - self._now_us()) / 1e6)
