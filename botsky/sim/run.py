"""``simulate``: the production pipeline (``wiring.build_app``) driven by a simulated world.

The world is both the app's source and its poster; dispatch runs in lockstep so that every bot
reply is in the world before the next event is generated, and one seed gives one history: the
world, the army's bot draws, the random picker and the selector all draw from RNGs seeded from
``seed`` (no wall clock and no hash randomization enters any decision).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson
import structlog

from botsky.config import FeedConfig, SourceConfig
from botsky.configload import LoadedConfig, Secrets
from botsky.errors import ConfigError
from botsky.events import Event, event_to_jetstream
from botsky.feed.scores import FeedScore
from botsky.ledger import open_ledger
from botsky.ledger.sqlite import SqliteLedger
from botsky.llm import make_model
from botsky.llm.base import Model, Price
from botsky.logs import register_secret
from botsky.runtime import App, RunSummary
from botsky.scoring import Score, score
from botsky.sim.checkpoint import (
    ledger_copy_path,
    load_checkpoint,
    restore_ledger,
    restore_pipeline,
    save_checkpoint,
)
from botsky.sim.engines import Engine, LLMEngine, StochasticEngine
from botsky.sim.feed import FeedTruth, ServiceClient
from botsky.sim.rundir import set_aside
from botsky.sim.truth import (
    GROUPINGS,
    Arm,
    ArmTruth,
    FeedArmTruth,
    LiveTruth,
    arm_truths,
    feed_arm_truths,
    truth_document,
    write_truth,
)
from botsky.sim.world import Truth, World, WorldConfig
from botsky.sources.base import SourceStats
from botsky.wiring import build_app

__all__ = [
    "CHECKPOINT_FILE",
    "TRUTH_FILE",
    "SimResult",
    "UserModel",
    "WorldOutcome",
    "run_worlds",
    "simulate",
    "simulate_many",
]

log = structlog.get_logger("botsky.sim")

CHECKPOINT_FILE = "sim-checkpoint.pkl"  # under data_dir
TRUTH_FILE = "truth.json"  # under data_dir
# botsky's feed in the simulation (sim.feed.subscribers > 0, feed section not enabled).
SIM_FEED_DID = "did:web:feed.sim.test"
SIM_FEED_PUBLISHER = "did:plc:botskyfeedsimtestpublish"


@dataclass(frozen=True)
class UserModel:
    """Who played the users under ``--engine llm``, and which arms share that model."""

    provider: str
    model: str
    shared_with: tuple[str, ...] = ()  # arms (bot names) on the same model: acknowledged

    def describe(self) -> str:
        who = f"{self.provider} {self.model}"
        if not self.shared_with:
            return f"users played by {who} (not a model under test)"
        return (
            f"WARNING: users played by {who}, which is also the model of arm(s) "
            f"{', '.join(self.shared_with)}: those arms were graded by their own model "
            "(acknowledged)"
        )


@dataclass
class SimResult:
    """What a simulation did and how every arm scored, beside the world's truth."""

    world: World
    summary: RunSummary
    by_picker: list[Score]
    by_model: list[Score]
    by_bot: list[Score]
    by_persona: list[Score]
    truth: dict[str, Truth]  # per bot name (sums)
    arms: list[Arm]  # what each bot is, per grouping
    oracle_rate: float | None
    elapsed_s: float
    user_days: int
    ledger_path: Path | None
    log_path: Path | None
    truth_path: Path | None = None
    user_model: UserModel | None = None
    # botsky's feed (sim.feed.subscribers > 0): the feed's own per-arm figures (grouped by
    # ``feed_arm_by``) as its scoring code computed them, and the world's truth per bot.
    feed: list[FeedScore] = field(default_factory=list)
    feed_arm_by: str = "model"
    feed_truth: dict[str, FeedTruth] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    # Where the earlier run's files were moved (botsky.sim.rundir); None if there were none.
    previous_run: Path | None = None

    def arm_truth(self, by: str) -> dict[str, ArmTruth]:
        """The truth of each arm of grouping ``by`` (bot, model, persona, picker)."""
        return {a.group: a for a in arm_truths(self.truth, self.arms, by)}

    def feed_arm_truth(self, by: str) -> dict[str, FeedArmTruth]:
        """The feed truth of each arm of grouping ``by`` (bot, model, persona, picker)."""
        return {a.group: a for a in feed_arm_truths(self.feed_truth, self.arms, by)}

    def scores(self, by: str) -> list[Score]:
        """The pipeline's scoreboard grouped by ``by`` (bot, model, persona, picker)."""
        return {
            "bot": self.by_bot,
            "model": self.by_model,
            "persona": self.by_persona,
            "picker": self.by_picker,
        }[by]


class _Tee:
    """The world as a source that also writes every event it emits to a JSONL file.

    The file is opened when the run starts reading, so a run that fails before it starts
    leaves an existing file as it was.
    """

    def __init__(self, world: World, path: Path) -> None:
        self.world = world
        self.path = path
        self.name = world.name
        self.stats: SourceStats = world.stats
        self._out: IO[bytes] | None = None

    async def __aiter__(self) -> Any:
        event: Event
        self._out = out = self.path.open("wb")
        async for event in self.world:
            out.write(event_to_jetstream(event) + b"\n")
            yield event

    async def aclose(self) -> None:
        await self.world.aclose()
        self.close()

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None


def _settings_for(loaded: LoadedConfig, seed: int) -> LoadedConfig:
    st = loaded.settings
    if st.audience.mode != "open":
        raise ConfigError(
            "the simulation's users are the network's own: set audience.mode: open and "
            "audience.acknowledge_open_audience: true in the simulation config"
        )
    update: dict[str, Any] = {
        "seed": seed,
        "source": SourceConfig(kind="sim", name="sim"),
        # Lockstep is what makes a run a function of its seed.
        "dispatch": st.dispatch.model_copy(update={"lockstep": True}),
    }
    if st.sim.feed.subscribers > 0 and not st.feed.enabled:
        # The subscribers read the feed in process (botsky.sim.feed), so it needs no public
        # host: a simulated service and publisher, the rest of the feed section as configured.
        # (Served on the web page too when web.enabled; no web app is needed otherwise.)
        update["feed"] = FeedConfig.model_validate(
            {
                **st.feed.model_dump(exclude={"publisher"}),
                "enabled": True,
                "service_did": SIM_FEED_DID,
                "publisher": {"handle": "feed.sim.test", "did": SIM_FEED_PUBLISHER},
            }
        )
    st = st.model_copy(update=update)
    return dataclasses.replace(loaded, settings=st)


def _run_files(
    loaded: LoadedConfig, ledger_path: Path | None, checkpoint: Path, resume: bool
) -> tuple[list[Path], list[Path]]:
    """The files a run writes over (truth.json and the SQLite ledger; for a new world also the
    log and the checkpoint), and those it appends to (a resumed run's log)."""
    st = loaded.settings
    files: list[Path] = [st.data_dir / TRUTH_FILE]  # rewritten at the end of every run
    if ledger_path is not None:
        files += [Path(f"{ledger_path}{suffix}") for suffix in ("", "-wal", "-shm")]
    log_file = [st.data_dir / st.logging.file] if st.logging.file else []
    if resume:
        return files, log_file
    for path in (checkpoint, ledger_copy_path(checkpoint)):
        files += [path, path.with_name(path.name + ".tmp")]
    return files + log_file, []


def _same_model(a: str, b: str) -> bool:
    """One model under two spellings: case, and a vendor prefix ("openai/gpt-4o") aside."""
    return a.casefold().rsplit("/", 1)[-1] == b.casefold().rsplit("/", 1)[-1]


def _arm_models(loaded: LoadedConfig, secrets: Secrets) -> dict[str, str]:
    """bot name → model, for the bots that will run (keyless LLM bots are left out)."""
    out = {}
    for cfg in loaded.bots:
        has_key = cfg.name in secrets and secrets[cfg.name].api_key is not None
        if cfg.provider != "template" and (cfg.default_key_env is None or has_key):
            out[cfg.name] = cfg.model
    return out


def _user_model(
    loaded: LoadedConfig,
    secrets: Secrets,
    model_name: str,
    provider: str,
    allow_arm_model: bool,
) -> UserModel:
    """The user model, checked against the arms: a model must not grade itself."""
    shared = tuple(
        name for name, m in _arm_models(loaded, secrets).items() if _same_model(m, model_name)
    )
    if shared and not allow_arm_model:
        raise ConfigError(
            f"--engine llm: the user model {model_name!r} is also the model of arm(s) "
            f"{', '.join(shared)}, which would then be graded by itself. Set sim.engine.model "
            "to another model, or acknowledge with --allow-arm-model (or "
            "sim.engine.allow_arm_model: true)"
        )
    return UserModel(provider, model_name, shared)


def _engine_model(loaded: LoadedConfig, environ: Mapping[str, str], http_client: Any) -> Model:
    """The model that plays the users: ``sim.engine`` (provider, model, base URL, key)."""
    cfg = loaded.settings.sim.engine
    if cfg.provider is None or cfg.model is None:
        raise ConfigError(
            "--engine llm needs a user model of its own: set sim.engine.provider and "
            f"sim.engine.model in {loaded.path} (or the environment variables "
            "BOTSKY_SIM__ENGINE__PROVIDER and BOTSKY_SIM__ENGINE__MODEL)"
        )
    env = cfg.default_key_env
    key = environ.get(env) if env else None
    if env and not key:
        raise ConfigError(
            f"--engine llm: the user model ({cfg.provider} {cfg.model}) needs an API key: set "
            f"the environment variable {env}"
            + ("" if cfg.api_key_env else " (or name another one in sim.engine.api_key_env)")
        )
    if key:
        register_secret(key)  # scrubbed from every log line, like the bots' keys
    price_cfg = loaded.settings.prices.get(cfg.model)
    price = Price(price_cfg.input_per_mtok, price_cfg.output_per_mtok) if price_cfg else Price()
    return make_model(cfg, api_key=key, price=price, http_client=http_client)


async def simulate(
    loaded: LoadedConfig,
    secrets: Secrets,
    *,
    days: int = 7,
    users: int = 300,
    seed: int = 1,
    engine: str | Engine = "stochastic",
    engine_model: Model | None = None,
    allow_arm_model: bool = False,
    new_per_day: int = 1,
    churn: float = 0.0,
    resume: bool = False,
    export: Path | None = None,
    checkpoint: Path | None = None,
    http_client: Any = None,
    on_day: Callable[[World], None] | None = None,
    models: Mapping[str, Model] | None = None,
    hold: Callable[[App, SimResult], Awaitable[None]] | None = None,
    on_ready: Callable[[Path | None], None] | None = None,
    on_serve: Callable[[str], None] | None = None,
    environ: Mapping[str, str] | None = None,
    keep_mention_truth: bool = False,
) -> SimResult:
    """Run the world for ``days`` simulated days through the production pipeline.

    ``checkpoint`` (default ``data_dir/sim-checkpoint.pkl``) is written at every day boundary;
    ``resume`` continues from it (``days`` may extend the run). ``export`` writes every event
    the world emits (bot replies included) as Jetstream JSONL, which ``ReplaySource`` reads.
    ``on_day`` is called with the world at each day boundary and at the end (progress).
    ``models`` replaces the model of the named bots (tests: a scripted ``FakeModel``).
    ``engine="llm"`` plays the users with ``engine_model`` or else ``sim.engine`` (its API key
    from ``environ``, default ``os.environ``); either must differ from every arm's model unless
    ``allow_arm_model`` (or ``sim.engine.allow_arm_model``).
    ``hold(app, result)`` runs after the results are in and before the app closes: with the
    web app enabled, the page stays up for as long as it waits (``simulate --serve``), and
    ``on_serve(url)`` is called as soon as it accepts, before the first event. The page sets the
    world's truth beside the estimates (``LiveTruth``) and links nothing to bsky.app.
    The world's truth per arm is written to ``data_dir/truth.json``; ``keep_mention_truth``
    keeps every mention's record in the world (``World.closed_truth``, validation study).

    Files (``botsky.sim.rundir``): everything that can fail before the run starts (settings,
    the checkpoint, the engine's model) is checked before a file is touched; then the earlier
    run's files are moved aside to ``data_dir/previous/<stamp>/`` (``SimResult.previous_run``)
    and ``on_ready(that directory or None)`` is called (the CLI opens the log file there).
    Should the start still fail or be interrupted (until the app is built), the earlier run's
    files are put back as they were. Nothing is ever deleted.
    """
    loaded = _settings_for(loaded, seed)
    st = loaded.settings
    checkpoint = checkpoint or st.data_dir / CHECKPOINT_FILE
    user_model: UserModel | None = None
    if engine == "llm":
        # Checked before anything is touched: a refused run leaves the data directory alone.
        model = engine_model or _engine_model(
            loaded, os.environ if environ is None else environ, http_client
        )
        user_model = _user_model(
            loaded,
            secrets,
            model.model,
            model.provider,
            allow_arm_model or st.sim.engine.allow_arm_model,
        )
        engine = LLMEngine(model)
    elif engine == "stochastic":
        engine = StochasticEngine()
    elif isinstance(engine, str):
        raise ConfigError(f"unknown engine {engine!r}: use stochastic or llm")
    pipeline: dict[str, Any] | None = None
    ledger = open_ledger(st.ledger.url, st.data_dir)  # not opened: only its file is wanted
    ledger_path = ledger.path if isinstance(ledger, SqliteLedger) else None
    if resume:
        if ledger_path is None:
            raise ConfigError("--resume needs the SQLite ledger (ledger.url: sqlite)")
        world, pipeline = load_checkpoint(checkpoint)
        world.config = dataclasses.replace(world.config, days=days)
    else:
        config = WorldConfig(
            users=users,
            days=days,
            seed=seed,
            new_per_day=new_per_day,
            churn=churn,
            presence_window_s=st.presence.window_s,
            outcome_window_s=st.outcomes.window_s,
            feed_subscribers=st.sim.feed.subscribers if st.feed.enabled else 0.0,
            feed_page=st.sim.feed.page_size,
            feed_attribution_s=st.feed.attribution_window_s,
            keep_mention_truth=keep_mention_truth,
        )
        world = World(config)
    world.engine = engine
    start_day = world.day
    if user_model is not None:
        log.info("sim_user_model", provider=user_model.provider, model=user_model.model,
                 shared_with=list(user_model.shared_with))  # fmt: skip

    # Checked and built: only now does the run touch files (see rundir).
    st.data_dir.mkdir(parents=True, exist_ok=True)
    aside = set_aside(st.data_dir, *_run_files(loaded, ledger_path, checkpoint, resume))
    tee = _Tee(world, export) if export is not None else None
    try:
        if on_ready is not None:
            on_ready(aside.previous)
        if aside.previous is not None:
            log.info("earlier_run_moved", path=str(aside.previous))
        if resume:
            assert ledger_path is not None
            restore_ledger(checkpoint, ledger_path)
        app = await build_app(
            loaded,
            secrets,
            source=tee or world,
            poster=world,
            http_client=http_client,
            models=models,
            # The feed runs in simulated time, its sessions drawn from the seed.
            feed_clock=lambda: world.clock_us,
            feed_rng=random.Random(f"{seed}/botsky-feed"),
        )
        if app.feed is not None:
            world.feed = ServiceClient(app.feed)
    except BaseException:
        aside.restore()
        raise
    try:
        try:
            arms: list[Arm] = []
            if app.dispatcher is not None:
                army = app.dispatcher.army
                world.bot_dids = set(army.dids)
                # The noisy_oracle picker's truth hook: only the world has one.
                app.dispatcher.recommender.truth = world.fits
                arms = [Arm(b.name, b.model_name, b.persona[:200], b.picker) for b in army.bots]
            # The page shows the world's truth beside the estimates, and links nothing out.
            app.simulation = LiveTruth(world, arms)
            app.on_serving = on_serve
            if pipeline is not None:
                restore_pipeline(app, pipeline)

            async def _on_day(day: int) -> None:
                if day > start_day and ledger_path is not None:
                    save_checkpoint(checkpoint, world, app, ledger_path)
                if on_day is not None:
                    on_day(world)

            world.on_day = _on_day
            app.keep_serving = hold is not None
            started = time.perf_counter()
            # (The SQLite ledger runs on the loop's thread here: a lockstep run, see build_app.)
            summary = await app.run()
            elapsed = time.perf_counter() - started
            if on_day is not None:
                on_day(world)
            mentions, outcomes = await app.ledger.mentions(), await app.ledger.outcomes()
            feed_scores: list[FeedScore] = []
            if app.feed is not None:
                await app.feed.flush()  # the engagement since the last page, joined
                feed_scores = await app.feed.load_scores()
            truth_path = st.data_dir / TRUTH_FILE
            about = {
                "seed": seed,
                "days": world.config.days,
                "users": len(world.users),
                "engine": world.engine.name,
                "user_model": dataclasses.asdict(user_model) if user_model else None,
                "outcome_window_s": world.config.outcome_window_s,
                "presence_window_s": world.config.presence_window_s,
            }
            feed_about = {
                "arm_by": st.feed.arm_by,
                "subscribers": world.config.feed_subscribers,
                "page_size": world.config.feed_page,
                "attribution_window_s": world.config.feed_attribution_s,
            }
            write_truth(
                truth_path,
                truth_document(
                    world.truth,
                    arms,
                    about,
                    world.feed_truth if app.feed is not None else None,
                    feed_about,
                ),
            )
            # Read as of the stream clock, with the run's scoring options.
            reading = {"as_of_us": app.outcomes.clock.now_us or None, "options": app.scoring}
            result = SimResult(
                world=world,
                summary=summary,
                by_picker=score(mentions, outcomes, by="picker", **reading),  # type: ignore[arg-type]
                by_model=score(mentions, outcomes, by="model", **reading),  # type: ignore[arg-type]
                by_bot=score(mentions, outcomes, by="bot", **reading),  # type: ignore[arg-type]
                by_persona=score(mentions, outcomes, by="persona", **reading),  # type: ignore[arg-type]
                truth=dict(world.truth),
                arms=arms,
                oracle_rate=world.oracle_rate(),
                elapsed_s=elapsed,
                user_days=world.user_days,
                ledger_path=ledger_path,
                log_path=st.data_dir / st.logging.file if st.logging.file else None,
                truth_path=truth_path,
                user_model=user_model,
                previous_run=aside.previous,
                feed=feed_scores,
                feed_arm_by=st.feed.arm_by,
                feed_truth=dict(world.feed_truth),
            )
            if hold is not None:
                await hold(app, result)
        finally:
            await app.aclose()
    finally:
        if tee is not None:
            tee.close()
    log.info(
        "simulation_finished",
        days=world.config.days,
        users=len(world.users),
        oracle_rate=result.oracle_rate,
        elapsed_s=round(elapsed, 3),
        **world.counts,
    )
    return result


@dataclass(frozen=True)
class WorldOutcome:
    """One world of many (``simulate_many``/``run_worlds``): its truth and scoreboards only,
    so that hundreds of them fit in memory and cross process boundaries."""

    seed: int
    truth: dict[str, Any]  # truth.json's content
    scores: dict[str, list[Score]]  # grouping → the pipeline's scoreboard
    counts: dict[str, int]
    elapsed_s: float
    feed: list[FeedScore] = field(default_factory=list)  # botsky's feed, by truth["feed"]["arm_by"]

    def arm(self, by: str, group: str) -> tuple[dict[str, Any], Score]:
        """(truth row, score) of one arm."""
        row = next(r for r in self.truth["arms"][by] if r["group"] == group)
        return row, next(s for s in self.scores[by] if s.group == group)

    def feed_arm(self, group: str) -> tuple[dict[str, Any], FeedScore]:
        """(feed truth row, the feed's score) of one arm of the feed's grouping."""
        feed = self.truth["feed"]
        row = next(r for r in feed["arms"][feed["arm_by"]] if r["group"] == group)
        return row, next(s for s in self.feed if s.arm == group)


def _in(loaded: LoadedConfig, data_dir: Path) -> LoadedConfig:
    # Many worlds write no log file: it would only cost time.
    st = loaded.settings.model_copy(
        update={
            "data_dir": data_dir,
            "logging": loaded.settings.logging.model_copy(update={"file": None}),
        }
    )
    return dataclasses.replace(loaded, settings=st)


async def simulate_many(
    loaded: LoadedConfig,
    secrets: Secrets,
    seeds: Sequence[int],
    *,
    workdir: Path,
    **kwargs: Any,
) -> list[WorldOutcome]:
    """One world per seed, one after the other in this process, each in its own data
    directory under ``workdir``; ``kwargs`` go to ``simulate`` (days, users, models...)."""
    out = []
    for seed in seeds:
        result = await simulate(_in(loaded, workdir / f"seed-{seed}"), secrets, seed=seed, **kwargs)
        assert result.truth_path is not None
        out.append(
            WorldOutcome(
                seed=seed,
                truth=orjson.loads(result.truth_path.read_bytes()),
                scores={by: result.scores(by) for by in GROUPINGS},
                counts=dict(result.world.counts),
                elapsed_s=result.elapsed_s,
                feed=result.feed,
            )
        )
    return out


def _one_world(
    loaded: LoadedConfig,
    secrets: Secrets,
    seed: int,
    workdir: Path,
    kwargs: dict[str, Any],
    worker: bool = False,
) -> WorldOutcome:
    if worker:  # a worker process logs warnings only: thousands of info lines per world
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    return asyncio.run(simulate_many(loaded, secrets, [seed], workdir=workdir, **kwargs))[0]


def run_worlds(
    loaded: LoadedConfig,
    secrets: Secrets,
    seeds: Sequence[int],
    *,
    workdir: Path,
    processes: int = 1,
    **kwargs: Any,
) -> list[WorldOutcome]:
    """``simulate_many`` over ``processes`` worker processes (one world each at a time), in
    the order of ``seeds``. ``kwargs`` must pickle (no scripted models: use
    ``simulate_many`` in-process for those)."""
    if processes <= 1:
        return [_one_world(loaded, secrets, s, workdir, kwargs) for s in seeds]
    with ProcessPoolExecutor(max_workers=processes) as pool:
        futures = [
            pool.submit(_one_world, loaded, secrets, s, workdir, kwargs, True) for s in seeds
        ]
        return [f.result() for f in futures]
