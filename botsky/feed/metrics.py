"""The feed's Prometheus families, read from a ``FeedService`` at scrape time.

Registered into the process's ``Metrics`` registry by the composition root
(``metrics.registry.register(FeedCollector(feed))``); the per-arm figures are the feed's
cached scores (reloaded with the web page and every ``scoring.interval_s``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Final

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from botsky.feed.service import FeedService

__all__ = ["FEED_METRIC_NAMES", "FeedCollector"]

FEED_METRIC_NAMES: Final = (
    "botsky_feed_requests_total",
    "botsky_feed_auth_total",
    "botsky_feed_served_total",
    "botsky_feed_interactions_total",
    "botsky_feed_engagement_joined_total",
    "botsky_feed_pool_items",
    "botsky_feed_sessions",
    "botsky_feed_impressions_served",
    "botsky_feed_impressions_seen",
    "botsky_feed_engaged_rate",
    "botsky_feed_engaged_rate_ci_low",
    "botsky_feed_engaged_rate_ci_high",
    "botsky_feed_engagement_per_seen",
    "botsky_feed_scores_age_seconds",
)


def _counter(name: str, doc: str, label: str, values: Mapping[str, int]) -> Metric:
    fam = CounterMetricFamily(name, doc, labels=[label])
    for key in sorted(values):
        fam.add_metric([key], values[key])
    return fam


class FeedCollector(Collector):
    """Counters of the running feed and its per-arm figures."""

    def __init__(self, feed: FeedService) -> None:
        self.feed = feed

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        feed = self.feed
        c = feed.counts
        yield _counter(
            "botsky_feed_requests",
            "getFeedSkeleton and sendInteractions answers, by result (ok or the XRPC error).",
            "result",
            c.requests,
        )
        yield _counter(
            "botsky_feed_auth",
            "Viewer token checks, by outcome (ok, none, expired, audience, signature, ...).",
            "reason",
            c.auth,
        )
        yield _counter("botsky_feed_served", "Items served on feed pages, by arm.", "arm", c.served)
        yield _counter(
            "botsky_feed_interactions",
            "sendInteractions events received, by event.",
            "event",
            c.interactions,
        )
        yield _counter(
            "botsky_feed_engagement_joined",
            "Firehose likes, reposts, replies and quotes joined to an exposure, by kind.",
            "kind",
            c.engagement_joined,
        )
        pool = GaugeMetricFamily(
            "botsky_feed_pool_items", "Servable replies, by arm.", labels=["arm"]
        )
        for arm, n in feed.pool.sizes().items():
            pool.add_metric([arm], n)
        yield pool
        sessions = GaugeMetricFamily("botsky_feed_sessions", "Feed sessions held in memory.")
        sessions.add_metric([], feed.session_count)
        yield sessions
        families = {
            "botsky_feed_impressions_served": ("Served impressions, by arm.", lambda s: s.served),
            "botsky_feed_impressions_seen": ("Seen impressions, by arm.", lambda s: s.seen),
            "botsky_feed_engaged_rate": (
                "Seen impressions followed by engagement / seen impressions, by arm (NaN: none).",
                lambda s: float("nan") if s.engaged_rate is None else s.engaged_rate,
            ),
            "botsky_feed_engaged_rate_ci_low": (
                "Wilson 95% interval of the engaged rate, lower bound, by arm.",
                lambda s: s.ci_low,
            ),
            "botsky_feed_engaged_rate_ci_high": (
                "Wilson 95% interval of the engaged rate, upper bound, by arm.",
                lambda s: s.ci_high,
            ),
            "botsky_feed_engagement_per_seen": (
                "Likes, reposts, replies and quotes per seen impression, by arm.",
                lambda s: float("nan") if s.engagement_per_seen is None else s.engagement_per_seen,
            ),
        }
        for name, (doc, value) in families.items():
            fam = GaugeMetricFamily(name, doc, labels=["arm"])
            for s in feed.scores:
                fam.add_metric([s.arm], value(s))
            yield fam
        age = GaugeMetricFamily(
            "botsky_feed_scores_age_seconds", "Age of the per-arm feed figures (NaN: never)."
        )
        at = feed.scores_at
        age.add_metric([], float("nan") if at is None else time.monotonic() - at)
        yield age
