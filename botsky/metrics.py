"""Prometheus metrics: a dedicated registry, read from the running App at scrape time.

The hot path is not instrumented twice. Almost everything is already counted by the App (its
``RunSummary``, the dispatcher's ``counts`` and queue, the source's ``SourceStats``, the outcome
watcher's ``counts``) and by the ledger (mentions and outcomes); ``AppCollector`` turns those
into metric families when ``/metrics`` is scraped. Only what nobody counts yet is recorded as it
happens, by two thin wrappers the composition root puts around each bot's model and the poster:

- ``InstrumentedModel``: model calls by outcome, latency histogram, tokens and cost by model;
- ``InstrumentedPoster``: posts, 429s and failures by bot.

Ledger-derived numbers (mentions, successes, success rate by model, ...) come from a
``ScoreCache`` that reloads the ledger at most every ``max_age_s`` seconds, because a scrape
must not load every mention of a large ledger each time; the web app shares the same cache.

Every name starts with ``botsky_``; see ``METRIC_NAMES``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, runtime_checkable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from botsky.errors import ModelUnavailable, PostOutcomeUnknown, PostRateLimited
from botsky.ledger.base import Ledger, Mention, Outcome
from botsky.llm.base import Checkable, Completion, Model
from botsky.posting import Posted, Poster, ReplyPost
from botsky.scoring import Score, score
from botsky.sources.base import SourceStats

__all__ = [
    "CONTENT_TYPE",
    "METRIC_NAMES",
    "AppCollector",
    "AppView",
    "InstrumentedModel",
    "InstrumentedPoster",
    "Metrics",
    "ScoreCache",
]

CONTENT_TYPE: Final = CONTENT_TYPE_LATEST  # what /metrics answers with

# Model latency buckets in seconds: hosted LLMs answer in 0.3-10 s, with retries up to a minute.
_LATENCY_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0)

# Exposed names (counters get ``_total`` in the text format, histograms ``_bucket``/...).
METRIC_NAMES: Final = (
    # recorded on the hot path by the wrappers
    "botsky_model_calls_total",
    "botsky_model_latency_seconds",
    "botsky_model_tokens_total",
    "botsky_model_cost_usd_total",
    "botsky_posts_total",
    "botsky_post_rate_limited_total",
    "botsky_post_failures_total",
    "botsky_post_unknown_total",
    # read from the App at scrape time
    "botsky_events_total",
    "botsky_commit_events_total",
    "botsky_source_lag_seconds",
    "botsky_source_reconnects_total",
    "botsky_source_skipped_frames_total",
    "botsky_selector_decisions_total",
    "botsky_dispatch_queue_depth",
    "botsky_dispatch_queue_capacity",
    "botsky_dispatch_dropped_total",
    "botsky_dispatch_results_total",
    "botsky_outcomes_total",
    "botsky_open_mentions",
    "botsky_opt_outs_total",
    # read from the ledger (cached), per model
    "botsky_mentions",
    "botsky_mentions_matured",
    "botsky_successes",
    "botsky_success_rate",
    "botsky_success_rate_ci_low",
    "botsky_success_rate_ci_high",
    "botsky_engagement_per_reply",
    "botsky_scores_age_seconds",
)


# --- what the collector and the web app read from the running App -------------------------


class _SummaryView(Protocol):
    # Read-only properties, so that App's concrete types (Counter, Dispatcher, ...) match.
    @property
    def by_kind(self) -> Mapping[str, int]: ...
    @property
    def by_collection(self) -> Mapping[str, int]: ...
    @property
    def selector(self) -> Mapping[str, int]: ...
    @property
    def events(self) -> int: ...
    @property
    def opt_outs(self) -> int: ...


class _SourceView(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def stats(self) -> SourceStats: ...


class _QueueView(Protocol):
    def qsize(self) -> int: ...


class _DispatcherView(Protocol):
    @property
    def counts(self) -> Mapping[str, int]: ...
    @property
    def queue(self) -> _QueueView: ...
    @property
    def queue_size(self) -> int: ...


class _OutcomesView(Protocol):
    @property
    def counts(self) -> Mapping[str, int]: ...
    def __len__(self) -> int: ...


class _PresenceView(Protocol):
    @property
    def now_us(self) -> int: ...


@runtime_checkable
class AppView(Protocol):
    """The read-only slice of ``botsky.runtime.App`` that metrics and the web app use.

    ``App`` satisfies it as is; the simulation, or a test, can pass anything with these
    attributes. A source that manages a connection (Jetstream, relay) may also expose
    ``connected: bool``, which ``/readyz`` reports; sources without it count as connected.
    """

    @property
    def source(self) -> _SourceView: ...
    @property
    def ledger(self) -> Ledger: ...
    @property
    def presence(self) -> _PresenceView: ...
    @property
    def outcomes(self) -> _OutcomesView: ...
    @property
    def dispatcher(self) -> _DispatcherView | None: ...
    @property
    def summary(self) -> _SummaryView: ...
    @property
    def cursor_name(self) -> str: ...


# --- ledger-derived scores, cached --------------------------------------------------------


@dataclass
class ScoreCache:
    """The ledger's mentions and outcomes, reloaded at most every ``max_age_s`` seconds.

    ``refresh`` is the only method that touches the ledger; concurrent callers share one
    reload. ``scores(by)`` is pure over the cached rows.
    """

    ledger: Ledger
    max_age_s: float = 5.0
    mentions: list[Mention] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)
    loaded_at: float | None = None  # time.monotonic() of the last reload
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)
    _scores: dict[str, list[Score]] = field(default_factory=dict, repr=False)

    async def refresh(self, *, force: bool = False) -> None:
        """Reload from the ledger if the cache is older than ``max_age_s`` (or ``force``)."""
        async with self._lock:
            fresh = (
                self.loaded_at is not None and time.monotonic() - self.loaded_at < self.max_age_s
            )
            if fresh and not force:
                return
            mentions = await self.ledger.mentions()
            outcomes = await self.ledger.outcomes()
            self.mentions, self.outcomes = mentions, outcomes
            self._scores.clear()
            self.loaded_at = time.monotonic()

    def scores(self, by: str = "model") -> list[Score]:
        """``scoring.score`` over the cached rows (computed once per reload and grouping)."""
        if by not in self._scores:
            self._scores[by] = score(self.mentions, self.outcomes, by=by)
        return self._scores[by]

    def age_s(self) -> float | None:
        return None if self.loaded_at is None else time.monotonic() - self.loaded_at


# --- the scrape-time collector ------------------------------------------------------------


class AppCollector(Collector):
    """Turns the App's own counters and the cached scores into metric families."""

    def __init__(self, app: AppView, cache: ScoreCache) -> None:
        self.app = app
        self.cache = cache

    def describe(self) -> list[Metric]:
        # Nothing to describe up front: the registry then does not call collect() at register
        # time, which would read an App that is still being built.
        return []

    def collect(self) -> Iterator[Metric]:
        app = self.app
        s = app.summary
        yield _counter("botsky_events", "Events read from the source, by kind.", "kind", s.by_kind)
        yield _counter(
            "botsky_commit_events",
            "Commit events read from the source, by collection.",
            "collection",
            s.by_collection,
        )
        lag = GaugeMetricFamily(
            "botsky_source_lag_seconds",
            "Wall clock minus the time of the newest event seen (NaN before the first).",
        )
        now_us = app.presence.now_us
        lag.add_metric([], time.time() - now_us / 1e6 if now_us else float("nan"))
        yield lag
        stats = app.source.stats
        yield _scalar_counter(
            "botsky_source_reconnects", "Reconnections of the source.", stats.reconnects
        )
        yield _counter(
            "botsky_source_skipped_frames",
            "Frames the source could not decode and skipped, by reason.",
            "reason",
            stats.skip_reasons,
        )
        yield _counter(
            "botsky_selector_decisions",
            "New posts seen by the selector: queued, or why they were skipped.",
            "decision",
            s.selector,
        )
        d = app.dispatcher
        counts: Mapping[str, int] = d.counts if d is not None else {}
        depth = GaugeMetricFamily("botsky_dispatch_queue_depth", "Posts waiting for a worker.")
        capacity = GaugeMetricFamily("botsky_dispatch_queue_capacity", "Dispatch queue bound.")
        # qsize counts the workers' stop markers too at shutdown; never report more than the
        # bound, which only posts can fill.
        depth.add_metric([], min(d.queue.qsize(), d.queue_size) if d is not None else 0)
        capacity.add_metric([], d.queue_size if d is not None else 0)
        yield depth
        yield capacity
        yield _scalar_counter(
            "botsky_dispatch_dropped",
            "Posts dropped because the dispatch queue was full.",
            counts.get("dropped_queue_full", 0),
        )
        yield _counter(
            "botsky_dispatch_results",
            "Queued posts by what the worker did (posted, or why not).",
            "result",
            {k: v for k, v in counts.items() if k not in ("queued", "dropped_queue_full")},
        )
        yield _counter(
            "botsky_outcomes",
            "Outcomes recorded for mentions, by kind.",
            "kind",
            app.outcomes.counts,
        )
        open_mentions = GaugeMetricFamily("botsky_open_mentions", "Mentions being watched.")
        open_mentions.add_metric([], len(app.outcomes))
        yield open_mentions
        yield _scalar_counter("botsky_opt_outs", "Users who opted out during this run.", s.opt_outs)
        yield from self._scores()

    def _scores(self) -> Iterator[Metric]:
        rows = self.cache.scores("model") if self.cache.loaded_at is not None else []
        families = {
            "botsky_mentions": ("Mentions in the ledger, by model.", lambda r: r.mentions),
            "botsky_mentions_matured": (
                "Mentions that succeeded or expired, by model.",
                lambda r: r.matured,
            ),
            "botsky_successes": ("Mentions that succeeded, by model.", lambda r: r.successes),
            "botsky_success_rate": (
                "Successes / matured mentions, by model (NaN before any matured).",
                lambda r: float("nan") if r.success_rate is None else r.success_rate,
            ),
            "botsky_success_rate_ci_low": (
                "Wilson 95% interval, lower bound, by model.",
                lambda r: r.ci_low,
            ),
            "botsky_success_rate_ci_high": (
                "Wilson 95% interval, upper bound, by model.",
                lambda r: r.ci_high,
            ),
            "botsky_engagement_per_reply": (
                "Likes, reposts, quotes and author replies per bot reply, by model.",
                lambda r: r.engagement_per_reply,
            ),
        }
        for name, (doc, value) in families.items():
            fam = GaugeMetricFamily(name, doc, labels=["model"])
            for r in rows:
                fam.add_metric([r.group], value(r))
            yield fam
        age = GaugeMetricFamily(
            "botsky_scores_age_seconds", "Age of the ledger numbers above (NaN: never loaded)."
        )
        cache_age = self.cache.age_s()
        age.add_metric([], float("nan") if cache_age is None else cache_age)
        yield age


def _counter(name: str, doc: str, label: str, values: Mapping[str, int]) -> Metric:
    fam = CounterMetricFamily(name, doc, labels=[label])
    for key in sorted(values):
        fam.add_metric([key], values[key])
    return fam


def _scalar_counter(name: str, doc: str, value: int) -> Metric:
    return CounterMetricFamily(name, doc, value=value)


# --- the registry and the hot-path wrappers ----------------------------------------------


class Metrics:
    """One process's metrics: a dedicated registry (never the global one) and its instruments.

    Build one per process (or per test), wrap models and the poster with ``model`` and
    ``poster``, attach the running App with ``watch``, and serve ``render()`` after
    ``await cache.refresh()``.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.model_calls = Counter(
            "botsky_model_calls",
            "Model calls by outcome (ok, unavailable: 429/5xx/timeout after retries, error).",
            ["provider", "model", "outcome"],
            registry=r,
        )
        self.model_latency = Histogram(
            "botsky_model_latency_seconds",
            "Wall time of one model call, retries included.",
            ["provider", "model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.model_tokens = Counter(
            "botsky_model_tokens",
            "Tokens used, by model and kind (prompt, completion).",
            ["model", "kind"],
            registry=r,
        )
        self.model_cost = Counter(
            "botsky_model_cost_usd", "Model spend in US dollars, by model.", ["model"], registry=r
        )
        self.posts = Counter("botsky_posts", "Replies posted, by bot.", ["bot"], registry=r)
        self.post_rate_limited = Counter(
            "botsky_post_rate_limited",
            "Replies refused with 429 or a spent write budget, by bot.",
            ["bot"],
            registry=r,
        )
        self.post_failures = Counter(
            "botsky_post_failures", "Replies that failed otherwise, by bot.", ["bot"], registry=r
        )
        self.post_unknown = Counter(
            "botsky_post_unknown",
            "Creates whose outcome was unknown (timeout, 5xx, lost connection), by bot: their"
            " claims wait as 'retry' and are settled later.",
            ["bot"],
            registry=r,
        )
        self.cache: ScoreCache | None = None
        self._collector: AppCollector | None = None

    def model(self, inner: Model) -> Model:
        """``inner`` wrapped to record calls, latency, tokens and cost.

        The ``template`` writer is returned as is: it makes no model call (and ``write_reply``
        recognises it by type).
        """
        from botsky.llm.template import TemplateWriter

        if isinstance(inner, TemplateWriter | InstrumentedModel):
            return inner
        return InstrumentedModel(inner, self)

    def poster(self, inner: Poster) -> Poster:
        """``inner`` wrapped to count posts, 429s and failures by bot."""
        return inner if isinstance(inner, InstrumentedPoster) else InstrumentedPoster(inner, self)

    def watch(self, app: AppView, *, max_age_s: float = 5.0) -> ScoreCache:
        """Read ``app``'s counters at every scrape; returns the score cache it reads from."""
        if self._collector is not None:
            self.registry.unregister(self._collector)
        self.cache = ScoreCache(app.ledger, max_age_s=max_age_s)
        self._collector = AppCollector(app, self.cache)
        self.registry.register(self._collector)
        return self.cache

    def render(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)


class InstrumentedModel:
    """A ``Model`` that records each call in ``Metrics`` and otherwise is ``inner``."""

    def __init__(self, inner: Model, metrics: Metrics) -> None:
        self.inner = inner
        self.provider = inner.provider
        self.model = inner.model
        self._metrics = metrics

    async def complete_json(
        self, *, system: str, user: str, schema: dict[str, Any], schema_name: str
    ) -> Completion:
        m = self._metrics
        started = time.perf_counter()
        outcome = "error"
        try:
            completion = await self.inner.complete_json(
                system=system, user=user, schema=schema, schema_name=schema_name
            )
            outcome = "ok"
        except ModelUnavailable:
            outcome = "unavailable"
            raise
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            m.model_calls.labels(self.provider, self.model, outcome).inc()
            if outcome != "cancelled":
                m.model_latency.labels(self.provider, self.model).observe(
                    time.perf_counter() - started
                )
        usage = completion.usage
        m.model_tokens.labels(self.model, "prompt").inc(usage.prompt_tokens)
        m.model_tokens.labels(self.model, "completion").inc(usage.completion_tokens)
        m.model_cost.labels(self.model).inc(usage.cost_usd)
        return completion

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def check(self, timeout_s: float) -> bool:
        """The inner model's check; False (nothing checked) when it has none."""
        return await self.inner.check(timeout_s) if isinstance(self.inner, Checkable) else False

    def __repr__(self) -> str:
        return f"InstrumentedModel({self.inner!r})"


class InstrumentedPoster:
    """A ``Poster`` that counts posts, 429s and failures by bot and otherwise is ``inner``."""

    def __init__(self, inner: Poster, metrics: Metrics) -> None:
        self.inner = inner
        self._metrics = metrics

    async def reply(self, post: ReplyPost) -> Posted:
        m = self._metrics
        try:
            posted = await self.inner.reply(post)
        except PostRateLimited:
            m.post_rate_limited.labels(post.bot).inc()
            raise
        except PostOutcomeUnknown:
            m.post_unknown.labels(post.bot).inc()
            raise
        except asyncio.CancelledError:
            raise
        except Exception:
            m.post_failures.labels(post.bot).inc()
            raise
        m.posts.labels(post.bot).inc()
        return posted

    async def lookup(self, bot_did: str, rkey: str, parent_uri: str) -> Posted | None:
        return await self.inner.lookup(bot_did, rkey, parent_uri)

    async def aclose(self) -> None:
        await self.inner.aclose()
