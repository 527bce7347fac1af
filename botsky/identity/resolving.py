"""Network identity: DID → handle, verified both ways, for the ``@handle`` of a mention.

A DID document names its handle (``alsoKnownAs: at://<handle>``), but anyone can write any
handle there; the handle counts only if it resolves back to the same DID. So a DID gets a
handle in two steps, in the background:

1. DID → document with atproto's ``AsyncIdResolver`` (``did:plc`` from the configured PLC
   directory, so a self-hosted network works; ``did:web`` from the domain's
   ``/.well-known/did.json``);
2. handle → DID, by the configured ``verify`` method:

   - ``dns`` (the atproto standard, for the public network): DNS TXT ``_atproto.<handle>``,
     then ``https://<handle>/.well-known/atproto-did``, with atproto's handle resolver;
   - ``xrpc``: ``com.atproto.identity.resolveHandle`` on a server you trust
     (``resolve_handle_url``: your own PDS, or an AppView). This is the one for a self-hosted
     PDS with ``.test`` handles, which DNS and .well-known cannot resolve.

``handle(did)`` is synchronous and on the hot path: it only reads the cache. A miss (or an
expired entry) queues the DID for the background workers (``run()``, bounded queue, bounded
concurrency) and answers None (or, for an expired entry, the last verified handle until the
refresh replaces or removes it). Failures are cached for a shorter time so a broken DID does not
hammer the PLC directory. ``#identity`` events re-resolve the DID; a new handle is not used
until it verifies.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import structlog

from botsky.events import Event
from botsky.syntax import is_valid_handle

__all__ = ["ResolvingIdentity", "VerifyMethod"]

log = structlog.get_logger("botsky.resolve")

VerifyMethod = Literal["dns", "xrpc"]

_FAILURE_TTL_S = 300.0  # an unresolvable or unverified DID is retried after this at the soonest


@dataclass(slots=True)
class _Entry:
    handle: str | None  # verified; None: resolution failed or did not verify
    expires: float  # on the injected clock; inf for pinned (configured) entries


class ResolvingIdentity:
    """Verified DID → handle cache with background resolution; implements ``Identity``.

    Start ``run()`` as a task (it runs until cancelled) and call ``aclose()`` at the end.
    ``prefetch(did)`` resolves one DID now (used by ``run`` and by tests).
    """

    def __init__(
        self,
        *,
        plc_url: str = "https://plc.directory",
        verify: VerifyMethod = "dns",
        resolve_handle_url: str | None = None,
        cache_ttl_s: float = 3600.0,
        max_entries: int = 2_000_000,
        concurrency: int = 4,
        queue_size: int = 10_000,
        timeout_s: float = 5.0,
        known: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if verify == "xrpc" and not resolve_handle_url:
            raise ValueError("verify 'xrpc' needs resolve_handle_url (a PDS or AppView you trust)")
        if verify not in ("dns", "xrpc"):
            raise ValueError(f"unknown handle verification method {verify!r}")
        from atproto import AsyncIdResolver

        self.verify = verify
        self.resolve_handle_url = (resolve_handle_url or "").rstrip("/")
        self.cache_ttl_s = cache_ttl_s
        self.max_entries = max_entries
        self.concurrency = concurrency
        self.clock = clock
        self.counts: Counter[str] = Counter()
        self._ids = AsyncIdResolver(plc_url=plc_url.rstrip("/"), timeout=timeout_s)
        self._http = httpx.AsyncClient(timeout=timeout_s, transport=transport)
        self._cache: dict[str, _Entry] = {}
        self._queue: asyncio.Queue[str] = asyncio.Queue(maxsize=queue_size)
        self._queued: set[str] = set()
        self._inflight: dict[str, asyncio.Task[str | None]] = {}
        for did, handle in (known or {}).items():
            self.pin(did, handle)

    # -- the Identity protocol (sync, cache only) ------------------------------------------

    def handle(self, did: str) -> str | None:
        """The verified handle of ``did``, or None (and the DID is queued for resolution)."""
        entry = self._cache.get(did)
        if entry is None or entry.expires <= self.clock():
            self.enqueue(did)
        return entry.handle if entry is not None else None

    def observe(self, event: Event) -> None:
        """Queue authors of new posts; re-resolve on ``#identity``; forget gone accounts."""
        if event.kind == "identity":
            entry = self._cache.get(event.did)
            claimed = (event.handle or "").lower()
            if entry is not None and entry.expires != float("inf"):
                if entry.handle != claimed:
                    del self._cache[event.did]  # the old handle may now belong to someone else
                else:
                    entry.expires = 0.0  # same handle: re-verify, keep serving it meanwhile
            self.enqueue(event.did)
        elif event.kind == "account" and event.active is False:
            entry = self._cache.get(event.did)
            if entry is not None and entry.expires != float("inf"):
                del self._cache[event.did]
        elif event.is_post_create and event.did not in self._cache:
            self.enqueue(event.did)

    # -- cache -----------------------------------------------------------------------------

    def pin(self, did: str, handle: str) -> None:
        """A handle known from configuration (the bots' own): trusted, never expires."""
        self._store(did, handle.lower(), float("inf"))

    def _store(self, did: str, handle: str | None, expires: float) -> None:
        self._cache.pop(did, None)  # re-insert so the newest entries survive the cap
        self._cache[did] = _Entry(handle, expires)
        if len(self._cache) > self.max_entries:
            del self._cache[next(iter(self._cache))]

    # -- background resolution -------------------------------------------------------------

    def enqueue(self, did: str) -> bool:
        """Queue ``did`` for resolution unless it is queued, in flight, or the queue is full."""
        if did in self._queued or did in self._inflight or not did.startswith("did:"):
            return False
        try:
            self._queue.put_nowait(did)
        except asyncio.QueueFull:
            self.counts["dropped"] += 1
            return False
        self._queued.add(did)
        return True

    @property
    def pending(self) -> int:
        """DIDs waiting in the queue."""
        return self._queue.qsize()

    async def run(self) -> None:
        """Resolve queued DIDs with ``concurrency`` workers until cancelled."""
        async with asyncio.TaskGroup() as tg:
            for _ in range(self.concurrency):
                tg.create_task(self._worker())

    async def _worker(self) -> None:
        while True:
            did = await self._queue.get()
            self._queued.discard(did)
            try:
                await self.prefetch(did)
            finally:
                self._queue.task_done()

    def resolving(self) -> int:
        """DIDs queued or being resolved right now."""
        return len(self._queued) + len(self._inflight)

    async def drain(self) -> None:
        """Wait until every queued DID has been resolved (needs ``run`` running)."""
        await self._queue.join()

    async def prefetch(self, did: str) -> str | None:
        """Resolve and verify ``did`` now (shared with a resolution already in flight)."""
        entry = self._cache.get(did)
        if entry is not None and entry.expires > self.clock():
            return entry.handle
        task = self._inflight.get(did)
        if task is None:
            task = asyncio.create_task(self._resolve(did))
            self._inflight[did] = task
            task.add_done_callback(lambda _: self._inflight.pop(did, None))
        return await asyncio.shield(task)

    async def _resolve(self, did: str) -> str | None:
        try:
            handle = await self._verified_handle(did)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # One DID failing never stops the workers; it is retried after the failure TTL.
            self.counts["errors"] += 1
            log.debug("identity_resolve_failed", did=did, error=str(exc) or type(exc).__name__)
            handle = None
        now = self.clock()
        if handle is None:
            old = self._cache.get(did)
            if old is not None and old.expires == float("inf"):
                return old.handle  # pinned: configuration wins
            self._store(did, None, now + min(self.cache_ttl_s, _FAILURE_TTL_S))
        else:
            self.counts["verified"] += 1
            self._store(did, handle, now + self.cache_ttl_s)
        return handle

    async def _verified_handle(self, did: str) -> str | None:
        doc = await self._ids.did.resolve(did)
        if doc is None:
            self.counts["no_document"] += 1
            return None
        handle = (doc.get_handle() or "").lower()
        if not handle or handle == "handle.invalid" or not is_valid_handle(handle):
            self.counts["no_handle"] += 1
            return None
        back = await self._handle_to_did(handle)
        if back != did:
            self.counts["unverified"] += 1
            log.info("handle_not_verified", did=did, handle=handle, resolves_to=back)
            return None
        return handle

    async def _handle_to_did(self, handle: str) -> str | None:
        if self.verify == "dns":
            did = await self._ids.handle.resolve(handle)
            return did or None
        resp = await self._http.get(
            f"{self.resolve_handle_url}/xrpc/com.atproto.identity.resolveHandle",
            params={"handle": handle},
        )
        if resp.status_code == 400:  # HandleNotFound / InvalidRequest
            return None
        resp.raise_for_status()
        body: Any = resp.json()
        did = body.get("did") if isinstance(body, dict) else None
        return did if isinstance(did, str) else None

    async def aclose(self) -> None:
        """Cancel in-flight resolutions and close the HTTP clients."""
        for task in list(self._inflight.values()):
            task.cancel()
        for task in list(self._inflight.values()):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._http.aclose()
        # atproto's resolvers open their own httpx clients and never close them.
        clients = [getattr(self._ids.handle, "_http_client", None)]
        clients += [getattr(m, "_client", None) for m in self._ids.did._methods.values()]
        for client in clients:
            if isinstance(client, httpx.AsyncClient):
                await client.aclose()
