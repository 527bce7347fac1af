"""Army: weighted, seeded, language-aware random assignment."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from botsky.army import Army, Bot
from botsky.testing import FakeModel


def _bot(name: str, weight: float = 1.0, languages: tuple[str, ...] = ("en",)) -> Bot:
    return Bot(
        name=name,
        persona="p",
        model=FakeModel(model=f"m-{name}"),
        picker="llm",
        handle=f"{name}.test",
        did=f"did:plc:{name}",
        weight=weight,
        languages=languages,
    )


def test_pick_follows_the_weights() -> None:
    """A bot with weight 3 is drawn about three times as often as one with weight 1."""
    army = Army([_bot("a", 3), _bot("b", 1)], random.Random(7))
    counts = Counter(army.pick(f"at://p/{i}").name for i in range(8000))  # type: ignore[union-attr]
    assert 2.6 < counts["a"] / counts["b"] < 3.4


def test_pick_is_reproducible_for_a_seed() -> None:
    """The same seed gives the same sequence of assignments."""
    a1 = Army([_bot("a"), _bot("b"), _bot("c")], random.Random(3))
    a2 = Army([_bot("a"), _bot("b"), _bot("c")], random.Random(3))
    assert [a1.pick("x").name for _ in range(50)] == [a2.pick("x").name for _ in range(50)]  # type: ignore[union-attr]


def test_pick_respects_languages() -> None:
    """Only bots that speak the post's language are drawn; none speaks it → None."""
    army = Army([_bot("en"), _bot("fr", languages=("fr",))], random.Random(1))
    assert {army.pick("x", ["fr"]).name for _ in range(50)} == {"fr"}  # type: ignore[union-attr]
    assert army.pick("x", ["ja"]) is None
    assert {army.pick("x", []).name for _ in range(200)} == {"en", "fr"}  # type: ignore[union-attr]


def test_is_bot_and_empty_army() -> None:
    """Bots are known by DID; an army cannot be empty."""
    army = Army([_bot("a")], random.Random(1))
    assert army.is_bot("did:plc:a") and not army.is_bot("did:plc:z")
    with pytest.raises(ValueError):
        Army([], random.Random(1))


def test_a_pickled_snapshot_continues_the_same_draws() -> None:
    """An army restored from its pickled snapshot draws what the original draws next."""
    import pickle

    a = Army([_bot("a"), _bot("b"), _bot("c")], random.Random(5))
    for _ in range(17):
        a.pick("x")
    b = Army([_bot("a"), _bot("b"), _bot("c")], random.Random(99))
    b.restore(pickle.loads(pickle.dumps(a.snapshot())))
    assert [a.pick("x").name for _ in range(50)] == [b.pick("x").name for _ in range(50)]  # type: ignore[union-attr]


def test_replace_models_swaps_the_named_bots_in_place() -> None:
    """The named bot gets the new model everywhere the army is held; a wrong name is an error."""
    army = Army([_bot("a"), _bot("b")], random.Random(1))
    new = FakeModel(model="m-new")
    army.replace_models({"b": new})
    assert [bot.model for bot in army.bots][1] is new
    found = army.by_did("did:plc:b")
    assert found is not None and found.model is new and found.persona == "p"
    assert army.by_did("did:plc:a").model.model == "m-a"  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="no bot named zed"):
        army.replace_models({"zed": new})
