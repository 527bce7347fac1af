"""The runtime: one botsky process, from its first event to its run summary.

``App.run`` reads the source, routes each event to its sinks (identity, consent, presence,
outcomes, the selector), lets the dispatch workers answer queued posts, saves the low-water
mark (``botsky.watermark``: the position before the oldest post whose work is unfinished)
every ``cursor_every`` events, every ``cursor_interval_s`` (when it moved) and at exit, logs a
reading of the scores every ``score_interval_s`` seconds of stream time and at shutdown,
settles replies whose outcome was unknown every ``settle_interval_s`` (their claims wait in the
ledger as ``retry``; see ``botsky.dispatch``), and returns a summary. Every long-running task
(reader, dispatch workers, scorer, settle loop, mark saver, identity resolution, partition
rebalancing) runs in one ``asyncio.TaskGroup``, so none outlives the run. The
components are built by ``botsky.wiring``; this module never reads ``Settings``.

Warm start: a run that starts before its mark (``Resume``: the warm-start position, a presence
window before the mark) reads that part in observe-only mode: every sink is fed (presence,
interests, handles, consent, outcomes) but no post is offered to dispatch; from the first post
past the mark on, it runs as usual (``warm_start_done``).

Shutdown: the source ends (a finite source: queued posts are answered unless
``drain_on_eof`` is off) or a stop is requested (queued posts are kept, not answered: the mark
stays before them, so the next start reads them again; replies in flight get
``shutdown_deadline_s``, then are cancelled, kept the same way, and a claim they left is settled
on the next start). Either way the mark is saved, scores are logged once more and the source is
closed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

from botsky.config import WebConfig
from botsky.dispatch import Dispatcher, Selector
from botsky.errors import FatalError, RetryableError, SkipError
from botsky.events import Event, PostRef
from botsky.identity import Identity
from botsky.ledger import Ledger
from botsky.llm.base import Model
from botsky.metrics import Metrics
from botsky.outcomes import OutcomeWatcher
from botsky.partition import Partitions, SinglePartition
from botsky.policy import AudiencePolicy, OptIn
from botsky.presence import Presence
from botsky.scoring import ScoringOptions, log_reading
from botsky.sources.base import Source
from botsky.watermark import Resume, Watermark, partition_key, warm_key
from botsky.web import SimulationView, WebServer, serve

if TYPE_CHECKING:
    from botsky.feed import FeedService

__all__ = ["App", "RunSummary"]

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
    opt_ins: int = 0
    # Posts read before the low-water mark on a warm start: observed, not answered again.
    warm_observed: int = 0
    # #account events that changed whether an account may be answered: deactivated, reactivated.
    accounts: Counter[str] = field(default_factory=Counter)
    # Bots left out at start (bot → why: no key, no server, key refused), and posts re-drawn
    # away from each bot while its circuit breaker had it paused.
    left_out: dict[str, str] = field(default_factory=dict)
    redrawn: Counter[str] = field(default_factory=Counter)
    cursor: int | None = None
    mark: int | None = None  # the low-water mark saved at exit (botsky.watermark)
    pending_kept: int = 0  # posts queued or in flight at exit: read again on the next start
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
            "opt_ins": self.opt_ins,
            "warm_observed": self.warm_observed,
            "accounts": dict(self.accounts),
            "left_out": dict(self.left_out),
            "redrawn": dict(self.redrawn),
            "cursor": self.cursor,
            "mark": self.mark,
            "pending_kept": self.pending_kept,
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
        identity: Identity,
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
        partitions: Partitions | None = None,
        handover_buffer: int = 10_000,
        left_out: dict[str, str] | None = None,
        settle_interval_s: float = 5.0,
        scoring: ScoringOptions | None = None,
        feed: FeedService | None = None,
        resume: Resume | None = None,
        warm_start_s: float = 0.0,
        cursor_interval_s: float = 1.0,
    ) -> None:
        self.source = source
        self.scoring = scoring or ScoringOptions()
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
        self.settle_interval_s = settle_interval_s
        self.drain_on_eof = drain_on_eof
        self.lockstep = lockstep
        self.shutdown_deadline_s = shutdown_deadline_s
        self._stop = asyncio.Event()
        self.models = models
        self.metrics = metrics or Metrics()
        self.web = web
        self.web_server: WebServer | None = None
        self.keep_serving = False  # `simulate --serve` keeps the page up after the run
        # Called with the page's URL once the web app accepts (`simulate --serve` prints it).
        self.on_serving: Callable[[str], None] | None = None
        # A simulation's world truth for the page (``botsky.sim.truth.LiveTruth``, a
        # ``web.SimulationView``); None for a live run. The page then also links nothing to
        # bsky.app: its users and posts are not there.
        self.simulation: SimulationView | None = None
        self.partitions: Partitions = partitions or SinglePartition()
        # Eligible posts of partitions owned elsewhere, to answer if this replica takes over.
        self._handover: deque[tuple[Event, PostRef, int | None]] = deque(
            maxlen=handover_buffer or None
        )
        self.partitions.on_acquire = self._took_over
        self.summary = RunSummary(left_out=dict(left_out or {}))
        self._cursor: int | None = None
        # Where this run started and where its observe-only part ends; the low-water mark.
        self.resume = resume or Resume()
        self.watermark = Watermark(
            self.resume.start,
            before=getattr(source, "position_before", None),
            window_us=int(warm_start_s * 1e6),
        )
        self.cursor_interval_s = cursor_interval_s
        self.handles_timeout_s = 10.0
        self._saved: dict[str, int] = {}  # what this run saved last, per ledger key
        self._warming = self.resume.warm
        if self.dispatcher is not None:
            self.dispatcher.release = self.watermark.release
        self._failure: Exception | None = None  # what ended a task of the run, re-raised
        self.feed = feed  # the fair-exposure feed (botsky.feed), served by the web app

    async def run(self, stop: asyncio.Event | None = None) -> RunSummary:
        """Run until the source ends or ``stop`` is set; always saves the cursor and scores.

        An exception that ends one of the run's tasks (the reader, the workers, the scorer,
        identity resolution) stops the run in order, like a stop request, and is raised here
        once the cursor is saved and the summary logged.
        """
        stop = self._stop = stop or asyncio.Event()
        self._failure = None
        # The web server (with the feed it serves, and the feed's refresh loop) is outside the
        # group: `simulate --serve` keeps the page up after the run; ``aclose`` stops both.
        if self.feed is not None:
            await self.feed.start()
        if self.web is not None and self.web.enabled:
            self.web_server = await serve(
                self,
                host=self.web.host,
                port=self.web.port,
                token=self.web.token,
                metrics=self.metrics,
                refresh_s=self.web.refresh_s,
                feed=self.feed,
            )
            log.info("web_started", url=self.web_server.url)
            if self.on_serving is not None:
                self.on_serving(self.web_server.url)
        try:
            async with asyncio.TaskGroup() as tg:
                services: list[asyncio.Task[None]] = []
                try:
                    await self._run_tasks(tg, stop, services)
                except Exception as exc:
                    # Raised below, not from the group: it would wrap it in an ExceptionGroup.
                    self._fail(exc)
                finally:
                    for task in services:  # they run until cancelled
                        task.cancel()
        finally:
            if self.web_server is not None and not self.keep_serving:
                await self.web_server.stop()
        if self._failure is not None:
            raise self._failure
        return self.summary

    async def _run_tasks(
        self, tg: asyncio.TaskGroup, stop: asyncio.Event, services: list[asyncio.Task[None]]
    ) -> None:
        services.append(tg.create_task(self._guard(self.identity.run()), name="identity"))
        loaded = await self.outcomes.load()
        await self.partitions.start()
        services.append(tg.create_task(self._guard(self.partitions.run()), name="partitions"))
        recovered = await self.dispatcher.recover(self._recoverable) if self.dispatcher else {}
        log.info(
            "app_started",
            source=self.source.name,
            open_mentions=loaded,
            recovered_claims=dict(recovered),
            start=self.resume.start,
            mark=self.resume.default,
            warm=self._warming,
        )
        workers = (
            tg.create_task(self._guard(self.dispatcher.run()), name="dispatch")
            if self.dispatcher
            else None
        )
        if self.dispatcher is not None:
            services.append(tg.create_task(self._guard(self._settle_loop()), name="settle"))
        scorer = tg.create_task(self._guard(self._score_loop()), name="scorer")
        services.append(tg.create_task(self._guard(self._mark_loop()), name="mark"))
        reader = tg.create_task(self._guard(self._read()), name="reader")
        stopper = tg.create_task(stop.wait(), name="stop")
        try:
            await asyncio.wait({reader, stopper}, return_when=asyncio.FIRST_COMPLETED)
            self.summary.interrupted = not reader.done() or self._failure is not None
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        finally:
            stopper.cancel()
            await self._finish(workers, scorer)

    async def _guard(self, work: Coroutine[Any, Any, None]) -> None:
        """Run one of the run's tasks; if it fails, stop the run in order (``run`` raises the
        error after the shutdown)."""
        try:
            await work
        except Exception as exc:
            self._fail(exc)

    def _fail(self, exc: Exception) -> None:
        # A task group (the dispatch workers') raises a group: the process reports its cause.
        while isinstance(exc, ExceptionGroup):
            exc = exc.exceptions[0]
        if self._failure is None:
            self._failure = exc
            log.error("run_stopping", error=f"{type(exc).__name__}: {exc}")
        self._stop.set()

    async def aclose(self) -> None:
        """Stop the web server and the feed, close the models, the poster, identity and the
        ledger."""
        if self.web_server is not None:
            await self.web_server.stop()
        if self.feed is not None:
            await self.feed.stop()
        for model in self.models:
            await model.aclose()
        if self.dispatcher is not None:
            await self.dispatcher.poster.aclose()
        await self.identity.aclose()
        await self.ledger.close()

    async def _read(self) -> None:
        async for event in self.source:
            await self.route(event)
            # Only now may the mark pass it: a reader cancelled inside route (a stop) has not
            # held the event's post yet, and the next start must read it again.
            self.watermark.passed(event)
            self._cursor = event.cursor
            if self.summary.events % self.cursor_every == 0:
                await self.save_mark()

    async def _mark_loop(self) -> None:
        """Save the mark every ``cursor_interval_s`` when it moved: work finishes between
        events too, and a quiet stream may not bring the next ``cursor_every`` for long."""
        while True:
            await asyncio.sleep(self.cursor_interval_s)
            try:
                await self.save_mark()
            except FatalError:
                raise
            except (SkipError, RetryableError) as exc:
                log.warning("cursor_save_skipped", outcome=exc.outcome, error=str(exc))

    async def save_mark(self) -> int | None:
        """Save the low-water mark (one per owned partition with replicas) and the warm-start
        position beside it; returns the mark (the lowest one saved). Nothing while a warm
        start reads before its mark: the saved mark and warm position stay as loaded."""
        w = self.watermark
        if self._warming:
            return self.resume.default
        saves: dict[str, int] = {}
        if self.partitions.single:
            mark = w.mark()
            if mark is not None:
                saves[self.cursor_name] = mark
        else:
            marks = w.marks(sorted(self.partitions.owned))
            saves |= {partition_key(self.cursor_name, p): m for p, m in marks.items()}
            mark = min(marks.values(), default=w.mark())
        warm = w.warm_position(mark)
        if warm is not None:
            saves[warm_key(self.cursor_name)] = warm
        for key, value in saves.items():
            if self._saved.get(key) != value:
                await self.ledger.save_cursor(key, value)
                self._saved[key] = value
        return mark

    async def route(self, event: Event) -> None:
        """Hand one event to every sink. One bad event is skipped and counted, never fatal to
        the stream; a ``FatalError`` is raised (it stops the run)."""
        s = self.summary
        s.events += 1
        s.by_kind[event.kind] += 1
        if event.kind == "commit":
            s.by_operation[event.operation or ""] += 1
            s.by_collection[event.collection or ""] += 1
        before = self.watermark.begin(event)
        if self._warming and self.resume.past_marks(event.cursor):
            await self._warm_start_done(event)
        try:
            self.identity.observe(event)
            change = self.policy.observe(event)
            if isinstance(change, OptIn):
                s.opt_ins += 1
                await self.ledger.add_opt_in(change.did, change.reason, event.time_us)
                log.info("opted_in", did=change.did, reason=change.reason)
            elif change is not None:
                s.opt_outs += 1
                await self.ledger.add_opt_out(change.did, change.reason, event.time_us)
                log.info("opted_out", did=change.did, reason=change.reason)
            if event.kind == "account":
                await self._note_account(event)
            self.presence.observe(event)
            await self.outcomes.observe(event)
            if self.feed is not None:
                self.feed.observe(event)
            if self.selector is not None and self.dispatcher is not None and event.is_post_create:
                await self._select(event, before)
        except FatalError:
            raise  # stops the run (see botsky.errors)
        except (SkipError, RetryableError) as exc:
            s.skip_reasons["route_skipped"] += 1
            log.warning("route_skipped", uri=_where(event), outcome=exc.outcome, error=str(exc))
        except Exception:
            # A bug: isolated to this event, counted, logged with its traceback.
            s.skip_reasons["route_error"] += 1
            log.exception("route_failed", uri=_where(event))

    async def _select(self, event: Event, before: int | None) -> None:
        """Offer a new post to dispatch, holding the low-water mark before it until its
        work is done; on a warm start, a post before the mark is only observed."""
        assert self.selector is not None and self.dispatcher is not None
        s = self.summary
        partition = self.partitions.partition(event.uri)
        if self.resume.observe_only(event.cursor, partition):
            s.warm_observed += 1
            return
        post = event.post
        reason = self.selector.reason(event, post)
        if reason is None and not self.partitions.owns(event.uri):
            reason = "other_replica"
            self._handover.append((event, post, before))
        if reason is None:
            token = self.watermark.hold(before, partition, event.time_us)
            if self.lockstep:
                # Replays wait for their work anyway, so they wait for room too: a
                # takeover's re-offers must not crowd a fresh post out of the queue.
                await self.dispatcher.put(event, post, token)
                self.selector.accepted(event)
                await self.dispatcher.wait_idle()
            elif self.dispatcher.offer(event, post, token):
                self.selector.accepted(event)
            else:
                self.watermark.release(token)  # dropped (queue full), counted by dispatch
        s.selector[reason or "queued"] += 1

    async def _warm_start_done(self, event: Event) -> None:
        """The stream passed the mark(s): from this event on, posts are answered as usual.
        First identity resolves the handles the window queued (bounded by
        ``handles_timeout_s``), so the first replies can mention whom the window saw."""
        self._warming = False
        try:
            await asyncio.wait_for(self.identity.drain(), self.handles_timeout_s)
        except TimeoutError:
            log.warning("warm_start_handles_pending", timeout_s=self.handles_timeout_s)
        log.info(
            "warm_start_done",
            cursor=event.cursor,
            observed_posts=self.summary.warm_observed,
            events=self.summary.events,
        )

    async def _note_account(self, event: Event) -> None:
        """An ``#account`` event: a deactivated account is neither answered nor mentioned from
        this event on, and stays so across restarts (the ledger) until it is reactivated."""
        change = self.policy.observe_account(event)
        if change is None:
            return
        await self.ledger.set_account_status(change)
        self.summary.accounts["reactivated" if change.active else "deactivated"] += 1
        log.info(
            "account_reactivated" if change.active else "account_deactivated",
            did=change.did,
            status=change.status,
        )

    def _recoverable(self, post_uri: str, intent: dict[str, Any] | None) -> bool:
        """Which crashed claims this process settles: all of them when it runs alone; with
        replicas, those of dead replicas in partitions it owns (never a live one's in-flight
        claim, and never the same claim as another survivor)."""
        if self.partitions.single:
            return True
        replica = (intent or {}).get("replica")
        return self.partitions.owns(post_uri) and replica not in self.partitions.alive()

    async def _took_over(self, taken: frozenset[int]) -> None:
        """A rebalance gave us partitions: answer what we skipped for them, settle the
        claims their previous owner left half-done."""
        part = self.partitions.partition
        # Split the buffer before awaiting anything: the reader keeps appending to it.
        mine = [(e, p, b) for e, p, b in self._handover if part(e.uri) in taken]
        self._handover = deque(
            ((e, p, b) for e, p, b in self._handover if part(e.uri) not in taken),
            maxlen=self._handover.maxlen,
        )
        offered = 0
        if self.dispatcher is not None:
            for event, post, before in mine:
                # Held before the first await: this partition's mark must not pass it.
                token = self.watermark.hold(before, part(event.uri), event.time_us)
                await self.dispatcher.put(event, post, token)
                offered += 1
        # The previous owner's open mentions: watch them for outcomes from now on.
        for m in await self.ledger.open_mentions():
            if part(m.post_uri) in taken:
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
                kept = self.dispatcher.discard_pending()
                if kept:
                    # Not dropped: the saved mark stays before them (botsky.watermark).
                    log.info("pending_posts_kept", count=kept)
            await self.dispatcher.close()
            # Draining waits for the workers, until a stop request comes (before or during the
            # drain): then queued posts are dropped and replies in flight get the deadline;
            # past it they are cancelled (a claim left 'posting' is settled on the next start).
            stopping = asyncio.create_task(self._stop.wait())
            await asyncio.wait({workers, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if not workers.done():
                self.summary.interrupted = True
                kept = self.dispatcher.discard_pending()
                if kept:
                    log.info("pending_posts_kept", count=kept)
                try:
                    await asyncio.wait_for(asyncio.shield(workers), self.shutdown_deadline_s)
                except TimeoutError:
                    log.warning("shutdown_deadline_passed", deadline_s=self.shutdown_deadline_s)
                    workers.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await workers
            self.summary.dispatch = self.dispatcher.counts
            self.summary.redrawn = self.dispatcher.redraws
        scorer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await scorer
        try:
            await self.outcomes.expire(self.presence.now_us)
            self.summary.pending_kept = self.watermark.held
            self.summary.mark = await self.save_mark()
            await self.log_scores()
            if self.dispatcher is not None:
                # Replies whose outcome is still unknown wait in the ledger for the next start
                # (or another replica): the summary says how many, never "answered".
                waiting = len(await self.ledger.claims("retry"))
                if waiting:
                    self.summary.dispatch["unsettled"] = waiting
        except Exception as exc:
            # The ledger may be what stopped the run (a full disk): the summary is still
            # logged and the source closed; the run raises the first error.
            self._fail(exc)
        finally:
            self.summary.cursor = self._cursor
            stats = self.source.stats
            self.summary.skipped = stats.skipped
            self.summary.skip_reasons.update(stats.skip_reasons)
            self.summary.outcomes = dict(self.outcomes.counts)
            log.info("run_summary", **self.summary.as_dict())
            await self.source.aclose()

    async def _score_loop(self) -> None:
        # On the stream clock: a reading as of every score_interval_s of stream time (expiry
        # happens in OutcomeWatcher.observe as the stream passes each window).
        async for as_of in self.outcomes.clock.every(self.score_interval_s):
            try:
                await self.log_scores(as_of)
            except FatalError:
                raise
            except (SkipError, RetryableError) as exc:
                log.warning("scoring_skipped", outcome=exc.outcome, error=str(exc))
            except Exception:
                log.exception("scoring_failed")  # a bug: this round only, the next one runs

    async def _settle_loop(self) -> None:
        """Settle the due ``retry`` claims of the partitions this replica owns, every
        ``settle_interval_s``; a round that fails is logged and the next one runs."""
        assert self.dispatcher is not None
        while True:
            await asyncio.sleep(self.settle_interval_s)
            try:
                done = await self.dispatcher.settle_due(lambda uri, _: self.partitions.owns(uri))
            except FatalError:
                raise
            except (SkipError, RetryableError) as exc:
                log.warning("settle_skipped", outcome=exc.outcome, error=str(exc))
                continue
            except Exception:
                log.exception("settle_failed")  # a bug: this round only, the next one runs
                continue
            if done:
                log.info("claims_settled", **done)

    async def log_scores(self, as_of_us: int | None = None) -> None:
        """Log the reading as of ``as_of_us`` (default: the stream clock) and save the stream
        clock in the ledger."""
        clock = self.outcomes.clock.now_us
        await log_reading(self.ledger, as_of_us or clock, clock, self.scoring)


def _where(event: Event) -> str:
    return event.uri if event.kind == "commit" else event.did
