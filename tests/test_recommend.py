"""Recommender: similarity ranking, the candidate filter, and the pickers."""

from __future__ import annotations

import random

import pytest

from botsky.errors import ConfigError
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
    rec.truth = lambda post, bot, dids: [0.0] * len(dids)
    for picker in ("llm", "similar", "random", "noisy_oracle"):
        assert rec.offer(picker, POST_TEXT, AUTHOR, ("en",), random.Random(1)).candidates == ()


# The world's truth in these tests: the runner fits best, although they share no word.
_FIT = {"did:plc:baker": 0.3, "did:plc:runner": 0.9, "did:plc:cook": 0.5}


def _oracle_world() -> tuple[Recommender, list[tuple[str, str, list[str]]]]:
    asked: list[tuple[str, str, list[str]]] = []

    def truth(post_uri: str, bot_did: str, dids: list[str]) -> list[float]:
        asked.append((post_uri, bot_did, list(dids)))
        return [_FIT.get(d, 0.0) for d in dids]

    rec = _world()
    rec.truth = truth
    return rec, asked


def test_noisy_oracle_at_quality_one_picks_the_best_fit_by_the_truth() -> None:
    """Quality 1 always offers the eligible user the truth hook rates best, whatever the words
    say, and asks the hook about eligible users only, for this post and bot."""
    rec, asked = _oracle_world()
    for seed in range(20):
        offer = rec.offer(
            "noisy_oracle", POST_TEXT, AUTHOR, ("en",), random.Random(seed),
            post_uri="at://p", bot_did="did:web:b", quality=1.0,
        )  # fmt: skip
        assert not offer.model_chooses
        assert [c.did for c in offer.candidates] == ["did:plc:runner"]
    post_uri, bot_did, dids = asked[0]
    assert (post_uri, bot_did) == ("at://p", "did:web:b")
    assert set(dids) == {"did:plc:baker", "did:plc:runner", "did:plc:cook"}


def test_noisy_oracle_picks_the_best_with_probability_quality() -> None:
    """At quality q the best fit comes up with probability q + (1 - q) / 3 (three eligible
    users), the others uniformly. 4,000 draws: each share is within 0.035 of its expectation
    unless a binomial count strays 4.5 sd (sd <= 0.0079): below 1e-4 for the three together."""
    rec, _ = _oracle_world()
    rng = random.Random()  # seeded from the OS: any seed must pass
    q, n = 0.4, 4000
    counts: dict[str, int] = {}
    for _ in range(n):
        (c,) = rec.offer("noisy_oracle", POST_TEXT, AUTHOR, ("en",), rng, quality=q).candidates
        counts[c.did] = counts.get(c.did, 0) + 1
    assert set(counts) == {"did:plc:baker", "did:plc:runner", "did:plc:cook"}
    assert abs(counts["did:plc:runner"] / n - (q + (1 - q) / 3)) < 0.035
    for other in ("did:plc:baker", "did:plc:cook"):
        assert abs(counts[other] / n - (1 - q) / 3) < 0.035


def test_noisy_oracle_without_the_worlds_truth_is_a_config_error() -> None:
    """Outside the simulation (no truth hook) the planted picker refuses to pick."""
    with pytest.raises(ConfigError, match="botsky simulate"):
        _world().offer("noisy_oracle", POST_TEXT, AUTHOR, ("en",), random.Random(1))


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
