"""The fair-exposure feed: a Bluesky feed generator that shows every bot's replies equally.

- ``core``: the pure page builder (pool, randomized round-robin draft, cursor);
- ``service``: sessions, auth, rate limits, recording, engagement (the in-process API);
- ``routes``: the HTTP shells mounted by ``botsky.web``;
- ``auth``: service-JWT verification with the atproto SDK; ``limits``: token buckets;
- ``scores``: engagement per seen impression per arm; ``cli``: ``botsky feed ...``.

``open_feed(config, ...)`` builds the service from the ``feed`` section of the settings.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable
from typing import Final

from botsky.config import FeedConfig
from botsky.feed.auth import DidKeys, ServiceAuth
from botsky.feed.limits import RateLimiter
from botsky.feed.service import FeedService
from botsky.ledger.feed import FeedLedger

__all__ = ["SWITCH_INTERVAL_S", "FeedService", "open_feed", "tune_interpreter"]

SWITCH_INTERVAL_S: Final = 0.0002


def tune_interpreter() -> None:
    """Shorten the interpreter's thread switch interval (5 ms by default) for a feed server.

    A page is answered once the ledger's worker thread has written it; while the event loop is
    busy with other requests, that thread waits for the GIL up to a whole switch interval per
    hand-off, which made most of the tail of ``bench/bench_feed.py`` (p50 26 -> 11 ms, p99
    351 -> 89 ms on a loaded 2-core machine in one quick run). Process-wide, so the composition
    root (``botsky run``) calls it, once, when the feed is enabled.
    """
    sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL_S))


def open_feed(
    config: FeedConfig,
    *,
    ledger: FeedLedger,
    plc_url: str,
    clock: Callable[[], int] = lambda: time.time_ns() // 1000,
    opted_out: Callable[[str], bool] = lambda did: False,
    rng: random.Random | None = None,
    score_interval_s: float = 60.0,
    limit_clock: Callable[[], float] = time.monotonic,
    refresh_loop: bool = True,
) -> FeedService:
    """The feed ``config`` describes (not yet started: ``await feed.start()``).

    ``limit_clock`` (seconds) is the rate limiters' clock; ``refresh_loop=False`` leaves
    ``refresh`` to the caller (the simulation calls it in simulated time, not every
    ``config.refresh_s`` seconds of the wall clock)."""
    assert config.service_did is not None  # FeedConfig validates this when enabled
    links = {
        key: url
        for key, url in (
            ("privacyPolicy", config.privacy_policy_url),
            ("termsOfService", config.terms_of_service_url),
        )
        if url
    }
    return FeedService(
        ledger=ledger,
        service_did=config.service_did,
        feed_uri=config.feed_uri,
        auth=ServiceAuth(
            config.service_did, DidKeys(plc_url=plc_url), leeway_s=config.jwt_leeway_s
        ),
        arm_by=config.arm_by,
        max_age_s=config.max_age_s,
        max_impressions=config.max_impressions_per_item,
        viewer_limit=RateLimiter(config.viewer_rate_per_s, config.viewer_burst, clock=limit_clock),
        ip_limit=RateLimiter(config.ip_rate_per_s, config.ip_burst, clock=limit_clock),
        viewer_retention_s=config.viewer_retention_s,
        attribution_window_s=config.attribution_window_s,
        refresh_s=config.refresh_s if refresh_loop else 0.0,
        session_ttl_s=config.session_ttl_s,
        max_sessions=config.max_sessions,
        record_timeout_s=config.record_timeout_s,
        service_endpoint=config.endpoint,
        links=links,
        clock=clock,
        rng=rng,
        opted_out=opted_out,
        score_interval_s=score_interval_s,
    )
