"""Recommender: similarity ranking, the candidate filter, and the three pickers."""

from __future__ import annotations

import random

import pytest

from botsky.identity import MemoryIdentity
from botsky.presence import Presence
from botsky.recommend import Recommender
from botsky.testing import like, post
from tests.support import MIN, T0

USERS = {
    "did:plc:baker": ("baker.test", "sourdough bread baking flour starter", ("en",)),
    "did:plc:runner": ("runner.test", "marathon running trail shoes training", ("en",)),
    "did:plc:cook": ("cook.test", "bread soup recipes kitchen dinner", ("en",)),
    "did:plc:boulanger": ("boulanger.test", "sourdough bread baking levain", ("fr",)),
    "did:plc:nohandle": ("", "sourdough bread baking starter", ("en",)),
}
AUTHOR = "did:plc:author"
POST_TEXT = "My sourdough starter finally made great bread, any baking tips?"


def _world(**kw: object) -> Recommender:
    presence = Presence(window_s=1800)
    identity = MemoryIdentity({d: h for d, (h, _, _) in USERS.items() if h})
    for i, (did, (_, text, langs)) in enumerate(USERS.items()):
        presence.observe(post(did, T0 + i, text, langs=langs))
    presence.observe(post(AUTHOR, T0 + 10, POST_TEXT))
    return Recommender(presence, identity, **kw)  # type: ignore[arg-type]


def test_ranked_orders_by_interest_similarity() -> None:
    """The baker outranks the cook (one shared word) and the runner is not a candidate."""
    rec = _world(require_shared_language=False)
    order = [p.did for _, p in rec.ranked(POST_TEXT, AUTHOR, ("en",))]
    assert order[0] == "did:plc:baker"
    assert order.index("did:plc:baker") < order.index("did:plc:cook")
    assert "did:plc:runner" not in order


@pytest.mark.parametrize(
    ("setup", "excluded"),
    [
        ("author", AUTHOR),
        ("bot", "did:plc:baker"),
        ("cooldown", "did:plc:baker"),
        ("language", "did:plc:boulanger"),
        ("consent", "did:plc:baker"),
        ("no_handle", "did:plc:nohandle"),
        ("offline", "did:plc:baker"),
    ],
)
def test_filter_excludes(setup: str, excluded: str) -> None:
    """Each filter rule keeps its user out of the candidates."""
    kw: dict[str, object] = {}
    if setup == "bot":
        kw["is_bot"] = lambda d: d == excluded
    if setup == "consent":
        kw["may_mention"] = lambda d: d != excluded
    rec = _world(**kw)
    if setup == "cooldown":
        rec.note_mentioned(excluded, T0)
    if setup == "offline":
        for i, did in enumerate(d for d in USERS if d != excluded):
            rec.presence.observe(
                like(did, T0 + 25 * MIN + i, "at://did:plc:x/app.bsky.feed.post/1")
            )
        rec.presence.observe(like(AUTHOR, T0 + 31 * MIN, "at://did:plc:x/app.bsky.feed.post/1"))
    dids = [p.did for _, p in rec.ranked(POST_TEXT, AUTHOR, ("en",))]
    assert excluded not in dids
    assert dids  # someone else is still offered


def test_cooldown_ends() -> None:
    """A user mentioned longer ago than the cooldown is a candidate again."""
    rec = _world(cooldown_s=60)
    rec.note_mentioned("did:plc:baker", T0 - 2 * MIN)
    assert "did:plc:baker" in [p.did for _, p in rec.ranked(POST_TEXT, AUTHOR, ("en",))]


def test_llm_picker_offers_top_k_with_details() -> None:
    """The llm picker offers the top-k with handle, interests, activity and rank."""
    rec = _world(top_k=2, require_shared_language=False)
    offer = rec.offer("llm", POST_TEXT, AUTHOR, ("en",), random.Random(1))
    assert offer.model_chooses
    assert next(c.handle for c in offer.candidates) == "baker.test"
    assert len(offer.candidates) == 2
    first = offer.candidates[0]
    assert first.rank == 0 and first.score > 0
    assert "sourdough" in first.interests
    assert first.minutes_active >= 0


def test_similar_picker_offers_only_the_top_one() -> None:
    """The similar control arm offers exactly the most similar user."""
    offer = _world().offer("similar", POST_TEXT, AUTHOR, ("en",), random.Random(1))
    assert not offer.model_chooses
    assert [c.handle for c in offer.candidates] == ["baker.test"]


def test_random_picker_draws_eligible_users_and_records_their_rank() -> None:
    """The random arm reaches every eligible user, never a filtered one, and records ranks."""
    rec = _world()
    rng = random.Random(5)
    seen: dict[str, int] = {}
    for _ in range(300):
        offer = rec.offer("random", POST_TEXT, AUTHOR, ("en",), rng)
        (c,) = offer.candidates
        seen[c.handle] = c.rank
    assert set(seen) == {"baker.test", "runner.test", "cook.test"}
    assert seen["baker.test"] == 0
    assert seen["runner.test"] == 2  # shares no term: ranked after the two that do


def test_no_one_online_gives_an_empty_offer() -> None:
    """With nobody eligible every picker offers nothing."""
    rec = Recommender(Presence(), MemoryIdentity())
    for picker in ("llm", "similar", "random"):
        assert rec.offer(picker, POST_TEXT, AUTHOR, ("en",), random.Random(1)).candidates == ()


def test_ranking_matches_a_brute_force_over_online_profiles() -> None:
    """``ranked`` is ``eligible`` + similarity to the profile's terms over everyone online,
    on a crowd where profiles overlap, differ in language and some were mentioned."""
    from botsky.presence import tokenize, weigh

    rng = random.Random(3)
    words = [
        "bread",
        "sourdough",
        "running",
        "trail",
        "chess",
        "garden",
        "tomato",
        "jazz",
        "piano",
        "coffee",
    ]
    presence = Presence(window_s=1800)
    handles = {}
    for i in range(120):
        did = f"did:plc:{i:024d}"
        handles[did] = f"u{i}.test"
        langs = ("en",) if i % 4 else ("fr",)
        for k in range(rng.randint(1, 3)):
            text = " ".join(rng.choices(words, k=rng.randint(2, 6)))
            presence.observe(post(did, T0 + i * 1000 + k, text, langs=langs))
    rec = Recommender(presence, MemoryIdentity(handles), cooldown_s=3600)
    for i in range(0, 120, 9):
        rec.note_mentioned(f"did:plc:{i:024d}", T0)
    author, text = "did:plc:" + "0" * 23 + "7", "sourdough bread and a garden tomato"
    vec = weigh(tokenize(text), presence.stats)
    expected = sorted(
        (
            (-sum(w * p.terms.get(t, 0.0) for t, w in vec.items()), -p.last_us, p.did)
            for p in presence.online()
            if rec.eligible(p, author, ("en",))
        ),
    )
    expected = [(-s, d) for s, _, d in expected if s < 0]
    got = [(s, p.did) for s, p in rec.ranked(text, author, ("en",))]
    assert [d for _, d in got] == [d for _, d in expected]
    assert [s for s, _ in got] == pytest.approx([s for s, _ in expected])


def test_a_pickled_snapshot_keeps_the_mention_cooldowns() -> None:
    """Cooldowns survive ``snapshot``/``restore``; so do the handles of a memory identity."""
    import pickle

    rec = _world(cooldown_s=3600)
    rec.note_mentioned("did:plc:baker", T0)
    fresh = _world(cooldown_s=3600)
    fresh.restore(pickle.loads(pickle.dumps(rec.snapshot())))
    assert "did:plc:baker" not in [p.did for _, p in fresh.ranked(POST_TEXT, AUTHOR, ("en",))]
    identity = MemoryIdentity(max_entries=2)
    identity.set("did:plc:a", "a.test")
    identity.set("did:plc:b", "b.test")
    other = MemoryIdentity(max_entries=2)
    other.restore(pickle.loads(pickle.dumps(identity.snapshot())))
    other.set("did:plc:c", "c.test")  # the cap evicts the oldest restored entry
    assert [other.handle(d) for d in ("did:plc:a", "did:plc:b", "did:plc:c")] == [
        None,
        "b.test",
        "c.test",
    ]
