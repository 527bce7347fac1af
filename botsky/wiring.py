"""The composition root: build botsky from the loaded configuration.

This is the only module (with the CLI commands) that reads ``Settings``; every component takes
plain arguments. ``build_app`` opens the ledger, the partitions, the poster and identity and
hands them to an ``App`` (``botsky.runtime``), which runs them.
"""

from __future__ import annotations

import dataclasses
import gc
import random
import time
from collections.abc import Callable, Container, Mapping
from typing import Any, cast
from urllib.parse import urlsplit

import structlog
from pydantic import SecretStr

from botsky.army import Army, Bot
from botsky.config import Settings
from botsky.configload import LoadedConfig, Secrets
from botsky.dispatch import ComposeRules, Dispatcher, RetryPolicy, Selector
from botsky.errors import ConfigError, ModelAccessError
from botsky.health import BotHealth, check_models, fix_hint
from botsky.identity import Identity, MemoryIdentity, ResolvingIdentity
from botsky.ledger import open_ledger
from botsky.ledger.retry import RetryingLedger
from botsky.llm import make_model
from botsky.llm.base import Model, Price
from botsky.metrics import Metrics
from botsky.outcomes import OutcomeWatcher
from botsky.partition import Partitions, PgPartitions, SinglePartition
from botsky.policy import ALLOW_LIST, AudiencePolicy, KillSwitch
from botsky.posting import DryRunPoster, LiveAccount, Poster
from botsky.presence import Presence
from botsky.recommend import Recommender
from botsky.runtime import App
from botsky.scoring import ScoringOptions
from botsky.secretguard import SecretGuard
from botsky.sources import open_source
from botsky.sources.base import Source
from botsky.watermark import Resume, load_resume

__all__ = [
    "build_app",
    "build_bots",
    "check_bots",
    "freeze_startup_heap",
    "live_accounts",
    "missing_keys",
    "scoring_options",
    "secret_guard",
]

log = structlog.get_logger("botsky.app")


def scoring_options(st: Settings) -> ScoringOptions:
    """How readings are made, from the ``outcomes`` and ``scoring`` settings."""
    return ScoringOptions(
        window_s=st.outcomes.window_s,
        horizon_s=st.scoring.engagement_horizon_s,
        alpha=st.scoring.alpha,
        controls=tuple(st.scoring.control_pickers),
    )


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
    missing = missing_keys(loaded, secrets)
    for cfg in loaded.bots:
        key = secrets[cfg.name].api_key if cfg.name in secrets else None
        if cfg.name in missing:
            log.warning(
                "bot_disabled",
                bot=cfg.name,
                reason=missing[cfg.name],
                hint=f"set {cfg.default_key_env} to include {cfg.name}",
            )
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
                quality=cfg.quality if cfg.quality is not None else 1.0,
            )
        )
    return bots


def missing_keys(loaded: LoadedConfig, secrets: Secrets) -> dict[str, str]:
    """Bots left out for want of an API key: bot name → why."""
    missing = {}
    for cfg in loaded.bots:
        key = secrets[cfg.name].api_key if cfg.name in secrets else None
        if cfg.default_key_env is not None and key is None:
            missing[cfg.name] = f"{cfg.default_key_env} is not set"
    return missing


async def check_bots(
    loaded: LoadedConfig, bots: list[Bot], *, skip: Container[str] = ()
) -> tuple[list[Bot], dict[str, str]]:
    """The start-up check (``botsky.health``): the bots whose endpoint answered, and bot name →
    why for those left out, each logged as ``bot_disabled`` with how to fix it. Bots named in
    ``skip`` are not checked (their model was replaced, e.g. by a test's)."""
    st = loaded.settings.models
    if not st.check_at_start:
        return bots, {}
    _, failed = await check_models(
        [b for b in bots if b.name not in skip], timeout_s=st.check_timeout_s
    )
    gone = {f.bot.name for f in failed}
    cfgs = {c.name: c for c in loaded.bots}
    left_out = {}
    for f in failed:
        cfg = cfgs[f.bot.name]
        hint = fix_hint(
            bot=cfg.name,
            provider=cfg.provider,
            base_url=cfg.base_url,
            key_env=cfg.default_key_env,
            access=isinstance(f.error, ModelAccessError),
        )
        left_out[cfg.name] = str(f.error)
        log.warning("bot_disabled", bot=cfg.name, reason=str(f.error), hint=hint)
        await f.bot.model.aclose()
    return [b for b in bots if b.name not in gone], left_out


def live_accounts(
    loaded: LoadedConfig, secrets: Secrets, *, only: Container[str] | None = None
) -> list[LiveAccount]:
    """``(bot name, account, app password)`` of every bot (in ``only``) that has a password."""
    accounts = []
    for cfg in loaded.bots:
        password = secrets[cfg.name].password if cfg.name in secrets else None
        if password is not None and (only is None or cfg.name in only):
            accounts.append((cfg.name, cfg.account, password))
    return accounts


def secret_guard(loaded: LoadedConfig, secrets: Secrets) -> SecretGuard:
    """Every secret this process holds: the bots' API keys and app passwords, the web token,
    and a password in the ledger URL. ``build_app`` guards replies with it; the CLI commands
    register the same values for log redaction."""
    st = loaded.settings
    values: list[str | SecretStr | None]
    values = [v for s in secrets.values() for v in (s.api_key, s.password)]
    values += [st.web.token, urlsplit(st.ledger.url).password]
    return SecretGuard(values)


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
    models: Mapping[str, Model] | None = None,
    feed_clock: Callable[[], int] | None = None,
    feed_rng: random.Random | None = None,
) -> App:
    """Wire every component from the loaded configuration; the ledger is opened here.

    ``source`` and ``poster`` replace the configured ones (the simulation is both);
    ``known_handles`` seeds the identity map (DID → handle); ``metrics`` is the registry the
    models and the poster report to (a fresh one by default); ``models`` replaces the model
    of the named bots (tests: a scripted ``FakeModel``; not checked at start).
    ``feed_clock`` (µs) runs the feed (``feed.enabled``) and its rate limits on that clock,
    with its refresh left to the caller, and ``feed_rng`` draws its session seeds: the
    simulation's, which drives the feed in simulated time and must be a function of its seed.

    Every bot's model endpoint is checked first (``models.check_at_start``): a bot whose
    server does not answer or refuses its key is left out, with one ``bot_disabled`` line.
    """
    st = loaded.settings
    st.data_dir.mkdir(parents=True, exist_ok=True)
    # A lockstep run over a finite source waits on every post anyway: SQLite calls run on the
    # loop's thread there (no hand-off per call); live sources keep the worker thread.
    inline = st.dispatch.lockstep and st.source.kind in ("replay", "sim")
    ledger = RetryingLedger(
        open_ledger(st.ledger.url, st.data_dir, inline=inline),
        deadline_s=st.ledger.retry_deadline_s,
    )
    await ledger.open()
    rng = random.Random(st.seed)
    cursor_name = source.name if source is not None else st.source.cursor_name
    is_pg = st.ledger.url.startswith(("postgres://", "postgresql://"))
    partitioned = st.scale.partitioned if st.scale.partitioned is not None else is_pg
    if partitioned and not is_pg:
        raise ConfigError("scale.partitioned needs a PostgreSQL ledger (ledger.url)")
    resume: Resume | None = None
    if source is None:
        # Live sources always resume, from the low-water mark (the work not finished is read
        # again; claims make that idempotent), a warm-start window before it; a replay is a
        # fixed experiment and starts from the top unless asked to resume.
        if st.source.resume or st.source.kind in ("jetstream", "relay"):
            resume = await load_resume(
                ledger,
                cursor_name,
                partitions=st.scale.partitions if partitioned else None,
                slack=int(st.source.rewind_s * 1e6) if st.source.kind == "jetstream" else 0,
            )
        source = open_source(st.source, after_cursor=resume.start if resume else None)
    partitions: Partitions = (
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
    if models:
        for b in bots:
            if b.name in models:
                await b.model.aclose()
        bots = [dataclasses.replace(b, model=models.get(b.name, b.model)) for b in bots]
    bots, left_out = await check_bots(loaded, bots, skip=models or {})
    left_out = {**missing_keys(loaded, secrets), **left_out}
    if st.posting.mode == "live" and poster is None:
        from botsky.posting import WriteBudget, open_live_poster

        budget = WriteBudget(
            points_per_hour=st.posting.points_per_hour,
            points_per_day=st.posting.points_per_day,
            headroom=st.posting.budget_headroom,
            posts_per_minute=st.posting.posts_per_minute,
            max_wait_s=st.posting.max_wait_s,
            # Spends and 429 blocks live in the ledger: restarts and replicas share one budget.
            store=ledger,
        )
        poster = await open_live_poster(
            pds_url=st.posting.pds_url,
            accounts=live_accounts(loaded, secrets, only={b.name for b in bots}),
            data_dir=st.data_dir,
            budget=budget,
            paused=kill_switch,
            timeout_s=st.posting.timeout_s,
        )
        # Live bots are who their PDS says they are: the DID comes from the login.
        bots = [dataclasses.replace(b, did=poster.did_of(b.name)) for b in bots]
    known = {**(known_handles or {}), **{b.did: b.handle for b in bots}}
    identity: Identity = (
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
        opted_in=await _opt_ins(ledger, st.audience.allow_list),
        opted_out=await ledger.opt_outs(),
        inactive=await ledger.inactive_accounts(),
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
            is_active=policy.is_active,
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
            opted_out=policy.has_opted_out,
            is_active=policy.is_active,
            guard=secret_guard(loaded, secrets),
            retry=RetryPolicy(
                attempts=st.posting.retry_attempts,
                initial_s=st.posting.retry_initial_s,
                max_s=st.posting.retry_max_s,
            ),
            health=BotHealth(
                failures=st.models.pause_after_failures,
                pause_s=st.models.pause_s,
                max_pause_s=st.models.max_pause_s,
                probe_timeout_s=st.models.check_timeout_s,
            ),
        )
    else:
        log.warning(
            "no_bots_enabled",
            reason="every bot was left out (see the bot_disabled lines)",
            hint="set the bots' API key variables, start their model servers, or add template bots",
        )
    feed = None
    if st.feed.enabled:
        from botsky.feed import open_feed
        from botsky.feed.metrics import FeedCollector

        if feed_clock is None:
            driven: dict[str, Any] = {
                # The stream clock, like every other window; the wall clock before the first
                # event.
                "clock": lambda: presence.now_us or time.time_ns() // 1000,
            }
        else:
            clock_us = feed_clock
            driven = {
                "clock": clock_us,
                "limit_clock": lambda: clock_us() / 1e6,
                "refresh_loop": False,
            }
        feed = open_feed(
            st.feed,
            ledger=cast(Any, ledger),  # RetryingLedger passes the FeedLedger methods through
            plc_url=st.identity.plc_url,
            opted_out=policy.opted_out.__contains__,
            score_interval_s=st.scoring.interval_s,
            rng=feed_rng,
            **driven,
        )
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
        left_out=left_out,
        settle_interval_s=st.posting.retry_initial_s,
        scoring=scoring_options(st),
        feed=feed,
        resume=resume,
        warm_start_s=st.source.warm_start_s,
    )


async def _opt_ins(ledger: RetryingLedger, allow_list: list[str]) -> dict[str, int]:
    """The opt-ins kept in the ledger (DID → when), with the allow list's DIDs recorded as
    opt-ins (and those recorded from an earlier allow list that no longer names them
    withdrawn)."""
    allowed = {a.strip().lower() for a in allow_list if a.strip().lower().startswith("did:")}
    kept = await ledger.opt_ins()
    now = time.time_ns() // 1000
    for did in sorted(allowed - kept.keys()):
        await ledger.add_opt_in(did, ALLOW_LIST, now)
        log.info("opted_in", did=did, reason=ALLOW_LIST)
    given = {}
    for did, (reason, time_us) in kept.items():
        if reason == ALLOW_LIST and did not in allowed:
            await ledger.withdraw_opt_in(did, ALLOW_LIST)
            log.info("opt_in_withdrawn", did=did, reason="removed from the allow list")
        else:
            given[did] = 0 if reason == ALLOW_LIST else time_us
    return {**dict.fromkeys(allowed, 0), **given}
