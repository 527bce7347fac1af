"""The validation study: do botsky's intervals and verdicts hold in worlds whose truth is known?

Each world is a ``botsky simulate`` run (the production pipeline against the stochastic
world, ``botsky.sim.run.simulate``) with an army of *planted* arms: the two control pickers
(``similar``, ``random``) and ``noisy_oracle`` bots of set qualities, two of them identical
(a null pair: equal expected rates by construction) and one equal to ``random`` (quality 0).
After the run the study re-reads the leaderboard from the run's ledger as of every *look*
(every ``look_s`` of stream time at which the decided mentions changed; between two such times
no interval or verdict can change) and compares it with the world's truth:

- the true rate of the mentions *decided* at the look (the mean of their recorded answer
  probabilities: what the rate, the Wilson interval and the confidence sequence estimate);
- the true rate of every mention *created* by the look (what the Kaplan–Meier estimate, which
  uses the open mentions, estimates);
- at the end, the arm's true expected rate in ``truth.json`` (the two agree then);
- every pair of arms: which one the anytime-valid rule (``verdict``) and the fixed-n rule
  (``fixed_low``/``fixed_high``) declared better, at each look.

Other figures are checked when the world's ``truth.json`` has them (``METRICS``): a figure
with an interval gets its coverage, one without an interval its bias.

``run_study`` runs the worlds over worker processes; ``botsky.sim.validation`` aggregates the
results and writes ``VALIDATION.md``. ``scripts/validate`` runs both.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson
import structlog
import yaml
from scipy.stats import norm

from botsky.configload import load_config, resolve_secrets
from botsky.feed.scores import feed_scores
from botsky.ledger.feed import ArmCounts
from botsky.ledger.sqlite import SqliteLedger
from botsky.scoring import Comparison, Leaderboard, Score, leaderboard
from botsky.sim.run import simulate
from botsky.stats import wilson_interval
from botsky.wiring import scoring_options

__all__ = [
    "ARMY",
    "FEED_METRICS",
    "INTERVALS",
    "METRICS",
    "ArmResult",
    "MetricRow",
    "PairResult",
    "PlantedArm",
    "Reading",
    "StudySpec",
    "WorldResult",
    "army_yaml",
    "feed_metrics",
    "read_once",
    "read_worlds",
    "run_study",
    "run_world",
    "world_config",
]

_US: Final = 1_000_000


@dataclass(frozen=True, slots=True)
class PlantedArm:
    """One bot of the study's army: a control picker, or ``noisy_oracle`` at ``quality``."""

    name: str
    picker: str
    quality: float | None = None

    @property
    def kind(self) -> str:
        """Arms of equal kind have equal expected rates by construction (a null pair)."""
        if self.picker == "noisy_oracle" and self.quality == 0.0:
            return "random"  # a uniform pick among the same candidates, like `random`
        return self.picker if self.quality is None else f"{self.picker} q={self.quality:g}"


# Six arms: 15 comparisons. Null pairs: random / q0 (both uniform picks) and q30a / q30b.
ARMY: Final = (
    PlantedArm("similar", "similar"),
    PlantedArm("random", "random"),
    PlantedArm("q0", "noisy_oracle", 0.0),
    PlantedArm("q30a", "noisy_oracle", 0.3),
    PlantedArm("q30b", "noisy_oracle", 0.3),
    PlantedArm("q60", "noisy_oracle", 0.6),
)

# The intervals checked, name → what it is (the report's legend).
INTERVALS: Final = {
    "wilson": "fixed-n Wilson on the effective n (cluster-robust design effect): ci_low/ci_high",
    "wilson_binomial": "fixed-n Wilson on the raw n (mentions taken as independent), for contrast",
    "cs": "anytime-valid confidence sequence (beta-binomial mixture): cs_low/cs_high",
    "km": "Kaplan–Meier km_rate ± z·km_se (Greenwood), open mentions censored: fixed-n",
}

# Figures other than the success rate, checked when truth.json's arm rows have the key:
# truth key → (Score field of the estimate, Score fields of its interval or None).
METRICS: Final[dict[str, tuple[str, tuple[str, str] | None]]] = {
    "engagement_per_reply": ("engagement_per_reply", None),
    "likes_per_reply": ("likes_per_reply", None),
}


# The feed's figures (truth.json's ``feed`` section, when simulated users subscribe to the
# feed): truth key → (FeedScore field of the estimate, whether it has the Wilson interval).
FEED_METRICS: Final = {
    "true_engaged_rate": ("engaged_rate", True),
    "true_engagement_per_impression": ("engagement_per_seen", False),
}


def army_yaml(army: Sequence[PlantedArm]) -> str:
    """The bots file of ``army`` (template bots: no model, no key)."""
    bots = []
    for arm in army:
        bot: dict[str, Any] = {
            "name": arm.name,
            "persona": "p",
            "provider": "template",
            "model": f"t-{arm.name}",
            "picker": arm.picker,
            "account": {"handle": f"{arm.name}.bots.sim.test"},
        }
        if arm.quality is not None:
            bot["quality"] = arm.quality
        bots.append(bot)
    return yaml.safe_dump({"bots": bots}, sort_keys=False)


def world_config(base: Path, workdir: Path, army: Sequence[PlantedArm]) -> Path:
    """A copy of the simulation config ``base`` with its data under ``workdir`` and ``army``
    as its bots, written to ``workdir/sim.yaml``; no log file (it would only cost time)."""
    doc = yaml.safe_load(base.read_text())
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "bots.yaml").write_text(army_yaml(army))
    doc["data_dir"] = str(workdir / "data")
    doc["bots_file"] = "bots.yaml"
    doc.setdefault("logging", {})["file"] = None
    path = workdir / "sim.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@dataclass(frozen=True, slots=True)
class StudySpec:
    """What one world of the study is: the config file (``world_config``), its size, the
    spacing of the looks, and the army (for the null pairs)."""

    config: Path
    users: int
    days: int
    look_s: float
    army: tuple[PlantedArm, ...] = ARMY


@dataclass(frozen=True, slots=True)
class ArmResult:
    """One arm of one world. Coverage flags per interval name (``INTERVALS``)."""

    arm: str
    kind: str
    mentions: int
    decided: int
    true_rate: float  # truth.json
    estimate: float | None
    end: dict[str, bool]  # covers truth.json's true rate at the end
    mid: dict[str, bool]  # at the look nearest the middle of the run (running truth)
    uniform: dict[str, bool]  # at every look at once (running truth)
    uniform_final: dict[str, bool]  # at every look at once, truth.json's final rate


@dataclass(frozen=True, slots=True)
class MetricRow:
    """Another figure of one arm at the end of a world: estimate, interval (if any), truth."""

    metric: str
    arm: str
    estimate: float | None
    low: float | None
    high: float | None
    truth: float


@dataclass(frozen=True, slots=True)
class PairResult:
    """One pair of arms of one world: which one each rule declared better, and when."""

    a: str
    b: str
    true_a: float
    true_b: float
    null: bool  # equal expected rates by construction
    # rule → (a declared better at some look, b declared better at some look); rules:
    # "anytime" (the leaderboard's verdict, every look), "fixed" (fixed-n interval, every
    # look), "fixed_end" (fixed-n interval, the end only), "anytime_end".
    declared: dict[str, tuple[bool, bool]]
    first_look_s: dict[str, float | None]  # anytime: stream seconds from the first look


@dataclass(frozen=True, slots=True)
class WorldResult:
    seed: int
    looks: int
    arms: list[ArmResult]
    pairs: list[PairResult]
    metrics: list[MetricRow]
    counts: dict[str, int]
    sim_s: float
    read_s: float
    truth_keys: list[str] = field(default_factory=list)


def feed_metrics(counts: Sequence[ArmCounts], truth_doc: dict[str, Any]) -> list[MetricRow]:
    """The feed's per-impression figures (``botsky.feed.scores``) against ``truth.json``'s
    ``feed`` section, when the world had feed subscribers."""
    feed = truth_doc["feed"]
    by = feed.get("arm_by", "model")
    rows = {r["group"]: r for r in feed.get("arms", {}).get(by, [])}
    out = []
    for s in feed_scores(counts):
        row = rows.get(s.arm)
        if row is None or not s.seen:
            continue
        for key, (estimate, interval) in FEED_METRICS.items():
            if row.get(key) is None:
                continue
            low, high = (s.ci_low, s.ci_high) if interval else (None, None)
            out.append(MetricRow(f"feed {key}", s.arm, getattr(s, estimate), low, high, row[key]))
    return out


def _covers(low: float | None, high: float | None, value: float) -> bool:
    return low is not None and high is not None and low <= value <= high


def _intervals(s: Score, z: float, alpha: float) -> dict[str, tuple[float, float] | None]:
    km = None
    if s.km_rate is not None and s.km_se is not None:
        km = (s.km_rate - z * s.km_se, s.km_rate + z * s.km_se)
    return {
        "wilson": (s.ci_low, s.ci_high) if s.decided else None,
        "wilson_binomial": wilson_interval(s.successes, s.decided, alpha) if s.decided else None,
        "cs": (s.cs_low, s.cs_high) if s.decided else None,
        "km": km,
    }


def _declared(board: Leaderboard) -> dict[tuple[str, str], dict[str, tuple[bool, bool]]]:
    out = {}
    for c in board.comparisons:
        out[(c.a, c.b)] = {
            "anytime": (c.verdict == "better", c.verdict == "worse"),
            "fixed": (c.fixed_low > 0, c.fixed_high < 0),
        }
    return out


async def _read_world(spec: StudySpec, seed: int, workdir: Path) -> WorldResult:
    loaded = load_config(spec.config, environ={})
    st = loaded.settings.model_copy(update={"data_dir": workdir / f"seed-{seed}"})
    loaded = dataclasses.replace(loaded, settings=st)
    secrets = resolve_secrets(loaded, environ={}, live=False)
    started = time.perf_counter()
    result = await simulate(
        loaded, secrets, days=spec.days, users=spec.users, seed=seed, keep_mention_truth=True
    )
    sim_s = time.perf_counter() - started
    started = time.perf_counter()
    assert result.ledger_path is not None and result.truth_path is not None
    ledger = SqliteLedger(result.ledger_path)
    await ledger.open()
    try:
        mentions, outcomes = await ledger.mentions(), await ledger.outcomes()
        feed_counts = await ledger.feed_arm_counts()
    finally:
        await ledger.close()
    truth_doc = orjson.loads(result.truth_path.read_bytes())
    rows = {r["group"]: r for r in truth_doc["arms"]["bot"]}
    world = result.world
    records = {**world.closed_truth, **world.mention_truth}
    opts = scoring_options(st)
    z = float(norm.ppf(1 - opts.alpha / 2))
    window_us = int(opts.window_s * _US)
    # Per arm: (created, decided-at, expected) of every mention, in creation order.
    per_arm: dict[str, list[tuple[int, int, float]]] = {}
    for m in mentions:
        rec = records[m.reply_uri]
        w = m.extra.get("window_s") if m.extra else None
        ends = m.created_us + (int(w * _US) if isinstance(w, int | float) else window_us)
        per_arm.setdefault(m.bot, []).append((m.created_us, ends, rec.expected))
    end_us = world.clock_us
    look_us = int(spec.look_s * _US)
    # A look at each boundary of look_s (stream time) after which some mention was decided.
    looks = sorted(
        {-(-ends // look_us) * look_us for arm in per_arm.values() for _, ends, _ in arm}
    )
    looks = [t for t in looks if t <= end_us]
    if not looks or looks[-1] != end_us:
        looks.append(end_us)
    mid_look = min(looks, key=lambda t: abs(t - (looks[0] + looks[-1]) // 2))

    names = sorted(per_arm)
    uniform = {a: dict.fromkeys(INTERVALS, True) for a in names}
    uniform_final = {a: dict.fromkeys(INTERVALS, True) for a in names}
    mid: dict[str, dict[str, bool]] = {}
    declared: dict[tuple[str, str], dict[str, list[bool]]] = {}
    first: dict[tuple[str, str], float | None] = {}
    board: Leaderboard | None = None
    for t in looks:
        board = leaderboard(mentions, outcomes, by="bot", as_of_us=t, options=opts)
        for s in board.scores:
            recs = per_arm[s.group]
            dec = [e for _, ends, e in recs if ends <= t]
            made = [e for c, _, e in recs if c <= t]
            targets = {
                "wilson": dec,
                "wilson_binomial": dec,
                "cs": dec,
                "km": made,
            }
            final = rows[s.group]["true_rate"]
            for name, iv in _intervals(s, z, opts.alpha).items():
                vals = targets[name]
                if iv is None or not vals:
                    continue  # nothing read yet: no claim made
                truth = sum(vals) / len(vals)
                ok = iv[0] <= truth <= iv[1]
                uniform[s.group][name] &= ok
                uniform_final[s.group][name] &= iv[0] <= final <= iv[1]
                if t == mid_look:
                    mid.setdefault(s.group, {})[name] = ok
        for (a, b), rules in _declared(board).items():
            key = (a, b) if a < b else (b, a)
            d = declared.setdefault(key, {"anytime": [False, False], "fixed": [False, False]})
            for rule, (a_better, b_better) in rules.items():
                if a > b:
                    a_better, b_better = b_better, a_better
                d[rule][0] |= a_better
                d[rule][1] |= b_better
                if rule == "anytime" and (a_better or b_better) and key not in first:
                    first[key] = (t - looks[0]) / _US
    assert board is not None
    kinds = {arm.name: arm.kind for arm in spec.army}
    end_scores = {s.group: s for s in board.scores}
    metrics = feed_metrics(feed_counts, truth_doc) if "feed" in truth_doc else []
    arms = []
    for arm_name in names:
        s = end_scores[arm_name]
        row = rows[arm_name]
        at_end = _intervals(s, z, opts.alpha)
        for metric, (est_field, fields) in METRICS.items():
            if row.get(metric) is None:
                continue
            low = high = None
            if fields is not None:
                low, high = getattr(s, fields[0]), getattr(s, fields[1])
            metrics.append(
                MetricRow(metric, arm_name, getattr(s, est_field), low, high, row[metric])
            )
        arms.append(
            ArmResult(
                arm=arm_name,
                kind=kinds.get(arm_name, arm_name),
                mentions=s.mentions,
                decided=s.decided,
                true_rate=float(row["true_rate"]),
                estimate=s.success_rate,
                end={k: v is not None and _covers(*v, row["true_rate"]) for k, v in at_end.items()},
                mid=mid.get(arm_name, {}),
                uniform=uniform[arm_name],
                uniform_final=uniform_final[arm_name],
            )
        )
    end_declared = _declared(board)
    pairs = []
    for (a, b), d in sorted(declared.items()):
        end = end_declared.get((a, b)) or end_declared.get((b, a)) or {}
        flip = (a, b) not in end_declared
        out = {rule: (v[0], v[1]) for rule, v in d.items()}
        for rule in ("anytime", "fixed"):
            x, y = end.get(rule, (False, False))
            out[f"{rule}_end"] = (y, x) if flip else (x, y)
        pairs.append(
            PairResult(
                a=a,
                b=b,
                true_a=float(rows[a]["true_rate"]),
                true_b=float(rows[b]["true_rate"]),
                null=kinds.get(a, a) == kinds.get(b, b),
                declared=out,
                first_look_s={"anytime": first.get((a, b))},
            )
        )
    read_s = time.perf_counter() - started
    keys = sorted({k for r in truth_doc["arms"]["bot"] for k in r})
    shutil.rmtree(st.data_dir, ignore_errors=True)  # a ledger per world adds up
    return WorldResult(
        seed=seed,
        looks=len(looks),
        arms=arms,
        pairs=pairs,
        metrics=metrics,
        counts=dict(world.counts),
        sim_s=sim_s,
        read_s=read_s,
        truth_keys=keys,
    )


@dataclass(frozen=True, slots=True)
class Reading:
    """One world read once: as of the first moment every arm had ``n`` decided mentions (or
    at the end, without ``n``), beside the world's truth and size."""

    seed: int
    n: int | None
    reached: bool  # every arm had n decided mentions by the end of the run
    true_rate: dict[str, float]  # truth.json, per arm (bot)
    scores: list[Score]  # the leaderboard's lines at the reading
    comparisons: list[Comparison]
    mentions_per_arm: dict[str, int]  # at the end of the run
    user_days: int


async def _read_once(spec: StudySpec, seed: int, workdir: Path, n: int | None) -> Reading:
    loaded = load_config(spec.config, environ={})
    st = loaded.settings.model_copy(update={"data_dir": workdir / f"seed-{seed}"})
    loaded = dataclasses.replace(loaded, settings=st)
    secrets = resolve_secrets(loaded, environ={}, live=False)
    result = await simulate(loaded, secrets, days=spec.days, users=spec.users, seed=seed)
    assert result.ledger_path is not None and result.truth_path is not None
    ledger = SqliteLedger(result.ledger_path)
    await ledger.open()
    try:
        mentions, outcomes = await ledger.mentions(), await ledger.outcomes()
    finally:
        await ledger.close()
    truth = orjson.loads(result.truth_path.read_bytes())
    opts = scoring_options(st)
    window_us = int(opts.window_s * _US)
    closes: dict[str, list[int]] = {}
    for m in mentions:
        closes.setdefault(m.bot, []).append(m.created_us + window_us)
    end_us = result.world.clock_us
    reached = True
    as_of = end_us
    if n is not None:
        # The n-th decision of the slowest arm: from then on every arm has n decided.
        nth = [sorted(c)[n - 1] if len(c) >= n else None for c in closes.values()]
        reached = all(t is not None and t <= end_us for t in nth)
        as_of = max(t for t in nth if t is not None) if reached else end_us
    board = leaderboard(mentions, outcomes, by="bot", as_of_us=as_of, options=opts)
    shutil.rmtree(st.data_dir, ignore_errors=True)
    return Reading(
        seed=seed,
        n=n,
        reached=reached,
        true_rate={r["group"]: float(r["true_rate"]) for r in truth["arms"]["bot"]},
        scores=board.scores,
        comparisons=board.comparisons,
        mentions_per_arm={bot: len(c) for bot, c in closes.items()},
        user_days=result.user_days,
    )


def read_once(
    spec: StudySpec, seed: int, workdir: Path, n: int | None = None, quiet: bool = False
) -> Reading:
    """One world, read as of the moment every arm had ``n`` decided mentions (default: at
    the end). A worker process's task in ``read_worlds``."""
    if quiet:
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    return asyncio.run(_read_once(spec, seed, workdir, n))


def read_worlds(
    spec: StudySpec, seeds: Sequence[int], workdir: Path, n: int | None, *, processes: int = 2
) -> list[Reading]:
    """``read_once`` for every seed over ``processes`` worker processes, in seed order."""
    with ProcessPoolExecutor(max_workers=max(1, processes)) as pool:
        futures = [pool.submit(read_once, spec, s, workdir, n, True) for s in seeds]
        return [f.result() for f in futures]


def run_world(spec: StudySpec, seed: int, workdir: Path, quiet: bool = False) -> WorldResult:
    """One world of the study (a worker process's task)."""
    if quiet:  # thousands of info lines per world
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    return asyncio.run(_read_world(spec, seed, workdir))


def run_study(
    spec: StudySpec,
    seeds: Sequence[int],
    workdir: Path,
    *,
    processes: int = 2,
    on_world: Callable[[WorldResult], None] | None = None,
) -> list[WorldResult]:
    """Every seed's world over ``processes`` worker processes; results in seed order."""
    if processes <= 1:
        out = []
        for seed in seeds:
            out.append(run_world(spec, seed, workdir, quiet=True))
            if on_world is not None:
                on_world(out[-1])
        return out
    with ProcessPoolExecutor(max_workers=processes) as pool:
        futures = [pool.submit(run_world, spec, s, workdir, True) for s in seeds]
        results = []
        for f in futures:
            results.append(f.result())
            if on_world is not None:
                on_world(results[-1])
        return results
