"""Network identity: DID → handle via a PLC directory, verified back, against loopback servers."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from botsky.events import Event
from botsky.identity import Identity, ResolvingIdentity
from botsky.testing import FakeClock, identity, post
from tests.pds.harness import LocalPds
from tests.support import T0, unique_name


class FakePlc:
    """A PLC directory (``GET /<did>``) and ``resolveHandle`` on 127.0.0.1, in a thread."""

    def __init__(self, delay: float = 0.0) -> None:
        self.docs: dict[str, dict[str, Any]] = {}
        self.handles: dict[str, str] = {}  # handle → DID, as resolveHandle answers
        self.hits: Counter[str] = Counter()
        self.delay = delay
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def add(self, did: str, handle: str | None, *, resolves_to: str | None = "self") -> None:
        """Publish ``did``'s document naming ``handle``; the handle resolves to ``resolves_to``."""
        doc: dict[str, Any] = {
            "@context": ["https://www.w3.org/ns/did/v1"],
            "id": did,
            "alsoKnownAs": [f"at://{handle}"] if handle else [],
            "verificationMethod": [],
            "service": [
                {
                    "id": "#atproto_pds",
                    "type": "AtprotoPersonalDataServer",
                    "serviceEndpoint": "http://localhost:1",
                }
            ],
        }
        self.docs[did] = doc
        if handle and resolves_to is not None:
            self.handles[handle.lower()] = did if resolves_to == "self" else resolves_to

    def _answer(self, path: str) -> tuple[int, Any]:
        url = urllib.parse.urlsplit(path)
        if url.path == "/xrpc/com.atproto.identity.resolveHandle":
            handle = urllib.parse.parse_qs(url.query).get("handle", [""])[0].lower()
            self.hits["resolveHandle"] += 1
            if handle in self.handles:
                return 200, {"did": self.handles[handle]}
            return 400, {"error": "InvalidRequest", "message": "Unable to resolve handle"}
        did = urllib.parse.unquote(url.path.lstrip("/"))
        self.hits[did] += 1
        if did in self.docs:
            return 200, self.docs[did]
        return 404, {"message": f"DID not registered: {did}"}

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        plc = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with plc._lock:
                    plc.active += 1
                    plc.max_active = max(plc.max_active, plc.active)
                try:
                    if plc.delay:
                        time.sleep(plc.delay)
                    status, payload = plc._answer(self.path)
                finally:
                    with plc._lock:
                        plc.active -= 1
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        return Handler

    def __enter__(self) -> FakePlc:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


@pytest.fixture
def plc() -> Iterator[FakePlc]:
    """A fresh fake PLC directory for one test."""
    with FakePlc() as server:
        yield server


@pytest.fixture
def clock() -> FakeClock:
    """A manual monotonic clock."""
    return FakeClock()


@pytest.fixture
async def ident(plc: FakePlc, clock: FakeClock) -> AsyncIterator[ResolvingIdentity]:
    """A resolving identity on the fake PLC, verifying through its resolveHandle."""
    res = ResolvingIdentity(
        plc_url=plc.url,
        verify="xrpc",
        resolve_handle_url=plc.url,
        cache_ttl_s=60.0,
        known={"did:plc:bot": "Bot.test"},
        clock=clock,
    )
    try:
        yield res
    finally:
        await res.aclose()


@contextlib.asynccontextmanager
async def running(res: ResolvingIdentity) -> AsyncIterator[None]:
    task = asyncio.create_task(res.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _identity_event(did: str, handle: str | None) -> Event:
    if handle is None:
        return Event(did=did, time_us=T0, kind="identity", cursor=T0)
    return identity(did, T0, handle)


async def test_it_is_an_identity(ident: ResolvingIdentity) -> None:
    """ResolvingIdentity satisfies the Identity protocol the pipeline uses."""
    assert isinstance(ident, Identity)
    assert ident.handle("did:plc:bot") == "bot.test"  # pinned from configuration


async def test_a_handle_that_resolves_back_is_verified(
    ident: ResolvingIdentity, plc: FakePlc
) -> None:
    """DID → document → handle → the same DID: the handle is offered."""
    plc.add("did:plc:alice", "Alice.test")
    assert await ident.prefetch("did:plc:alice") == "alice.test"
    assert ident.handle("did:plc:alice") == "alice.test"
    assert ident.counts["verified"] == 1


@pytest.mark.parametrize(
    ("handle", "resolves_to", "counter"),
    [
        ("mallory.test", "did:plc:someoneelse", "unverified"),
        ("mallory.test", None, "unverified"),
        (None, None, "no_handle"),
        ("not a handle", None, "no_handle"),
    ],
    ids=["points-elsewhere", "does-not-resolve", "no-handle", "invalid-handle"],
)
async def test_a_handle_that_does_not_verify_is_never_offered(
    ident: ResolvingIdentity,
    plc: FakePlc,
    handle: str | None,
    resolves_to: str | None,
    counter: str,
) -> None:
    """A claimed handle that does not resolve back to the DID stays None."""
    plc.add("did:plc:mallory", handle, resolves_to=resolves_to)
    assert await ident.prefetch("did:plc:mallory") is None
    assert ident.handle("did:plc:mallory") is None
    assert ident.counts[counter] == 1


async def test_unknown_did_failure_is_cached_then_retried(
    ident: ResolvingIdentity, plc: FakePlc, clock: FakeClock
) -> None:
    """A DID the directory does not know is not asked again until the failure TTL passes."""
    assert await ident.prefetch("did:plc:ghost") is None
    assert await ident.prefetch("did:plc:ghost") is None
    assert plc.hits["did:plc:ghost"] == 1
    clock.now += 61.0  # min(cache TTL, failure TTL)
    plc.add("did:plc:ghost", "ghost.test")
    assert await ident.prefetch("did:plc:ghost") == "ghost.test"


async def test_an_unreachable_directory_is_a_counted_failure(clock: FakeClock) -> None:
    """Connection errors are caught per DID, counted, and give None."""
    with FakePlc() as dead:
        url = dead.url
    res = ResolvingIdentity(plc_url=url, verify="xrpc", resolve_handle_url=url, clock=clock)
    try:
        assert await res.prefetch("did:plc:alice") is None
        assert res.counts["errors"] == 1
    finally:
        await res.aclose()


async def test_misses_are_queued_and_resolved_in_the_background(
    ident: ResolvingIdentity, plc: FakePlc
) -> None:
    """handle() answers None at once, queues the DID, and knows it once the workers ran."""
    plc.add("did:plc:alice", "alice.test")
    assert ident.handle("did:plc:alice") is None
    assert ident.handle("did:plc:alice") is None  # queued once
    assert ident.pending == 1
    async with running(ident):
        await asyncio.wait_for(ident.drain(), 5)
    assert ident.handle("did:plc:alice") == "alice.test"


async def test_post_authors_are_prefetched_from_events(
    ident: ResolvingIdentity, plc: FakePlc
) -> None:
    """A new post by an unknown DID queues it, so its handle is ready when it is a candidate."""
    plc.add("did:plc:alice", "alice.test")
    ident.observe(post("did:plc:alice", T0, "hello"))
    async with running(ident):
        await asyncio.wait_for(ident.drain(), 5)
    assert ident.handle("did:plc:alice") == "alice.test"


async def test_expired_entries_are_served_until_refreshed(
    ident: ResolvingIdentity, plc: FakePlc, clock: FakeClock
) -> None:
    """After the TTL the last verified handle is served while a refresh runs, then replaced."""
    plc.add("did:plc:alice", "alice.test")
    await ident.prefetch("did:plc:alice")
    plc.add("did:plc:alice", "alice2.test")
    clock.now += 61.0
    assert ident.handle("did:plc:alice") == "alice.test"
    async with running(ident):
        await asyncio.wait_for(ident.drain(), 5)
    assert ident.handle("did:plc:alice") == "alice2.test"


async def test_identity_event_with_a_new_handle_drops_the_old_one(
    ident: ResolvingIdentity, plc: FakePlc
) -> None:
    """A changed handle is forgotten at once and used only once the new one verifies."""
    plc.add("did:plc:alice", "alice.test")
    await ident.prefetch("did:plc:alice")
    plc.add("did:plc:alice", "alice-new.test")
    ident.observe(_identity_event("did:plc:alice", "alice-new.test"))
    assert ident.handle("did:plc:alice") is None
    async with running(ident):
        await asyncio.wait_for(ident.drain(), 5)
    assert ident.handle("did:plc:alice") == "alice-new.test"


async def test_identity_event_with_the_same_handle_keeps_serving_it(
    ident: ResolvingIdentity, plc: FakePlc
) -> None:
    """An identity event repeating the handle re-verifies it without a gap."""
    plc.add("did:plc:alice", "alice.test")
    await ident.prefetch("did:plc:alice")
    ident.observe(_identity_event("did:plc:alice", "alice.test"))
    assert ident.handle("did:plc:alice") == "alice.test" and ident.pending == 1


async def test_deactivated_accounts_are_forgotten(ident: ResolvingIdentity, plc: FakePlc) -> None:
    """An account event with active=false removes the cached handle."""
    plc.add("did:plc:alice", "alice.test")
    await ident.prefetch("did:plc:alice")
    ident.observe(Event(did="did:plc:alice", time_us=T0, kind="account", active=False))
    assert "did:plc:alice" not in ident._cache


async def test_pinned_handles_survive_failures_and_events(ident: ResolvingIdentity) -> None:
    """Configured handles (the bots') never expire and are not replaced by a failed lookup."""
    assert await ident.prefetch("did:plc:bot") == "bot.test"
    ident.observe(_identity_event("did:plc:bot", "other.test"))
    assert ident.handle("did:plc:bot") == "bot.test"


async def test_queue_is_bounded_and_drops_are_counted(plc: FakePlc, clock: FakeClock) -> None:
    """With a full queue new misses are dropped (and counted), never block the caller."""
    res = ResolvingIdentity(
        plc_url=plc.url, verify="xrpc", resolve_handle_url=plc.url, queue_size=2, clock=clock
    )
    try:
        for i in range(5):
            res.handle(f"did:plc:u{i}")
        assert res.pending == 2 and res.counts["dropped"] == 3
    finally:
        await res.aclose()


async def test_concurrency_is_bounded_and_lookups_are_shared() -> None:
    """At most ``concurrency`` lookups run at once; a DID in flight is fetched once."""
    with FakePlc(delay=0.05) as slow:
        for i in range(6):
            slow.add(f"did:plc:u{i}", f"user{i}.test")
        res = ResolvingIdentity(
            plc_url=slow.url, verify="xrpc", resolve_handle_url=slow.url, concurrency=2
        )
        try:
            same = await asyncio.gather(*(res.prefetch("did:plc:u0") for _ in range(3)))
            assert same == ["user0.test"] * 3 and slow.hits["did:plc:u0"] == 1
            for i in range(1, 6):
                res.handle(f"did:plc:u{i}")
            async with running(res):
                await asyncio.wait_for(res.drain(), 10)
            assert slow.max_active <= 2
            assert [res.handle(f"did:plc:u{i}") for i in range(6)] == [
                f"user{i}.test" for i in range(6)
            ]
        finally:
            await res.aclose()


def test_xrpc_verification_needs_a_url() -> None:
    """Choosing xrpc verification without a trusted server is a configuration error."""
    with pytest.raises(ValueError, match="resolve_handle_url"):
        ResolvingIdentity(verify="xrpc")


async def test_resolves_accounts_of_the_reference_pds(local_pds: LocalPds) -> None:
    """Against the real PLC + PDS: a new account's handle verifies through resolveHandle."""
    account = local_pds.create_account(unique_name("ident"))
    res = ResolvingIdentity(
        plc_url=local_pds.plc_url, verify="xrpc", resolve_handle_url=local_pds.pds_url
    )
    try:
        assert await res.prefetch(account.did) == account.handle
        assert await res.prefetch("did:plc:aaaaaaaaaaaaaaaaaaaaaaaa") is None
    finally:
        await res.aclose()
