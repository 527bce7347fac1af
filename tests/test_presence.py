"""Presence: online window, interest profiles, bounds."""

from __future__ import annotations

import random
from collections import Counter

from botsky.presence import Presence, tokenize
from botsky.testing import like, post
from tests.support import MIN, T0


def test_tokenize_drops_urls_mentions_and_stopwords() -> None:
    """Tokens are content words; links, @handles and short words are not interests."""
    text = "I really LOVE sourdough baking! see https://x.com/a and @bob.test, ok?"
    assert tokenize(text) == ["love", "sourdough", "baking", "see"]


def test_any_commit_makes_a_user_online_until_the_window_passes() -> None:
    """A like counts as activity; the user is gone once the window has passed."""
    p = Presence(window_s=30 * 60)
    p.observe(like("did:plc:a", T0, "at://did:plc:x/app.bsky.feed.post/1"))
    assert p.is_online("did:plc:a")
    p.observe(like("did:plc:b", T0 + 31 * MIN, "at://did:plc:x/app.bsky.feed.post/1"))
    assert not p.is_online("did:plc:a")
    assert "did:plc:a" not in p  # evicted, not just hidden
    assert [u.did for u in p.online()] == ["did:plc:b"]


def test_max_users_evicts_the_least_recently_active() -> None:
    """Past the cap the user seen longest ago is forgotten first."""
    p = Presence(max_users=2)
    for i, did in enumerate(["did:plc:a", "did:plc:b", "did:plc:a", "did:plc:c"]):
        p.observe(like(did, T0 + i, "at://did:plc:x/app.bsky.feed.post/1"))
    assert sorted(u.did for u in p.online()) == ["did:plc:a", "did:plc:c"]
    assert len(p) == 2


def test_profiles_learn_topics_and_languages_from_posts() -> None:
    """Post terms become the author's interests, findable through the index."""
    p = Presence()
    p.observe(post("did:plc:a", T0, "Sourdough starter and rye bread baking", langs=("en",)))
    p.observe(post("did:plc:b", T0 + 1, "Marathon training and trail running", langs=("fr",)))
    prof = p.profile("did:plc:a")
    assert prof is not None
    assert {"sourdough", "bread", "baking"} <= set(prof.terms)
    assert prof.langs == ("en",)
    assert p.users_sharing(["bread"]) == {"did:plc:a"}
    assert p.users_sharing(["running", "bread"]) == {"did:plc:a", "did:plc:b"}


def test_profiles_are_bounded_and_newer_posts_weigh_more() -> None:
    """At most terms_per_user terms and texts_per_user texts; recent topics dominate."""
    p = Presence(terms_per_user=4, texts_per_user=2)
    p.observe(post("did:plc:a", T0, "chess openings gambit endgame tactics puzzles"))
    for i in range(3):
        p.observe(post("did:plc:a", T0 + i + 1, "gardening tomatoes compost seedlings"))
    prof = p.profile("did:plc:a")
    assert prof is not None
    assert len(prof.terms) == 4
    assert len(prof.texts) == 2
    assert set(prof.top_terms(4)) == {"gardening", "tomatoes", "compost", "seedlings"}
    # Terms that fell out of the profile are gone from the index too.
    assert p.users_sharing(["chess"]) == set()


def test_sample_draws_only_online_users_roughly_uniformly() -> None:
    """Random sampling skips users outside the window and is close to uniform."""
    p = Presence(window_s=60)
    p.observe(like("did:plc:old", T0, "at://did:plc:x/app.bsky.feed.post/1"))
    for i in range(4):
        p.observe(like(f"did:plc:u{i}", T0 + 2 * MIN, "at://did:plc:x/app.bsky.feed.post/1"))
    rng = random.Random(1)
    draws = Counter(p.sample(rng).did for _ in range(4000))  # type: ignore[union-attr]
    assert set(draws) == {f"did:plc:u{i}" for i in range(4)}
    assert min(draws.values()) > 850


def test_non_plc_dids_and_freed_slots_are_kept_apart() -> None:
    """did:web and odd-shaped DIDs work like did:plc ones; a slot freed by a leaver is reused
    without the newcomer inheriting the leaver's identity, texts or index entries."""
    p = Presence(window_s=60)
    odd = ["did:web:example.com", "did:plc:short", "did:plc:" + "é" * 24]
    for i, did in enumerate(odd):
        p.observe(post(did, T0 + i, f"astronomy telescope nebula {i}", langs=("en",)))
    assert all(did in p for did in odd) and len(p) == 3
    assert p.users_sharing(["telescope"]) == set(odd)
    p.observe(post("did:plc:" + "a" * 24, T0 + 2 * MIN, "knitting wool patterns"))
    assert len(p) == 1 and not any(did in p for did in odd)  # all three expired
    for i in range(3):  # newcomers take the freed slots
        p.observe(
            like(f"did:plc:{i:024d}", T0 + 2 * MIN + i, "at://did:plc:x/app.bsky.feed.post/1")
        )
    assert p.users_sharing(["telescope"]) == set()
    for i in range(3):
        prof = p.profile(f"did:plc:{i:024d}")
        assert prof is not None and prof.texts == () and prof.terms == {} and prof.posts == 0
    assert p.profile("did:plc:" + "a" * 24).texts == ("knitting wool patterns",)  # type: ignore[union-attr]


def test_texts_keep_any_unicode_and_are_cut_to_the_prompt_length() -> None:
    """Texts round-trip exactly (emoji, lone surrogates from JSON) and are cut at 240 chars."""
    p = Presence(texts_per_user=2)
    texts = ["café ☕ naïve résumé", "lone \ud83d surrogate", "x" * 500]
    for i, text in enumerate(texts):
        p.observe(post("did:plc:" + "b" * 24, T0 + i, text))
    prof = p.profile("did:plc:" + "b" * 24)
    assert prof is not None and prof.posts == 3
    assert prof.texts == ("lone \ud83d surrogate", "x" * 240)


def test_a_pickled_snapshot_restores_the_same_presence() -> None:
    """``snapshot()`` pickles and ``restore()`` rebuilds the same presence (the checkpoint's
    contract): same users, index, profiles, and the same answers afterwards."""
    import pickle

    p = Presence(window_s=600, terms_per_user=3)
    for i in range(1500):  # stale log and index entries, sweeps and reused term ids
        did = f"did:plc:{i % 90:024d}" if i % 7 else f"did:web:u{i % 90}.test"
        p.observe(post(did, T0 + i, f"topic{i % 5} word{i % 13} more{i} here", langs=("en",)))
    p.observe(post(f"did:plc:{5:024d}", T0 + 1500, "the newest words", langs=("de",)))
    fresh = Presence(window_s=600, terms_per_user=3)
    fresh.restore(pickle.loads(pickle.dumps(p.snapshot())))
    assert fresh.snapshot() == p.snapshot()
    assert [u.did for u in fresh.online()] == [u.did for u in p.online()]
    assert fresh.users_sharing(["topic3"]) == p.users_sharing(["topic3"])
    assert fresh.profile("did:web:u7.test") == p.profile("did:web:u7.test")
    keep = lambda did, last_us, langs: True  # noqa: E731
    vec = {"topic3": 0.6, "word4": 0.8}
    assert fresh.matches(vec, 20, keep) == p.matches(vec, 20, keep)
    for q in (p, fresh):  # both go on the same way: a new post and a user leaving the window
        q.observe(post(f"did:plc:{3:024d}", T0 + 1700, "fresh topic words"))
        q.observe(like(f"did:plc:{4:024d}", T0 + 2200, "at://did:plc:x/app.bsky.feed.post/1"))
    assert fresh.snapshot() == p.snapshot()
    assert next(fresh.online()).did == f"did:plc:{4:024d}"


def test_a_snapshot_is_independent_of_the_presence() -> None:
    """A snapshot does not change when the presence does, nor a restored presence with it."""
    p = Presence()
    p.observe(post("did:plc:" + "a" * 24, T0, "sourdough bread"))
    snap = p.snapshot()
    before = repr(snap)
    p.observe(post("did:plc:" + "b" * 24, T0 + 1, "sourdough starter"))
    assert repr(snap) == before
    fresh = Presence()
    fresh.restore(snap)
    fresh.observe(post("did:plc:" + "c" * 24, T0 + 2, "sourdough crumb"))
    assert repr(snap) == before and len(fresh) == 2


def test_index_sweep_frees_term_ids_for_new_terms() -> None:
    """Terms nobody holds any more leave the vocabulary; the index stays exact."""
    p = Presence(terms_per_user=2)
    for i in range(3000):  # one user's topics churn: stale entries force sweeps
        p.observe(post("did:plc:" + "c" * 24, T0 + i, f"word{i}a word{i}b"))
    assert len(p._term_ids) <= 2 + 1024 + 4
    assert p.users_sharing([f"word{2999}a"]) == {"did:plc:" + "c" * 24}
    assert p.users_sharing(["word5a"]) == set()
    prof = p.profile("did:plc:" + "c" * 24)
    assert prof is not None and set(prof.terms) == {"word2999a", "word2999b"}


def test_sample_stays_uniform_when_few_users_remain_after_many() -> None:
    """After most users left, sampling still reaches every remaining user (no dead tries)."""
    p = Presence(window_s=60)
    for i in range(3000):
        p.observe(like(f"did:plc:{i:024d}", T0 + i, "at://did:plc:x/app.bsky.feed.post/1"))
    for i in range(3):
        p.observe(like(f"did:plc:k{i:023d}", T0 + 10 * MIN, "at://did:plc:x/app.bsky.feed.post/1"))
    assert len(p) == 3
    rng = random.Random(2)
    draws = Counter(p.sample(rng).did for _ in range(600))  # type: ignore[union-attr]
    assert set(draws) == {f"did:plc:k{i:023d}" for i in range(3)}
    assert min(draws.values()) > 150


def test_log_positions_are_renumbered_before_they_overflow() -> None:
    """The recency log's positions restart once they pass 2^30; the order is unchanged."""
    p = Presence(window_s=60)
    p._base = (1 << 30) - 10  # as after ~10^9 activities
    for i in range(4000):
        p.observe(
            like(
                f"did:plc:{i % 1500:024d}", T0 + i * 100_000, "at://did:plc:x/app.bsky.feed.post/1"
            )
        )
    assert p._base < 10_000  # renumbered from 0
    order = [u.did for u in p.online()]
    assert order[:2] == [f"did:plc:{3999 % 1500:024d}", f"did:plc:{3998 % 1500:024d}"]
    assert len(order) == len(p) == 601  # the window includes its start
