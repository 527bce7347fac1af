"""The feed mounted in the web app: real uvicorn on loopback over a real App run."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from botsky.feed.auth import DidKeys, ServiceAuth
from botsky.feed.limits import RateLimiter
from botsky.feed.metrics import FEED_METRIC_NAMES, FeedCollector
from botsky.feed.service import GET_SKELETON, SEND_INTERACTIONS, FeedService
from botsky.ledger.feed import SEEN_EVENT, FeedLedger, Interaction
from botsky.metrics import Metrics
from botsky.runtime import App
from botsky.testing import FakeVendorServer
from botsky.web import serve
from tests.feed_tokens import Signer
from tests.test_web import hostile_answer, replay_app

SERVICE = "did:web:feed.example.test"
FEED = "at://did:plc:publisher/app.bsky.feed.generator/botsky-fair"
VIEWER = "did:plc:feedviewer"
TOKEN = "leaderboard-secret"


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[App, FeedService, str, Signer]]:
    """The replay run's App with a feed over its ledger, served with a bearer token."""
    signer = Signer()
    signer.key(VIEWER)
    metrics = Metrics()
    with FakeVendorServer(choose=hostile_answer) as vendor:
        app = await replay_app(tmp_path, vendor.url, metrics=metrics)
        try:
            await app.run()
            ledger: FeedLedger = app.ledger  # type: ignore[assignment]
            # The replay's stream clock, so its replies are recent.
            clock = lambda: app.presence.now_us  # noqa: E731
            feed = FeedService(
                ledger=ledger,
                service_did=SERVICE,
                feed_uri=FEED,
                auth=ServiceAuth(SERVICE, DidKeys(resolve=signer.resolve)),
                clock=clock,
                refresh_s=0,
                service_endpoint="https://feed.example.test",
                ip_limit=RateLimiter(0.001, 3),
            )
            await feed.start()
            metrics.registry.register(FeedCollector(feed))
            server = await serve(
                app,
                host="127.0.0.1",
                port=0,
                token=TOKEN,
                metrics=metrics,
                refresh_s=0.0,
                feed=feed,
            )
            try:
                yield app, feed, server.url, signer
            finally:
                await server.stop()
                await feed.stop()
        finally:
            await app.aclose()


async def test_feed_routes_are_public_and_the_rest_is_not(
    served: tuple[App, FeedService, str, Signer],
) -> None:
    """The AppView reaches did.json, describe and the skeleton without the leaderboard's
    token; the leaderboard still needs it."""
    _, _, url, _ = served
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        doc = (await http.get("/.well-known/did.json")).json()
        assert doc["service"][0]["type"] == "BskyFeedGenerator"
        described = await http.get("/xrpc/app.bsky.feed.describeFeedGenerator")
        assert described.json()["feeds"] == [{"uri": FEED}]
        page = await http.get(f"/xrpc/{GET_SKELETON}", params={"feed": FEED, "limit": 3})
        assert page.status_code == 200 and len(page.json()["feed"]) == 3
        unknown = await http.get(f"/xrpc/{GET_SKELETON}", params={"feed": "at://x/y/z"})
        assert unknown.status_code == 400 and unknown.json()["error"] == "UnknownFeed"
        bad_body = await http.post(f"/xrpc/{SEND_INTERACTIONS}", content=b"{not json")
        assert bad_body.status_code == 400
        assert (await http.get("/")).status_code == 401
        assert (await http.get("/metrics")).status_code == 401


async def test_page_and_metrics_show_per_seen_figures_without_viewers(
    served: tuple[App, FeedService, str, Signer],
) -> None:
    """After a viewer is served and reports an item seen, the leaderboard page has the feed
    section with that arm's counts and no viewer DID; /metrics has every feed family."""
    _, feed, url, signer = served
    token = signer.token(VIEWER, SERVICE, GET_SKELETON)
    answer = await feed.skeleton(feed=FEED, limit=6, authorization=f"Bearer {token}")
    first = answer.body["feed"][0]
    await feed.sync()
    await feed.ledger.record_feed_interactions(
        VIEWER, [Interaction(first["post"], SEEN_EVENT, answer.body["reqId"])], feed.clock()
    )
    headers = {"authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=url, timeout=10, headers=headers) as http:
        html = (await http.get("/")).text
        metrics = (await http.get("/metrics")).text
    assert 'id="feed"' in html and 'class="feed-arm"' in html
    assert 'data-seen="1"' in html
    assert VIEWER not in html
    for name in FEED_METRIC_NAMES:
        assert f"# TYPE {name} " in metrics, name
    assert "botsky_feed_impressions_served{arm=" in metrics


async def test_per_ip_limits_see_the_address_a_local_proxy_forwards(
    served: tuple[App, FeedService, str, Signer],
) -> None:
    """Behind a reverse proxy on the same machine, anonymous requests are limited by the
    client address in X-Forwarded-For, not by the proxy's."""
    _, _, url, _ = served
    params = {"feed": FEED, "limit": 1}
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        first = [
            (
                await http.get(
                    f"/xrpc/{GET_SKELETON}",
                    params=params,
                    headers={"x-forwarded-for": "203.0.113.7"},
                )
            ).status_code
            for _ in range(4)
        ]
        other = await http.get(
            f"/xrpc/{GET_SKELETON}", params=params, headers={"x-forwarded-for": "203.0.113.8"}
        )
    assert first == [200, 200, 200, 429]
    assert other.status_code == 200


def test_the_web_socket_says_tcp_so_nagle_is_off() -> None:
    """The listening socket's protocol is TCP, so asyncio sets TCP_NODELAY on each accepted
    connection (with proto 0 it did not, and every keep-alive answer waited ~44 ms for the
    client's delayed ACK)."""
    import socket

    from botsky.web import _bind

    sock = _bind("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()
