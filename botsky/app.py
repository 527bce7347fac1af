"""The composition root: build botsky from Settings and run it.

This is the only module (with the CLI) that reads ``Settings``; every component takes plain
arguments. ``App.run`` reads the source, routes each event to its sinks (identity, consent,
presence, outcomes, the selector), lets the dispatch workers answer queued posts, saves the
cursor every ``cursor_every`` events and at exit, logs scores every ``score_interval`` seconds
and at shutdown, and returns a summary.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import random
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import structlog

from botsky.army import Army, Bot
from botsky.config import WebConfig
from botsky.configload import LoadedConfig, Secrets
from botsky.dispatch import ComposeRules, Dispatcher, Selector
from botsky.errors import ConfigError
from botsky.events import Event, PostRef
from botsky.identity import MemoryIdentity
from botsky.ledger import Ledger, open_ledger
from botsky.ledger.retry import RetryingLedger
from botsky.llm import make_model
from botsky.llm.base import Model, Price
from botsky.metrics import Metrics
from botsky.outcomes import OutcomeWatcher
from botsky.partition import PgPartitions, SinglePartition, partition_of
from botsky.policy import AudiencePolicy, KillSwitch
from botsky.posting import DryRunPoster, Poster
from botsky.presence import Presence
from botsky.recommend import Recommender
from botsky.resolve import ResolvingIdentity
from botsky.scoring import score, score_log_fields
from botsky.sources import open_source
from botsky.sources.base import Source
from botsky.web import WebServer, serve

if TYPE_CHECKING:
    from botsky.feed import FeedService

__all__ = ["App", "RunSummary", "build_app", "build_bots"]

log = structlog.get_logger("botsky.app")


@dataclass
class RunSummary:
    """What one run did; printed at the end of a finite source and logged at shutdown."""

    events: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    by_operation: Counter[str] = field(default_factory=Counter)
    by_collection: Counter[str] = field(default_factory=Counter)
    skipped: int = 0
    skip_reasons: Counter[str] = field(default_factory=Counter)
    selector: Counter[str] = field(default_factory=Counter)
    dispatch: Counter[str] = field(default_factory=Counter)
    outcomes: dict[str, int] = field(default_factory=dict)
    opt_outs: int = 0
    cursor: int | None = None
    interrupted: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "by_kind": dict(self.by_kind),
            "by_operation": dict(self.by_operation),
            "by_collection": dict(self.by_collection),
            "skipped": self.skipped,
            "skip_reasons": dict(self.skip_reasons),
            "selector": dict(self.selector),
            "dispatch": dict(self.dispatch),
            "outcomes": dict(self.outcomes),
            "opt_outs": self.opt_outs,
            "cursor": self.cursor,
            "interrupted": self.interrupted,
        }


class App:
    """One botsky process: a source, its sinks and the dispatch workers."""

    def __init__(
        self,
        *,
        source: Source,
        ledger: Ledger,
        presence: Presence,
        identity: MemoryIdentity | ResolvingIdentity,
        policy: AudiencePolicy,
        outcomes: OutcomeWatcher,
        selector: Selector | None,
        dispatcher: Dispatcher | None,
        cursor_name: str,
        cursor_every: int = 100,
        score_interval_s: float = 60.0,
        drain_on_eof: bool = True,
        lockstep: bool = False,
        shutdown_deadline_s: float = 30.0,
        models: tuple[Model, ...] = (),
        metrics: Metrics | None = None,
        web: WebConfig | None = None,
        partitions: PgPartitions | SinglePartition | None = None,
        handover_buffer: int = 10_000,
        feed: FeedService | None = None,
    ) -> None:
        self.source = source
        self.ledger = ledger
        self.presence = presence
        self.identity = identity
        self.policy = policy
        self.outcomes = outcomes
        self.selector = selector
        self.dispatcher = dispatcher
        self.cursor_name = cursor_name
        self.cursor_every = cursor_every
        self.score_interval_s = score_interval_s
        self.drain_on_eof = drain_on_eof
        self.lockstep = lockstep
        self.shutdown_deadline_s = shutdown_deadline_s
        self._stop = asyncio.Event()
        self.models = models
        self.metrics = metrics or Metrics()
        self.web = web
        self.web_server: WebServer | None = None
        self.keep_serving = False  # `simulate --serve` keeps the page up after the run
        self.partitions = partitions or SinglePartition()
        # Eligible posts of partitions owned elsewhere, to answer if this replica takes over.
        self._handover: deque[tuple[Event, PostRef]] = deque(maxlen=handover_buffer or None)
        if isinstance(self.partitions, PgPartitions):
            self.partitions.on_acquire = self._took_over
        self.summary = RunSummary()
        self._cursor: int | None = None
        self.feed = feed  # the fair-exposure feed (botsky.feed), served by the web app

    async def run(self, stop: asyncio.Event | None = None) -> RunSummary:
        """Run until the source ends or ``stop`` is set; always saves the cursor and scores."""
        stop = self._stop = stop or asyncio.Event()
        if self.feed is not None:
            await self.feed.start()
        if self.web is not None and self.web.enabled:
            self.web_server = await serve(
                self,
                host=self.web.host,
                port=self.web.port,
                token=self.web.token,
                metrics=self.metrics,
                feed=self.feed,
            )
            log.info("web_started", url=self.web_server.url)
        resolver = (
            asyncio.create_task(self.identity.run(), name="identity")
            if isinstance(self.identity, ResolvingIdentity)
            else None
        )
        loaded = await self.outcomes.load()
        await self.partitions.start()
        recovered = await self.dispatcher.recover(self._recoverable) if self.dispatcher else {}
        log.info(
            "app_started",
            source=self.source.name,
            open_mentions=loaded,
            recovered_claims=dict(recovered),
        )
        workers = asyncio.create_task(self.dispatcher.run()) if self.dispatcher else None
        scorer = asyncio.create_task(self._score_loop())
        reader = asyncio.create_task(self._read())
        stopper = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({reader, stopper}, return_when=asyncio.FIRST_COMPLETED)
            self.summary.interrupted = not reader.done()
            if self.summary.interrupted:
                reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader  # re-raises a fatal error from the reader
        finally:
            stopper.cancel()
            await self._finish(workers, scorer)
            if resolver is not None:
                resolver.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await resolver
            if self.web_server is not None and not self.keep_serving:
                await self.web_server.stop()
        return self.summary

    async def aclose(self) -> None:
        """Stop the web server, close the models, the poster and the ledger."""
        if self.web_server is not None:
            await self.web_server.stop()
        if self.feed is not None:
            await self.feed.stop()
        for model in self.models:
            await model.aclose()
        if self.dispatcher is not None:
            await self.dispatcher.poster.aclose()
        if isinstance(self.identity, ResolvingIdentity):
            await self.identity.aclose()
        await self.ledger.close()

    async def _read(self) -> None:
        async for event in self.source:
            await self.route(event)
            self._cursor = event.cursor
            if self.summary.events % self.cursor_every == 0:
                await self.ledger.save_cursor(self.cursor_name, event.cursor)

    async def route(self, event: Event) -> None:
        """Hand one event to every sink. One bad event is logged, never fatal to the stream."""
        s = self.summary
        s.events += 1
        s.by_kind[event.kind] += 1
        if event.kind == "commit":
            s.by_operation[event.operation or ""] += 1
            s.by_collection[event.collection or ""] += 1
        try:
            self.identity.observe(event)
            opted_out = self.policy.observe(event)
            if opted_out is not None:
                s.opt_outs += 1
                why = self.policy.last_reason or "blocked a bot"
                await self.ledger.add_opt_out(opted_out, why, event.time_us)
                log.info("opted_out", did=opted_out, reason=why)
            self.presence.observe(event)
            await self.outcomes.observe(event)
            if self.feed is not None:
                self.feed.observe(event)
            if self.selector is not None and self.dispatcher is not None and event.is_post_create:
                post = event.post
                reason = self.selector.reason(event, post)
                if reason is None and not self.partitions.owns(event.uri):
                    reason = "other_replica"
                    self._handover.append((event, post))
                if reason is None and self.lockstep:
                    # Replays wait for their work anyway, so they wait for room too: a
                    # takeover's re-offers must not crowd a fresh post out of the queue.
                    await self.dispatcher.put(event, post)
                    self.selector.accepted(event)
                    await self.dispatcher.wait_idle()
                elif reason is None and self.dispatcher.offer(event, post):
                    self.selector.accepted(event)
                s.selector[reason or "queued"] += 1
        except asyncio.CancelledError:
            raise
        except Exception:
            s.skip_reasons["route_error"] += 1
            log.exception("route_failed", uri=event.uri if event.kind == "commit" else event.did)

    def _recoverable(self, post_uri: str, intent: dict[str, Any] | None) -> bool:
        """Which crashed claims this process settles: all of them when it runs alone; with
        replicas, those of dead replicas in partitions it owns (never a live one's in-flight
        claim, and never the same claim as another survivor)."""
        if isinstance(self.partitions, SinglePartition):
            return True
        replica = (intent or {}).get("replica")
        return self.partitions.owns(post_uri) and replica not in self.partitions.alive()

    async def _took_over(self, taken: frozenset[int]) -> None:
        """A rebalance gave us partitions: answer what we skipped for them, settle the
        claims their previous owner left half-done."""
        assert isinstance(self.partitions, PgPartitions)
        count = self.partitions.count
        # Split the buffer before awaiting anything: the reader keeps appending to it.
        mine = [(e, p) for e, p in self._handover if partition_of(e.uri, count) in taken]
        self._handover = deque(
            ((e, p) for e, p in self._handover if partition_of(e.uri, count) not in taken),
            maxlen=self._handover.maxlen,
        )
        offered = 0
        if self.dispatcher is not None:
            for event, post in mine:
                await self.dispatcher.put(event, post)
                offered += 1
        # The previous owner's open mentions: watch them for outcomes from now on.
        for m in await self.ledger.open_mentions():
            if partition_of(m.post_uri, count) in taken:
                self.outcomes.track(m)
        if self.dispatcher is not None:
            recovered = await self.dispatcher.recover(self._recoverable)
            if offered or recovered:
                log.info("handover", offered=offered, recovered=dict(recovered))

    async def _finish(self, workers: asyncio.Task[None] | None, scorer: asyncio.Task[None]) -> None:
        # A finite source ended: make sure what was buffered for other owners has one (the
        # session may have been lost, or the others may have finished first).
        if not self.summary.interrupted:
            await self.partitions.settle()
        # Leave the group first, so no takeover queues work behind the workers' stop markers.
        await self.partitions.stop()
        if self.dispatcher is not None and workers is not None:
            if self.summary.interrupted or not self.drain_on_eof:
                dropped = self.dispatcher.discard_pending()
                if dropped:
                    log.info("pending_posts_dropped", count=dropped)
            await self.dispatcher.close()
            # Draining waits for the workers, until a stop request comes (before or during the
            # drain): then queued posts are dropped and replies in flight get the deadline;
            # past it they are cancelled (a claim left 'posting' is settled on the next start).
            stopping = asyncio.create_task(self._stop.wait())
            await asyncio.wait({workers, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if not workers.done():
                self.summary.interrupted = True
                self.dispatcher.discard_pending()
                try:
                    await asyncio.wait_for(asyncio.shield(workers), self.shutdown_deadline_s)
                except TimeoutError:
                    log.warning("shutdown_deadline_passed", deadline_s=self.shutdown_deadline_s)
                    workers.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await workers
            self.summary.dispatch = self.dispatcher.counts
        scorer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await scorer
        await self.outcomes.expire(self.presence.now_us)
        if self._cursor is not None:
            await self.ledger.save_cursor(self.cursor_name, self._cursor)
        self.summary.cursor = self._cursor
        stats = self.source.stats
        self.summary.skipped = stats.skipped
        self.summary.skip_reasons.update(stats.skip_reasons)
        self.summary.outcomes = dict(self.outcomes.counts)
        await self.log_scores()
        log.info("run_summary", **self.summary.as_dict())
        await self.source.aclose()

    async def _score_loop(self) -> None:
        while True:
            await asyncio.sleep(self.score_interval_s)
            await self.outcomes.expire(self.presence.now_us)
            await self.log_scores()

    async def log_scores(self) -> None:
        """One ``recommender_score`` line per model."""
        rows = score(await self.ledger.mentions(), await self.ledger.outcomes(), by="model")
        for s in rows:
            fields = score_log_fields(s)
            log.info(fields.pop("event"), **fields)


def build_bots(
    loaded: LoadedConfig,
    secrets: Secrets,
    *,
    http_client: Any = None,
    metrics: Metrics | None = None,
) -> list[Bot]:
    """Bots whose model can run: a bot without its API key is left out, with a warning."""
    bots: list[Bot] = []
    prices = loaded.settings.prices
    for cfg in loaded.bots:
        key = secrets[cfg.name].api_key if cfg.name in secrets else None
        if cfg.default_key_env is not None and key is None:
            log.warning("bot_disabled", bot=cfg.name, reason=f"{cfg.default_key_env} is not set")
            continue
        price_cfg = prices.get(cfg.model)
        price = Price(price_cfg.input_per_mtok, price_cfg.output_per_mtok) if price_cfg else Price()
        model = make_model(
            cfg,
            api_key=key.get_secret_value() if key else None,
            price=price,
            http_client=http_client,
        )
        if metrics is not None:
            model = metrics.model(model)
        # Dry-run bots may have no DID yet; did:web of the handle is valid and clearly not PLC.
        did = cfg.account.did or f"did:web:{cfg.account.handle}"
        bots.append(
            Bot(
                name=cfg.name,
                persona=cfg.persona,
                model=model,
                picker=cfg.picker,
                handle=cfg.account.handle,
                did=did,
                weight=cfg.weight,
                languages=tuple(cfg.languages),
            )
        )
    return bots


def freeze_startup_heap() -> None:
    """Take what start-up allocated out of the garbage collector's full passes.

    A process that has imported the SDKs (atproto's models, openai, anthropic, starlette) and
    built the app holds ~280k container objects that live until exit; every full collection
    walked them all, a 170 ms pause of the event loop (the reader, the websocket's pings) on
    the benchmarks' machine, 0.0 ms once frozen. Called once per process by the CLI after
    ``build_app``; not by ``build_app`` itself, because a frozen object is never collected, and
    a process that builds many apps (the tests) would keep every one of them.
    """
    gc.collect()
    gc.freeze()


async def build_app(
    loaded: LoadedConfig,
    secrets: Secrets,
    *,
    http_client: Any = None,
    poster: Poster | None = None,
    source: Source | None = None,
    known_handles: dict[str, str] | None = None,
    metrics: Metrics | None = None,
) -> App:
    """Wire every component from the loaded configuration; the ledger is opened here.

    ``source`` and ``poster`` replace the configured ones (the simulation is both);
    ``known_handles`` seeds the identity map (DID → handle); ``metrics`` is the registry the
    models and the poster report to (a fresh one by default).
    """
    st = loaded.settings
    st.data_dir.mkdir(parents=True, exist_ok=True)
    # A lockstep run over a finite source waits on every post anyway: SQLite calls run on the
    # loop's thread there (no hand-off per call); live sources keep the worker thread.
    inline = st.dispatch.lockstep and st.source.kind in ("replay", "sim")
    ledger = cast(
        Ledger,
        RetryingLedger(
            open_ledger(st.ledger.url, st.data_dir, inline=inline),
            deadline_s=st.ledger.retry_deadline_s,
        ),
    )
    await ledger.open()
    rng = random.Random(st.seed)
    cursor_name = source.name if source is not None else st.source.cursor_name
    if source is None:
        # Live sources always resume (they rewind a little themselves; work is idempotent);
        # a replay is a fixed experiment and starts from the top unless asked to resume.
        resume = st.source.resume or st.source.kind in ("jetstream", "relay")
        after = await ledger.load_cursor(cursor_name) if resume else None
        source = open_source(st.source, after_cursor=after)

    is_pg = st.ledger.url.startswith(("postgres://", "postgresql://"))
    partitioned = st.scale.partitioned if st.scale.partitioned is not None else is_pg
    if partitioned and not is_pg:
        raise ConfigError("scale.partitioned needs a PostgreSQL ledger (ledger.url)")
    partitions: PgPartitions | SinglePartition = (
        PgPartitions(
            st.ledger.url,
            count=st.scale.partitions,
            group=st.scale.group,
            rebalance_s=st.scale.rebalance_s,
            rng=random.Random(),  # member ids must differ between replicas, seed or not
        )
        if partitioned
        else SinglePartition()
    )
    metrics = metrics or Metrics()
    kill_switch = KillSwitch(file=st.posting.kill_switch_file, env=st.posting.kill_switch_env)
    bots = build_bots(loaded, secrets, http_client=http_client, metrics=metrics)
    if st.posting.mode == "live" and poster is None:
        from botsky.atposter import open_live_poster

        enabled = {b.name for b in bots}
        accounts = []
        for cfg in loaded.bots:
            password = secrets[cfg.name].password if cfg.name in secrets else None
            if cfg.name in enabled and password is not None:
                accounts.append((cfg.name, cfg.account, password))
        poster = await open_live_poster(
            pds_url=st.posting.pds_url,
            accounts=accounts,
            data_dir=st.data_dir,
            points_per_hour=st.posting.points_per_hour,
            points_per_day=st.posting.points_per_day,
            headroom=st.posting.budget_headroom,
            posts_per_minute=st.posting.posts_per_minute,
            max_wait_s=st.posting.max_wait_s,
            paused=kill_switch,
            # Replicas share the bot accounts: each uses its share of their write budgets.
            share=lambda: 1.0 / max(1, len(partitions.alive())),
        )
        # Live bots are who their PDS says they are: the DID comes from the login.
        bots = [dataclasses.replace(b, did=poster.did_of(b.name)) for b in bots]
    known = {**(known_handles or {}), **{b.did: b.handle for b in bots}}
    identity: MemoryIdentity | ResolvingIdentity = (
        ResolvingIdentity(
            plc_url=st.identity.plc_url,
            verify=st.identity.verify,
            resolve_handle_url=st.identity.resolve_handle_url,
            cache_ttl_s=st.identity.cache_ttl_s,
            max_entries=st.identity.max_entries,
            concurrency=st.identity.concurrency,
            queue_size=st.identity.queue_size,
            known=known,
        )
        if st.identity.resolve
        else MemoryIdentity(known)
    )
    presence = Presence(
        window_s=st.presence.window_s,
        max_users=st.presence.max_users,
        terms_per_user=st.presence.terms_per_user,
        texts_per_user=st.presence.texts_per_user,
    )
    policy = AudiencePolicy(
        mode=st.audience.mode,
        bot_dids=[b.did for b in bots],
        allow_list=st.audience.allow_list,
        opted_out=await ledger.opt_outs(),
        handle_of=identity.handle,
        stop_phrases=st.audience.stop_phrases,
        nobot_tag=st.audience.nobot_tag,
        mentions_per_target_per_day=st.audience.mentions_per_target_per_day,
        replies_per_author_per_day=st.audience.replies_per_author_per_day,
        clock=lambda: presence.now_us,
        kill_switch=kill_switch,
    )
    mentioned = await ledger.mentions()
    for m in mentioned:  # the daily caps survive restarts (old mentions simply age out)
        policy.note_reply(m.post_author, m.mentioned_did, m.created_us)
    outcomes = OutcomeWatcher(ledger, window_s=st.outcomes.window_s)
    selector = dispatcher = None
    if bots:
        army = Army(bots, random.Random(rng.random()))
        recommender = Recommender(
            presence,
            identity,
            top_k=st.recommend.top_k,
            cooldown_s=st.recommend.cooldown_s,
            require_shared_language=st.recommend.require_shared_language,
            is_bot=army.is_bot,
            may_mention=policy.may_mention,
        )
        for m in mentioned:
            recommender.note_mentioned(m.mentioned_did, m.created_us)
        selector = Selector(
            is_bot=army.is_bot,
            may_answer=policy.may_answer,
            sample_rate=st.dispatch.sample_rate,
            author_cooldown_s=st.dispatch.author_cooldown_s,
            reply_to_bots=st.dispatch.reply_to_bots,
            reply_to_replies=st.dispatch.reply_to_replies,
            languages=tuple(st.dispatch.languages),
            rng=random.Random(rng.random()),
        )
        dispatcher = Dispatcher(
            army=army,
            recommender=recommender,
            presence=presence,
            identity=identity,
            ledger=ledger,
            poster=metrics.poster(poster or DryRunPoster(st.data_dir / st.posting.dry_run_file)),
            outcomes=outcomes,
            rules=ComposeRules(
                max_graphemes=st.compose.max_graphemes,
                max_bytes=st.compose.max_bytes,
                allow_links=st.compose.allow_links,
                allow_other_mentions=st.compose.allow_other_mentions,
            ),
            queue_size=st.dispatch.queue_size,
            workers=st.dispatch.workers,
            rng=random.Random(rng.random()),
            replica=partitions.member,
            on_reply=policy.note_reply,
            paused=policy.posting_paused,
        )
    else:
        log.warning("no_bots_enabled", hint="set the bots' API key variables or add template bots")
    feed = None
    if st.feed.enabled:
        from botsky.feed import open_feed

        feed = open_feed(
            st.feed,
            ledger=cast(Any, ledger),  # RetryingLedger passes the FeedLedger methods through
            plc_url=st.identity.plc_url,
            # The stream clock, like every other window; the wall clock before the first event.
            clock=lambda: presence.now_us or time.time_ns() // 1000,
            opted_out=policy.opted_out.__contains__,
            score_interval_s=st.scoring.interval_s,
        )
        from botsky.feed.metrics import FeedCollector

        metrics.registry.register(FeedCollector(feed))
    return App(
        source=source,
        ledger=ledger,
        presence=presence,
        identity=identity,
        policy=policy,
        outcomes=outcomes,
        selector=selector,
        dispatcher=dispatcher,
        cursor_name=cursor_name,
        cursor_every=st.cursor_every,
        score_interval_s=st.scoring.interval_s,
        drain_on_eof=st.dispatch.drain_on_eof,
        lockstep=st.dispatch.lockstep,
        shutdown_deadline_s=st.dispatch.shutdown_deadline_s,
        models=tuple(b.model for b in bots),
        metrics=metrics,
        web=st.web,
        partitions=partitions,
        handover_buffer=st.scale.handover_buffer,
        feed=feed,
    )
