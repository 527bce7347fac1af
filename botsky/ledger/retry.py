"""RetryingLedger: ride out a database restart instead of failing the work in hand.

Every ledger call that raises ``LedgerUnavailable`` (connection refused or dropped, a lock held
too long) is retried with jittered exponential backoff until ``deadline_s`` has passed, then the
error is raised for real. While a call waits, whoever made it waits too: the dispatch worker
holding a posted reply, or the reader recording an outcome, so work pauses and resumes rather
than being dropped. The ledger methods are idempotent under retry (claims, mentions and outcomes
are keyed by post and by event), which is what makes a blind retry safe after a lost commit
acknowledgement.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential_jitter,
)

from botsky.errors import LedgerUnavailable
from botsky.ledger.base import Ledger

__all__ = ["RetryingLedger"]

log = structlog.get_logger("botsky.ledger")


class RetryingLedger:
    """A Ledger that retries ``LedgerUnavailable``; everything else passes through."""

    def __init__(
        self,
        inner: Ledger,
        *,
        deadline_s: float = 300.0,
        initial_s: float = 0.2,
        max_wait_s: float = 10.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.inner = inner
        self.deadline_s = deadline_s
        self.initial_s = initial_s
        self.max_wait_s = max_wait_s
        self.sleep = sleep
        self.retries = 0  # calls retried so far (exported as a metric)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not inspect.iscoroutinefunction(attr):
            return attr

        @functools.wraps(attr)
        async def call(*args: Any, **kwargs: Any) -> Any:
            # The first attempt runs bare: building tenacity's state per call cost more than
            # the SQLite statement itself, and a healthy database never needs it.
            try:
                return await attr(*args, **kwargs)
            except LedgerUnavailable as exc:
                wait = self.initial_s * (1 + random.random())
                self._note_wait(name, 1, wait, exc)
                started = time.monotonic()
                await self.sleep(wait)
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type(LedgerUnavailable),
                stop=stop_after_delay(max(0.0, self.deadline_s - (time.monotonic() - started))),
                wait=wait_exponential_jitter(
                    multiplier=self.initial_s, max=self.max_wait_s, jitter=self.initial_s
                ),
                sleep=self.sleep,
                before_sleep=functools.partial(self._waiting, name),
                reraise=True,
            ):
                with attempt:
                    return await attr(*args, **kwargs)
            raise AssertionError("unreachable: tenacity either returns or raises")

        # Cached on the instance, so later look-ups skip __getattr__ (one per ledger call).
        setattr(self, name, call)
        return call

    def _waiting(self, method: str, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        self._note_wait(method, state.attempt_number + 1, wait, exc)  # +1: the bare attempt

    def _note_wait(self, method: str, attempt: int, wait: float, exc: BaseException | None) -> None:
        self.retries += 1
        log.warning(
            "ledger_unavailable",
            method=method,
            attempt=attempt,
            retry_in_s=round(wait, 2),
            error=str(exc),
        )
