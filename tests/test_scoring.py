"""Scoring: readings as of a time, per-group figures, comparisons and ranks, log rebuilding.

Every expected number below was worked out by hand from the fixture (Wilson bounds by solving
``(k/n - p)^2 = z^2 p (1 - p) / n`` for ``p`` separately), never by calling the code under test.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import math

import orjson
import pytest
from rich.console import Console
from rich.table import Table

from botsky.ledger.base import Mention, Outcome
from botsky.scoring import (
    Leaderboard,
    Score,
    decided_outcomes,
    latest_time_us,
    leaderboard,
    leaderboard_json,
    log_clock_us,
    log_lines,
    rebuild_from_log,
    render_comparisons,
    render_table,
    score,
    score_log_fields,
    scores_json,
    wilson_interval,
)

MIN = 60_000_000  # one minute in microseconds
HOUR = 60 * MIN
DAY = 24 * HOUR
T0 = 1_700_000_000_000_000
AS_OF = T0 + 13 * DAY  # the reading time of the fixture
_IDS = itertools.count(1000)  # ids for generated mentions, clear of the fixture's 1-12


def _mention(
    id: int,
    model: str,
    status: str,
    *,
    minutes: float | None = None,
    provider: str = "openai",
    persona: str = "friendly",
    bot: str = "ann",
    picker: str = "llm",
    tokens: tuple[int, int] = (0, 0),
    cost: float = 0.0,
    created: int | None = None,
    window_s: float | None = None,
    user: str | None = None,
) -> Mention:
    created = T0 + id * DAY if created is None else created
    return Mention(
        post_uri=f"at://did:plc:author{id}/app.bsky.feed.post/p{id}",
        post_cid="",
        post_author=f"did:plc:author{id}",
        root_uri=f"at://did:plc:author{id}/app.bsky.feed.post/p{id}",
        root_cid="",
        bot=bot,
        model=model,
        provider=provider,
        persona=persona,
        picker=picker,
        reply_uri=f"at://did:plc:{bot}/app.bsky.feed.post/r{id}",
        reply_cid="",
        reply_text="",
        mentioned_did=user or f"did:plc:target{id}",
        mentioned_handle=f"target{id}.test",
        candidates=[],
        rank=id % 3,
        created_us=created,
        prompt_tokens=tokens[0],
        completion_tokens=tokens[1],
        cost_usd=cost,
        latency_ms=250.0 + id,
        status=status,
        outcome_us=None if minutes is None else created + int(minutes * MIN),
        id=id,
        extra={} if window_s is None else {"window_s": window_s},
    )


# One mention a day (id n created on day n). Windows are 24 h, except the three mentions still
# open (5, 9, 12), which were watched under a 30-day window: at AS_OF (day 13) every other
# mention is decided, those three are pending.
# alpha: 5 mentions (3 succeeded after 6, 12 and 30 min; 1 expired; 1 open).
# beta: 4 mentions (1 succeeded after 3 min; 2 expired; 1 open).
# gamma: 3 mentions (2 expired; 1 open), free.
# Pickers and bots cut across models on purpose so each grouping gives different numbers.
OPEN = 30 * 86_400.0
MENTIONS = [
    _mention(1, "alpha", "succeeded", minutes=6, picker="llm", tokens=(100, 20), cost=0.001),
    _mention(2, "alpha", "succeeded", minutes=12, picker="llm", tokens=(110, 30), cost=0.002),
    _mention(3, "alpha", "succeeded", minutes=30, picker="similar", tokens=(120, 25), cost=0.0015),
    _mention(4, "alpha", "expired", minutes=1440, picker="similar", tokens=(90, 10), cost=0.0005),
    _mention(
        5, "alpha", "open", bot="bob", picker="random", tokens=(100, 15), cost=0.001, window_s=OPEN
    ),
    *(
        _mention(
            id,
            "beta",
            status,
            minutes=minutes,
            provider="anthropic",
            persona="curious",
            bot="bob",
            picker=picker,
            tokens=(200, 40),
            cost=0.01,
            window_s=OPEN if status == "open" else None,
        )
        for id, status, minutes, picker in [
            (6, "succeeded", 3, "llm"),
            (7, "expired", 1440, "similar"),
            (8, "expired", 1440, "random"),
            (9, "open", None, "random"),
        ]
    ),
    _mention(10, "gamma", "expired", minutes=1440, bot="cy", picker="llm", tokens=(50, 5)),
    _mention(11, "gamma", "expired", minutes=1440, bot="cy", picker="similar", tokens=(50, 5)),
    _mention(12, "gamma", "open", bot="cy", picker="random", tokens=(50, 5), window_s=OPEN),
]
_CREATED = {m.id: m.created_us for m in MENTIONS}


def _outcome(
    mention_id: int, kind: str, uri: str, actor: str = "did:plc:x", after_min: float = 60
) -> Outcome:
    time_us = _CREATED.get(mention_id, T0) + int(after_min * MIN)
    return Outcome(mention_id=mention_id, kind=kind, actor=actor, uri=uri, time_us=time_us)


OUTCOMES = [
    *(
        _outcome(i, "success", f"at://success/{i}", after_min=m)
        for i, m in ((1, 6), (2, 12), (3, 30), (6, 3))
    ),
    _outcome(1, "like", "at://like/1"),
    _outcome(1, "like", "at://like/1"),  # the same like seen twice (replay): counts once
    _outcome(2, "like", "at://like/2"),
    _outcome(2, "like", "at://like/2-late", after_min=25 * 60),  # past the 24 h horizon
    _outcome(1, "repost", "at://repost/1"),
    _outcome(4, "author_reply", "at://reply/4"),
    _outcome(7, "like", "at://like/7"),
    _outcome(8, "quote", "at://quote/8"),
    _outcome(9, "block", "at://block/9"),
    _outcome(999, "like", "at://like/999"),  # a mention not being scored: ignored
]

# By model at AS_OF, hand-computed (every mentioned user is distinct, so each design effect is
# exactly 1 and the effective sample sizes are the decided counts):
# alpha: decided 4 (1-4), pending 1 (5), successes 3 -> 0.75, Wilson 3/4; Kaplan-Meier at 24 h
#   over all 5 (answers at 6, 12, 30 min; 4 censored at 24 h, 5 at 8 days): 1 - 4/5 * 3/4 *
#   2/3 = 0.6; answered within 1 h and 6 h: 3 of 5; median(6, 12, 30) = 12; engagement over
#   the 5 replies older than 24 h: likes 2 (like/1 once + like/2; like/2-late is past the
#   horizon) / 5, all (2 likes + 1 repost + 1 author reply) / 5; tokens 520 / 100; cost 0.006,
#   of decided mentions 0.005 -> per success 0.005 / 3; no mention in the last 7 days.
# beta: decided 3, pending 1, successes 1 -> 1/3, Wilson 1/3; KM 1 - 3/4; within 1 h 1/4;
#   1 like / 4, (1 like + 1 quote) / 4; 1 block; median 3; tokens 800 / 160; cost 0.04, of
#   decided 0.03 -> 0.03 per success; 6-9 made in the last 7 days (from day 6) -> 4/7 a day.
# gamma: decided 2, pending 1, successes 0, Wilson 0/2; no answer: KM 0; design effect
#   undefined at a rate of 0; no cost; 3 mentions since its first, 3 days ago -> 1 a day.
# No pair is separable at these sizes, so all three share rank 1.
EXPECTED_BY_MODEL = [
    {
        "group": "alpha",
        "by": "model",
        "control": False,
        "mentions": 5,
        "decided": 4,
        "pending": 1,
        "successes": 3,
        "success_rate": 0.75,
        "ci_low": 0.300642,
        "ci_high": 0.954413,
        "design_effect": 1.0,
        "effective_n": 4.0,
        "km_rate": 0.6,
        "answered_1h": 0.6,
        "answered_6h": 0.6,
        "median_minutes_to_answer": 12.0,
        "mentions_per_day": 0.0,
        "engagement_replies": 5,
        "likes_per_reply": 0.4,
        "engagement_per_reply": 0.8,
        "negatives": 0,
        "prompt_tokens": 520,
        "completion_tokens": 100,
        "cost_usd": 0.006,
        "cost_per_success": 0.005 / 3,
        "rank": 1,
        "tied": True,
    },
    {
        "group": "beta",
        "by": "model",
        "control": False,
        "mentions": 4,
        "decided": 3,
        "pending": 1,
        "successes": 1,
        "success_rate": 0.333333,
        "ci_low": 0.061492,
        "ci_high": 0.792340,
        "design_effect": 1.0,
        "effective_n": 3.0,
        "km_rate": 0.25,
        "answered_1h": 0.25,
        "answered_6h": 0.25,
        "median_minutes_to_answer": 3.0,
        "mentions_per_day": 4 / 7,
        "engagement_replies": 4,
        "likes_per_reply": 0.25,
        "engagement_per_reply": 0.5,
        "negatives": 1,
        "prompt_tokens": 800,
        "completion_tokens": 160,
        "cost_usd": 0.04,
        "cost_per_success": 0.03,
        "rank": 1,
        "tied": True,
    },
    {
        "group": "gamma",
        "by": "model",
        "control": False,
        "mentions": 3,
        "decided": 2,
        "pending": 1,
        "successes": 0,
        "success_rate": 0.0,
        "ci_low": 0.0,
        "ci_high": 0.657620,
        "design_effect": None,
        "effective_n": 2.0,
        "km_rate": 0.0,
        "answered_1h": 0.0,
        "answered_6h": 0.0,
        "median_minutes_to_answer": None,
        "mentions_per_day": 1.0,
        "engagement_replies": 3,
        "likes_per_reply": 0.0,
        "engagement_per_reply": 0.0,
        "negatives": 0,
        "prompt_tokens": 150,
        "completion_tokens": 15,
        "cost_usd": 0.0,
        "cost_per_success": None,
        "rank": 1,
        "tied": True,
    },
]


def _score(
    mentions: list[Mention] = MENTIONS, outcomes: list[Outcome] = OUTCOMES, by: str = "model"
) -> list[Score]:
    return score(mentions, outcomes, by, as_of_us=AS_OF)


def _groups(mentions: list[Mention], outcomes: list[Outcome], by: str) -> list[tuple]:
    return [(s.group, s.mentions, s.decided, s.successes) for s in _score(mentions, outcomes, by)]


def _mentions_for(
    group: str,
    successes: int,
    expired: int,
    open_: int = 0,
    *,
    user: str | None = None,
    days_ago: int = 10,
) -> list[Mention]:
    """Decided successes and failures made ``days_ago`` days before AS_OF, open ones an hour
    before."""
    statuses = ["succeeded"] * successes + ["expired"] * expired + ["open"] * open_
    out = []
    for status in statuses:
        i = next(_IDS)
        created = AS_OF - (HOUR if status == "open" else days_ago * DAY)
        out.append(
            _mention(
                i,
                group,
                status,
                minutes=5 if status == "succeeded" else None,
                created=created,
                user=user,
            )
        )
    return out


@pytest.mark.parametrize(
    ("successes", "n", "low", "high"),
    [
        (0, 0, 0.0, 1.0),
        (1, 1, 0.2065, 1.0),
        (0, 1, 0.0, 0.7935),
        (5, 10, 0.2366, 0.7634),
        (0, 10, 0.0, 0.2775),
        (50, 100, 0.4038, 0.5962),
        (99, 100, 0.9455, 0.9982),
        (3, 4, 0.3006, 0.9544),
    ],
)
def test_wilson_interval_matches_hand_computed(
    successes: int, n: int, low: float, high: float
) -> None:
    """The 95% Wilson interval matches values solved by hand to 4 decimals."""
    got = wilson_interval(successes, n)
    assert got == pytest.approx((low, high), abs=5e-5)


@pytest.mark.parametrize("n", [1, 2, 3, 7, 50, 1000])
def test_wilson_interval_stays_within_unit_range(n: int) -> None:
    """Every bound lies in [0, 1] and low <= k/n <= high, including the extremes."""
    for k in range(n + 1):
        low, high = wilson_interval(k, n)
        assert 0.0 <= low <= k / n <= high <= 1.0


_CHECKED = [k for k in EXPECTED_BY_MODEL[0]]


def test_score_by_model_matches_hand_computed_table() -> None:
    """Every hand-computed field of the per-model reading at AS_OF matches."""
    got = [dataclasses.asdict(s) for s in _score()]
    assert [row["group"] for row in got] == ["alpha", "beta", "gamma"]
    for row, expected in zip(got, EXPECTED_BY_MODEL, strict=True):
        assert {k: row[k] for k in _CHECKED} == pytest.approx(expected, abs=1e-6)


def _mixture_bound(successes: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """The beta-binomial (a = b = 5) confidence sequence solved independently: bisection on
    log M(p) = log(1/alpha) with log-gamma, on each side of k/n."""

    def log_beta(x: float, y: float) -> float:
        return math.lgamma(x) + math.lgamma(y) - math.lgamma(x + y)

    def log_m(p: float) -> float:
        ll = successes * math.log(p) + (n - successes) * math.log(1 - p)
        return log_beta(5 + successes, 5 + n - successes) - log_beta(5, 5) - ll

    def solve(inside: float, outside: float) -> float:
        for _ in range(200):
            mid = (inside + outside) / 2
            inside, outside = (mid, outside) if log_m(mid) < math.log(1 / alpha) else (inside, mid)
        return inside

    phat = successes / n
    low = 0.0 if successes == 0 else solve(phat, 1e-12)
    high = 1.0 if successes == n else solve(phat, 1 - 1e-12)
    return low, high


def test_confidence_sequences_are_the_beta_binomial_mixture_bound() -> None:
    """cs_low/cs_high equal the mixture bound solved independently, and contain the Wilson
    interval (an anytime-valid interval is wider than a one-look one)."""
    for s, (k, n) in zip(_score(), [(3, 4), (1, 3), (0, 2)], strict=True):
        assert (s.cs_low, s.cs_high) == pytest.approx(_mixture_bound(k, n), abs=1e-7)
        assert s.cs_low <= s.ci_low and s.ci_high <= s.cs_high


def test_score_orders_by_success_rate_then_decided() -> None:
    """Groups with equal rates are ordered by more decided mentions; nothing decided goes last."""
    mentions = (
        _mentions_for("small", 1, 1)
        + _mentions_for("big", 2, 2)
        + _mentions_for("fresh", 0, 0, open_=9)
        + _mentions_for("worse", 0, 2)
    )
    assert [s.group for s in _score(mentions, [])] == ["big", "small", "worse", "fresh"]


@pytest.mark.parametrize(
    ("by", "expected"),
    [
        # friendly = alpha (5 mentions, 4 decided, 3 successes) + gamma (3, 2, 0).
        ("persona", [("friendly", 8, 6, 3), ("curious", 4, 3, 1)]),
        ("provider", [("openai", 8, 6, 3), ("anthropic", 4, 3, 1)]),
        # ann: ids 1-4; bob: 5-9; cy: 10-12.
        ("bot", [("ann", 4, 4, 3), ("bob", 5, 3, 1), ("cy", 3, 2, 0)]),
        # llm: 1, 2, 6 succeeded, 10 expired; similar: 3 succeeded, 4, 7, 11 expired;
        # random: 8 expired, 5, 9, 12 open.
        ("picker", [("llm", 4, 4, 3), ("similar", 4, 4, 1), ("random", 4, 1, 0)]),
    ],
)
def test_score_groups_by_other_attributes(by: str, expected: list[tuple]) -> None:
    """Grouping by persona, provider, bot or picker counts each group's own mentions."""
    assert _groups(MENTIONS, OUTCOMES, by) == expected


def test_score_by_picker_counts_engagement_per_group() -> None:
    """Engagement follows the mention into whichever group it belongs to."""
    scores = {s.group: s for s in _score(by="picker")}
    # llm: like/1, like/2, repost/1 over 4; similar: author_reply/4, like/7 over 4;
    # random: quote/8 over 4 and the block on 9.
    assert scores["llm"].engagement_per_reply == pytest.approx(3 / 4)
    assert scores["similar"].engagement_per_reply == pytest.approx(2 / 4)
    assert scores["random"].engagement_per_reply == pytest.approx(1 / 4)
    assert (scores["random"].negatives, scores["llm"].negatives) == (1, 0)
    # Control arms are those whose every mention used a control picker.
    assert [s.control for s in _score(by="picker")] == [False, True, True]


def test_score_rejects_unknown_grouping() -> None:
    """Grouping by an attribute that is not a scoring dimension is a ValueError."""
    with pytest.raises(ValueError, match="reply_text"):
        score(MENTIONS, OUTCOMES, by="reply_text")


def test_score_of_nothing_is_empty() -> None:
    """No mentions give an empty scoreboard and no comparisons."""
    board = leaderboard([], OUTCOMES)
    assert (board.scores, board.comparisons) == ([], [])


# --- reading as of a time ---------------------------------------------------------------------


def _pair(answer_after_min: float | None) -> list[Mention]:
    m = _mention(next(_IDS), "m", "open", created=T0, user=None)
    if answer_after_min is not None:
        m.status, m.outcome_us = "succeeded", T0 + int(answer_after_min * MIN)
    return [m]


def test_an_early_success_is_pending_like_an_early_failure() -> None:
    """Before the window closes a fast answer is pending, exactly like a mention not answered
    yet: the rate stays empty instead of showing 100%; Kaplan-Meier uses both (censored)."""
    mentions = _pair(60) + _pair(None)
    early = score(mentions, [], as_of_us=T0 + 2 * HOUR)[0]
    assert (early.decided, early.pending, early.success_rate) == (0, 2, None)
    assert early.km_rate == pytest.approx(0.5)  # one answer at 1 h, one followed 2 h so far
    late = score(mentions, [], as_of_us=T0 + DAY)[0]
    assert (late.decided, late.pending, late.successes) == (2, 0, 1)


def test_a_reading_uses_only_rows_up_to_its_time() -> None:
    """Mentions created and outcomes recorded after as_of do not exist for that reading."""
    board = leaderboard(MENTIONS, OUTCOMES, as_of_us=T0 + 3 * DAY)
    alpha = board.scores[0]
    # Mentions 1-3 exist at day 3; 3 (created on day 3) is pending; like/2 came at day 2 + 1 h.
    assert (alpha.group, alpha.mentions, alpha.decided, alpha.pending) == ("alpha", 3, 2, 1)
    assert alpha.likes_per_reply == pytest.approx(2 / 2)
    assert [s.group for s in board.scores] == ["alpha"]


def test_a_reading_does_not_depend_on_when_expiry_ran() -> None:
    """The ledger status (open or expired) of a mention whose window has closed changes nothing."""
    unexpired = [
        dataclasses.replace(m, status="open") if m.status == "expired" else m for m in MENTIONS
    ]
    assert _score(unexpired) == _score(MENTIONS)


def test_each_mention_is_read_with_the_window_it_was_watched_under() -> None:
    """A mention stored with a 1 h window is decided after 1 h; an answer after that is a
    failure for it, while a 24 h mention answered at 2 h succeeds."""
    short = _mention(next(_IDS), "m", "open", created=T0, window_s=3600.0)
    long = _mention(next(_IDS), "m", "open", created=T0)
    answers = [
        Outcome(m.id, "success", "did:plc:x", f"at://answer/{m.id}", T0 + 2 * HOUR)
        for m in (short, long)
    ]
    at_90_min = score([short, long], answers, as_of_us=T0 + 90 * MIN)[0]
    assert (at_90_min.decided, at_90_min.successes) == (1, 0)
    at_day = score([short, long], answers, as_of_us=T0 + DAY)[0]
    assert (at_day.decided, at_day.successes) == (2, 1)


def test_the_default_reading_time_is_the_latest_row_time() -> None:
    """Without as_of the rows are read as of the latest time they show."""
    assert latest_time_us(MENTIONS, OUTCOMES) == _CREATED[12]  # later than every outcome
    assert leaderboard(MENTIONS, OUTCOMES).as_of_us == latest_time_us(MENTIONS, OUTCOMES)


def test_decided_outcomes_follow_the_leaderboard_rule() -> None:
    """decided_outcomes lists exactly the decided mentions and their successes."""
    got = decided_outcomes(MENTIONS, OUTCOMES, AS_OF)
    assert sorted((m.id, ok) for m, ok in got) == [
        (1, True), (2, True), (3, True), (4, False), (6, True), (7, False), (8, False),
        (10, False), (11, False),
    ]  # fmt: skip


# --- repeated people ---------------------------------------------------------------------------


def test_design_effect_is_the_cluster_robust_over_the_independent_variance() -> None:
    """Users mentioned repeatedly with correlated outcomes inflate the variance, by the hand-
    computed factor; the fixed-n interval widens accordingly."""
    # u1: 1, 1; u2: 0, 0; u3: 1, 0; u4: 0; u5: 1. p = 1/2; residual sums per user 1, -1, 0,
    # -1/2, 1/2; cluster-robust variance 5/4 * (1 + 1 + 0 + 1/4 + 1/4) / 8^2 = 0.048828125
    # (the small-sample factor G/(G-1) = 5/4); independent: (1/4) / 7. Ratio 1.3671875.
    plan = {"u1": [1, 1], "u2": [0, 0], "u3": [1, 0], "u4": [0], "u5": [1]}
    mentions = [
        m
        for user, ys in plan.items()
        for y in ys
        for m in _mentions_for("m", y, 1 - y, user=f"did:plc:{user}")
    ]
    s = _score(mentions, [])[0]
    assert s.design_effect == pytest.approx(1.3671875)
    assert s.effective_n == pytest.approx(8 / 1.3671875)
    assert (s.ci_low, s.ci_high) == pytest.approx(wilson_interval(s.effective_n / 2, s.effective_n))
    assert s.ci_high - s.ci_low > wilson_interval(4, 8)[1] - wilson_interval(4, 8)[0]


# --- comparisons and ranks ---------------------------------------------------------------------


def _arm(
    model: str, successes: int, failures: int, picker: str = "llm", days_ago: int = 10
) -> list[Mention]:
    out = _mentions_for(model, successes, failures, days_ago=days_ago)
    return [dataclasses.replace(m, picker=picker) for m in out]


def test_comparisons_cover_every_pair_with_bonferroni() -> None:
    """Two models and two control arms give 6 comparisons at alpha/6 each; a model is always
    the first arm against a control."""
    mentions = (
        _arm("m1", 30, 70)
        + _arm("m2", 28, 72)
        + _arm("template-similar", 25, 75, "similar")
        + _arm("template-random", 12, 88, "random")
    )
    board = leaderboard(mentions, [], as_of_us=AS_OF)
    assert len(board.comparisons) == 6
    assert all(c.alpha_each == pytest.approx(0.05 / 6) for c in board.comparisons)
    kinds = {(c.a, c.b): c.kind for c in board.comparisons}
    assert kinds[("m1", "template-random")] == "vs control"
    assert kinds[("m2", "template-similar")] == "vs control"
    assert kinds[("m1", "m2")] == "between arms"
    assert kinds[("template-similar", "template-random")] == "between controls"
    for c in board.comparisons:
        assert c.low <= c.fixed_low <= c.diff <= c.fixed_high <= c.high


def test_a_clearly_better_arm_is_declared_better_and_ranks_first() -> None:
    """60% against 20% over 500 mentions each is separated: better/worse verdicts, ranks 1 and
    2, no days to wait."""
    board = leaderboard(_arm("a", 300, 200) + _arm("b", 100, 400), [], as_of_us=AS_OF)
    [c] = board.comparisons
    assert (c.a, c.b, c.verdict, c.days_to_separate) == ("a", "b", "better", None)
    assert c.low > 0
    assert [(s.group, s.rank, s.tied) for s in board.scores] == [("a", 1, False), ("b", 2, False)]


def test_ranks_count_the_arms_declared_better() -> None:
    """Rank is 1 + the arms declared better; arms nobody separates share a rank."""
    board = leaderboard(
        _arm("a", 300, 200) + _arm("b", 290, 210) + _arm("c", 100, 400), [], as_of_us=AS_OF
    )
    assert [(s.group, s.rank, s.tied) for s in board.scores] == [
        ("a", 1, True), ("b", 1, True), ("c", 3, False),
    ]  # fmt: skip


def test_an_arm_with_nothing_decided_is_not_compared() -> None:
    """An arm with only pending mentions has no comparison and keeps rank 1."""
    board = leaderboard(
        _arm("a", 300, 200) + _mentions_for("fresh", 0, 0, open_=5), [], as_of_us=AS_OF
    )
    assert board.comparisons == []
    assert [(s.group, s.rank) for s in board.scores] == [("a", 1), ("fresh", 1)]


def test_days_to_separate_shrink_with_a_larger_difference() -> None:
    """Not yet separable pairs get a finite estimate that is smaller for a larger gap."""

    def board(a: int) -> Leaderboard:
        # 100 mentions per arm, made 2 days ago: 50 a day each.
        mentions = _arm("a", a, 100 - a, days_ago=2) + _arm("b", 30, 70, days_ago=2)
        return leaderboard(mentions, [], as_of_us=AS_OF)

    [cn], [cf] = board(33).comparisons, board(40).comparisons
    assert cn.verdict == cf.verdict == "not yet separable"
    assert cn.days_to_separate is not None and cf.days_to_separate is not None
    assert 0 < cf.days_to_separate < cn.days_to_separate
    assert cf.days_to_separate >= 1.0  # at least the one-day window of the last mentions


def test_equal_rates_have_no_days_to_separate() -> None:
    """With no difference at all there is nothing to wait for: days is None."""
    board = leaderboard(_arm("a", 30, 70) + _arm("b", 30, 70), [], as_of_us=AS_OF)
    assert board.comparisons[0].days_to_separate is None


# --- the log -----------------------------------------------------------------------------------


def _log_lines(mentions: list[Mention], outcomes: list[Outcome]) -> list[bytes]:
    """What the app logs for these rows, interleaved with unrelated events."""
    lines: list[bytes] = []
    for m in mentions:
        lines.append(orjson.dumps({"event": "post_seen", "uri": m.post_uri, "level": "info"}))
        lines.append(
            orjson.dumps(
                {
                    "event": "reply_posted",
                    "mention_id": m.id,
                    "bot": m.bot,
                    "model": m.model,
                    "provider": m.provider,
                    "persona": m.persona,
                    "picker": m.picker,
                    "post_uri": m.post_uri,
                    "post_author": m.post_author,
                    "root_uri": m.root_uri,
                    "reply_uri": m.reply_uri,
                    "mentioned_did": m.mentioned_did,
                    "mentioned_handle": m.mentioned_handle,
                    "rank": m.rank,
                    "created_us": m.created_us,
                    "prompt_tokens": m.prompt_tokens,
                    "completion_tokens": m.completion_tokens,
                    "cost_usd": m.cost_usd,
                    "latency_ms": m.latency_ms,
                    "window_s": m.extra.get("window_s"),
                    "level": "info",
                    "timestamp": "2025-01-01T00:00:00Z",
                }
            )
        )
    for o in outcomes:
        lines.append(orjson.dumps({"event": "outcome_recorded", **dataclasses.asdict(o)}))
    for m in mentions:
        if m.status != "open":
            assert m.outcome_us is not None
            closed = {"mention_id": m.id, "status": m.status, "time_us": m.outcome_us}
            lines.append(orjson.dumps({"event": "mention_closed", **closed}))
    return lines


JUNK = [
    b"",
    b"not json at all",
    b"2025-01-01 00:00:00 [info     ] reply_posted mention_id=1",  # a console-format line
    b"[1, 2, 3]",
    b'{"event": "reply_posted"}',  # no mention_id
    b'{"event": "reply_posted", "mention_id": "7", "created_us": 1}',  # id of the wrong type
    b'{"event": "outcome_recorded", "mention_id": 1, "kind": "like"}',  # no uri
    b'{"event": "mention_closed", "mention_id": 5, "status": "weird", "time_us": 1}',
    b'{"event": "mention_closed", "mention_id": 5, "status": "expired", "time_us": tru',
    b'{"event": "shutdown", "mentions": 12}',
    b'{"event": "recommender_score", "as_of_us": "soon"}',  # a clock of the wrong type
]


def _restarted_log() -> list[bytes | str]:
    """Two appended runs: the second repeats part of the first, plus junk and str lines."""
    first = _log_lines(MENTIONS, OUTCOMES)
    repeat = first[: len(first) // 2] + first[-4:]
    log: list[bytes | str] = [*first, *JUNK]
    log += [line.decode() + "\n" for line in repeat]  # text mode, with newlines
    return log


@pytest.mark.parametrize("by", ["model", "persona", "bot", "picker", "provider"])
def test_rebuild_from_log_scores_like_the_ledger(by: str) -> None:
    """A log with junk, other events and a restart's repeats reads exactly like the rows."""
    mentions, outcomes = rebuild_from_log(_restarted_log())
    got = leaderboard(mentions, outcomes, by=by, as_of_us=AS_OF)
    assert got == leaderboard(MENTIONS, OUTCOMES, by=by, as_of_us=AS_OF)


def test_rebuild_from_log_restores_rows() -> None:
    """Rebuilt mentions carry the logged fields, window, final status and time; outcomes are
    unique."""
    mentions, outcomes = rebuild_from_log(_restarted_log())
    assert [m.id for m in mentions] == list(range(1, 13))
    logged = ("bot", "model", "picker", "rank", "created_us", "status", "outcome_us", "cost_usd")
    for got, want in zip(mentions, MENTIONS, strict=True):
        assert [getattr(got, f) for f in logged] == [getattr(want, f) for f in logged]
        assert (got.reply_text, got.candidates, got.extra) == ("", [], want.extra)
    assert len(outcomes) == len(set(OUTCOMES))


def test_rebuild_from_log_keeps_the_first_close() -> None:
    """A mention closes once: a later close line for it does not change its status."""
    log = _log_lines(MENTIONS[:1], [])
    log.append(b'{"event": "mention_closed", "mention_id": 1, "status": "expired", "time_us": 9}')
    [mention], _ = rebuild_from_log(log)
    assert (mention.status, mention.outcome_us) == ("succeeded", MENTIONS[0].outcome_us)


def test_rebuild_from_log_ignores_closes_of_unknown_mentions() -> None:
    """Outcomes and closes for mentions never posted in the log create no mention."""
    log = [
        b'{"event": "mention_closed", "mention_id": 3, "status": "expired", "time_us": 9}',
        b'{"event": "outcome_recorded", "mention_id": 3, "kind": "like", "actor": "a",'
        b' "uri": "u", "time_us": 9}',
    ]
    mentions, outcomes = rebuild_from_log(log)
    assert (mentions, len(outcomes)) == ([], 1)
    assert score(mentions, outcomes) == []


def test_log_clock_is_the_latest_reading_in_the_log() -> None:
    """The stream clock of a log is the latest as_of_us of its score lines (None without)."""
    board = leaderboard(MENTIONS, OUTCOMES, as_of_us=AS_OF)
    lines = [orjson.dumps(line) for line in log_lines(board)]
    earlier = [orjson.dumps({**orjson.loads(x), "as_of_us": AS_OF - DAY}) for x in lines]
    assert log_clock_us([*lines, *earlier, *JUNK]) == AS_OF
    assert log_clock_us(JUNK) is None


LOG_KEYS = [
    "event",
    "model",
    "by",
    "control",
    "mentions",
    "decided",
    "pending",
    "successes",
    "success_rate",
    "ci_low",
    "ci_high",
    "cs_low",
    "cs_high",
    "design_effect",
    "effective_n",
    "km_rate",
    "km_se",
    "answered_1h",
    "answered_6h",
    "median_minutes_to_answer",
    "mentions_per_day",
    "engagement_replies",
    "likes_per_reply",
    "engagement_per_reply",
    "negatives",
    "cost_usd",
    "cost_per_success",
    "prompt_tokens",
    "completion_tokens",
    "rank",
    "tied",
]


def test_score_log_fields_has_exactly_the_log_line_keys() -> None:
    """The per-model log line has exactly the specified keys, in order."""
    fields = score_log_fields(_score()[0])
    assert list(fields) == LOG_KEYS
    assert (fields["event"], fields["model"], fields["by"]) == (
        "recommender_score",
        "alpha",
        "model",
    )


def test_log_lines_carry_the_reading_time_and_the_comparisons() -> None:
    """A reading logs one score line per group and one comparison line per pair, each with
    as_of_us."""
    board = leaderboard(MENTIONS, OUTCOMES, as_of_us=AS_OF)
    lines = log_lines(board)
    assert [x["event"] for x in lines] == ["recommender_score"] * 3 + ["recommender_comparison"] * 3
    assert {x["as_of_us"] for x in lines} == {AS_OF}
    assert lines[3]["verdict"] == "not yet separable"


def test_score_log_fields_keys_the_group_by_its_dimension() -> None:
    """Grouped by picker, the group is under "picker" and there is no "model" key."""
    fields = score_log_fields(_score(by="picker")[0])
    assert list(fields) == ["event", "picker", *LOG_KEYS[2:]]
    assert (fields["picker"], fields["by"]) == ("llm", "picker")


def test_score_log_fields_rounds_ratios_to_4_and_dollars_to_6() -> None:
    """Rates, intervals and ratios keep 4 decimals; dollar amounts keep 6."""
    beta = score_log_fields(_score()[1])
    assert (beta["success_rate"], beta["ci_low"], beta["ci_high"]) == (0.3333, 0.0615, 0.7923)
    tiny = dataclasses.replace(_score()[0], cost_usd=1 / 3, cost_per_success=1e-7)
    fields = score_log_fields(tiny)
    assert (fields["cost_usd"], fields["cost_per_success"]) == (0.333333, 0.0)


def test_score_log_fields_serialize_to_json() -> None:
    """The log fields survive a JSON round trip unchanged (None stays null)."""
    for s in _score():
        fields = score_log_fields(s)
        assert orjson.loads(orjson.dumps(fields)) == fields


def test_leaderboard_json_carries_the_reading_scores_and_comparisons() -> None:
    """`botsky scores --json`: the reading time and options, the log fields of each score
    without "event" (decided, pending, cs_low, cs_high, design_effect...), the comparisons."""
    board = leaderboard(MENTIONS, OUTCOMES, as_of_us=AS_OF)
    got = leaderboard_json(board)
    assert list(got) == [
        "by", "as_of_us", "as_of", "window_s", "horizon_s", "alpha", "scores", "comparisons",
    ]  # fmt: skip
    assert (got["as_of_us"], got["as_of"]) == (AS_OF, "2023-11-27T22:13:20Z")
    assert got["scores"] == scores_json(board.scores)
    assert [list(r) for r in got["scores"]] == [LOG_KEYS[1:]] * 3
    assert list(got["comparisons"][0]) == [
        "a", "b", "kind", "diff", "low", "high", "alpha_each", "verdict", "days_to_separate",
        "fixed_low", "fixed_high",
    ]  # fmt: skip
    assert orjson.loads(orjson.dumps(got)) == got


# --- the table ---------------------------------------------------------------------------------


def _table_text(table: Table, width: int = 100) -> str:
    console = Console(file=io.StringIO(), width=width, color_system=None)
    console.print(table)
    out = console.file
    assert isinstance(out, io.StringIO)
    return out.getvalue()


def test_render_table_fits_100_columns_with_the_main_columns() -> None:
    """The default table has rank, group, decided, pending, rate, the anytime-valid interval,
    the design effect, engagement and (as something cost money) cost; it fits 100 columns
    without cutting a cell."""
    board = leaderboard(MENTIONS, OUTCOMES, as_of_us=AS_OF)
    table = render_table(board)
    assert [str(c.header) for c in table.columns] == [
        "rank", "model", "decided", "pending", "rate %", "anytime 95%", "design\neffect",
        "engagement\n/ reply", "$ /\nsuccess",
    ]  # fmt: skip
    assert list(table.columns[0].cells) == ["=1", "=1", "=1"]
    text = _table_text(table)
    assert max(len(line) for line in text.splitlines()) <= 100
    assert "…" not in text
    cs = board.scores[0]
    for cell in ("75.0", f"{cs.cs_low * 100:.1f}–{cs.cs_high * 100:.1f}", "1.00", "0.800"):
        assert cell in text


def test_render_table_hides_cost_columns_when_nothing_cost_money() -> None:
    """Template arms cost nothing: no cost columns unless --wide."""
    free = [dataclasses.replace(m, cost_usd=0.0) for m in MENTIONS]
    headers = [str(c.header) for c in render_table(leaderboard(free, [], as_of_us=AS_OF)).columns]
    assert "cost $" not in headers
    wide = render_table(leaderboard(free, [], as_of_us=AS_OF), wide=True)
    assert "cost $" in [str(c.header) for c in wide.columns]


def test_render_table_wide_shows_every_figure_with_named_units() -> None:
    """--wide adds the fixed-n interval, Kaplan-Meier, answered within 1 h / 6 h, median
    minutes to answer, likes and tokens."""
    headers = [
        str(c.header) for c in render_table(leaderboard(MENTIONS, OUTCOMES), wide=True).columns
    ]
    for header in ("fixed-n 95%", "KM %", "≤1 h %", "≤6 h %", "median minutes to answer"):
        assert header in headers


def test_render_comparisons_lists_verdicts_and_days() -> None:
    """The comparison table shows each pair, its interval in points and its verdict."""
    board = leaderboard(_arm("a", 300, 200) + _arm("b", 100, 400), [], as_of_us=AS_OF)
    text = _table_text(render_comparisons(board))
    assert "better" in text and "+40.0" in text
    assert max(len(line) for line in text.splitlines()) <= 100


def test_render_table_marks_untied_ranks_plainly() -> None:
    """A rank nobody shares is printed without the tie marker."""
    mentions = _mentions_for("a", 50, 0) + _mentions_for("b", 0, 50)
    assert list(render_table(_score(mentions, [])).columns[0].cells) == ["1", "2"]
