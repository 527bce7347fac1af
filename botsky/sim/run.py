"""``simulate``: the production pipeline (``wiring.build_app``) driven by a simulated world.

The world is both the app's source and its poster; dispatch runs in lockstep so that every bot
reply is in the world before the next event is generated, and one seed gives one history: the
world, the army's bot draws, the random picker and the selector all draw from RNGs seeded from
``seed`` (no wall clock and no hash randomization enters any decision).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import structlog

from botsky.config import SourceConfig
from botsky.configload import LoadedConfig, Secrets
from botsky.errors import ConfigError
from botsky.events import Event, event_to_jetstream
from botsky.ledger import open_ledger
from botsky.ledger.sqlite import SqliteLedger
from botsky.llm.base import Model
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
from botsky.sim.rundir import set_aside
from botsky.sim.world import Truth, World, WorldConfig
from botsky.sources.base import SourceStats
from botsky.wiring import build_app, build_bots

__all__ = ["CHECKPOINT_FILE", "SimResult", "simulate"]

log = structlog.get_logger("botsky.sim")

CHECKPOINT_FILE = "sim-checkpoint.pkl"  # under data_dir


@dataclass
class SimResult:
    """What a simulation did and how every arm scored against the ground truth."""

    world: World
    summary: RunSummary
    by_picker: list[Score]
    by_model: list[Score]
    by_bot: list[Score]
    truth: dict[str, Truth]  # per bot name
    picker_of: Mapping[str, str]  # bot name → picker
    oracle_rate: float | None
    elapsed_s: float
    user_days: int
    ledger_path: Path | None
    log_path: Path | None
    extra: dict[str, Any] = field(default_factory=dict)
    # Where the earlier run's files were moved (botsky.sim.rundir); None if there were none.
    previous_run: Path | None = None

    def expected_rate(self, picker: str) -> float | None:
        """The ground-truth upper bound of ``picker``'s picks (no fatigue, no mood)."""
        bots = [b for b, p in self.picker_of.items() if p == picker and b in self.truth]
        n = sum(self.truth[b].mentions for b in bots)
        return sum(self.truth[b].expected for b in bots) / n if n else None


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
    st = st.model_copy(
        update={
            "seed": seed,
            "source": SourceConfig(kind="sim", name="sim"),
            # Lockstep is what makes a run a function of its seed.
            "dispatch": st.dispatch.model_copy(update={"lockstep": True}),
        }
    )
    return dataclasses.replace(loaded, settings=st)


def _run_files(
    loaded: LoadedConfig, ledger_path: Path | None, checkpoint: Path, resume: bool
) -> tuple[list[Path], list[Path]]:
    """The files a run writes over (the SQLite ledger; for a new world also the log and the
    checkpoint), and those it appends to (a resumed run's log)."""
    st = loaded.settings
    files: list[Path] = []
    if ledger_path is not None:
        files += [Path(f"{ledger_path}{suffix}") for suffix in ("", "-wal", "-shm")]
    log_file = [st.data_dir / st.logging.file] if st.logging.file else []
    if resume:
        return files, log_file
    for path in (checkpoint, ledger_copy_path(checkpoint)):
        files += [path, path.with_name(path.name + ".tmp")]
    return files + log_file, []


def _engine_model(loaded: LoadedConfig, secrets: Secrets, http_client: Any) -> Model:
    for bot in build_bots(loaded, secrets, http_client=http_client):
        if bot.provider != "template":
            return bot.model
    raise ConfigError(
        "--engine llm needs a model: enable an LLM bot in the bots file (set its API key)"
    )


async def simulate(
    loaded: LoadedConfig,
    secrets: Secrets,
    *,
    days: int = 7,
    users: int = 300,
    seed: int = 1,
    engine: str | Engine = "stochastic",
    engine_model: Model | None = None,
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
) -> SimResult:
    """Run the world for ``days`` simulated days through the production pipeline.

    ``checkpoint`` (default ``data_dir/sim-checkpoint.pkl``) is written at every day boundary;
    ``resume`` continues from it (``days`` may extend the run). ``export`` writes every event
    the world emits (bot replies included) as Jetstream JSONL, which ``ReplaySource`` reads.
    ``on_day`` is called with the world at each day boundary and at the end (progress).
    ``models`` replaces the model of the named bots (tests: a scripted ``FakeModel``).
    ``hold(app, result)`` runs after the results are in and before the app closes: with the
    web app enabled, the page stays up for as long as it waits (``simulate --serve``).

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
        )
        world = World(config)
    if isinstance(engine, str):
        if engine == "llm":
            engine = LLMEngine(engine_model or _engine_model(loaded, secrets, http_client))
        elif engine == "stochastic":
            engine = StochasticEngine()
        else:
            raise ConfigError(f"unknown engine {engine!r}: use stochastic or llm")
    world.engine = engine
    start_day = world.day

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
            loaded, secrets, source=tee or world, poster=world, http_client=http_client
        )
    except BaseException:
        aside.restore()
        raise
    try:
        try:
            if app.dispatcher is not None:
                world.bot_dids = set(app.dispatcher.army.dids)
                if models:
                    app.dispatcher.army.replace_models(models)
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
            bots = {b.name: b.picker for b in loaded.bots}
            result = SimResult(
                world=world,
                summary=summary,
                by_picker=score(mentions, outcomes, by="picker"),
                by_model=score(mentions, outcomes, by="model"),
                by_bot=score(mentions, outcomes, by="bot"),
                truth=dict(world.truth),
                picker_of=bots,
                oracle_rate=world.oracle_rate(),
                elapsed_s=elapsed,
                user_days=world.user_days,
                ledger_path=ledger_path,
                log_path=st.data_dir / st.logging.file if st.logging.file else None,
                previous_run=aside.previous,
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
