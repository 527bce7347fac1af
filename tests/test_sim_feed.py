"""botsky's feed in the simulation: subscribers read it through the feed service, the world
keeps its truth, and the feed's estimates cover that truth.

Seeds are drawn from the operating system's entropy (printed on failure), never chosen; each
assertion holds for any seed or states the probability with which it fails by chance.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from scipy.stats import binom, norm

from botsky.configload import resolve_secrets
from botsky.feed.scores import feed_scores
from botsky.ledger.feed import ExposureRow
from botsky.ledger.sqlite import SqliteLedger
from botsky.sim.feed import ENGAGED, KINDS
from botsky.sim.run import SimResult, simulate, simulate_many
from tests.support import CONTROL_BOTS, sim_config

pytestmark = pytest.mark.usefixtures("quiet_logs")

_SEEDS = random.SystemRandom()


def _seeds(n: int) -> list[int]:
    return [_SEEDS.randrange(1, 2**31) for _ in range(n)]


async def _run(tmp: Path, subscribers: float | None = None, **kwargs: Any) -> SimResult:
    loaded = sim_config(tmp, CONTROL_BOTS, subscribers=subscribers)
    secrets = resolve_secrets(loaded, environ={}, live=False)
    return await simulate(loaded, secrets, **kwargs)


async def _exposures(result: SimResult) -> list[ExposureRow]:
    assert result.ledger_path is not None
    ledger = SqliteLedger(result.ledger_path)
    await ledger.open()
    try:
        return await ledger.feed_exposures()
    finally:
        await ledger.close()


async def test_subscribers_read_the_feed_and_the_truth_follows_the_ledger(tmp_path: Path) -> None:
    """Subscribers' pages go through the feed service into the ledger: per arm the world's
    served and seen counts are the ledger's, only subscribers are viewers, seen items are the
    top of their page, the run's figures are the production scores of the ledger, and for every
    latest exposure the world still holds, the engagement the world attributed to it is
    exactly what the feed joined to it. Every page gives its arms equal slots (±1).
    truth.json carries the feed's truth. Any seed."""
    seed = _seeds(1)[0]
    result = await _run(tmp_path, subscribers=0.5, days=2, users=80, seed=seed)
    world = result.world
    rows = await _exposures(result)
    assert rows and world.counts["feed_pages"] > 0, seed
    # What was served and seen, per arm (the feed's arm is the model; one bot per model here).
    served, seen = Counter[str](), Counter[str]()
    for r in rows:
        served[r.exposure.arm] += 1
        seen[r.exposure.arm] += r.seen_us is not None
    truth = result.feed_arm_truth("model")
    assert set(truth) == set(served) == {"t-similar", "t-random"}, seed
    for arm, t in truth.items():
        assert (t.served, t.impressions) == (served[arm], seen[arm]), (seed, arm)
        assert 0.0 <= (t.true_engaged_rate or 0.0) <= 1.0
        assert t.true_engagement_per_impression is not None
        assert t.true_engagement_per_impression >= (t.true_engaged_rate or 0.0) - 1e-12
    subscribers = {world.users[i].did for i in world.subscribers}
    assert 0 < len(subscribers) < len(world.users)
    assert {r.exposure.viewer for r in rows} <= subscribers, seed
    # Seen items are the first ones of their page.
    by_page: dict[str, list[ExposureRow]] = {}
    for r in rows:
        by_page.setdefault(r.exposure.req_id, []).append(r)
    for page in by_page.values():
        flags = [r.seen_us is not None for r in sorted(page, key=lambda r: r.exposure.pos)]
        assert flags == sorted(flags, reverse=True), seed
        # Equal exposure on every page the subscribers got: a round-robin of the arms that had
        # replies to serve (early on, only one arm may have any).
        arms = Counter(r.exposure.arm for r in page)
        assert max(arms.values()) - min(arms.values()) <= 1, (seed, arms)
    # The figures printed are the production scoring of the ledger's exposure counts.
    assert result.ledger_path is not None
    ledger = SqliteLedger(result.ledger_path)
    await ledger.open()
    try:
        assert result.feed == feed_scores(await ledger.feed_arm_counts())
    finally:
        await ledger.close()
    # The world's attribution is the feed's join, exposure by exposure.
    latest: dict[tuple[str, str], ExposureRow] = {}
    for r in rows:  # in id order: the last one per (viewer, item) is the latest
        assert r.exposure.viewer is not None
        latest[(r.exposure.viewer, r.exposure.item_uri)] = r
    compared = engaged = 0
    for key, exp in world.exposed.items():
        row = latest[key]
        assert row.exposure.served_us == exp.served_us and (row.seen_us is not None) == exp.seen
        joined = {
            "like": row.like_us is not None,
            "repost": row.repost_us is not None,
            "reply": row.reply_us is not None,
        }
        for kind, bit in KINDS.items():
            assert joined[kind] == bool(exp.done & bit), (seed, key, kind)
        assert any(joined.values()) == bool(exp.done & ENGAGED)
        compared += 1
        engaged += any(joined.values())
    assert compared > 100, (seed, compared)
    doc = orjson.loads((tmp_path / "data" / "truth.json").read_bytes())
    feed = doc["feed"]
    assert feed["arm_by"] == "model" and feed["subscribers"] == 0.5
    assert set(feed["definitions"]) >= {"impressions", "true_engaged_rate"}
    for by in ("bot", "model", "persona", "picker"):
        for row_ in feed["arms"][by]:
            t2 = result.feed_arm_truth(by)[row_["group"]]
            assert row_["impressions"] == t2.impressions
            assert row_["true_engaged_rate"] == pytest.approx(t2.true_engaged_rate)
            assert row_["true_engagement_per_impression"] == pytest.approx(
                t2.true_engagement_per_impression
            )


async def test_a_seed_gives_one_feed_and_no_subscribers_no_feed(tmp_path: Path) -> None:
    """Two runs with one seed serve the same pages and score the same; with no subscribers
    the simulation runs no feed and writes no feed truth, and its users are the same users
    (who subscribes is a hash, not a draw from the world's RNG)."""
    seed = _seeds(1)[0]
    a = await _run(tmp_path / "a", subscribers=0.4, days=1, users=50, seed=seed)
    b = await _run(tmp_path / "b", subscribers=0.4, days=1, users=50, seed=seed)
    assert a.feed == b.feed and a.feed_truth == b.feed_truth, seed
    assert a.world.counts == b.world.counts
    assert [r.exposure for r in await _exposures(a)] != []
    off = await _run(tmp_path / "off", subscribers=0, days=1, users=50, seed=seed)
    assert off.feed == [] and off.world.counts["feed_pages"] == 0
    doc = orjson.loads((tmp_path / "off" / "data" / "truth.json").read_bytes())
    assert "feed" not in doc
    assert [u.did for u in off.world.users] == [u.did for u in a.world.users]
    assert [u.interests for u in off.world.users] == [u.interests for u in a.world.users]


@pytest.mark.slow
async def test_feed_estimates_cover_the_true_engagement_in_most_worlds(tmp_path: Path) -> None:
    """In n worlds with drawn seeds, each arm's 95% Wilson interval of the feed's engaged rate
    (engaged / seen impressions) covers the world's true engaged rate in at least k of them,
    and the estimates are unbiased for the truth.

    Chance of failing when all is right: given the world's history, whether a seen impression
    gets engaged is a sequence of decisions whose summed probabilities (up to the first
    success) are the truth, so estimate - truth is a martingale with variance at most
    n * rate, within 1 / (1 - rate) (~4% here) of the binomial one, and a 95% Wilson interval
    covers the truth with probability about 0.95;
    with 0.93 as a floor (Wilson's coverage dips below nominal at some sizes), k is the
    smallest count with P(Binomial(n, 0.93) < k) below 1/3000, per arm (two arms). The
    standardized errors have mean 0 and variance at most 1 / (1 - rate); their mean over the
    2n arm-worlds exceeds z(1 - 1/6000) * sqrt(max 1 / (1 - rate) / 2n) in absolute value with
    probability below 1/3000 (normal approximation: hundreds of seen impressions per arm).
    Union bound: below 1/1000.
    """
    n = 12
    seeds = _seeds(n)
    loaded = sim_config(tmp_path / "cfg", CONTROL_BOTS, subscribers=0.5)
    secrets = resolve_secrets(loaded, environ={}, live=False)
    worlds = await simulate_many(
        loaded, secrets, seeds, workdir=tmp_path / "worlds", days=3, users=150
    )
    k = min(c for c in range(n + 1) if binom.cdf(c, n, 0.93) >= 1 / 3000)
    zs: list[float] = []
    rates: list[float] = []
    for arm in ("t-similar", "t-random"):
        covered = 0
        for w in worlds:
            truth, s = w.feed_arm(arm)
            assert s.seen == truth["impressions"] > 500, (w.seed, arm, s.seen)
            rate = truth["true_engaged_rate"]
            rates.append(rate)
            covered += s.ci_low <= rate <= s.ci_high
            zs.append((s.engaged_seen / s.seen - rate) / math.sqrt(rate * (1 - rate) / s.seen))
        assert covered >= k, (arm, covered, k, seeds)
    bound = norm.ppf(1 - 1 / 6000) * math.sqrt(1 / (1 - max(rates)) / len(zs))
    assert abs(sum(zs) / len(zs)) <= bound, (zs, seeds)
