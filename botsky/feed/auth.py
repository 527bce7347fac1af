"""Viewer authentication the way the network does it: the service JWT a viewer's PDS mints.

The AppView calls ``getFeedSkeleton`` with ``Authorization: Bearer <jwt>``, a token the viewer's
PDS signed with the account's atproto key (``com.atproto.server.getServiceAuth``): ``iss`` the
viewer's DID, ``aud`` this feed service's DID (``did:web:...``, or ``did:web:...#bsky_fg``, the
form the network is moving to), ``lxm`` the method, ``exp`` a minute or so ahead.

``ServiceAuth.verify`` checks, in this order (cheap checks first, so a bad token never costs a
DID resolution): the header type (not an access, refresh or DPoP token), the algorithm
(ES256K or ES256), ``exp`` present, ``aud`` one of the two forms, ``lxm`` the route's method,
``iss`` a plain DID; then the signature, expiry and issue time with the atproto SDK
(``atproto_server.auth.jwt.verify_jwt_async``) against the signing key in the issuer's DID
document (``#atproto``), resolved with the SDK's resolver (``did:plc`` from the configured PLC
directory, ``did:web`` from the domain) through a bounded cache. A signature that fails with a
cached key is retried once with a fresh document (a key rotation), at most once per DID per
``refresh_every_s``, so forged tokens cannot make botsky hammer the PLC directory.

It never raises: any failure is an anonymous viewer with a reason (``Verdict``), and the feed
serves the unpersonalized page. These are the same rules as the reference ``verifyJwt`` of
``@atproto/xrpc-server`` (header type, exp, aud, lxm, iss, signature with a fresh-key retry).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

import structlog

from botsky.syntax import is_valid_did

__all__ = ["DidKeys", "KeySource", "ServiceAuth", "Verdict"]

log = structlog.get_logger("botsky.feed.auth")

_BAD_TYPES: Final = frozenset({"at+jwt", "refresh+jwt", "dpop+jwt"})
_ALGS: Final = frozenset({"ES256K", "ES256"})
_MAX_TOKEN_BYTES: Final = 4096


@dataclass(frozen=True, slots=True)
class Verdict:
    """``viewer`` is the verified DID, or None; ``reason`` says why (``ok``, ``none``, ...)."""

    viewer: str | None
    reason: str


class KeySource(Protocol):
    async def __call__(self, did: str, fresh: bool) -> str: ...


class DidKeys:
    """The atproto signing key (``did:key:...``) of a DID, cached (TTL, bounded LRU).

    ``resolve(did, fresh)`` is the SDK's ``resolve_atproto_key`` by default; tests may pass
    any coroutine function.
    """

    def __init__(
        self,
        *,
        plc_url: str = "https://plc.directory",
        timeout_s: float = 3.0,
        ttl_s: float = 3600.0,
        max_entries: int = 100_000,
        refresh_every_s: float = 60.0,
        resolve: Callable[[str, bool], Awaitable[str]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if resolve is None:
            from atproto_identity.did.resolver import AsyncDidResolver

            resolver = AsyncDidResolver(plc_url=plc_url, timeout=timeout_s)
            resolve = resolver.resolve_atproto_key
        self._resolve = resolve
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.refresh_every_s = refresh_every_s
        self._clock = clock
        self._cache: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._refreshed: dict[str, float] = {}
        self.resolutions = 0

    async def __call__(self, did: str, fresh: bool) -> str:
        now = self._clock()
        hit = self._cache.get(did)
        if hit is not None and now < hit[1]:
            if not fresh:
                self._cache.move_to_end(did)
                return hit[0]
            if now - self._refreshed.get(did, -1e18) < self.refresh_every_s:
                return hit[0]  # refreshed recently: the cached key stands
        self._refreshed[did] = now
        self.resolutions += 1
        key = await self._resolve(did, fresh)
        self._cache[did] = (key, now + self.ttl_s)
        self._cache.move_to_end(did)
        while len(self._cache) > self.max_entries:
            old, _ = self._cache.popitem(last=False)
            self._refreshed.pop(old, None)
        return key


class ServiceAuth:
    """Verifies viewers' service JWTs for ``service_did`` (see the module docstring)."""

    def __init__(
        self,
        service_did: str,
        keys: KeySource,
        *,
        leeway_s: int = 0,
        timeout_s: float = 5.0,
    ) -> None:
        self.service_did = service_did
        self.audiences = frozenset({service_did, f"{service_did}#bsky_fg"})
        self.keys = keys
        self.leeway_s = leeway_s
        self.timeout_s = timeout_s

    async def verify(self, authorization: str | None, lxm: str) -> Verdict:
        """The viewer behind an ``Authorization`` header value, or None with the reason."""
        if not authorization:
            return Verdict(None, "none")
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or len(token) > _MAX_TOKEN_BYTES:
            return Verdict(None, "malformed")
        try:
            # asyncio.timeout, not wait_for: no task per request (a tenth of a page's CPU).
            async with asyncio.timeout(self.timeout_s):
                return await self._verify(token, lxm)
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            return Verdict(None, "unresolvable")
        except Exception as exc:  # a token is hostile input: nothing in it may fail the request
            log.debug("feed_auth_failed", error=f"{type(exc).__name__}: {exc}")
            return Verdict(None, _reason(exc))

    async def _verify(self, token: str, lxm: str) -> Verdict:
        from atproto_server.auth.jwt import decode_jwt_payload, parse_jwt, verify_jwt_async

        raw_payload, _, header, _ = parse_jwt(token)
        payload = decode_jwt_payload(raw_payload)
        if header.get("typ") in _BAD_TYPES:
            return Verdict(None, "type")
        if header.get("alg") not in _ALGS:
            return Verdict(None, "algorithm")
        if not isinstance(payload.exp, int):
            return Verdict(None, "malformed")
        if not isinstance(payload.aud, str) or payload.aud not in self.audiences:
            return Verdict(None, "audience")
        extra: dict[str, Any] = payload.model_extra or {}
        if extra.get("lxm") != lxm:
            return Verdict(None, "method")
        iss = payload.iss
        if not isinstance(iss, str) or "#" in iss or not is_valid_did(iss):
            return Verdict(None, "issuer")
        verified = await verify_jwt_async(token, self.keys, None, self.leeway_s)
        return Verdict(verified.iss, "ok")


def _reason(exc: BaseException) -> str:
    from atproto_server.exceptions import (
        TokenDecodeError,
        TokenExpiredSignatureError,
        TokenImmatureSignatureError,
        TokenInvalidIssuedAtError,
        TokenInvalidSignatureError,
    )

    if isinstance(exc, TokenExpiredSignatureError):
        return "expired"
    if isinstance(exc, TokenImmatureSignatureError | TokenInvalidIssuedAtError):
        return "not_yet_valid"
    if isinstance(exc, TokenInvalidSignatureError):
        return "signature"
    if isinstance(exc, TokenDecodeError):
        return "malformed"
    return "unresolvable"  # the DID document could not be fetched or has no atproto key
