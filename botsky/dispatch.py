"""Dispatch: pick eligible posts and turn each into at most one bot reply with one mention.

The reader never waits on a model: ``Dispatcher.offer`` puts a post on a bounded queue and, when
the queue is full, drops the post and counts the drop. N workers then run, per post::

    bot = army.pick()  [re-drawn if paused]  →  offer = recommender.offer(bot.picker)
    →  draft = write_reply(model)  →  compose (validate, facets, limits)  →  ledger.claim(post)
    →  poster.reply  →  ledger.record_mention  →  outcomes.track

A bot whose model keeps failing is paused by its circuit breaker (``botsky.health``); a post
drawn for a paused bot is re-drawn among the bots that are not, and the re-draw is logged
(``bot_redrawn``: the post, the bot drawn, the bot answering, why), counted (``redraws``) and
kept on the mention (``extra.redrawn_from``), so the trial's assignment stays on record.

Each queued post carries the runtime's hold on the saved cursor (``botsky.watermark``): it is
released once a worker is done with the post (posted, parked as ``retry``, or refused with a
reason), never when the post is discarded at a stop or its worker cancelled, so the next start
reads it again. Right after a start nobody's handle is verified yet: a post with no candidate
then waits (up to ``handles_wait_s``) for the handles identity is resolving and is offered again.

The claim comes after the model call, right before posting, so a failed model call leaves no
trace in the ledger; the claim's unique key makes a second reply to the same post impossible
across restarts and replicas.

Consent and the kill switch are checked before the model call and again after it, right before
the claim and right before the post (crash recovery and retries included): a model call takes
seconds, and an author or a chosen user who opted out meanwhile (blocked a bot, asked to stop,
``#nobot``) is neither answered nor mentioned, nor is an account deactivated or taken down
meanwhile (an ``#account`` event). Such a reply is dropped and counted (``author_opted_out``,
``mention_opted_out``, ``author_inactive``, ``mention_inactive``, ``paused_before_post``).

Unknown is not failed. A create that timed out, got a 5xx or lost its connection may have landed.
Its claim stays claimed, as ``retry`` with the number of attempts and the time of the next one
(``RetryPolicy``: exponential backoff), and is settled the way crash recovery settles a claim
left ``posting``: look the reply up in the bot's repo by its record key, record it if it is there,
otherwise post it again under the same key (the PDS refuses a second record under one key, so a
reply is never posted twice; the mention is recorded once, by post). The worker is free at once;
``settle_due``, run by the runtime's settle loop, takes due claims one at a time (a compare and
set in the ledger, so two replicas never settle the same one). Only a definite refusal (a 4xx
that means no) fails a claim at once; a reply refused before anything was sent for it (write
budget spent, account blocked by a 429, kill switch) fails with that reason. After
``RetryPolicy.attempts`` unknown outcomes no more creates are sent: the claim fails
(``gave_up``) as soon as the PDS says the reply is not there, and is looked up every
``max_s`` until it can say.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

import structlog

from botsky.army import Army
from botsky.compose import Offered, compose
from botsky.errors import (
    DraftRejected,
    FatalError,
    PostError,
    PostRateLimited,
    RetryableError,
    SkipError,
)
from botsky.events import Event, PostRef, uri_authority
from botsky.health import UNAVAILABLE, BotHealth
from botsky.identity import Identity
from botsky.ledger.base import Claim, Ledger, Mention, mention_log_fields
from botsky.llm.reply import ReplyRequest, write_reply
from botsky.outcomes import OutcomeWatcher
from botsky.posting import Posted, Poster, ReplyPost, StrongRef, reply_rkey
from botsky.presence import Presence
from botsky.recommend import Offer, Recommender
from botsky.secretguard import SecretGuard

__all__ = ["ComposeRules", "Dispatcher", "RetryPolicy", "Selector"]

log = structlog.get_logger("botsky.dispatch")

# How long after a start a post without candidates waits for handles being resolved.
_HANDLES_WAIT_AFTER_START_S = 120.0


class Selector:
    """Decides which new posts are worth a reply. ``reason`` returns None for eligible posts."""

    STATE_VERSION: ClassVar[int] = 1  # of ``snapshot``'s value: bump when its keys change

    def __init__(
        self,
        *,
        is_bot: Callable[[str], bool],
        may_answer: Callable[[str, int], bool] = lambda did, time_us: True,
        is_active: Callable[[str], bool] = lambda did: True,
        sample_rate: float = 1.0,
        author_cooldown_s: float = 3600.0,
        reply_to_bots: bool = False,
        reply_to_replies: bool = True,
        languages: tuple[str, ...] = (),
        rng: random.Random | None = None,
    ) -> None:
        self.is_bot = is_bot
        # The consent hook: the audience policy says whose posts may be answered.
        self.may_answer = may_answer
        # Whether the author's account is active (deactivated, taken down... are never answered).
        self.is_active = is_active
        self.sample_rate = sample_rate
        self.author_cooldown_us = int(author_cooldown_s * 1e6)
        self.reply_to_bots = reply_to_bots
        self.reply_to_replies = reply_to_replies
        self.languages = frozenset(languages)
        self.rng = rng or random.Random()
        self._last_answered: dict[str, int] = {}

    def snapshot(self) -> dict[str, Any]:
        """``{"rng": ..., "last_answered": {did: time_us}}``: the sampling RNG's state and the
        author cooldowns (the rest is configuration)."""
        return {"rng": self.rng.getstate(), "last_answered": dict(self._last_answered)}

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (a ``snapshot``): same RNG draws, same cooldowns."""
        self.rng.setstate(state["rng"])
        self._last_answered = dict(state["last_answered"])

    def reason(self, event: Event, post: PostRef) -> str | None:
        """Why this post is skipped, or None when it should get a reply."""
        if not event.is_post_create:
            return "not_a_new_post"
        if self.is_bot(event.did):
            return "by_bot"
        if not post.text.strip():
            return "no_text"
        if post.is_reply and not self.reply_to_replies:
            return "is_reply"
        if (
            not self.reply_to_bots
            and post.parent_uri
            and self.is_bot(uri_authority(post.parent_uri))
        ):
            return "reply_to_bot"
        if self.languages and post.langs and not self.languages & set(post.langs):
            return "language"
        if not self.is_active(event.did):
            return "inactive_account"
        if not self.may_answer(event.did, event.time_us):
            return "no_consent"
        last = self._last_answered.get(event.did)
        if last is not None and event.time_us - last < self.author_cooldown_us:
            return "author_cooldown"
        if self.sample_rate < 1.0 and self.rng.random() >= self.sample_rate:
            return "sampled_out"
        return None

    def accepted(self, event: Event) -> None:
        """Start the author's cooldown (called once the post is queued)."""
        self._last_answered[event.did] = event.time_us
        # Bounded: forget authors whose cooldown is over (an open audience never repeats).
        if len(self._last_answered) > 100_000:
            cutoff = event.time_us - self.author_cooldown_us
            self._last_answered = {d: t for d, t in self._last_answered.items() if t > cutoff}


@dataclass(frozen=True, slots=True)
class ComposeRules:
    max_graphemes: int = 300
    max_bytes: int = 3000
    allow_links: bool = False
    allow_other_mentions: bool = False


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often a reply whose outcome is unknown is settled again: the n-th attempt waits
    ``min(max_s, initial_s · 2^(n-1))``; after ``attempts`` of them no more creates are sent."""

    attempts: int = 8
    initial_s: float = 5.0
    max_s: float = 300.0

    def delay(self, attempts: int) -> float:
        """Seconds before the next attempt, after ``attempts`` unknown outcomes (≥ 1)."""
        return min(self.max_s, self.initial_s * 2 ** max(0, attempts - 1))


@dataclass(frozen=True, slots=True)
class _Job:
    event: Event
    post: PostRef
    queued_at: float
    token: int | None = None  # the runtime's hold on the cursor (botsky.watermark)


class Dispatcher:
    """The bounded queue and its workers."""

    STATE_VERSION: ClassVar[int] = 1  # of ``snapshot``'s value: bump when its keys change

    def __init__(
        self,
        *,
        army: Army,
        recommender: Recommender,
        presence: Presence,
        identity: Identity,
        ledger: Ledger,
        poster: Poster,
        outcomes: OutcomeWatcher,
        rules: ComposeRules = ComposeRules(),
        queue_size: int = 100,
        workers: int = 4,
        rng: random.Random | None = None,
        replica: str = "local",
        on_reply: Callable[[str, str, int], None] = lambda author, mentioned, time_us: None,
        paused: Callable[[], bool] = lambda: False,
        opted_out: Callable[[str], bool] = lambda did: False,
        is_active: Callable[[str], bool] = lambda did: True,
        guard: SecretGuard,
        health: BotHealth | None = None,
        retry: RetryPolicy = RetryPolicy(),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.army = army
        self.health = health or BotHealth()
        self.guard = guard  # the process's secrets: a draft holding one is never posted
        self.replica = replica  # written into each claim's intent (who may recover it)
        # Consent hooks: count replies toward the daily caps; the kill switch pauses posting;
        # ``opted_out(did)`` is asked again right before each post.
        self.on_reply = on_reply
        self.paused = paused
        self.opted_out = opted_out
        # Asked again right before each post too: an account deactivated or taken down while
        # the model ran is neither answered nor mentioned.
        self.is_active = is_active
        self.recommender = recommender
        self.presence = presence
        self.identity = identity
        self.ledger = ledger
        self.poster = poster
        self.outcomes = outcomes
        self.rules = rules
        self.retry = retry
        self.clock = clock  # wall-clock seconds: when a retry is due survives restarts
        self.workers = workers
        self.rng = rng or random.Random()
        # Unbounded underneath so the stop markers never wait; ``offer`` enforces the bound.
        self.queue_size = queue_size
        self.queue: asyncio.Queue[_Job | None] = asyncio.Queue()
        self._room = asyncio.Event()  # set whenever a worker takes a job off the queue
        # Called with a job's token once its worker is done with it (not when it is cancelled
        # or discarded): the runtime's low-water mark then moves past it (botsky.watermark).
        self.release: Callable[[int], None] = lambda token: None
        # A post with no candidate waits this long for handles being resolved (see
        # ``_handles_resolved``): after a start, nobody has a verified handle yet.
        self.handles_wait_s = 5.0
        self._started = time.monotonic()
        self.counts: Counter[str] = Counter()
        self.redraws: Counter[str] = Counter()  # posts re-drawn away from each paused bot

    def snapshot(self) -> dict[str, Any]:
        """``{"rng": ..., "counts": {outcome: n}, "redraws": {bot: n}}``: the RNG the pickers
        draw from and what the workers did so far. Not the queue: snapshots are taken with it
        empty (lockstep, at a day boundary); nor the army, which has its own; nor the bots'
        circuit breakers, which run on the wall clock (a resumed run starts with all closed)."""
        return {
            "rng": self.rng.getstate(),
            "counts": dict(self.counts),
            "redraws": dict(self.redraws),
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (a ``snapshot``): same RNG draws, counts going on."""
        self.rng.setstate(state["rng"])
        self.counts = Counter(state["counts"])
        self.redraws = Counter(state.get("redraws", {}))

    def offer(self, event: Event, post: PostRef, token: int | None = None) -> bool:
        """Queue a post without waiting; False (and a counted drop) when the queue is full.
        ``token`` is released once a worker is done with the post."""
        if self.queue.qsize() >= self.queue_size:
            self.counts["dropped_queue_full"] += 1
            return False
        self.queue.put_nowait(_Job(event, post, time.perf_counter(), token))
        self.counts["queued"] += 1
        return True

    async def put(self, event: Event, post: PostRef, token: int | None = None) -> None:
        """Queue a post, waiting for room (for handover work, never for the reader)."""
        while self.queue.qsize() >= self.queue_size:
            self._room.clear()
            await self._room.wait()
        self.queue.put_nowait(_Job(event, post, time.perf_counter(), token))
        self.counts["queued"] += 1

    async def run(self) -> None:
        """Run the workers until ``close`` has been called and the queue is drained.

        A ``FatalError`` in one worker stops them all and is raised (in an ExceptionGroup).
        """
        async with asyncio.TaskGroup() as tg:
            for _ in range(self.workers):
                tg.create_task(self._worker())

    async def close(self) -> None:
        """Let the workers finish what is queued, then stop them."""
        for _ in range(self.workers):
            self.queue.put_nowait(None)

    def discard_pending(self) -> int:
        """Take the queued posts off the queue (on shutdown without draining); returns how
        many. Their tokens are not released: the runtime's mark stays before them, so the
        next start reads them again (botsky.watermark)."""
        n = 0
        while True:
            try:
                job = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                return n
            if job is None:
                # Keep the stop marker so every worker still sees one.
                self.queue.put_nowait(None)
                return n
            n += 1

    async def _worker(self) -> None:
        while (job := await self.queue.get()) is not None:
            self._room.set()
            try:
                outcome = await self.handle(job.event, job.post)
            except FatalError:
                raise  # stops the run (see botsky.errors)
            except (SkipError, RetryableError) as exc:
                outcome = exc.outcome
                log.warning("dispatch_skipped", post=job.event.uri, outcome=outcome, error=str(exc))
            except Exception:
                # A bug: one bad post must never kill a worker; logged with its post, counted.
                outcome = "error"
                log.exception("dispatch_failed", post=job.event.uri)
            finally:
                self.queue.task_done()
            # Done with it (a cancellation or a FatalError never gets here: kept for the next
            # start, which reads the post again).
            if job.token is not None:
                self.release(job.token)
            self.counts[outcome] += 1

    async def wait_idle(self) -> None:
        """Wait until every queued post has been handled (lockstep replays)."""
        await self.queue.join()

    async def handle(self, event: Event, post: PostRef) -> str:
        """Answer one post; returns what happened (``posted`` or why it was skipped)."""
        structlog.contextvars.bind_contextvars(post=event.uri)
        try:
            return await self._handle(event, post)
        finally:
            structlog.contextvars.unbind_contextvars("post")

    async def _handle(self, event: Event, post: PostRef) -> str:
        if self.paused():
            return "paused"
        # A replay or a rewound cursor shows posts again: skip them before paying for a model.
        if await self.ledger.is_claimed(event.uri):
            return "already_claimed"
        bot = self.army.pick(event.uri, post.langs)
        if bot is None:
            return "no_bot_for_language"
        drawn = bot
        if not await self.health.ready(bot):
            bot = self.army.pick(event.uri, post.langs, among=self.health.available)
            reason = self.health.reason(drawn.name)
            if bot is None:
                log.warning("no_bot_available", drawn=drawn.name, reason=reason)
                return "no_bot_available"
            self.redraws[drawn.name] += 1
            log.info("bot_redrawn", drawn=drawn.name, bot=bot.name, reason=reason)

        def make_offer() -> Offer:
            return self.recommender.offer(
                bot.picker,
                post.text,
                event.did,
                post.langs,
                self.rng,
                post_uri=event.uri,
                bot_did=bot.did,
                quality=bot.quality,
            )

        offer = make_offer()
        if not offer.candidates and await self._handles_resolved():
            # Candidates may have been waiting for their handles (a start, a new user).
            offer = make_offer()
        if not offer.candidates:
            log.info("no_candidates", bot=bot.name)
            return "no_candidates"
        author = self.presence.profile(event.did)
        req = ReplyRequest(
            persona=bot.persona,
            post_text=post.text,
            author_handle=self.identity.handle(event.did) or event.did,
            author_recent=tuple(t for t in (author.texts if author else ()) if t != post.text),
            candidates=offer.candidates,
            langs=post.langs,
            max_graphemes=self.rules.max_graphemes,
            chosen=None if offer.model_chooses else offer.candidates[0].handle,
        )
        started = time.perf_counter()
        try:
            try:
                draft = await write_reply(bot.model, req, guard=self.guard)
            except asyncio.CancelledError:
                self.health.abandoned(bot)
                raise
            except Exception as exc:
                # Only unavailability counts toward a pause: a refusal or a broken answer
                # still means the model is there.
                if isinstance(exc, UNAVAILABLE):
                    self.health.failed(bot, exc)
                else:
                    self.health.succeeded(bot)
                raise
            self.health.succeeded(bot)
            composed = compose(
                draft.reply,
                draft.mention,
                [Offered(c.did, c.handle) for c in offer.candidates],
                langs=post.langs,
                max_graphemes=self.rules.max_graphemes,
                max_bytes=self.rules.max_bytes,
                allow_links=self.rules.allow_links,
                allow_other_mentions=self.rules.allow_other_mentions,
            )
        except (SkipError, RetryableError) as exc:
            # draft_rejected, model_error, model_unavailable: the post is skipped unclaimed.
            if isinstance(exc, DraftRejected):
                log.warning("draft_rejected", bot=bot.name, model=bot.model_name, reason=exc.reason)
            else:
                log.warning(exc.outcome, bot=bot.name, model=bot.model_name, error=str(exc))
            return exc.outcome
        chosen = next(c for c in offer.candidates if c.did == composed.mention.did)
        # The model took a while: whoever opted out meanwhile is not answered nor mentioned.
        refused = self._refusal(event.did, chosen.did)
        if refused is not None:
            log.info("reply_dropped", bot=bot.name, reason=refused, mentioned=chosen.did)
            return refused

        now = self.presence.now_us
        root = StrongRef(post.root_uri, post.root_cid) if post.root_uri and post.root_cid else None
        parent = StrongRef(event.uri, event.cid or "")
        reply = ReplyPost(
            bot=bot.name,
            bot_did=bot.did,
            text=composed.text,
            facets=composed.facets,
            langs=composed.langs,
            root=root or parent,
            parent=parent,
            created_at=_rfc3339(now),
            rkey=reply_rkey(event.time_us, f"{bot.did}|{event.uri}"),
        )
        mention = Mention(
            post_uri=event.uri,
            post_cid=event.cid or "",
            post_author=event.did,
            root_uri=reply.root.uri,
            root_cid=reply.root.cid,
            bot=bot.name,
            model=bot.model_name,
            provider=bot.provider,
            persona=bot.persona[:200],
            picker=bot.picker,
            reply_uri="",
            reply_cid="",
            reply_text=composed.text,
            mentioned_did=chosen.did,
            mentioned_handle=chosen.handle,
            candidates=[c.did for c in offer.candidates],
            rank=chosen.rank,
            created_us=now,
            prompt_tokens=draft.usage.prompt_tokens,
            completion_tokens=draft.usage.completion_tokens,
            cost_usd=draft.usage.cost_usd,
            latency_ms=round((time.perf_counter() - started) * 1000, 1),
            extra={
                # The outcome window it is watched under: scoring reads it with this window
                # even if outcomes.window_s changes later (docs/statistics.md).
                "window_s": self.outcomes.window_us / 1e6,
                **_extra(composed.repaired, drawn.name if drawn is not bot else None),
            },
        )
        # The intent goes in with the claim, so a crash before record_mention loses nothing.
        # The ledgers encode it with orjson, which writes dataclasses as objects natively
        # (dataclasses.asdict's deep copy was a sixth of the dispatch cost).
        intent = {"replica": self.replica, "reply": reply, "mention": mention}
        if not await self.ledger.claim(event.uri, bot.name, now, intent):
            return "already_claimed"
        return await self._settle(reply, mention, find_first=False)

    async def _handles_resolved(self) -> bool:
        """Wait (at most ``handles_wait_s``) for the handles identity is resolving; True if
        there were any (a post's candidates may be among them), False at once if none, or
        once the process has run for two minutes."""
        if time.monotonic() - self._started > _HANDLES_WAIT_AFTER_START_S:
            return False  # a busy stream always has DIDs resolving: only right after a start
        if not self.identity.resolving():
            return False
        try:
            await asyncio.wait_for(self.identity.drain(), self.handles_wait_s)
        except TimeoutError:
            log.info("handles_still_resolving", waited_s=self.handles_wait_s)
        return True

    async def recover(
        self, only: Callable[[str, dict[str, Any] | None], bool] | None = None
    ) -> Counter[str]:
        """Settle claims left ``posting`` by a crash: record the reply if the bot's repo has
        it, post it (under the same record key) if it does not, or leave it to a retry when
        the PDS cannot tell. Run before reading events.

        ``only(post_uri, intent)`` limits it to some claims (with replicas: those of dead
        replicas in partitions this one owns, so no two replicas settle the same claim).
        """
        done: Counter[str] = Counter()
        for claim in await self.ledger.claims("posting"):
            if only is None or only(claim.post_uri, claim.intent):
                done[await self._settle_claim(claim, claim.intent)] += 1
        return done

    async def settle_due(
        self, only: Callable[[str, dict[str, Any] | None], bool] | None = None, limit: int = 100
    ) -> Counter[str]:
        """Settle the ``retry`` claims that are due (the runtime's settle loop calls this).

        Each is taken in the ledger first (a compare and set: a claim another replica took is
        skipped). After a bot's PDS fails to answer, that bot's other claims wait for the next
        round rather than each waiting out a timeout now.
        """
        done: Counter[str] = Counter()
        held_back: set[str] = set()
        for claim in await self.ledger.due_claims(int(self.clock() * 1e6), limit):
            if claim.owner in held_back or (only and not only(claim.post_uri, claim.intent)):
                continue
            intent = await self.ledger.take_claim(claim.post_uri, claim.attempts, self.replica)
            if intent is None:
                continue
            outcome = await self._settle_claim(claim, intent)
            if outcome == "post_unknown":
                held_back.add(claim.owner)
            done[outcome] += 1
            self.counts[f"settled_{outcome}"] += 1
        return done

    async def _settle_claim(self, claim: Claim, intent: dict[str, Any] | None) -> str:
        if intent is None:
            await self.ledger.finish_claim(claim.post_uri, "failed", "no_intent")
            return "no_intent"
        r, m = intent["reply"], intent["mention"]
        reply = ReplyPost(
            **{**r, "root": StrongRef(**r["root"]), "parent": StrongRef(**r["parent"])}
        )
        outcome = await self._settle(reply, Mention(**m), find_first=True, attempts=claim.attempts)
        log.info("claim_settled", post=claim.post_uri, bot=claim.owner, outcome=outcome)
        return outcome

    async def _settle(
        self, reply: ReplyPost, mention: Mention, *, find_first: bool, attempts: int = 0
    ) -> str:
        """Post (or, when an earlier create may have landed, first find) the reply, then
        record the mention; or fail the claim with its reason; or leave it to a retry.

        ``find_first`` is set when a create may have been sent before (a crash, an unknown
        outcome); ``attempts`` is how many settle attempts ended unknown so far.
        """
        uri = mention.post_uri
        try:
            posted = await self._find_or_post(
                reply, mention, find_first=find_first, attempts=attempts
            )
        except PostError as exc:  # a definite refusal
            return await self._fail(reply, mention, exc.reason, exc, outcome="post_failed")
        except PostRateLimited as exc:
            if find_first or attempts:
                # An earlier create may have landed: settle later, never fail it unseen.
                return await self._retry_later(uri, attempts + 1, exc, exc.retry_after or 0.0)
            # Nothing was ever sent for this reply: refused (budget, 429 block, kill switch).
            return await self._fail(reply, mention, exc.reason, exc, outcome=exc.reason)
        except RetryableError as exc:  # PostOutcomeUnknown: of a create or of a lookup
            return await self._retry_later(uri, attempts + 1, exc, 0.0)
        if isinstance(posted, str):
            return await self._fail(reply, mention, posted, None, outcome=posted)
        mention.reply_uri, mention.reply_cid = posted.uri, posted.cid
        await self.ledger.record_mention(mention)
        self.outcomes.track(mention)
        self.recommender.note_mentioned(mention.mentioned_did, mention.created_us)
        self.on_reply(mention.post_author, mention.mentioned_did, mention.created_us)
        _log_posted(mention)
        return "posted"

    async def _find_or_post(
        self, reply: ReplyPost, mention: Mention, *, find_first: bool, attempts: int
    ) -> Posted | str:
        """Where the reply is (found, or posted now), or why it is not posted."""
        if find_first:
            found = await self.poster.lookup(reply.bot_did, reply.rkey, reply.parent.uri)
            if found is not None:
                return found
        if attempts >= self.retry.attempts:
            return "gave_up"  # the PDS says it is not there, after the last attempt
        # Last look before the post (and, in recovery or a retry, before posting a reply
        # composed a while ago): an opt-out or the kill switch since then drops it.
        refused = self._refusal(mention.post_author, mention.mentioned_did)
        if refused is not None:
            return refused
        return await self.poster.reply(reply)

    async def _fail(
        self,
        reply: ReplyPost,
        mention: Mention,
        reason: str,
        error: Exception | None,
        *,
        outcome: str,
    ) -> str:
        """Close the claim as failed, with why; returns ``outcome``."""
        await self.ledger.finish_claim(mention.post_uri, "failed", reason)
        fields = {"bot": reply.bot, "reason": reason, "mentioned": mention.mentioned_did}
        if error is None:
            log.info("reply_dropped", **fields)
        else:
            log.warning("post_failed", error=str(error), **fields)
        return outcome

    async def _retry_later(
        self, post_uri: str, attempts: int, error: Exception, at_least_s: float
    ) -> str:
        """Park the claim as ``retry``: its outcome is unknown (or it waits for a block)."""
        delay = max(self.retry.delay(attempts), at_least_s)
        reason = f"{type(error).__name__}: {error}"[:300]
        due_us = int((self.clock() + delay) * 1e6)
        if not await self.ledger.retry_claim(post_uri, attempts, due_us, reason):
            log.warning("claim_not_posting", post=post_uri)  # another process settled it
        log.warning(
            "post_unsettled", post=post_uri, attempts=attempts, retry_in_s=delay, error=reason
        )
        return "post_unknown"

    def _refusal(self, author: str, mentioned: str) -> str | None:
        """Why a reply may no longer be posted, or None."""
        if self.paused():
            return "paused_before_post"
        if self.opted_out(author):
            return "author_opted_out"
        if self.opted_out(mentioned):
            return "mention_opted_out"
        if not self.is_active(author):
            return "author_inactive"
        if not self.is_active(mentioned):
            return "mention_inactive"
        return None


def _log_posted(m: Mention) -> None:
    # The canonical line per handled post; `botsky scores --logs` rebuilds scores from it.
    log.info("reply_posted", **mention_log_fields(m))


def _extra(repaired: tuple[str, ...] | list[str], redrawn_from: str | None) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if repaired:
        extra["repaired"] = list(repaired)
    if redrawn_from is not None:
        extra["redrawn_from"] = redrawn_from  # the bot first drawn for this post was paused
    return extra


def _rfc3339(time_us: int) -> str:
    dt = datetime.fromtimestamp(time_us / 1e6, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"
