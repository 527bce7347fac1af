"""The feed's pure core: cursors, the randomized round-robin draft, fewest-impressions-first."""

from __future__ import annotations

import random
import secrets
from collections import Counter

import pytest

from botsky.feed.core import (
    Cursor,
    Item,
    Pool,
    arm_token,
    arms_digest,
    build_page,
    round_order,
)


def _pool(sizes: dict[str, int], cap: int = 10**9) -> Pool:
    pool = Pool(max_impressions=cap)
    mid = 0
    for arm, n in sizes.items():
        for _ in range(n):
            mid += 1
            pool.add(Item(mid, f"at://did:plc:bot/app.bsky.feed.post/{mid}", arm, mid))
    return pool


def _session(pool: Pool, limits: list[int], seed: int = 7) -> list[list[Item]]:
    """Page through one session with the given limits; the items of each page."""
    cursor: Cursor | None = Cursor(seed)
    served: set[int] = set()
    pages = []
    for limit in limits:
        assert cursor is not None
        page = build_page(pool, cursor, limit, served)
        served.update(s.item.mention_id for s in page.slots)
        pages.append([s.item for s in page.slots])
        cursor = page.next
    return pages


def test_cursor_roundtrip_and_rejects_garbage() -> None:
    """A cursor survives encoding; anything else is a ValueError, never a crash."""
    c = Cursor(seed=2**64 - 1, round=70_000, pos=3, served=123_456, arms=2**32 - 1)
    assert Cursor.decode(c.encode()) == c
    assert c.session_id == "ffffffffffffffff"
    for bad in ("", "x", "!!!!", "A" * 65, Cursor(1).encode()[:-2], "AAAAAAAAAAAAAAAAAAAAAAAAAAAA"):
        with pytest.raises(ValueError):
            Cursor.decode(bad)


def test_round_order_is_a_deterministic_permutation() -> None:
    """Each round is a permutation of the arms, the same for the same seed and round."""
    arms = ["a", "b", "c", "d", "e"]
    for rnd in range(50):
        order = round_order(99, rnd, arms)
        assert sorted(order) == arms
        assert order == round_order(99, rnd, list(reversed(arms)))
    assert len({tuple(round_order(99, r, arms)) for r in range(200)}) > 60


def test_every_round_gives_each_arm_one_slot() -> None:
    """A page of k full rounds holds exactly k items of each arm."""
    pool = _pool({"a": 50, "b": 20, "c": 30})
    (page,) = _session(pool, [9 * 3])
    assert Counter(i.arm for i in page) == {"a": 9, "b": 9, "c": 9}


def test_paging_never_repeats_or_skips() -> None:
    """Paging in uneven steps yields the same slot sequence as one long page, no repeats."""
    sizes = {"a": 40, "b": 25, "c": 33, "d": 60}
    limits = [7, 1, 13, 30, 2, 11]
    paged = [i for page in _session(_pool(sizes), limits) for i in page]
    (whole,) = _session(_pool(sizes), [sum(limits)])
    assert [i.mention_id for i in paged] == [i.mention_id for i in whole]
    assert len({i.mention_id for i in paged}) == len(paged) == sum(limits)


def test_fewest_impressions_first_within_an_arm() -> None:
    """A new session gets each arm's least-shown items first, and the arm's items are dealt
    round-robin: their impression counts never differ by more than one."""
    pool = _pool({"a": 10, "b": 10})
    for seed in range(1, 8):
        _session(pool, [6], seed)  # 7 sessions x 3 items per arm = 21 impressions per arm
    counts = [pool.impressions(m) for m in range(1, 21)]
    assert max(counts[:10]) - min(counts[:10]) <= 1 and sum(counts[:10]) == 21
    least = min(counts[:10])
    (page,) = _session(pool, [2], seed=100)
    (a_item,) = [i for i in page if i.arm == "a"]
    assert counts[a_item.mention_id - 1] == least


def test_serve_cap_removes_an_item() -> None:
    """An item served ``max_impressions`` times leaves the pool; an emptied arm leaves too."""
    pool = _pool({"a": 2, "b": 5}, cap=2)
    for seed in range(1, 3):
        _session(pool, [4], seed)
    assert pool.sizes() == {"b": 5}  # b's items were dealt round-robin: none reached 2
    assert pool.arms() == ("b",)


def test_an_exhausted_arm_ends_the_session_feed() -> None:
    """When an arm has nothing left for the session, the page stops there and no cursor
    follows; every arm got the same number of slots up to the last complete round."""
    pool = _pool({"small": 3, "big": 100})
    pages = _session(pool, [50])
    (page,) = pages
    arms = Counter(i.arm for i in page)
    assert arms["small"] == 3 and arms["big"] in (3, 4)
    cursor = Cursor(7)
    page1 = build_page(_pool({"small": 3, "big": 100}), cursor, 50)
    assert page1.next is not None  # items were served: the next page says it is over
    second = build_page(pool, page1.next, 10, {s.item.mention_id for s in page1.slots})
    assert second.slots == () and second.next is None


def test_arm_set_change_starts_a_new_round() -> None:
    """If an arm joins mid-round, the session finishes no round with a repeated arm."""
    pool = _pool({"a": 10, "b": 10})
    page = build_page(pool, Cursor(5), 1)
    assert page.next is not None and page.next.pos == 1
    pool.add(Item(999, "at://did:plc:bot/app.bsky.feed.post/999", "c", 999))
    nxt = build_page(pool, page.next, 3, {s.item.mention_id for s in page.slots})
    assert nxt.next is not None and nxt.next.round == 2 and nxt.next.pos == 0
    assert sorted(s.item.arm for s in nxt.slots) == ["a", "b", "c"]
    assert nxt.next.arms == arms_digest(("a", "b", "c"))


def test_refused_items_leave_the_pool() -> None:
    """An item the consent check refuses is never served and is removed."""
    pool = _pool({"a": 3, "b": 3})
    page = build_page(pool, Cursor(1), 4, (), allowed=lambda it: it.mention_id != 1)
    assert 1 not in {s.item.mention_id for s in page.slots}
    assert 1 not in pool


def test_feed_context_carries_the_arm_token() -> None:
    """feedContext names the arm by an opaque token and the session slot."""
    pool = _pool({"gpt": 3, "claude": 3})
    page = build_page(pool, Cursor(3), 4)
    for s in page.slots:
        token, slot = s.feed_context.split(".")
        assert token == arm_token(s.item.arm) != s.item.arm and int(slot) == s.slot


def test_equal_exposure_over_10000_page_requests() -> None:
    """Over 10,000 page requests (sessions of 1-4 pages, limits 3-100, arms of unequal size),
    every arm's share of slots and of the top 3 positions is within 2 points of equal.

    Chance of failing by luck, for any seeds drawn (fresh ones each run): condition on the
    limits (drawn independently of the draft). Each round's order is an independent uniform
    permutation, and an arm holds one position in it, so the arm's top-3 count is a sum of
    independent 0/1 terms, one per round touching a top-3 window (at most 3 per page, so
    R <= 30,000 terms), with mean exactly 3/n per page. Hoeffding: P(|dev| >= 0.02 * 30,000)
    <= 2 exp(-2 * 600^2 / 30,000) = 2e^-24 ~ 8e-11. Slots: complete rounds give every arm one
    slot; only partial rounds (<= 2 per page, 20,000 terms) vary: with at least 3 slots per page,
    P <= 2 exp(-2 * 600^2 / 20,000) ~ 5e-16. Over 4 arms and 2 measures: < 1e-9 (blake2b taken
    as a random function).
    """
    rng = random.Random(secrets.randbits(64))
    sizes = {"gpt": 3000, "claude": 1200, "template-similar": 700, "template-random": 2100}
    pool = _pool(sizes)
    n_arms = len(sizes)
    slots: Counter[str] = Counter()
    top3: Counter[str] = Counter()
    pages = 0
    while pages < 10_000:
        cursor: Cursor | None = Cursor(secrets.randbits(64))
        served: set[int] = set()
        for _ in range(rng.randint(1, 4)):
            if cursor is None or pages == 10_000:
                break
            page = build_page(pool, cursor, rng.randint(3, 100), served)
            assert page.slots, "the pool is large enough that no session runs dry"
            served.update(s.item.mention_id for s in page.slots)
            pages += 1
            for s in page.slots:
                slots[s.item.arm] += 1
                if s.pos < 3:
                    top3[s.item.arm] += 1
            cursor = page.next
    total, total3 = sum(slots.values()), sum(top3.values())
    assert total3 == 3 * 10_000
    for arm in sizes:
        assert abs(slots[arm] / total - 1 / n_arms) < 0.02, (arm, slots)
        assert abs(top3[arm] / total3 - 1 / n_arms) < 0.02, (arm, top3)
