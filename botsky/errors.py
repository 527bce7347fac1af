"""botsky's one exception tree.

Every error botsky raises on purpose is a ``BotskyError``. The tree is sorted by what the caller
does about it, so a handler can catch the branch instead of a list of leaves::

    BotskyError
    ├── ConfigError            stop: the configuration is wrong; fix it and restart
    ├── SkipError              skip this item, count it, go on with the next
    │   ├── FrameError         a firehose frame or replay line that cannot be decoded
    │   └── DraftRejected      a model answer that breaks the rules (bad mention, no text, ...)
    ├── RetryableError         try again later (with backoff); after the bound, skip
    │   ├── ModelUnavailable   429, 5xx, timeout from a model provider
    │   ├── LedgerUnavailable  the database cannot be reached right now
    │   └── PostRateLimited    the PDS answered 429 or the local write budget is spent
    └── FatalError             stop the process: continuing would do harm
        └── LedgerError        schema mismatch, corrupt file, a bug in SQL

Foreign exceptions (httpx, openai, anthropic, psycopg, sqlite3) are translated once, at the
backend that calls the foreign library, with ``raise ... from exc``.
"""

from __future__ import annotations

__all__ = [
    "BotskyError",
    "ConfigError",
    "DraftRejected",
    "FatalError",
    "FrameError",
    "LedgerError",
    "LedgerUnavailable",
    "ModelError",
    "ModelUnavailable",
    "PostError",
    "PostRateLimited",
    "RetryableError",
    "SkipError",
]


class BotskyError(Exception):
    """Base of every error botsky raises on purpose."""


class ConfigError(BotskyError):
    """The configuration is invalid. ``problems`` holds one human line per problem."""

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class SkipError(BotskyError):
    """This item cannot be handled; skip it, count it, continue with the next."""


class FrameError(SkipError):
    """A frame or line from a source could not be decoded."""


class DraftRejected(SkipError):
    """A model's answer broke the rules; ``reason`` is a short machine-friendly tag."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class ModelError(SkipError):
    """A model call failed for good (bad request, refusal, auth); retrying will not help."""


class PostError(SkipError):
    """Posting a reply failed for good (the parent was deleted, the account is suspended)."""


class RetryableError(BotskyError):
    """A transient failure; retry with backoff, then skip once the bound is reached."""

    def __init__(self, message: str = "", retry_after: float | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class ModelUnavailable(RetryableError):
    """The model provider answered 429/5xx or timed out."""


class LedgerUnavailable(RetryableError):
    """The ledger database is unreachable or locked right now."""


class PostRateLimited(RetryableError):
    """The PDS answered 429, or the account's local write budget is spent."""


class FatalError(BotskyError):
    """Continuing would do harm; stop the process."""


class LedgerError(FatalError):
    """The ledger is in a state botsky cannot work with (schema, corruption, SQL bug)."""
