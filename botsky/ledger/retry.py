"""RetryingLedger: ride out a database restart instead of failing the work in hand.

Every ledger call that raises ``LedgerUnavailable`` (connection refused or dropped, a lock held
too long) is retried with jittered exponential backoff until ``deadline_s`` has passed; then
``LedgerError`` is raised, which stops the process (``botsky.errors``). While a call waits,
whoever made it waits too: the dispatch worker holding a posted reply, or the reader recording
an outcome, so work pauses and resumes rather than being dropped. The ledger methods are
idempotent under retry (claims, mentions and outcomes are keyed by post and by event), which is
what makes a blind retry safe after a lost commit acknowledgement.
"""

from __future__ import annotations

import asyncio
import functools
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential_jitter,
)

from botsky.errors import LedgerError, LedgerUnavailable
from botsky.ledger.base import (
    AccountStatus,
    Claim,
    Ledger,
    Mention,
    Outcome,
    SpendDecision,
    WriteSpends,
)
from botsky.ledger.feed import RetryingFeedMixin

__all__ = ["RetryingLedger"]

log = structlog.get_logger("botsky.ledger")

_T = TypeVar("_T")


class RetryingLedger(RetryingFeedMixin):
    """A ``Ledger`` that retries ``LedgerUnavailable`` around another; everything else passes
    through. Each method names the inner call it retries, so a method added to the contract
    is a type error here until it is wrapped too."""

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

    # -- the Ledger contract, each call retried --------------------------------------------

    async def open(self) -> None:
        await self._retry("open", lambda: self.inner.open())

    async def close(self) -> None:
        await self._retry("close", lambda: self.inner.close())

    async def claim(
        self, post_uri: str, owner: str, time_us: int, intent: dict[str, Any] | None = None
    ) -> bool:
        return await self._retry(
            "claim", lambda: self.inner.claim(post_uri, owner, time_us, intent)
        )

    async def is_claimed(self, post_uri: str) -> bool:
        return await self._retry("is_claimed", lambda: self.inner.is_claimed(post_uri))

    async def finish_claim(self, post_uri: str, status: str, reason: str = "") -> None:
        await self._retry("finish_claim", lambda: self.inner.finish_claim(post_uri, status, reason))

    async def claims_with_status(self, status: str) -> list[tuple[str, str]]:
        return await self._retry(
            "claims_with_status", lambda: self.inner.claims_with_status(status)
        )

    async def pending_claims(self) -> list[tuple[str, str, dict[str, Any] | None]]:
        return await self._retry("pending_claims", lambda: self.inner.pending_claims())

    async def claims(self, status: str) -> list[Claim]:
        return await self._retry("claims", lambda: self.inner.claims(status))

    async def retry_claim(
        self, post_uri: str, attempts: int, next_try_us: int, reason: str
    ) -> bool:
        return await self._retry(
            "retry_claim",
            lambda: self.inner.retry_claim(post_uri, attempts, next_try_us, reason),
        )

    async def due_claims(self, now_us: int, limit: int = 100) -> list[Claim]:
        return await self._retry("due_claims", lambda: self.inner.due_claims(now_us, limit))

    async def take_claim(self, post_uri: str, attempts: int, replica: str) -> dict[str, Any] | None:
        return await self._retry(
            "take_claim", lambda: self.inner.take_claim(post_uri, attempts, replica)
        )

    async def write_spends(
        self, account: str, since_us: int, everyone_since_us: int
    ) -> WriteSpends:
        return await self._retry(
            "write_spends",
            lambda: self.inner.write_spends(account, since_us, everyone_since_us),
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
        # A retry after a lost commit acknowledgement may record the spend twice: the budget
        # then errs on the safe side (it counts a create that was sent once as two).
        return await self._retry(
            "spend_write",
            lambda: self.inner.spend_write(
                account,
                cost,
                time_us,
                since_us=since_us,
                everyone_since_us=everyone_since_us,
                decide=decide,
            ),
        )

    async def block_account(self, key: str, until_us: int, reason: str) -> None:
        await self._retry("block_account", lambda: self.inner.block_account(key, until_us, reason))

    async def account_blocks(self) -> dict[str, tuple[int, str]]:
        return await self._retry("account_blocks", lambda: self.inner.account_blocks())

    async def record_mention(self, mention: Mention) -> int:
        return await self._retry("record_mention", lambda: self.inner.record_mention(mention))

    async def open_mentions(self) -> list[Mention]:
        return await self._retry("open_mentions", lambda: self.inner.open_mentions())

    async def mentions(self) -> list[Mention]:
        return await self._retry("mentions", lambda: self.inner.mentions())

    async def mentioned_since(self, since_us: int) -> list[tuple[str, int]]:
        return await self._retry("mentioned_since", lambda: self.inner.mentioned_since(since_us))

    async def close_mention(self, mention_id: int, status: str, time_us: int) -> bool:
        return await self._retry(
            "close_mention", lambda: self.inner.close_mention(mention_id, status, time_us)
        )

    async def record_outcome(self, outcome: Outcome) -> bool:
        return await self._retry("record_outcome", lambda: self.inner.record_outcome(outcome))

    async def outcomes(self) -> list[Outcome]:
        return await self._retry("outcomes", lambda: self.inner.outcomes())

    async def save_cursor(self, source: str, cursor: int) -> None:
        await self._retry("save_cursor", lambda: self.inner.save_cursor(source, cursor))

    async def load_cursor(self, source: str) -> int | None:
        return await self._retry("load_cursor", lambda: self.inner.load_cursor(source))

    async def add_opt_out(self, did: str, reason: str, time_us: int) -> bool:
        return await self._retry(
            "add_opt_out", lambda: self.inner.add_opt_out(did, reason, time_us)
        )

    async def opt_outs(self) -> dict[str, str]:
        return await self._retry("opt_outs", lambda: self.inner.opt_outs())

    async def add_opt_in(self, did: str, reason: str, time_us: int) -> bool:
        return await self._retry("add_opt_in", lambda: self.inner.add_opt_in(did, reason, time_us))

    async def opt_ins(self) -> dict[str, tuple[str, int]]:
        return await self._retry("opt_ins", lambda: self.inner.opt_ins())

    async def withdraw_opt_in(self, did: str, reason: str) -> bool:
        return await self._retry("withdraw_opt_in", lambda: self.inner.withdraw_opt_in(did, reason))

    async def set_account_status(self, status: AccountStatus) -> bool:
        return await self._retry(
            "set_account_status", lambda: self.inner.set_account_status(status)
        )

    async def inactive_accounts(self) -> list[AccountStatus]:
        return await self._retry("inactive_accounts", lambda: self.inner.inactive_accounts())

    # -- retrying --------------------------------------------------------------------------

    async def _retry(self, method: str, call: Callable[[], Awaitable[_T]]) -> _T:
        # The first attempt runs bare: building tenacity's state per call cost more than
        # the SQLite statement itself, and a healthy database never needs it.
        try:
            return await call()
        except LedgerUnavailable as exc:
            wait = self.initial_s * (1 + random.random())
            self._note_wait(method, 1, wait, exc)
            started = time.monotonic()
            await self.sleep(wait)
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type(LedgerUnavailable),
                stop=stop_after_delay(max(0.0, self.deadline_s - (time.monotonic() - started))),
                wait=wait_exponential_jitter(
                    multiplier=self.initial_s, max=self.max_wait_s, jitter=self.initial_s
                ),
                sleep=self.sleep,
                before_sleep=functools.partial(self._waiting, method),
                reraise=True,
            ):
                with attempt:
                    return await call()
        except LedgerUnavailable as exc:
            # Past the deadline a ledger that stays away stops the process (a supervisor
            # restarts it from the saved cursor) instead of skipping every event meanwhile.
            raise LedgerError(
                f"the ledger stayed unavailable for {self.deadline_s:g} s "
                f"(ledger.retry_deadline_s): {exc}"
            ) from exc
        raise AssertionError("unreachable: tenacity either returns or raises")

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
