"""Prometheus metrics: the wrappers, the scrape-time collector over a real App, the cache."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

from botsky.errors import (
    ModelError,
    ModelUnavailable,
    PostError,
    PostOutcomeUnknown,
    PostRateLimited,
)
from botsky.ledger.base import Ledger, Mention
from botsky.ledger.sqlite import SqliteLedger
from botsky.llm.template import TemplateWriter
from botsky.metrics import METRIC_NAMES, AppView, InstrumentedModel, Metrics
from botsky.posting import ReplyPost, StrongRef
from botsky.scoring import score
from botsky.sources.base import SourceStats
from botsky.testing import FakeModel, FakeVendorServer, RecordingPoster
from botsky.web import serve
from tests.support import MIN, T0, hostile_answer, replay_app

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _samples(text: bytes | str) -> Samples:
    """Every sample as {(name, sorted labels): value}."""
    body = text.decode() if isinstance(text, bytes) else text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(body)
        for s in fam.samples
    }


async def _complete(model: InstrumentedModel) -> None:
    await model.complete_json(system="s", user="u", schema={}, schema_name="reply")


async def test_instrumented_model_records_calls_latency_tokens_and_cost() -> None:
    """A successful call adds to calls{ok}, the latency histogram, tokens and cost."""
    metrics = Metrics()
    inner = FakeModel(model="m-1", prompt_tokens=120, completion_tokens=30, cost_usd=0.002)
    model = metrics.model(inner)
    assert isinstance(model, InstrumentedModel)
    assert (model.provider, model.model) == ("fake", "m-1")
    await _complete(model)
    await _complete(model)
    s = _samples(metrics.render())
    assert (
        s[("botsky_model_calls_total", (("model", "m-1"), ("outcome", "ok"), ("provider", "fake")))]
        == 2
    )
    assert s[("botsky_model_latency_seconds_count", (("model", "m-1"), ("provider", "fake")))] == 2
    assert s[("botsky_model_tokens_total", (("kind", "prompt"), ("model", "m-1")))] == 240
    assert s[("botsky_model_tokens_total", (("kind", "completion"), ("model", "m-1")))] == 60
    assert s[("botsky_model_cost_usd_total", (("model", "m-1"),))] == pytest.approx(0.004)
    assert len(inner.calls) == 2


async def test_instrumented_model_counts_failures_by_kind_and_reraises() -> None:
    """429/5xx after retries count as 'unavailable', other model errors as 'error'."""
    metrics = Metrics()
    inner = FakeModel(model="m-2").script(ModelUnavailable("429"), ModelError("refused"))
    model = metrics.model(inner)
    assert isinstance(model, InstrumentedModel)
    with pytest.raises(ModelUnavailable):
        await _complete(model)
    with pytest.raises(ModelError):
        await _complete(model)
    s = _samples(metrics.render())
    labels = (("model", "m-2"), ("outcome", "{}"), ("provider", "fake"))
    for outcome in ("unavailable", "error"):
        key = tuple((k, v.format(outcome)) for k, v in labels)
        assert s[("botsky_model_calls_total", key)] == 1
    assert ("botsky_model_tokens_total", (("kind", "prompt"), ("model", "m-2"))) not in s


def test_template_writers_are_not_wrapped() -> None:
    """The template writer makes no model call and is recognised by type, so it stays as is."""
    writer = TemplateWriter()
    metrics = Metrics()
    assert metrics.model(writer) is writer
    wrapped = metrics.model(FakeModel())
    assert metrics.model(wrapped) is wrapped


def _reply(bot: str) -> ReplyPost:
    ref = StrongRef("at://did:plc:a/app.bsky.feed.post/3k", "bafy")
    return ReplyPost(
        bot=bot,
        bot_did=f"did:plc:{bot}",
        text="hi @bob.test",
        facets=[],
        langs=["en"],
        root=ref,
        parent=ref,
        created_at="2026-07-01T00:00:00.000Z",
    )


async def test_instrumented_poster_counts_posts_and_429s_by_bot() -> None:
    """Posts, 429s, unknown outcomes and other failures are counted per bot; errors still
    reach the caller."""
    metrics = Metrics()
    inner = RecordingPoster()
    inner.fail_with.extend([PostRateLimited("429"), PostError("bad"), PostOutcomeUnknown("504")])
    poster = metrics.poster(inner)
    for _ in range(3):
        with pytest.raises((PostRateLimited, PostError, PostOutcomeUnknown)):
            await poster.reply(_reply("ada"))
    await poster.reply(_reply("ada"))
    await poster.reply(_reply("basil"))
    s = _samples(metrics.render())
    assert s[("botsky_posts_total", (("bot", "ada"),))] == 1
    assert s[("botsky_posts_total", (("bot", "basil"),))] == 1
    assert s[("botsky_post_rate_limited_total", (("bot", "ada"),))] == 1
    assert s[("botsky_post_failures_total", (("bot", "ada"),))] == 1
    assert s[("botsky_post_unknown_total", (("bot", "ada"),))] == 1
    # lookup (crash recovery) is passed through untouched.
    assert await poster.lookup("did:plc:ada", "nope", "at://x") is None


async def test_collector_reads_a_real_run_at_scrape_time(tmp_path: Path) -> None:
    """After a replay, /metrics equals the App's own counters and the ledger's scores."""
    metrics = Metrics()
    with FakeVendorServer(choose=hostile_answer) as vendor:
        app = await replay_app(tmp_path, vendor.url, metrics)
        try:
            await app.run()
            server = await serve(app, port=0, metrics=metrics, refresh_s=0.0)
            try:
                async with httpx.AsyncClient() as client:
                    r = await client.get(server.url + "/metrics")
            finally:
                await server.stop()
            mentions, outcomes = await app.ledger.mentions(), await app.ledger.outcomes()
        finally:
            await app.aclose()
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    s = _samples(r.text)
    for kind, n in app.summary.by_kind.items():
        assert s[("botsky_events_total", (("kind", kind),))] == n
    for col, n in app.summary.by_collection.items():
        assert s[("botsky_commit_events_total", (("collection", col),))] == n
    assert app.dispatcher is not None
    assert (
        s[("botsky_dispatch_results_total", (("result", "posted"),))]
        == app.dispatcher.counts["posted"]
    )
    assert s[("botsky_dispatch_queue_depth", ())] == 0
    assert s[("botsky_dispatch_queue_capacity", ())] == app.dispatcher.queue_size
    assert s[("botsky_outcomes_total", (("kind", "success"),))] == app.outcomes.counts["success"]
    for row in score(mentions, outcomes, by="model"):
        key = (("model", row.group),)
        assert s[("botsky_mentions", key)] == row.mentions
        assert s[("botsky_successes", key)] == row.successes
        assert s[("botsky_mentions_matured", key)] == row.matured
        assert s[("botsky_success_rate", key)] == pytest.approx(row.success_rate)
        assert s[("botsky_success_rate_ci_low", key)] == pytest.approx(row.ci_low)
    # The wrapped LLM bots' calls are recorded; the template bot makes none.
    calls = {k[1]: v for k, v in s.items() if k[0] == "botsky_model_calls_total"}
    llm_mentions = [m for m in mentions if m.provider in ("openai", "anthropic")]
    assert sum(calls.values()) == len(llm_mentions)
    posts = sum(v for k, v in s.items() if k[0] == "botsky_posts_total")
    assert posts == len(mentions)
    # Every family is exposed, except labelled ones this clean run had nothing to count in.
    names = {name for name, _ in s}
    missing = [
        n
        for n in METRIC_NAMES
        if not any(x == n or x.startswith(n + "_") for x in names)
        and n
        not in (
            "botsky_post_rate_limited_total",
            "botsky_post_failures_total",
            "botsky_post_unknown_total",
            "botsky_source_skipped_frames_total",
        )
    ]
    assert missing == []


@dataclass
class _Queue:
    size: int

    def qsize(self) -> int:
        return self.size


@dataclass
class _Dispatcher:
    counts: Counter[str]
    queue: _Queue
    queue_size: int = 10


@dataclass
class _Outcomes:
    counts: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return 3


@dataclass
class _Summary:
    events: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    by_collection: Counter[str] = field(default_factory=Counter)
    selector: Counter[str] = field(default_factory=Counter)
    opt_outs: int = 0


@dataclass
class _Source:
    name: str = "jetstream"
    stats: SourceStats = field(default_factory=SourceStats)


@dataclass
class _Presence:
    now_us: int = 0


@dataclass
class _View:
    ledger: Ledger
    source: _Source = field(default_factory=_Source)
    presence: _Presence = field(default_factory=_Presence)
    outcomes: _Outcomes = field(default_factory=_Outcomes)
    dispatcher: _Dispatcher | None = None
    summary: _Summary = field(default_factory=_Summary)
    cursor_name: str = "jetstream"


async def test_collector_reports_source_health_queue_and_opt_outs(ledger: SqliteLedger) -> None:
    """Lag, reconnects, skipped frames, queue depth, drops and opt-outs come from the view."""
    view = _View(ledger)
    view.source.stats.reconnects = 2
    view.source.stats.skip("bad_cbor")
    view.source.stats.skip("bad_cbor")
    view.dispatcher = _Dispatcher(Counter(dropped_queue_full=5, posted=1), _Queue(12))
    view.summary.opt_outs = 4
    view.summary.selector.update(queued=6, no_consent=9)
    view.presence.now_us = 1_000_000
    assert isinstance(view, AppView)
    metrics = Metrics()
    metrics.watch(view)
    s = _samples(metrics.render())
    assert s[("botsky_source_reconnects_total", ())] == 2
    assert s[("botsky_source_skipped_frames_total", (("reason", "bad_cbor"),))] == 2
    assert s[("botsky_dispatch_dropped_total", ())] == 5
    assert s[("botsky_dispatch_queue_depth", ())] == 10  # stop markers never exceed the bound
    assert s[("botsky_opt_outs_total", ())] == 4
    assert s[("botsky_selector_decisions_total", (("decision", "no_consent"),))] == 9
    assert s[("botsky_open_mentions", ())] == 3
    assert s[("botsky_source_lag_seconds", ())] > 1e9  # event time 1970-01-01T00:00:01Z


def _mention(i: int, model: str) -> Mention:
    return Mention(
        post_uri=f"at://did:plc:a/app.bsky.feed.post/{i}",
        post_cid="c",
        post_author="did:plc:a",
        root_uri=f"at://did:plc:a/app.bsky.feed.post/{i}",
        root_cid="c",
        bot="ada",
        model=model,
        provider="fake",
        persona="p",
        picker="llm",
        reply_uri=f"at://did:plc:bot/app.bsky.feed.post/{i}",
        reply_cid="c",
        reply_text="hi",
        mentioned_did="did:plc:b",
        mentioned_handle="b.test",
        candidates=["did:plc:b"],
        rank=0,
        created_us=T0 + i * MIN,
    )


async def test_score_cache_reloads_the_ledger_at_most_every_max_age(ledger: SqliteLedger) -> None:
    """Scrapes within max_age reuse the cached rows; force or age reload them."""
    metrics = Metrics()
    cache = metrics.watch(_View(ledger), max_age_s=3600)
    await ledger.record_mention(_mention(1, "m-a"))
    await cache.refresh()
    await ledger.record_mention(_mention(2, "m-a"))
    await cache.refresh()
    assert _samples(metrics.render())[("botsky_mentions", (("model", "m-a"),))] == 1
    await cache.refresh(force=True)
    assert _samples(metrics.render())[("botsky_mentions", (("model", "m-a"),))] == 2
    cache.max_age_s = 0.0
    await ledger.record_mention(_mention(3, "m-a"))
    await cache.refresh()
    assert _samples(metrics.render())[("botsky_mentions", (("model", "m-a"),))] == 3


def test_metrics_use_a_dedicated_registry() -> None:
    """Nothing is registered in prometheus_client's global registry; two Metrics coexist."""
    first, second = Metrics(), Metrics()
    assert first.registry is not second.registry
    assert prometheus_client.REGISTRY.get_sample_value("botsky_model_calls_total") is None
    assert not any(m.name.startswith("botsky_") for m in prometheus_client.REGISTRY.collect())
