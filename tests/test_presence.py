"""Presence: online window, interest profiles, bounds."""

from __future__ import annotations

import random
from collections import Counter

from botsky.presence import Presence, tokenize
from botsky.testing import like, post
from tests.conftest import MIN, T0


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
