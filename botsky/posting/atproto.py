"""The live poster: each bot's replies go to its PDS through atproto's ``AsyncClient``.

Sessions. ``createSession`` is limited (30 per 5 min, 300 per day per account), so a bot logs in
with its app password only when it has no usable session: the session string is kept in
``<data_dir>/sessions/<bot>.session`` (mode 0600), reused across restarts, and rewritten
whenever the SDK creates or refreshes it (``on_session_change``). The SDK refreshes an expired
access token by itself; if the refresh itself fails (refresh token expired or revoked), the bot
logs in again once and the request is retried.

Budgets: every create first takes a slot of the write budget (``botsky.posting.budget``, kept
in the ledger). A server 429 raises ``PostRateLimited`` with ``retry_after`` from
``ratelimit-reset`` and records the block, so no process writes for that account (on a 429 of
``createRecord``) or logs in as that identifier (``createSession``) before the reset, even
after a restart. Reads (``getSession``, ``getRecord``) count against neither and still go.

Errors from the SDK and httpx are translated here, once, by what they say about the reply:

- a 429 → ``PostRateLimited``: the PDS did not create it;
- a 4xx that means no (``InvalidRequest``: a bad record or a deleted parent; an account taken
  down; auth refused even after a fresh login) → ``PostError``, a definite refusal;
- a timeout, a 5xx, a connection cut or refused → the outcome is unknown: the create may have
  been committed (a PDS frozen with the request in its socket commits it when it wakes; an
  answer lost after the commit). Replies carry a record key chosen at claim time
  (``ReplyPost.rkey``), so such a create is checked with ``lookup`` at once: if the bot's repo
  has the reply, the create counts as done; if the PDS cannot say, ``PostOutcomeUnknown`` is
  raised and dispatch settles it later, never as a failure. A second create under the same
  key cannot post twice (the PDS refuses a taken key with a 500, which ``lookup`` resolves).

``timeout_s`` bounds every call to the PDS (default 10 s).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from pydantic import SecretStr

from botsky.errors import PostError, PostOutcomeUnknown, PostRateLimited
from botsky.events import POST
from botsky.posting.base import Posted, ReplyPost
from botsky.posting.budget import WriteBudget, login_key

if TYPE_CHECKING:
    import httpx
    from atproto import AsyncClient

    from botsky.config import AccountConfig

__all__ = [
    "AtprotoPoster",
    "BotSession",
    "LiveAccount",
    "bot_sessions",
    "open_live_poster",
    "session_path",
]

log = structlog.get_logger("botsky.atposter")

# Error names that mean "the session is no good": log in again with the password.
_AUTH_ERRORS = frozenset({"ExpiredToken", "InvalidToken", "AuthRequired", "AuthMissing"})


def session_path(data_dir: Path, bot: str) -> Path:
    """Where ``bot``'s session string is kept."""
    return Path(data_dir) / "sessions" / f"{bot}.session"


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)  # in case the file existed with wider permissions
    os.replace(tmp, path)


def _dot(obj: dict[str, Any]) -> Any:
    # The SDK serializes its models or DotDicts, not plain dicts; DotDict round-trips "$type".
    from atproto_client.models.dot_dict import DotDict

    return DotDict(obj)


def _error_name(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    content = getattr(response, "content", None)
    name = getattr(content, "error", None)
    if name is None and isinstance(content, dict):
        name = content.get("error")
    return str(name or "")


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


def _is_refusal(exc: BaseException) -> bool:
    """A 4xx that means no. 408 (timeout) and 425 say nothing about the record; 429 is handled
    apart; no status at all is a transport failure (unknown)."""
    status = _status(exc)
    return status is not None and 400 <= status < 500 and status not in (408, 425, 429)


def _describe(exc: BaseException) -> str:
    name = _error_name(exc) or type(exc).__name__
    status = _status(exc)
    return f"{name} ({status})" if status is not None else name


def _reset_of(exc: Any, wall: float) -> float | None:
    """A 429's ``ratelimit-reset`` (epoch seconds), else now + ``retry-after``, else None."""
    if exc.reset_at is not None:
        return float(exc.reset_at.timestamp())
    if exc.retry_after is not None:
        return wall + float(exc.retry_after)
    return None


def _is_auth_error(exc: BaseException) -> bool:
    from atproto_client.exceptions import LoginRequiredError, UnauthorizedError

    if isinstance(exc, LoginRequiredError | UnauthorizedError):
        return True
    return _error_name(exc) in _AUTH_ERRORS


class BotSession:
    """One bot's logged-in ``AsyncClient`` and its persisted session."""

    def __init__(
        self,
        *,
        bot: str,
        handle: str,
        password: SecretStr,
        pds_url: str,
        data_dir: Path,
        expected_did: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout_s: float = 10.0,
        limits: WriteBudget | None = None,
    ) -> None:
        try:
            from atproto import AsyncClient
            from atproto_client.request import AsyncRequest
        except ImportError as exc:  # pragma: no cover - atproto is a core dependency
            raise PostError("the live poster needs the 'atproto' package") from exc
        self.bot = bot
        self.handle = handle
        self.expected_did = expected_did
        self.pds_url = pds_url.rstrip("/")
        self.path = session_path(data_dir, bot)
        self._password = password
        # Where a createSession 429 is recorded and honoured (None: not at all, e.g. `accounts`).
        self.limits = limits
        options: dict[str, Any] = {"timeout": timeout_s}
        if transport is not None:
            options["transport"] = transport
        request = AsyncRequest(**options)
        self.client: AsyncClient = AsyncClient(base_url=self.pds_url, request=request)
        self.client.on_session_change(self._persist)
        self.did = ""
        self.logins = 0  # createSession calls made by this process
        self.status = "new"  # reused | created | relogged
        self._lock = asyncio.Lock()
        self._generation = 0

    async def _persist(self, event: Any, session: Any) -> None:
        # IMPORT is our own file coming back; CREATE and REFRESH are new tokens worth keeping.
        if getattr(event, "value", str(event)) == "import":
            return
        _write_private(self.path, session.encode())

    def _stored(self) -> str | None:
        try:
            text = self.path.read_text().strip()
        except OSError:
            return None
        parts = text.split(":::")
        # handle:::did:::access:::refresh:::pds — reuse only a session for this account and PDS.
        # (The SDK stores the PDS as given, or with "/xrpc" when the session had no DID doc.)
        if len(parts) != 5 or parts[4].rstrip("/").removesuffix("/xrpc") != self.pds_url:
            return None
        if self.expected_did and parts[1] != self.expected_did:
            return None
        if not self.expected_did and parts[0].lower() != self.handle.lower():
            return None
        return text

    async def open(self) -> None:
        """Reuse the stored session if the PDS still accepts it, else log in."""
        from atproto_client.exceptions import NetworkError

        stored = self._stored()
        if stored is not None:
            try:
                await self.client.login(session_string=stored, fetch_bsky_profile=False)
                # A cheap authenticated call; refreshes the access token if it has expired.
                out = await self.client.invoke_query("com.atproto.server.getSession")
                self.did = str(out.content["did"])
                self.status = "reused"
                return
            except NetworkError:
                raise  # the PDS is unreachable: a login would fail the same way
            except Exception as exc:
                # Refused, expired, revoked or unreadable (a malformed token): log in afresh.
                log.info("session_rejected", bot=self.bot, error=_error_name(exc) or str(exc))
        await self.login()
        self.status = "created"

    async def login(self) -> None:
        """createSession with the app password (counted: it is rate limited). Refused with
        ``PostRateLimited``, without calling the PDS, while a 429's block of this identifier
        lasts; a new 429 records one."""
        from atproto_client.exceptions import RateLimitExceededError

        key = login_key(self.handle)
        if self.limits is not None and (wait := await self.limits.blocked_for(key)) > 0:
            raise PostRateLimited(
                f"bot {self.bot}: the PDS refused logins as {self.handle} (429); botsky will "
                f"not try again for {wait:.0f} s",
                retry_after=wait,
            )
        self.logins += 1
        self._generation += 1
        try:
            await self.client.login(
                self.handle, self._password.get_secret_value(), fetch_bsky_profile=False
            )
        except RateLimitExceededError as exc:
            if self.limits is None:
                raise
            wait = await self.limits.server_limited(
                key, _reset_of(exc, time.time()), f"429 createSession {exc.policy or ''}".strip()
            )
            log.warning("pds_rate_limited", bot=self.bot, call="createSession", retry_after=wait)
            raise PostRateLimited(
                f"bot {self.bot}: the PDS rate-limited logins as {self.handle} for {wait:.0f} s",
                retry_after=wait,
            ) from exc
        self.did = self.client.export_session_string().split(":::")[1]
        if self.expected_did and self.did != self.expected_did:
            raise PostError(
                f"bot {self.bot}: {self.handle} is {self.did}, not the configured "
                f"{self.expected_did}"
            )
        log.info("bot_logged_in", bot=self.bot, did=self.did, handle=self.handle)

    async def query(self, nsid: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """An XRPC query as this bot; returns the JSON body."""
        return await self._call(
            lambda: self.client.invoke_query(nsid, params=_dot(params) if params else None)
        )

    async def procedure(self, nsid: str, data: dict[str, Any]) -> dict[str, Any]:
        """An XRPC procedure as this bot; returns the JSON body."""
        return await self._call(
            lambda: self.client.invoke_procedure(
                nsid, data=_dot(data), input_encoding="application/json"
            )
        )

    async def _call(self, fn: Callable[[], Awaitable[Any]]) -> dict[str, Any]:
        # On an auth failure (the SDK's own refresh failed too) log in once more and retry once;
        # concurrent failures share one login (the generation tells whether it already happened).
        generation = self._generation
        try:
            return dict((await fn()).content)
        except Exception as exc:
            if not _is_auth_error(exc):
                raise
            async with self._lock:
                if generation == self._generation:
                    log.info("session_expired", bot=self.bot, error=_error_name(exc) or str(exc))
                    await self.login()
                    self.status = "relogged"
        return dict((await fn()).content)

    async def aclose(self) -> None:
        await self.client.request.close()


class AtprotoPoster:
    """Posts each bot's replies to its PDS; implements ``botsky.posting.Poster``.

    ``paused`` is the kill switch: while it returns true every reply raises
    ``PostRateLimited`` before anything is sent.
    """

    def __init__(
        self,
        sessions: Sequence[BotSession],
        budget: WriteBudget,
        *,
        paused: Callable[[], bool] = lambda: False,
    ) -> None:
        self.sessions = {s.bot: s for s in sessions}
        self.budget = budget
        self.paused = paused
        self.counts: Counter[str] = Counter()

    def did_of(self, bot: str) -> str:
        """The DID ``bot`` is logged in as."""
        return self.sessions[bot].did

    @property
    def logins(self) -> int:
        """createSession calls made by this process, over all bots."""
        return sum(s.logins for s in self.sessions.values())

    async def reply(self, post: ReplyPost) -> Posted:
        session = self.sessions.get(post.bot)
        if session is None:
            raise PostError(f"no account is logged in for bot {post.bot!r}", reason="no_session")
        if post.bot_did and post.bot_did != session.did:
            raise PostError(
                f"bot {post.bot} posts as {session.did}, not {post.bot_did}", reason="wrong_did"
            )
        if self.paused():
            self.counts["paused"] += 1
            raise PostRateLimited(
                "posting is paused by the kill switch", retry_after=1.0, reason="paused"
            )
        import httpx
        from atproto_client.exceptions import AtProtocolError, RateLimitExceededError

        data: dict[str, Any] = {"repo": session.did, "collection": POST, "record": post.record()}
        if post.rkey:
            data["rkey"] = post.rkey  # chosen at claim time: a retry cannot post twice
        async with self.budget.slot(session.did):
            try:
                out = await session.procedure("com.atproto.repo.createRecord", data)
            except RateLimitExceededError as exc:
                reset = _reset_of(exc, self.budget.clock())
                policy = f"429 createRecord {exc.policy or ''}".strip()
                wait = await self.budget.server_limited(session.did, reset, policy)
                self.counts["rate_limited"] += 1
                log.warning("pds_rate_limited", bot=post.bot, retry_after=round(wait, 1))
                raise PostRateLimited(
                    f"the PDS rate-limited {post.bot}", retry_after=wait, reason="rate_limited"
                ) from exc
            except (AtProtocolError, httpx.HTTPError) as exc:
                return await self._after_failure(session, post, exc)
        self.counts["posted"] += 1
        return Posted(uri=str(out["uri"]), cid=str(out["cid"]))

    async def _after_failure(self, session: BotSession, post: ReplyPost, exc: Exception) -> Posted:
        """A create failed: the reply if it is in the repo after all, else the failure sorted
        into a refusal (``PostError``) or an unknown outcome (``PostOutcomeUnknown``)."""
        # With a chosen record key a failure is checkable: the reply may have landed (the
        # answer was lost, or this is a retry and the PDS answered 500 for the taken key).
        found = None
        if post.rkey:
            try:
                found = await self.lookup(session.did, post.rkey, post.parent.uri)
            except (PostOutcomeUnknown, PostError) as missed:
                log.info("lookup_failed", bot=post.bot, rkey=post.rkey, error=str(missed))
        if found is not None:
            self.counts["already_posted"] += 1
            return found
        what = _describe(exc)
        if _is_refusal(exc):
            self.counts["refused"] += 1
            raise PostError(f"{what}: {exc}", reason=_error_name(exc) or "refused") from exc
        self.counts["unknown"] += 1
        log.warning("post_outcome_unknown", bot=post.bot, rkey=post.rkey, error=what)
        raise PostOutcomeUnknown(f"{what}: {exc}") from exc

    async def lookup(self, bot_did: str, rkey: str, parent_uri: str) -> Posted | None:
        """The reply under ``rkey`` in the bot's repo if it answers ``parent_uri``, else None.

        Reads are not write-limited (no budget). Raises ``PostOutcomeUnknown`` when the PDS
        cannot tell (unreachable, timeout, 5xx).
        """
        import httpx
        from atproto_client.exceptions import AtProtocolError

        session = next((s for s in self.sessions.values() if s.did == bot_did), None)
        if session is None:
            raise PostError(f"no bot is logged in as {bot_did}", reason="no_session")
        params = {"repo": bot_did, "collection": POST, "rkey": rkey}
        try:
            got = await session.query("com.atproto.repo.getRecord", params)
        except (AtProtocolError, httpx.HTTPError) as exc:
            if _error_name(exc) == "RecordNotFound":
                return None
            raise PostOutcomeUnknown(f"looking up {rkey}: {_describe(exc)} {exc}") from exc
        reply = (got.get("value") or {}).get("reply") or {}
        if (reply.get("parent") or {}).get("uri") != parent_uri:
            return None
        return Posted(uri=str(got["uri"]), cid=str(got["cid"]))

    async def aclose(self) -> None:
        for session in self.sessions.values():
            await session.aclose()


LiveAccount = tuple[str, "AccountConfig", SecretStr]
"""A bot that posts for real: its name, its account, its app password."""


def bot_sessions(
    accounts: Sequence[LiveAccount],
    *,
    pds_url: str,
    data_dir: Path,
    transport: httpx.AsyncBaseTransport | None = None,
    timeout_s: float = 10.0,
    limits: WriteBudget | None = None,
) -> list[BotSession]:
    """One (not yet opened) session per account; ``limits`` records and honours login 429s."""
    return [
        BotSession(
            bot=name,
            handle=account.handle,
            password=password,
            pds_url=pds_url,
            data_dir=data_dir,
            expected_did=account.did,
            transport=transport,
            timeout_s=timeout_s,
            limits=limits,
        )
        for name, account, password in accounts
    ]


async def open_live_poster(
    *,
    pds_url: str,
    accounts: Sequence[LiveAccount],
    data_dir: Path,
    budget: WriteBudget | None = None,
    paused: Callable[[], bool] = lambda: False,
    transport: httpx.AsyncBaseTransport | None = None,
    timeout_s: float = 10.0,
) -> AtprotoPoster:
    """Log every bot in (reusing saved sessions) and return the poster, which spends
    ``budget`` (default: the PDS's limits with the default headroom, in memory).

    A bot that cannot log in fails the whole call with ``PostError`` (``PostRateLimited``
    while a 429 of its logins lasts, without asking the PDS again): a live run with a silently
    missing bot would skew the randomized assignment.
    """
    from atproto_client.exceptions import AtProtocolError

    budget = budget or WriteBudget()
    sessions = bot_sessions(
        accounts,
        pds_url=pds_url,
        data_dir=data_dir,
        transport=transport,
        timeout_s=timeout_s,
        limits=budget,
    )
    try:
        for s in sessions:
            try:
                await s.open()
            except AtProtocolError as exc:
                raise PostError(f"bot {s.bot} ({s.handle}) cannot log in: {exc}") from exc
    except BaseException:
        for s in sessions:
            await s.aclose()
        raise
    return AtprotoPoster(sessions, budget, paused=paused)
