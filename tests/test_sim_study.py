"""The validation study's machinery, and the planted-arm test at the sample size `botsky plan`
gives.

Seeds are drawn from the operating system's entropy (printed on failure); every assertion
holds for any seed or states its chance of failing by luck (below 1 in 1,000).
"""

from __future__ import annotations

import random
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner
from scipy.stats import binom

from botsky.cli import cli
from botsky.sim.study import (
    ARMY,
    INTERVALS,
    PlantedArm,
    StudySpec,
    read_worlds,
    run_world,
    world_config,
)
from botsky.sim.validation import render_report

pytestmark = pytest.mark.usefixtures("quiet_logs")

ROOT = Path(__file__).resolve().parents[1]
_SEEDS = random.SystemRandom()


def _seeds(n: int) -> list[int]:
    return [_SEEDS.randrange(1, 2**31) for _ in range(n)]


def test_a_study_world_reads_every_look_and_the_report_names_every_figure(tmp_path: Path) -> None:
    """One small world of the study: every arm and every pair of the army is read; at the end
    every arm is decided and each coverage flag at the end agrees with the interval the
    leaderboard printed; a flag for every look implies the one at the end; the report has
    every interval type and rule. Any seed."""
    seed = _seeds(1)[0]
    config = world_config(ROOT / "configs" / "sim.yaml", tmp_path / "cfg", ARMY)
    spec = StudySpec(config, users=80, days=2, look_s=600)
    world = run_world(spec, seed, tmp_path / "worlds")
    names = {a.name for a in ARMY}
    assert {a.arm for a in world.arms} == names, seed
    assert len(world.pairs) == len(names) * (len(names) - 1) // 2
    assert sum(p.null for p in world.pairs) == 2  # random/q0 and q30a/q30b
    assert world.looks > 10
    for a in world.arms:
        assert a.decided == a.mentions > 0, seed
        assert set(a.end) == set(INTERVALS)
        for name in INTERVALS:
            if a.uniform.get(name) and name != "km":
                # The last look is the end, whose running truth is truth.json's.
                assert a.end[name], (seed, a)
    for p in world.pairs:
        assert set(p.declared) == {"anytime", "fixed", "anytime_end", "fixed_end"}
        for rule in ("anytime", "fixed"):
            # A verdict at the end is a verdict at some look.
            end, ever = p.declared[f"{rule}_end"], p.declared[rule]
            assert (not end[0] or ever[0]) and (not end[1] or ever[1]), (seed, p)
    assert not (tmp_path / "worlds" / f"seed-{seed}").exists()  # each world cleans up
    text = render_report(
        [world, world],
        spec,
        seeds=[seed, seed + 1],
        command="scripts/validate",
        commit="abc",
        started=datetime.now(UTC),
        runtime_s=1.0,
        processes=1,
    )
    for name in INTERVALS:
        assert f"| {name} |" in text
    assert "Anytime-valid rule read at every look" in text
    assert "engagement_per_reply" in text


@pytest.mark.slow
def test_planted_arms_ten_points_apart_are_ordered_at_the_n_botsky_plan_gives(
    tmp_path: Path,
) -> None:
    """noisy_oracle arms of quality 0.3 and 0.6 (true rates about 25% and 37% with these two
    arms: at least 10 points apart, measured in truth.json). A pilot world gives the lower
    arm's true rate and the design effect; `botsky plan` gives the decided mentions per arm
    that separate a 10-point difference from it at 80% power under the leaderboard's
    anytime-valid rule; then W = 20 worlds (drawn seeds) sized to reach that n are read as of
    the moment both arms have n decided mentions, and the leaderboard must rank the better
    arm first (its verdict "better") in at least k of them.

    Chance of failing when all is right: the plan's n gives each world a probability of at
    least 0.8 to order the arms (a difference of 10 points; the planted one is larger, which
    only adds power), so the count of ordered worlds is at least Binomial(20, 0.8), whose
    probability of falling below k = 10 is 5.6e-4. The pooled true difference below 10 points
    would take an error of about 4 standard deviations of the pooled truth (~0.5 points):
    below 1e-4. The wrong order (the lower arm declared better) would need its estimated
    difference about 7 standard deviations from the truth: below 1e-9 over all worlds.
    Together below 1/1000. The share of worlds ordered is printed (it is expected
    near or above 0.8; the plan's anytime n is an upper bound).
    """
    army = (PlantedArm("low", "noisy_oracle", 0.3), PlantedArm("high", "noisy_oracle", 0.6))
    config = world_config(ROOT / "configs" / "sim.yaml", tmp_path / "cfg", army)
    pilot_seed, *seeds = _seeds(21)
    pilot = read_worlds(
        StudySpec(config, users=250, days=5, look_s=60, army=army),
        [pilot_seed],
        tmp_path / "pilot",
        None,
        processes=1,
    )[0]
    base = pilot.true_rate["low"]
    deff = max(1.0, *(s.design_effect or 1.0 for s in pilot.scores))
    args = ["plan", "--rate", f"{base:.4f}", "--differences", "10", "--json"]
    args += ["--design-effect", f"{deff:.4f}"]
    plan = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert plan.exit_code == 0, plan.output
    n = orjson.loads(plan.output)["plans"][0]["anytime_n_per_arm"]
    assert 200 < n < 5000, (pilot_seed, n)
    # Size the worlds so that both arms pass n with room to spare (25% more mentions).
    per_user_day = min(pilot.mentions_per_arm.values()) / pilot.user_days
    users = max(100, round(1.25 * n / per_user_day / 5))
    readings = read_worlds(
        StudySpec(config, users=users, days=5, look_s=60, army=army),
        seeds,
        tmp_path / "worlds",
        n,
        processes=2,
    )
    assert all(r.reached for r in readings), [(r.seed, r.mentions_per_arm) for r in readings]
    ordered = 0
    for r in readings:
        rank = {s.group: s.rank for s in r.scores}
        ordered += rank["high"] < rank["low"]
        assert not rank["low"] < rank["high"], (r.seed, r.scores)
    pooled = {
        arm: sum(r.true_rate[arm] * r.mentions_per_arm[arm] for r in readings)
        / sum(r.mentions_per_arm[arm] for r in readings)
        for arm in ("low", "high")
    }
    w = len(readings)
    k = min(c for c in range(w + 1) if binom.cdf(c, w, 0.8) >= 1 / 1000)
    print(f"plan n={n} per arm (deff {deff:.2f}, base {base:.3f}); {users} users x 5 days; "
          f"ordered {ordered}/{w}; pooled truth {pooled}")  # fmt: skip
    assert pooled["high"] - pooled["low"] >= 0.10, (pooled, seeds)
    assert ordered >= k, (ordered, k, n, seeds)


def test_feed_figures_are_checked_when_truth_json_has_a_feed_section() -> None:
    """With a ``feed`` section in truth.json (simulated feed subscribers), each served arm's
    engaged rate (with its Wilson interval) and engagement per seen impression are set
    beside their truth; arms nobody saw, and worlds without the section, add nothing."""
    from botsky.ledger.feed import ArmCounts
    from botsky.sim.study import feed_metrics

    counts = [
        ArmCounts("t-a", served=300, seen=200, engaged_served=40, engaged_seen=30,
                  likes_seen=25, reposts_seen=5, replies_seen=4, quotes_seen=0),
        ArmCounts("t-b", served=10, seen=0, engaged_served=0, engaged_seen=0,
                  likes_seen=0, reposts_seen=0, replies_seen=0, quotes_seen=0),
    ]  # fmt: skip
    doc = {
        "feed": {
            "arm_by": "model",
            "arms": {
                "model": [
                    {"group": "t-a", "true_engaged_rate": 0.14,
                     "true_engagement_per_impression": 0.16},
                    {"group": "t-b", "true_engaged_rate": 0.1,
                     "true_engagement_per_impression": 0.1},
                ]
            },
        }
    }  # fmt: skip
    rows = {m.metric: m for m in feed_metrics(counts, doc)}
    assert set(rows) == {"feed true_engaged_rate", "feed true_engagement_per_impression"}
    rate = rows["feed true_engaged_rate"]
    assert (rate.arm, rate.estimate, rate.truth) == ("t-a", 0.15, 0.14)
    assert rate.low is not None and rate.high is not None and rate.low < 0.14 < rate.high
    per = rows["feed true_engagement_per_impression"]
    assert per.estimate == pytest.approx(34 / 200) and per.low is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--seeds", "one-two"], "give a range like 1-120"),
        (["--seeds", "7"], "give at least two seeds"),
        (["--users", "5"], "--users"),
    ],
)
def test_validate_refuses_bad_arguments_with_a_message(args: list[str], message: str) -> None:
    """scripts/validate's command: bad arguments give a usage error naming the problem (exit
    2), not a traceback, before any world runs."""
    from botsky.sim.validation import main

    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
