"""``python -m botsky.sim.validation``: run the validation study and write ``VALIDATION.md``.

``scripts/validate`` calls it. The worlds are ``botsky.sim.study``'s; this module aggregates
their results (coverage of each interval type with a Clopper–Pearson interval on the
coverage itself, false "better" verdicts per rule) and writes the report.
"""

from __future__ import annotations

import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import click
from statsmodels.stats.proportion import proportion_confint

from botsky.sim.study import (
    ARMY,
    INTERVALS,
    StudySpec,
    WorldResult,
    run_study,
    world_config,
)

__all__ = ["main", "render_report"]

NOMINAL: Final = 0.95
FALSE_BETTER_LIMIT: Final = 0.05


def _share(k: int, n: int) -> str:
    if n == 0:
        return "– (none)"
    low, high = proportion_confint(k, n, alpha=0.05, method="beta")
    return f"{k}/{n} = {k / n:.1%} [{low:.1%}, {high:.1%}]"


def _ci(k: int, n: int) -> tuple[float, float]:
    low, high = proportion_confint(k, n, alpha=0.05, method="beta")
    return float(low), float(high)


def _git(*args: str) -> str:
    try:
        out = subprocess.run(
            ["git", *args], capture_output=True, text=True, check=True, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.strip()


def _count(worlds: Sequence[WorldResult], when: str, name: str) -> tuple[int, int]:
    k = n = 0
    for w in worlds:
        for a in w.arms:
            flags = getattr(a, when)
            if name in flags:
                n += 1
                k += flags[name]
    return k, n


def _false_better(worlds: Sequence[WorldResult], rule: str) -> dict[str, tuple[int, int]]:
    """Counts (events, trials) of false "better" verdicts under ``rule``: per world (any truly
    worse arm declared better than a truly better one: the family-wise error), per ordered
    truly-worse pair, and per null pair (either declared better)."""
    fam = [0, 0]
    pairs = [0, 0]
    null = [0, 0]
    for w in worlds:
        any_false = False
        for p in w.pairs:
            a_better, b_better = p.declared[rule]
            if p.true_a != p.true_b:
                false = a_better if p.true_a < p.true_b else b_better
                pairs[0] += false
                pairs[1] += 1
                any_false |= false
            if p.null:
                null[0] += a_better or b_better
                null[1] += 1
        fam[0] += any_false
        fam[1] += 1
    return {"world": (fam[0], fam[1]), "pair": (pairs[0], pairs[1]), "null": (null[0], null[1])}


_RULES: Final = {
    "anytime": "anytime-valid verdict (leaderboard), read at every look",
    "anytime_end": "anytime-valid verdict, read once at the end",
    "fixed": "fixed-n 95% interval of the difference, read at every look",
    "fixed_end": "fixed-n 95% interval of the difference, read once at the end",
}


def render_report(
    worlds: Sequence[WorldResult],
    spec: StudySpec,
    *,
    seeds: Sequence[int],
    command: str,
    commit: str,
    started: datetime,
    runtime_s: float,
    processes: int,
) -> str:
    """``VALIDATION.md``'s text."""
    n_worlds = len(worlds)
    arm_worlds = sum(len(w.arms) for w in worlds)
    looks = [w.looks for w in worlds]
    mentions = [a.decided for w in worlds for a in w.arms]
    lines: list[str] = []
    add = lines.append
    add("# Validation: botsky's intervals and verdicts in worlds with known truth")
    add("")
    add(
        "Produced by `scripts/validate` (`botsky/sim/study.py`, `botsky/sim/validation.py`); "
        "do not edit by hand, run it again. Method: `docs/statistics.md`, section Validation."
    )
    add("")
    add(f"- command: `{command}`")
    add(f"- date: {started.strftime('%Y-%m-%d %H:%M UTC')}; git commit: `{commit}`")
    seed_text = (
        f"{seeds[0]}–{seeds[-1]} (all of a fixed range, none left out)"
        if list(seeds) == list(range(seeds[0], seeds[-1] + 1))
        else ", ".join(map(str, seeds))
    )
    add(f"- worlds: {n_worlds}, seeds {seed_text}")
    add(
        f"- each world: `botsky simulate` with {spec.users} users for {spec.days} days (then "
        "the settle days, until every mention is decided), the production pipeline, the "
        "shipped `configs/sim.yaml` (outcome window 24 h) with the army below"
    )
    add(
        f"- looks: the leaderboard re-read from the run's ledger (`botsky scores --as-of`) at "
        f"every {spec.look_s:g} s of stream time at which some mention was decided (between "
        "two such times no rate, interval or verdict can change), "
        f"{statistics.mean(looks):.0f} looks per world on average ({min(looks)}–{max(looks)})"
    )
    add(
        f"- decided mentions per arm at the end: mean {statistics.mean(mentions):.0f} "
        f"(range {min(mentions)}–{max(mentions)}); {arm_worlds} arm-worlds"
    )
    add(
        f"- runtime: {runtime_s / 60:.1f} min on {processes} worker processes "
        f"({platform.machine()}, {os.cpu_count()} cores, shared with other work); per world "
        f"{statistics.mean(w.sim_s for w in worlds):.1f} s simulating and "
        f"{statistics.mean(w.read_s for w in worlds):.1f} s reading the looks (means)"
    )
    add("")
    add("## The army (planted arms)")
    add("")
    add("| arm | picker | quality | mean true rate (truth.json) | mean estimate |")
    add("|---|---|---|---|---|")
    for arm in spec.army:
        rows = [a for w in worlds for a in w.arms if a.arm == arm.name]
        if not rows:
            continue
        truth = statistics.mean(a.true_rate for a in rows)
        est = statistics.mean(a.estimate for a in rows if a.estimate is not None)
        q = "–" if arm.quality is None else f"{arm.quality:g}"
        add(f"| {arm.name} | {arm.picker} | {q} | {truth:.1%} | {est:.1%} |")
    add("")
    add(
        "`random` and `q0` (noisy_oracle of quality 0: a uniform pick among the same "
        "candidates) have equal expected rates by construction, and so have `q30a` and `q30b`: "
        "the two **null pairs**. The other pairs differ by design."
    )
    add("")
    add("## Coverage of the true rate")
    add("")
    add(
        "Share of arm-worlds whose interval (nominal 95%) covered the truth, with a 95% "
        "Clopper–Pearson interval on that share (arm-worlds taken as independent; arms of one "
        "world share its users, so the interval is somewhat optimistic)."
    )
    add("")
    add(
        "- **end**: the reading at the end of the run against the arm's true expected rate in "
        "`truth.json`;"
    )
    add(
        "- **mid-run**: the look nearest the middle of the run (between the first and the "
        "last look) against the true rate of the mentions decided by then (for KM: of every "
        "mention created by then);"
    )
    add(
        "- **every look**: the interval covered the running truth at *every* look of the world "
        "at once (the time-uniform guarantee only the confidence sequence claims);"
    )
    add(
        "- **every look, final truth**: the same against the final `truth.json` rate (a reader's "
        "question: did any reading exclude where the arm ended up?)."
    )
    add("")
    add("| interval | end | mid-run | every look | every look, final truth |")
    add("|---|---|---|---|---|")
    for name in INTERVALS:
        cells = [_share(*_count(worlds, when, name)) for when in ("end", "mid", "uniform")]
        cells.append(_share(*_count(worlds, "uniform_final", name)))
        add(f"| {name} | " + " | ".join(cells) + " |")
    add("")
    for name, what in INTERVALS.items():
        add(f"- `{name}`: {what}")
    add("")
    k, n = _count(worlds, "uniform", "cs")
    low, high = _ci(k, n)
    verdict = (
        "meets"
        if k / n >= NOMINAL
        else "is consistent with"
        if high >= NOMINAL
        else "falls short of"
    )
    add(
        f"**Confidence sequence, every look at once: {k / n:.1%} (95% CI {low:.1%}–{high:.1%}); "
        f"it {verdict} the nominal {NOMINAL:.0%}.**"
    )
    add("")
    add("Per arm, the confidence sequence at every look and Wilson at the end:")
    add("")
    add("| arm | cs, every look | wilson, end | mean estimate − truth (end) |")
    add("|---|---|---|---|")
    for arm in spec.army:
        rows = [a for w in worlds for a in w.arms if a.arm == arm.name]
        if not rows:
            continue
        cs = sum(a.uniform.get("cs", False) for a in rows)
        wi = sum(a.end.get("wilson", False) for a in rows)
        diffs = [a.estimate - a.true_rate for a in rows if a.estimate is not None]
        se = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else float("nan")
        add(
            f"| {arm.name} | {_share(cs, len(rows))} | {_share(wi, len(rows))} | "
            f"{statistics.mean(diffs) * 100:+.2f} ± {se * 100:.2f} points |"
        )
    add("")
    add('## False "better" verdicts')
    add("")
    add(
        "A truly worse arm (lower true rate in `truth.json`) declared better than a truly "
        "better one. **per world**: share of worlds with at least one such verdict among all "
        f"{len(worlds[0].pairs) if worlds else 0} pairs (the family-wise error the "
        "leaderboard's Bonferroni split controls); **per pair**: share of (world, pair) with "
        "unequal truths; **null pairs**: share of (world, null pair) in which either arm was "
        "declared better (equal expected rates: any verdict is false)."
    )
    add("")
    add("| rule | per world | per pair | null pairs |")
    add("|---|---|---|---|")
    counts = {rule: _false_better(worlds, rule) for rule in _RULES}
    for rule, what in _RULES.items():
        c = counts[rule]
        add(f"| {what} | {_share(*c['world'])} | {_share(*c['pair'])} | {_share(*c['null'])} |")
    add("")
    k, n = counts["anytime"]["world"]
    low, high = _ci(k, n)
    ok = "meets" if k / n <= FALSE_BETTER_LIMIT else "does not meet"
    add(
        f'**Anytime-valid rule read at every look: a false "better" in {k / n:.1%} of worlds '
        f"(95% CI {low:.1%}–{high:.1%}); it {ok} the limit of {FALSE_BETTER_LIMIT:.0%}.**"
    )
    add("")
    add(
        "The fixed-n rows are for contrast: the fixed-n interval is neither corrected for "
        "the number of comparisons nor for reading it repeatedly."
    )
    add("")
    add("## Power (for context)")
    add("")
    add(
        "Pairs whose true rates differ by at least 10 points: share declared in the right "
        "direction by the anytime-valid rule by the end, and median time to the first verdict."
    )
    add("")
    right = total = 0
    firsts: list[float] = []
    for w in worlds:
        for p in w.pairs:
            if abs(p.true_a - p.true_b) < 0.10:
                continue
            total += 1
            a_better, b_better = p.declared["anytime"]
            good = a_better if p.true_a > p.true_b else b_better
            right += good
            t = p.first_look_s.get("anytime")
            if good and t is not None:
                firsts.append(t / 86_400)
    med = f"{statistics.median(firsts):.1f} days after the first look" if firsts else "–"
    add(f"- declared: {_share(right, total)}; median time to the first verdict: {med}")
    add("")
    add("## Other figures")
    add("")
    metric_keys = sorted({m.metric for w in worlds for m in w.metrics})
    if not metric_keys:
        add("No other figure of `truth.json` has an estimate to check.")
    else:
        add(
            "Figures of `truth.json` beside their estimate at the end: the bias (mean of "
            "estimate − truth over arm-worlds, ± its standard error) and, for a figure with an "
            "interval, its coverage. `engagement_per_reply` and `likes_per_reply` have no "
            "interval in the leaderboard. `feed ...` rows are the feed's per-impression "
            "figures (`botsky.feed.scores`), present when the world's users subscribe to it."
        )
        add("")
        add("| figure | arm-worlds | mean truth | mean estimate − truth | coverage |")
        add("|---|---|---|---|---|")
        for key in metric_keys:
            vals = [m for w in worlds for m in w.metrics if m.metric == key]
            diffs = [m.estimate - m.truth for m in vals if m.estimate is not None]
            se = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else float("nan")
            with_iv = [m for m in vals if m.low is not None and m.high is not None]
            cov = _share(sum(m.low <= m.truth <= m.high for m in with_iv), len(with_iv))  # type: ignore[operator]
            add(
                f"| {key} | {len(vals)} | {statistics.mean(m.truth for m in vals):.4f} | "
                f"{statistics.mean(diffs):+.4f} ± {se:.4f} | {cov} |"
            )
    keys = sorted({k for w in worlds for k in w.truth_keys})
    add("")
    add(f"`truth.json` arm fields seen: {', '.join(f'`{k}`' for k in keys)}.")
    add("")
    return "\n".join(lines)


def _seeds(text: str) -> list[int]:
    try:
        if "-" in text:
            first, last = (int(x) for x in text.split("-", 1))
            return list(range(first, last + 1))
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(
            f"{text!r}: give a range like 1-120 or a list like 3,5,8"
        ) from None


@click.command()
@click.option("--seeds", "seed_text", default="1-100", show_default=True,
              help="Worlds' seeds: a range (1-120) or a list (3,5,8).")  # fmt: skip
@click.option("--users", default=300, show_default=True, type=click.IntRange(20))
@click.option("--days", default=5, show_default=True, type=click.IntRange(1))
@click.option("--look-s", default=60.0, show_default=True, type=click.FloatRange(min=1),
              help="Stream seconds between looks (the production scoring interval).")  # fmt: skip
@click.option("--processes", default=2, show_default=True, type=click.IntRange(1))
@click.option("--config", "base", default=Path("configs/sim.yaml"), show_default=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path))  # fmt: skip
@click.option("--out", default=Path("VALIDATION.md"), show_default=True,
              type=click.Path(dir_okay=False, path_type=Path))  # fmt: skip
def main(
    seed_text: str,
    users: int,
    days: int,
    look_s: float,
    processes: int,
    base: Path,
    out: Path,
) -> None:
    """Run the validation study over simulated worlds and write its report."""
    seeds = _seeds(seed_text)
    if len(seeds) < 2:
        raise click.BadParameter("give at least two seeds", param_hint="--seeds")
    started = datetime.now(UTC)
    command = shlex.join(["scripts/validate", *sys.argv[1:]])
    commit = _git("rev-parse", "HEAD")
    if _git("status", "--porcelain", "--untracked-files=no"):
        commit += " (with uncommitted changes)"
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="botsky-validate-") as tmp:
        config = world_config(base, Path(tmp), ARMY)
        spec = StudySpec(config, users=users, days=days, look_s=look_s)
        done: list[Any] = []

        def progress(w: WorldResult) -> None:
            done.append(w)
            click.echo(
                f"world {len(done)}/{len(seeds)} (seed {w.seed}): {w.looks} looks, "
                f"{time.perf_counter() - t0:.0f} s",
                err=True,
            )

        worlds = run_study(spec, seeds, Path(tmp) / "worlds", processes=processes,
                           on_world=progress)  # fmt: skip
    runtime = time.perf_counter() - t0
    text = render_report(
        worlds,
        spec,
        seeds=seeds,
        command=command,
        commit=commit,
        started=started,
        runtime_s=runtime,
        processes=processes,
    )
    out.write_text(text)
    click.echo(f"wrote {out} ({len(worlds)} worlds, {runtime / 60:.1f} min)", err=True)


if __name__ == "__main__":
    main()
