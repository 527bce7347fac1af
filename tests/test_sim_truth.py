"""Ground truth: the production scoreboard recovers the ranking planted in the world.

Three arms share the army: ``similar`` and ``random`` (control arms) and a scripted model that
deliberately mentions the WORST candidate it is offered (the last ``@handle`` of the
<candidates> block; with ``top_k: 50`` that is the least similar online user). The world's
users answer mentions by hidden interest fit, so the leaderboard must read
similar > random > worst with separated 95% intervals, and the oracle must bound every arm.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from botsky.configload import resolve_secrets
from botsky.scoring import Score
from botsky.sim.run import SimResult, simulate
from botsky.testing import FakeModel, handles_offered
from tests.support import sim_config

# Whole simulations per seed (shared by both tests): the heavy end of the suite.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("quiet_logs")]

SEEDS = (1, 2, 6)
USERS, DAYS = 250, 4
# random and worst are the arms to tell apart (similar is far ahead): they get more posts.
THREE_ARMS = """bots:
  - {name: similar, persona: p, provider: template, model: t-similar, picker: similar,
     account: {handle: similar.bots.sim.test}}
  - {name: random, persona: p, provider: template, model: t-random, picker: random, weight: 2,
     account: {handle: random.bots.sim.test}}
  - {name: worst, persona: p, provider: openai_compatible, base_url: "http://127.0.0.1:9/v1",
     model: worst-model, picker: llm, weight: 2, account: {handle: worst.bots.sim.test}}
"""
_results: dict[int, SimResult] = {}


def _mention_the_worst(system: str, user: str) -> dict[str, Any]:
    handle = handles_offered(user)[-1]
    return {"reply": f"@{handle} you should see this", "mention": handle}


async def _result(seed: int, tmp_path_factory: pytest.TempPathFactory) -> SimResult:
    # One run per seed, shared by the tests below (results are plain data).
    if seed not in _results:
        tmp: Path = tmp_path_factory.mktemp(f"truth{seed}")
        loaded = sim_config(tmp, THREE_ARMS, top_k=50)
        secrets = resolve_secrets(loaded, environ={}, live=False)
        worst = FakeModel(model="worst-model").script(*[_mention_the_worst] * 5000)
        _results[seed] = await simulate(
            loaded, secrets, days=DAYS, users=USERS, seed=seed, models={"worst": worst}
        )
    return _results[seed]


def _by_picker(result: SimResult) -> dict[str, Score]:
    return {s.group: s for s in result.by_picker}


@pytest.mark.parametrize("seed", SEEDS)
async def test_leaderboard_orders_the_arms_as_planted(
    seed: int, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """similar > random > worst-of-offered, each pair with separated 95% intervals."""
    arms = _by_picker(await _result(seed, tmp_path_factory))
    similar, random_, worst = arms["similar"], arms["random"], arms["llm"]
    assert all(a.matured >= 150 for a in (similar, random_, worst))
    assert similar.ci_low > random_.ci_high
    assert random_.ci_low > worst.ci_high
    assert [s.group for s in (await _result(seed, tmp_path_factory)).by_picker] == [
        "similar",
        "random",
        "llm",
    ]


@pytest.mark.parametrize("seed", SEEDS)
async def test_oracle_rate_bounds_every_arm(
    seed: int, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The best-fitting online user (the oracle) beats every arm, in truth and as measured."""
    result = await _result(seed, tmp_path_factory)
    oracle = result.oracle_rate
    assert oracle is not None
    for picker, arm in _by_picker(result).items():
        expected = result.expected_rate(picker)
        assert expected is not None and expected <= oracle
        assert arm.success_rate is not None and arm.success_rate < oracle
    # The ground truth itself has the planted order.
    exp = {p: result.expected_rate(p) or 0.0 for p in ("similar", "random", "llm")}
    assert exp["similar"] > exp["random"] > exp["llm"]
