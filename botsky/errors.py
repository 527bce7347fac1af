"""botsky's one exception tree.

Every error botsky raises on purpose is a ``BotskyError``. The tree is sorted by what the
process does about it, and the handlers catch branches, not leaves::

    BotskyError
    ├── SkipError              skip this item, count it, go on with the next
    │   ├── FrameError         a frame or replay line that cannot be decoded
    │   │                        (the source skips it: SourceStats.skip_reasons)
    │   ├── DraftRejected      a model answer that breaks the rules (dispatch: rejected_<reason>)
    │   ├── ModelError         a model call that failed for good (dispatch: model_error)
    │   │   └── ModelAccessError  the vendor refused the key (401/403) or the account has no
    │   │                           quota (dispatch: model_access_denied; pauses the bot)
    │   └── PostError          the PDS refused the reply: a 4xx that means no (invalid record,
    │                            parent gone, account taken down); dispatch: claim failed with
    │                            the error as its reason, post_failed
    ├── RetryableError         retried with backoff where it is raised; past the bound the item
    │   │                        is skipped and counted like a SkipError
    │   ├── ModelUnavailable   429/5xx/timeout after the client's retries (model_unavailable);
    │   │                        consecutive ones pause the bot (botsky.health)
    │   ├── PostRateLimited    nothing was sent: the write budget stayed spent past max_wait_s,
    │   │                        the account is blocked after a 429, or a 429 now (dispatch: a
    │   │                        new reply is refused, its claim failed with ``reason``; a reply
    │   │                        whose earlier create may have landed is retried later)
    │   ├── PostOutcomeUnknown a create timed out, got a 5xx or a network error, or the PDS
    │   │                        cannot say whether a reply is there: dispatch keeps the claim
    │   │                        (status ``retry``) and settles it later, like crash recovery
    │   └── LedgerUnavailable  the database is unreachable or locked: RetryingLedger pauses
    │                            the caller and retries until ledger.retry_deadline_s, then
    │                            raises LedgerError (a ledger that stays away stops the process)
    └── FatalError             stop the process: finish in order, exit 1 with one line
        ├── ConfigError        the configuration is wrong (mostly before the run starts)
        └── LedgerError        a full disk, a read-only or corrupt file (the message names
                                 it), a schema mismatch, a bug in SQL, or a ledger unreachable
                                 past its retry deadline

Who catches what: the router (``App.route``) and the dispatch workers skip and count a
``SkipError`` or ``RetryableError`` (``route_skipped`` / dispatch ``<outcome>``), re-raise a
``FatalError``, and catch any other ``Exception`` (a bug) per event: logged with its traceback,
counted (``route_error`` / dispatch ``error``), and the stream goes on. A ``FatalError`` (or
anything else that escapes one of the run's tasks) stops the run like a stop request: queued
posts are dropped, replies in flight get the shutdown deadline, the cursor is saved, and
``App.run`` raises the error; ``botsky run`` and ``botsky simulate`` print ``botsky: <error>``
and exit 1, without a traceback.

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
    "ModelAccessError",
    "ModelError",
    "ModelUnavailable",
    "PostError",
    "PostOutcomeUnknown",
    "PostRateLimited",
    "RetryableError",
    "SkipError",
]


class BotskyError(Exception):
    """Base of every error botsky raises on purpose."""


class SkipError(BotskyError):
    """This item cannot be handled; skip it, count it (as ``outcome``), go on with the next."""

    outcome = "skipped"


class FrameError(SkipError):
    """A frame or line from a source could not be decoded."""

    outcome = "bad_frame"


class DraftRejected(SkipError):
    """A model's answer broke the rules; ``reason`` is a short machine-friendly tag."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        self.outcome = f"rejected_{reason}"
        super().__init__(f"{reason}: {detail}" if detail else reason)


class ModelError(SkipError):
    """A model call failed for good (bad request, refusal, auth); retrying will not help."""

    outcome = "model_error"


class ModelAccessError(ModelError):
    """The vendor refuses this key (401, 403) or the account has no quota left: no call will
    succeed until the key or the account is fixed, so the bot is paused (``botsky.health``)."""

    outcome = "model_access_denied"


class PostError(SkipError):
    """Posting a reply failed for good (the parent was deleted, the account is suspended).
    ``reason`` is short and machine-friendly (the XRPC error name where there is one)."""

    outcome = "post_failed"

    def __init__(self, message: str = "", reason: str = "refused") -> None:
        self.reason = reason
        super().__init__(message)


class RetryableError(BotskyError):
    """A transient failure, retried with backoff where it is raised; past the bound, the item
    is skipped and counted (as ``outcome``)."""

    outcome = "unavailable"

    def __init__(self, message: str = "", retry_after: float | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class ModelUnavailable(RetryableError):
    """The model provider answered 429/5xx or timed out."""

    outcome = "model_unavailable"


class LedgerUnavailable(RetryableError):
    """The ledger database is unreachable or locked right now."""

    outcome = "ledger_unavailable"


class PostRateLimited(RetryableError):
    """Nothing was sent: the PDS answered 429, the account is blocked until a 429's reset, or
    its write budget is spent. ``reason`` says which (``budget_spent``, ``rate_limited``,
    ``paused``): a refused reply's claim records it."""

    outcome = "post_failed"

    def __init__(
        self, message: str = "", retry_after: float | None = None, reason: str = "rate_limited"
    ) -> None:
        self.reason = reason
        super().__init__(message, retry_after)


class PostOutcomeUnknown(RetryableError):
    """A create timed out, got a 5xx or a network error (it may or may not have landed), or a
    lookup could not tell: settle it later by the record key, never count it as failed."""

    outcome = "post_unknown"


class FatalError(BotskyError):
    """Continuing would do harm; stop the process (in order) and exit 1."""


class ConfigError(FatalError):
    """The configuration is invalid. ``problems`` holds one human line per problem."""

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class LedgerError(FatalError):
    """The ledger is in a state botsky cannot work with (full or read-only storage,
    corruption, schema, SQL bug, or unreachable past its retry deadline)."""
