"""The reconnecting websocket loop the live sources share; subclasses own decoding.

``LiveSource`` dials ``_url()``, hands every message to ``_decode()`` and yields the events it
returns, forever. Whatever ends a connection (a close frame or none, a TCP reset, a handshake
failure, an idle timeout, a message over ``max_frame_bytes``, an error frame the subclass turns
into ``Reconnect``) leads to the same place: log the reason, sleep a jittered exponential
backoff, dial again from the subclass's cursor. Only cancellation and ``aclose()`` end the
stream; ``CancelledError`` is never caught, and leaving the ``async with`` closes the socket.

The backoff, its jitter, the clock and the sleep are injected so tests are fast and
deterministic. Policy, after the SDK's websocket base: the delay doubles from ``min_s`` up to
``max_s`` with each failed attempt, and a connection that stayed up for ``healthy_s`` (a minute)
resets it to the first step instead of zero, so a fleet that a restarting server dropped all at
once does not come back all at once.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

import structlog
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.typing import Subprotocol

from botsky.errors import ConfigError, FrameError
from botsky.events import Event
from botsky.sources.base import SourceStats

__all__ = ["Backoff", "LiveSource", "Reconnect", "iso_time_us"]

log = structlog.get_logger("botsky.sources")

# RFC 6455 close code the client library sends when a message exceeds ``max_size``.
_MESSAGE_TOO_BIG: Final = 1009
_HEALTHY_S: Final = 60.0
# Whole seconds already parsed by ``iso_time_us`` (bounded; cleared when full).
_SECONDS: dict[str, int] = {}
_SECONDS_CACHED: Final = 4096


class Reconnect(Exception):
    """Raised by ``_decode`` to drop the connection and dial again after the backoff."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Jittered exponential reconnect delays: about ``min_s`` first, doubling up to ``max_s``.

    ``rng`` returns a float in [0, 1); the delay is drawn from [base/2, base] ("equal jitter"),
    so clients spread out yet never reconnect at once.
    """

    min_s: float = 1.0
    max_s: float = 60.0
    healthy_s: float = _HEALTHY_S
    rng: Callable[[], float] = field(default=random.random)

    def __post_init__(self) -> None:
        if not 0 < self.min_s <= self.max_s:
            raise ConfigError(f"backoff needs 0 < min_s <= max_s, got {self.min_s}, {self.max_s}")

    def delay(self, attempt: int) -> float:
        """The sleep before reconnect ``attempt`` (1-based)."""
        base = min(self.max_s, self.min_s * 2 ** min(max(attempt - 1, 0), 62))
        return base / 2 + base / 2 * self.rng()


class LiveSource:
    """Base of the websocket sources: the async iterator, the reconnect loop, ``aclose``.

    Subclasses set ``name`` and implement ``_url`` (the next dial, cursor included) and
    ``_decode`` (one message to events; raise ``FrameError`` to skip it, ``Reconnect`` to
    redial). ``_before_connect`` runs before every dial.
    """

    def __init__(
        self,
        *,
        name: str,
        max_frame_bytes: int,
        backoff: Backoff,
        idle_timeout_s: float | None = 60.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        subprotocols: tuple[str, ...] = (),
    ) -> None:
        self.name = name
        self.stats = SourceStats()
        self.max_frame_bytes = max_frame_bytes
        self.backoff = backoff
        self.idle_timeout_s = idle_timeout_s
        self._clock = clock
        self._sleep = sleep
        self._subprotocols = subprotocols
        self._events: AsyncGenerator[Event, None] | None = None
        self._ws: ClientConnection | None = None
        self._attempt = 0

    @property
    def connected(self) -> bool:
        """Whether a websocket is open right now (``/readyz`` reports it)."""
        return self._ws is not None

    # --- subclass hooks -------------------------------------------------------------------

    def _url(self) -> str:
        raise NotImplementedError

    def _decode(self, message: bytes | str) -> list[Event]:
        raise NotImplementedError

    async def _before_connect(self) -> None:
        """Prepare the next dial (Jetstream v2 fetches its zstd dictionary here)."""

    def _frame_too_big(self) -> None:
        """The connection was closed over a message larger than ``max_frame_bytes``."""

    def _handshake_rejected(self) -> None:
        """The server answered the upgrade with an HTTP error status."""

    # --- the iterator ---------------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[Event]:
        if self._events is None:
            self._events = self._run()
        return self._events

    async def aclose(self) -> None:
        """Stop the stream and close the socket; safe to call more than once."""
        if self._events is not None:
            try:
                await self._events.aclose()
            except RuntimeError:
                # The generator is running in another task (suspended in recv): closing the
                # socket makes that task's recv fail, and its loop ends at the next yield.
                if self._ws is not None:
                    await self._ws.close()

    async def _run(self) -> AsyncGenerator[Event, None]:
        while True:
            if self._attempt:
                delay = self.backoff.delay(self._attempt)
                log.info("source_reconnect_delay", source=self.name, delay_s=round(delay, 3))
                await self._sleep(delay)
            connected_at: float | None = None
            reason = "closed"
            try:
                await self._before_connect()
                url = self._url()
                async with connect(
                    url,
                    max_size=self.max_frame_bytes,
                    compression=None,
                    proxy=None,
                    open_timeout=10,
                    close_timeout=1,
                    subprotocols=[Subprotocol(p) for p in self._subprotocols] or None,
                ) as ws:
                    self._ws = ws
                    connected_at = self._clock()
                    log.info("source_connected", source=self.name, url=url)
                    while True:
                        async with asyncio.timeout(self.idle_timeout_s):
                            message = await ws.recv()
                        try:
                            events = self._decode(message)
                        except FrameError as exc:
                            self._skip(exc)
                            continue
                        for event in events:
                            self.stats.events += 1
                            yield event
            except Reconnect as exc:
                reason = exc.reason
            except ConnectionClosed as exc:
                reason = _closed_reason(exc)
                if reason == "message_too_big":
                    self.stats.skip("oversize_frame")
                    self._frame_too_big()
            except TimeoutError:
                reason = "idle_timeout" if connected_at is not None else "connect_timeout"
            except InvalidURI as exc:
                raise ConfigError(f"source {self.name}: invalid url: {exc}") from exc
            except InvalidStatus as exc:
                self._handshake_rejected()
                reason = f"handshake rejected: HTTP {exc.response.status_code}"
            except (OSError, InvalidHandshake) as exc:
                reason = f"{type(exc).__name__}: {exc}"[:200]
            finally:
                self._ws = None
            healthy = (
                connected_at is not None and self._clock() - connected_at >= self.backoff.healthy_s
            )
            self._attempt = 1 if healthy else self._attempt + 1
            self.stats.reconnects += 1
            log.warning("source_disconnected", source=self.name, reason=reason)

    def _skip(self, exc: FrameError) -> None:
        message = str(exc)
        # The text before the first colon is a low-cardinality tag ("invalid cbor: ...").
        reason = message.split(":", 1)[0]
        self.stats.skip(reason)
        log.warning("source_frame_skipped", source=self.name, reason=reason, error=message[:200])


def iso_time_us(value: object) -> int:
    """Microseconds since the epoch of an RFC 3339 datetime (a frame's ``time``).

    The common form, ``2026-07-04T14:38:07.517Z``, is read with the whole seconds looked up
    in a small cache (a busy stream repeats the same second hundreds of times); anything else
    goes through ``datetime.fromisoformat``.
    """
    if not isinstance(value, str):
        raise FrameError("invalid time: missing")
    if len(value) >= 20 and value[-1] == "Z" and (value[19] == "." or len(value) == 20):
        seconds = _SECONDS.get(value[:19])
        fraction = value[20:-1]
        if seconds is not None and (not fraction or (fraction.isdigit() and fraction.isascii())):
            return seconds + (int(fraction[:6].ljust(6, "0")) if fraction else 0)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise FrameError(f"invalid time: {value!r}"[:200]) from exc
    if parsed.tzinfo is None:
        raise FrameError(f"invalid time: no timezone in {value!r}"[:200])
    result = int(parsed.timestamp()) * 1_000_000 + parsed.microsecond
    if value[-1] == "Z" and len(value) >= 20 and value[19] in ".Z":
        if len(_SECONDS) >= _SECONDS_CACHED:
            _SECONDS.clear()
        _SECONDS[value[:19]] = result - parsed.microsecond
    return result


def _closed_reason(exc: ConnectionClosed) -> str:
    if exc.sent is not None and exc.sent.code == _MESSAGE_TOO_BIG:
        return "message_too_big"
    if exc.rcvd is None:
        return "abnormal_close"
    return f"close {exc.rcvd.code}: {exc.rcvd.reason}"[:200]
