"""Write budgets: how fast the bots may post, per account and in total.

The PDS allows 5000 points per hour and 35000 per day per account; a create costs 3 points.
botsky uses only ``headroom`` of that (default 80%), counted over a *sliding* window of the last
hour and the last day, so no window of the server's, however it is aligned, sees more than
``headroom`` × the limit. On top, a global cap of posts per minute across all bots.
``WriteBudget.slot(account)`` is an async context manager: it waits for room up to
``max_wait_s`` on the injected clock and raises ``PostRateLimited`` (with ``retry_after``)
instead of waiting longer. ``server_limited`` blocks an account until the server's reset after
a 429 (the live poster calls it).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from botsky.errors import PostRateLimited

__all__ = ["CREATE_COST", "WriteBudget"]

CREATE_COST = 3  # PDS write points for one createRecord
_HOUR_S = 3600.0
_DAY_S = 86_400.0
_DEFAULT_429_BLOCK_S = 60.0  # a 429 without ratelimit-reset / retry-after


class _Window:
    """Costs spent in the last ``span`` seconds; room for ``limit``."""

    def __init__(self, limit: float, span: float) -> None:
        self.limit = limit
        self.span = span
        self.used = 0.0
        self._log: deque[tuple[float, float]] = deque()

    def _expire(self, now: float) -> None:
        while self._log and self._log[0][0] <= now - self.span:
            self.used -= self._log.popleft()[1]

    def wait(self, cost: float, now: float) -> float:
        """Seconds until ``cost`` fits (0 now, ``inf`` never)."""
        self._expire(now)
        if cost > self.limit:
            return math.inf
        if self.used + cost <= self.limit:
            return 0.0
        need = self.used + cost - self.limit
        for t, c in self._log:
            need -= c
            if need <= 0:
                return t + self.span - now
        return math.inf  # pragma: no cover - cost <= limit guarantees the loop returns

    def take(self, cost: float, now: float) -> None:
        self._log.append((now, cost))
        self.used += cost


@dataclass
class WriteBudget:
    """Per-account write budget plus a global posts-per-minute cap; see the module docstring.

    ``clock`` is monotonic seconds; ``wall`` converts a 429's ``ratelimit-reset`` (epoch
    seconds) into it. ``sleep`` is injected so tests run on a fake clock.
    """

    points_per_hour: int = 5000
    points_per_day: int = 35_000
    headroom: float = 0.8
    posts_per_minute: float = 10.0
    max_wait_s: float = 30.0
    # This process's share of each account's budget: replicas share the accounts, so each
    # may use 1/N of it (N live replicas, read at every check so it follows joins and deaths).
    share: Callable[[], float] = lambda: 1.0
    clock: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    sleep: Callable[[float], Any] = asyncio.sleep
    counts: Counter[str] = field(default_factory=Counter)
    _accounts: dict[str, tuple[_Window, _Window]] = field(default_factory=dict)
    _blocked_until: dict[str, float] = field(default_factory=dict)
    _global: _Window = field(init=False)

    def __post_init__(self) -> None:
        if not 0 < self.headroom <= 1:
            raise ValueError("headroom must be in (0, 1]")
        # n posts per window of 60·n/ppm seconds is exactly ppm per minute, also below 1.
        n = max(1, math.floor(self.posts_per_minute))
        self._global = _Window(n, 60.0 * n / self.posts_per_minute)

    def _windows(self, account: str) -> tuple[_Window, _Window]:
        if account not in self._accounts:
            self._accounts[account] = (_Window(0, _HOUR_S), _Window(0, _DAY_S))
        hour, day = self._accounts[account]
        share = min(1.0, max(0.0, self.share()))
        hour.limit = self.points_per_hour * self.headroom * share
        day.limit = self.points_per_day * self.headroom * share
        return hour, day

    def wait_time(self, account: str, cost: int = CREATE_COST) -> float:
        """Seconds until ``account`` may spend ``cost`` (0: now)."""
        now = self.clock()
        hour, day = self._windows(account)
        blocked = max(0.0, self._blocked_until.get(account, now) - now)
        return max(blocked, hour.wait(cost, now), day.wait(cost, now), self._global.wait(1, now))

    def remaining(self, account: str) -> tuple[float, float]:
        """Points left now in the hour and day windows."""
        now = self.clock()
        hour, day = self._windows(account)
        hour.wait(0, now)
        day.wait(0, now)
        return hour.limit - hour.used, day.limit - day.used

    @contextlib.asynccontextmanager
    async def slot(self, account: str, cost: int = CREATE_COST) -> AsyncIterator[None]:
        """Wait (at most ``max_wait_s``) for room, spend ``cost``, then run the body."""
        while True:
            wait = self.wait_time(account, cost)
            if wait <= 0:
                break
            if wait > self.max_wait_s:
                self.counts["local_limited"] += 1
                raise PostRateLimited(
                    f"write budget of {account} is spent for {wait:.0f} s", retry_after=wait
                )
            self.counts["waited"] += 1
            await self.sleep(wait)
        now = self.clock()
        hour, day = self._windows(account)
        hour.take(cost, now)
        day.take(cost, now)
        self._global.take(1, now)
        yield

    def server_limited(self, account: str, reset_epoch_s: float | None) -> float:
        """Block ``account`` until the server's reset; returns the seconds until then."""
        wait = (
            max(0.0, reset_epoch_s - self.wall())
            if reset_epoch_s is not None
            else _DEFAULT_429_BLOCK_S
        )
        self._blocked_until[account] = max(
            self._blocked_until.get(account, 0.0), self.clock() + wait
        )
        self.counts["server_limited"] += 1
        return wait
