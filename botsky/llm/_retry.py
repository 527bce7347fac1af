"""Bounded retries for model calls, shared by every HTTP backend.

The vendor SDKs can retry on their own, but each backend builds its client with
``max_retries=0`` and retries here instead, so that the bound, the backoff, the attempt count
(``Usage.attempts``) and the final error (``ModelUnavailable``) are botsky's and the same for
every vendor.

A backend's single attempt translates the vendor's exception once: into ``Transient`` (worth
another attempt: 408, 429, 5xx, timeouts, dropped connections) or ``ModelError`` (retrying
cannot help: other 4xx, refusals, unparseable answers). Only ``Transient`` is retried.
"""

from __future__ import annotations

import asyncio
import email.utils
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential_jitter

from botsky.errors import ModelAccessError, ModelError, ModelUnavailable

__all__ = [
    "Sleep",
    "Transient",
    "call_with_retry",
    "connection_failure",
    "is_transient_status",
    "retry_after_seconds",
    "status_failure",
]

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]

# A server asking for a longer pause than this is telling us to come back much later; a dispatch
# worker should not sit on a post that long, so we give up at once and pass the hint upwards.
MAX_RETRY_AFTER_S = 60.0
# 0.5 s, 1 s, 2 s, ... capped at 8 s, plus up to 0.5 s of jitter so bots do not retry in step.
_BACKOFF = wait_exponential_jitter(multiplier=0.5, max=8.0, jitter=0.5)


class Transient(Exception):
    """One attempt failed in a way another attempt may fix; ``retry_after`` is the server's hint."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(message)


def is_transient_status(status: int) -> bool:
    """408 request timeout, 429 rate limit and every 5xx (incl. Anthropic's 529 overloaded)."""
    return status in (408, 429) or status >= 500


def retry_after_seconds(
    headers: Mapping[str, str] | None, *, now: float | None = None
) -> float | None:
    """The wait a response asks for, in seconds, or None.

    ``retry-after-ms`` (OpenAI, Anthropic) is more precise, so it wins; ``retry-after`` is either
    delta-seconds or an HTTP date (RFC 9110 §10.2.3). A date in the past means "now": 0.
    """
    if not headers:
        return None
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; a malformed zone-less one is too
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def status_failure(status: int, headers: Mapping[str, str] | None, message: str) -> Exception:
    """Translate an HTTP error status into ``Transient``, ``ModelAccessError`` (401, 403: the
    key is refused) or ``ModelError``, to raise ``from``."""
    if is_transient_status(status):
        return Transient(f"HTTP {status}: {message}", retry_after=retry_after_seconds(headers))
    if status in (401, 403):
        return ModelAccessError(f"HTTP {status}: {message}")
    return ModelError(f"HTTP {status}: {message}")


def connection_failure(exc: BaseException) -> str:
    """Why a connection failed, in a few words: the SDKs say "Connection error." and keep the
    reason (refused, unknown host, reset) at the bottom of their exception chain."""
    inner: BaseException | None = exc
    seen = 0
    while inner is not None and seen < 16:
        if isinstance(inner, ConnectionRefusedError):
            return "connection refused"
        if isinstance(inner, socket.gaierror):
            return f"unknown host: {inner.strerror or inner}"
        if isinstance(inner, TimeoutError):
            return "timed out"
        if isinstance(inner, ConnectionResetError):
            return "connection reset"
        inner = inner.__cause__ or inner.__context__
        seen += 1
    return str(exc) or type(exc).__name__


def _wait(state: RetryCallState) -> float:
    # The server knows its own load: when it names a wait, use exactly that.
    exc = state.outcome.exception() if state.outcome else None
    if isinstance(exc, Transient) and exc.retry_after is not None:
        return exc.retry_after
    return float(_BACKOFF(state))


async def call_with_retry(
    attempt: Callable[[], Awaitable[T]],
    *,
    max_attempts: int,
    sleep: Sleep = asyncio.sleep,
    max_retry_after: float = MAX_RETRY_AFTER_S,
) -> tuple[T, int]:
    """Run ``attempt`` until it succeeds; return its result and how many attempts it took.

    ``Transient`` failures are retried with jittered exponential backoff (or the server's
    ``retry-after``) up to ``max_attempts`` in all; then ``ModelUnavailable`` is raised from the
    last vendor exception. Any other exception (``ModelError``, cancellation) propagates at once.
    """
    if max_attempts < 1:
        raise ValueError("max_attempts must be at least 1")
    attempts = 0

    async def counted() -> T:
        nonlocal attempts
        attempts += 1
        return await attempt()

    def stop(state: RetryCallState) -> bool:
        if state.attempt_number >= max_attempts:
            return True
        exc = state.outcome.exception() if state.outcome else None
        return isinstance(exc, Transient) and (exc.retry_after or 0.0) > max_retry_after

    retrying = AsyncRetrying(
        sleep=sleep,
        stop=stop,
        wait=_wait,
        retry=retry_if_exception_type(Transient),
        reraise=True,
    )
    try:
        result: T = await retrying(counted)
    except Transient as exc:
        noun = "attempt" if attempts == 1 else "attempts"
        raise ModelUnavailable(
            f"gave up after {attempts} {noun}: {exc}", retry_after=exc.retry_after
        ) from (exc.__cause__ or exc)
    return result, attempts
