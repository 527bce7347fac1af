"""Nothing hidden leaks: the pipeline and the models under test see only what a network shows.

A simulated user's archetype, traits and interest weights are the world's ground truth; a
model that could read them (in a handle, a bio, a post, a prompt) would be graded on a leak,
not on recommending.
"""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest

from botsky.configload import resolve_secrets
from botsky.events import PROFILE, parse_jetstream
from botsky.sim.archetypes import TRAITS, load_archetypes
from botsky.sim.run import simulate
from botsky.testing import FakeModel
from tests.support import sim_config

pytestmark = pytest.mark.usefixtures("quiet_logs")

ARMS = """bots:
  - {name: similar, persona: p, provider: template, model: t-similar, picker: similar,
     account: {handle: similar.bots.sim.test}}
  - {name: chooser, persona: "You recommend people.", provider: openai_compatible,
     base_url: "http://127.0.0.1:9/v1", model: chooser-model, picker: llm,
     account: {handle: chooser.bots.sim.test}}
"""
# Trait names that are not everyday words (activity, reply, like, follow are: they would
# match ordinary text and prove nothing).
_HIDDEN_FIELDS = ("archetype", "responsiveness", "toxicity", "openness")


def _forbidden() -> re.Pattern[str]:
    labels = [a.name for a in load_archetypes()]
    assert set(_HIDDEN_FIELDS) - {"archetype"} <= set(TRAITS)
    words = "|".join(sorted(map(re.escape, [*labels, *_HIDDEN_FIELDS])))
    # Not inside a longer word ("trolley"), but "lurker00127" and "troll+expert" match.
    return re.compile(rf"(?<![a-z])(?:{words})(?![a-z])", re.IGNORECASE)


def test_the_scanner_finds_the_old_leaks() -> None:
    """The pattern catches the handles and hidden fields of the old world (it can fail)."""
    pattern = _forbidden()
    for leaked in ("lurker00127.sim.test", "enthusiast+socialite", '{"toxicity": 0.9}'):
        assert pattern.search(leaked), leaked
    for clean in ("lea-okafor.sim.test", "trolley problem", "expertise"):
        assert not pattern.search(clean), clean


async def test_events_profiles_and_prompts_carry_no_hidden_state(tmp_path: Path) -> None:
    """Every event the world emits (handles, profiles, posts, replies) and every prompt the
    model under test receives is free of archetype labels and hidden-state field names."""
    loaded = sim_config(tmp_path, ARMS)
    secrets = resolve_secrets(loaded, environ={}, live=False)
    model = FakeModel(model="chooser-model")
    export = tmp_path / "events.jsonl"
    result = await simulate(
        loaded, secrets, days=2, users=60, seed=3, models={"chooser": model}, export=export
    )
    pattern = _forbidden()
    lines = export.read_bytes().splitlines()
    assert len(lines) == result.summary.events > 500
    profiles = 0
    for line in lines:
        assert not pattern.search(line.decode()), line
        event = parse_jetstream(line)
        if event.collection == PROFILE:
            profiles += 1
            record = event.record or {}
            assert record["displayName"] and isinstance(record["description"], str)
    assert profiles == len(result.world.users)
    assert len(model.calls) > 20
    for system, user in model.calls:
        assert not pattern.search(system) and not pattern.search(user), user
    # The hidden state itself does hold the label: the scan would have found it.
    state = orjson.dumps([u.state for u in result.world.users]).decode()
    assert pattern.search(state)
