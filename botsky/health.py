"""Model health: which bots can answer, at start and during the run.

**At start** ``check_models`` asks every bot's endpoint something free (the vendor's list of
models: no completion, nothing billed) with a short timeout, all bots at once. A bot whose
server does not answer (refused connection, unknown host, timeout) or refuses its key (401,
403) is left out of the run; the caller logs one ``bot_disabled`` line per bot saying why and
how to fix it (``fix_hint``). Without the check, an Ollama bot with no server cost every post
assigned to it four seconds of retries.

**During the run** each bot has a ``Breaker``: *closed* (the bot answers) → *open* after
``failures`` consecutive unavailability failures (``ModelUnavailable``: 429/5xx/timeouts/refused
connections after the client's own retries; ``ModelAccessError``: a refused key, no quota) →
*half-open* once the pause has passed: one probe (the free check when the model has one, else
the next real call) closes it, or opens it again for twice the pause, up to ``max_pause_s``. A
success resets the count; other failures (a refusal, an unparseable answer) say nothing about
availability and are not counted. Breakers run on the wall clock (``clock``): a server comes
back in real time, whatever the stream's clock says.

Posts drawn for a paused bot are re-drawn among the bots that are not (``Dispatcher``), and
every re-draw is logged and counted: see the README on what that does to the comparison.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog

from botsky.army import Bot
from botsky.errors import ModelAccessError, ModelUnavailable
from botsky.llm.base import Checkable

__all__ = ["BotHealth", "Breaker", "LeftOut", "check_models", "fix_hint"]

log = structlog.get_logger("botsky.health")

# What makes a bot unavailable (the breaker counts these; everything else is the post's fault).
UNAVAILABLE = (ModelUnavailable, ModelAccessError)


@dataclass(frozen=True, slots=True)
class LeftOut:
    """A bot the start-up check left out, and the error that said why."""

    bot: Bot
    error: ModelUnavailable | ModelAccessError


async def check_models(bots: Sequence[Bot], timeout_s: float) -> tuple[list[Bot], list[LeftOut]]:
    """Check every bot's endpoint at once; returns the bots that answered (in order) and the
    ones left out. Bots without an endpoint (the template writer) always pass."""

    async def one(bot: Bot) -> LeftOut | None:
        if not isinstance(bot.model, Checkable):
            return None
        try:
            # The SDK's own timeout covers the request; this one covers a server that accepts
            # the connection and never answers the headers.
            async with asyncio.timeout(timeout_s + 1.0):
                await bot.model.check(timeout_s)
        except UNAVAILABLE as exc:
            return LeftOut(bot, exc)
        except TimeoutError:
            return LeftOut(bot, ModelUnavailable(f"no answer within {timeout_s:g} s"))
        return None

    results = await asyncio.gather(*(one(b) for b in bots))
    kept = [b for b, r in zip(bots, results, strict=True) if r is None]
    return kept, [r for r in results if r is not None]


def fix_hint(
    *, bot: str, provider: str, base_url: str | None, key_env: str | None, access: bool
) -> str:
    """How to fix a bot whose endpoint failed: ``access`` when the key was refused."""
    if access:
        where = f"set a valid key in {key_env}" if key_env else "check the server's API key"
        return f"{where}, or remove {bot} from the bots file"
    if provider == "openai_compatible":
        return (
            f"start the server at {base_url} (for Ollama: `ollama serve` and `ollama pull "
            f"<model>`), fix base_url, or remove {bot} from the bots file"
        )
    return f"check the network and {provider}'s status, or remove {bot} from the bots file"


class Breaker:
    """One bot's circuit breaker (see the module docstring). Pure: the clock is injected."""

    def __init__(
        self,
        *,
        failures: int = 3,
        pause_s: float = 30.0,
        max_pause_s: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failures < 1:
            raise ValueError("failures must be at least 1")
        self.failures = failures
        self.pause_s = pause_s
        self.max_pause_s = max(max_pause_s, pause_s)
        self.clock = clock
        self.state = "closed"  # closed, open, half_open
        self.consecutive = 0
        self.pause = 0.0  # the current pause, while open
        self.opened_at = 0.0
        self.reason = ""  # the failure that opened it

    @property
    def closed(self) -> bool:
        return self.state == "closed"

    def try_probe(self) -> bool:
        """True (and half-open) if the breaker is open and its pause is over: the caller makes
        the one probe and reports it with ``success``/``failure``; False otherwise (still
        paused, or another caller is probing)."""
        if self.state != "open" or self.clock() - self.opened_at < self.pause:
            return False
        self.state = "half_open"
        return True

    def abandon(self) -> None:
        """The probe was cancelled before it told anything: open again, due at once."""
        if self.state == "half_open":
            self.state = "open"

    def success(self) -> bool:
        """A call or probe worked; True if that closed an open or half-open breaker."""
        reopened = self.state != "closed"
        self.state, self.consecutive, self.pause = "closed", 0, 0.0
        return reopened

    def failure(self, reason: str) -> bool:
        """An unavailability failure; True if the breaker opened because of it."""
        if self.state == "half_open":
            self._open(reason, min(self.pause * 2, self.max_pause_s))
            return True
        if self.state == "open":
            return False  # a call that was in flight when it opened
        self.consecutive += 1
        if self.consecutive >= self.failures:
            self._open(reason, self.pause_s)
            return True
        return False

    def _open(self, reason: str, pause: float) -> None:
        self.state, self.pause, self.opened_at, self.reason = "open", pause, self.clock(), reason


class BotHealth:
    """The breakers of every bot, and the decision whether a drawn bot may answer now."""

    def __init__(
        self,
        *,
        failures: int = 3,
        pause_s: float = 30.0,
        max_pause_s: float = 600.0,
        probe_timeout_s: float = 3.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failures = failures
        self.pause_s = pause_s
        self.max_pause_s = max_pause_s
        self.probe_timeout_s = probe_timeout_s
        self.clock = clock
        self.breakers: dict[str, Breaker] = {}

    def breaker(self, bot: str) -> Breaker:
        b = self.breakers.get(bot)
        if b is None:
            b = self.breakers[bot] = Breaker(
                failures=self.failures,
                pause_s=self.pause_s,
                max_pause_s=self.max_pause_s,
                clock=self.clock,
            )
        return b

    def available(self, bot: Bot) -> bool:
        """Whether ``bot`` takes posts now (its breaker is closed); no probing."""
        b = self.breakers.get(bot.name)
        return b is None or b.closed

    async def ready(self, bot: Bot) -> bool:
        """Whether ``bot`` may answer the post it was drawn for. A paused bot whose pause is
        over is probed first (its free check; a model without one gets this post as the
        probe); a failed probe pauses it again, for longer."""
        b = self.breakers.get(bot.name)
        if b is None or b.closed:
            return True
        if not b.try_probe():
            return False
        if not isinstance(bot.model, Checkable):
            return True  # the real call is the probe: succeeded/failed/abandoned settle it
        try:
            async with asyncio.timeout(self.probe_timeout_s + 1.0):
                checked = await bot.model.check(self.probe_timeout_s)
        except UNAVAILABLE as exc:
            self.failed(bot, exc)
            return False
        except TimeoutError:
            self.failed(bot, ModelUnavailable(f"no answer within {self.probe_timeout_s:g} s"))
            return False
        except BaseException:
            b.abandon()
            raise
        if checked:
            self.succeeded(bot)
        return True

    def succeeded(self, bot: Bot) -> None:
        """A call of ``bot``'s model worked."""
        b = self.breakers.get(bot.name)
        if b is not None and b.success():
            log.info("bot_resumed", bot=bot.name, model=bot.model_name)

    def abandoned(self, bot: Bot) -> None:
        """A call that was a half-open probe ended without an answer (cancelled)."""
        b = self.breakers.get(bot.name)
        if b is not None:
            b.abandon()

    def failed(self, bot: Bot, exc: Exception) -> None:
        """A call of ``bot``'s model failed; only unavailability counts toward a pause."""
        if not isinstance(exc, UNAVAILABLE):
            return
        b = self.breaker(bot.name)
        if b.failure(f"{exc.outcome}: {exc}"):
            log.warning(
                "bot_paused",
                bot=bot.name,
                model=bot.model_name,
                reason=b.reason,
                pause_s=round(b.pause, 1),
                hint=(
                    f"its posts go to the other bots (logged as bot_redrawn) until a probe "
                    f"succeeds, in {b.pause:.0f} s or later"
                ),
            )

    def reason(self, bot: str) -> str:
        """Why ``bot`` is paused ("" if it is not)."""
        b = self.breakers.get(bot)
        return b.reason if b is not None and not b.closed else ""
