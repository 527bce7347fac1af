"""Scoring: Wilson intervals, the per-group score table, tie-aware ranks and log rebuilding.

Every expected number below was worked out by hand from the fixture (Wilson bounds by solving
``(k/n - p)^2 = z^2 p (1 - p) / n`` for ``p`` separately), never by calling the code under test.
"""

from __future__ import annotations

import dataclasses
import io
import itertools

import orjson
import pytest
from rich.console import Console

from botsky.ledger.base import Mention, Outcome
from botsky.scoring import (
    Score,
    rebuild_from_log,
    render_table,
    score,
    score_log_fields,
    scores_json,
    wilson_interval,
)

MIN = 60_000_000  # one minute in microseconds
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
) -> Mention:
    created = 1_700_000_000_000_000 + id * 1000 * MIN
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
        mentioned_did=f"did:plc:target{id}",
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
    )


# alpha: 5 mentions (3 succeeded after 6, 12 and 30 min; 1 expired; 1 open).
# beta: 4 mentions (1 succeeded after 3 min; 2 expired; 1 open).
# gamma: 3 mentions (2 expired; 1 open), free.
# Pickers and bots cut across models on purpose so each grouping gives different numbers.
MENTIONS = [
    _mention(1, "alpha", "succeeded", minutes=6, picker="llm", tokens=(100, 20), cost=0.001),
    _mention(2, "alpha", "succeeded", minutes=12, picker="llm", tokens=(110, 30), cost=0.002),
    _mention(3, "alpha", "succeeded", minutes=30, picker="similar", tokens=(120, 25), cost=0.0015),
    _mention(4, "alpha", "expired", minutes=60, picker="similar", tokens=(90, 10), cost=0.0005),
    _mention(5, "alpha", "open", bot="bob", picker="random", tokens=(100, 15), cost=0.001),
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
        )
        for id, status, minutes, picker in [
            (6, "succeeded", 3, "llm"),
            (7, "expired", 60, "similar"),
            (8, "expired", 60, "random"),
            (9, "open", None, "random"),
        ]
    ),
    _mention(10, "gamma", "expired", minutes=60, bot="cy", picker="llm", tokens=(50, 5)),
    _mention(11, "gamma", "expired", minutes=60, bot="cy", picker="similar", tokens=(50, 5)),
    _mention(12, "gamma", "open", bot="cy", picker="random", tokens=(50, 5)),
]


def _outcome(mention_id: int, kind: str, uri: str, actor: str = "did:plc:x") -> Outcome:
    return Outcome(mention_id=mention_id, kind=kind, actor=actor, uri=uri, time_us=mention_id)


OUTCOMES = [
    *(_outcome(i, "success", f"at://success/{i}") for i in (1, 2, 3, 6)),
    _outcome(1, "like", "at://like/1"),
    _outcome(1, "like", "at://like/1"),  # the same like seen twice (replay): counts once
    _outcome(2, "like", "at://like/2"),
    _outcome(1, "repost", "at://repost/1"),
    _outcome(4, "author_reply", "at://reply/4"),
    _outcome(7, "like", "at://like/7"),
    _outcome(8, "quote", "at://quote/8"),
    _outcome(9, "block", "at://block/9"),
    _outcome(999, "like", "at://like/999"),  # a mention not being scored: ignored
]

# By model, hand-computed:
# alpha: matured 4, successes 3 -> 0.75, Wilson 3/4; likes 2 (like/1 once + like/2) / 5;
#   engagement (2 likes + 1 repost + 1 author reply) / 5; median(6, 12, 30) = 12;
#   tokens 520 / 100; cost 0.006 -> 0.002 per success.
# beta: matured 3, successes 1 -> 1/3, Wilson 1/3; 1 like / 4; (1 like + 1 quote) / 4;
#   1 block; median 3; tokens 800 / 160; cost 0.04 per success.
# gamma: matured 2, successes 0, Wilson 0/2; no cost, no successes -> no cost per success.
# All three intervals overlap, so all share rank 1.
EXPECTED_BY_MODEL = [
    {
        "group": "alpha",
        "by": "model",
        "mentions": 5,
        "matured": 4,
        "successes": 3,
        "success_rate": 0.75,
        "ci_low": 0.300642,
        "ci_high": 0.954413,
        "likes_per_reply": 0.4,
        "engagement_per_reply": 0.8,
        "negatives": 0,
        "median_minutes_to_reply": 12.0,
        "prompt_tokens": 520,
        "completion_tokens": 100,
        "cost_usd": 0.006,
        "cost_per_success": 0.002,
        "rank": 1,
        "tied": True,
    },
    {
        "group": "beta",
        "by": "model",
        "mentions": 4,
        "matured": 3,
        "successes": 1,
        "success_rate": 0.333333,
        "ci_low": 0.061492,
        "ci_high": 0.792340,
        "likes_per_reply": 0.25,
        "engagement_per_reply": 0.5,
        "negatives": 1,
        "median_minutes_to_reply": 3.0,
        "prompt_tokens": 800,
        "completion_tokens": 160,
        "cost_usd": 0.04,
        "cost_per_success": 0.04,
        "rank": 1,
        "tied": True,
    },
    {
        "group": "gamma",
        "by": "model",
        "mentions": 3,
        "matured": 2,
        "successes": 0,
        "success_rate": 0.0,
        "ci_low": 0.0,
        "ci_high": 0.657620,
        "likes_per_reply": 0.0,
        "engagement_per_reply": 0.0,
        "negatives": 0,
        "median_minutes_to_reply": None,
        "prompt_tokens": 150,
        "completion_tokens": 15,
        "cost_usd": 0.0,
        "cost_per_success": None,
        "rank": 1,
        "tied": True,
    },
]


def _groups(mentions: list[Mention], outcomes: list[Outcome], by: str) -> list[tuple]:
    return [(s.group, s.mentions, s.matured, s.successes) for s in score(mentions, outcomes, by)]


def _mentions_for(group: str, successes: int, expired: int, open_: int = 0) -> list[Mention]:
    statuses = ["succeeded"] * successes + ["expired"] * expired + ["open"] * open_
    return [
        _mention(next(_IDS), group, status, minutes=None if status == "open" else 5)
        for status in statuses
    ]


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


def test_score_by_model_matches_hand_computed_table() -> None:
    """Every field of the per-model score equals the hand-computed table."""
    got = [dataclasses.asdict(s) for s in score(MENTIONS, OUTCOMES)]
    assert [row["group"] for row in got] == ["alpha", "beta", "gamma"]
    for row, expected in zip(got, EXPECTED_BY_MODEL, strict=True):
        assert row == pytest.approx(expected, abs=1e-6)


def test_score_orders_by_success_rate_then_mentions() -> None:
    """Groups with equal rates are ordered by more mentions; nothing matured goes last."""
    mentions = (
        _mentions_for("small", 1, 1)
        + _mentions_for("big", 2, 2)
        + _mentions_for("fresh", 0, 0, open_=9)
        + _mentions_for("worse", 0, 2)
    )
    assert [s.group for s in score(mentions, [])] == ["big", "small", "worse", "fresh"]


@pytest.mark.parametrize(
    ("by", "expected"),
    [
        # friendly = alpha (5 mentions, 4 matured, 3 successes) + gamma (3, 2, 0).
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
    scores = {s.group: s for s in score(MENTIONS, OUTCOMES, by="picker")}
    # llm: like/1, like/2, repost/1 over 4; similar: author_reply/4, like/7 over 4;
    # random: quote/8 over 4 and the block on 9.
    assert scores["llm"].engagement_per_reply == pytest.approx(3 / 4)
    assert scores["similar"].engagement_per_reply == pytest.approx(2 / 4)
    assert scores["random"].engagement_per_reply == pytest.approx(1 / 4)
    assert (scores["random"].negatives, scores["llm"].negatives) == (1, 0)


def test_score_rejects_unknown_grouping() -> None:
    """Grouping by an attribute that is not a scoring dimension is a ValueError."""
    with pytest.raises(ValueError, match="reply_text"):
        score(MENTIONS, OUTCOMES, by="reply_text")


def test_score_of_nothing_is_empty() -> None:
    """No mentions give an empty scoreboard."""
    assert score([], OUTCOMES) == []


@pytest.mark.parametrize(
    ("groups", "expected"),
    [
        # 50/50 -> (0.9287, 1.0) and 0/50 -> (0.0, 0.0713): separated.
        ({"a": (50, 0), "b": (0, 50)}, [("a", 1, False), ("b", 2, False)]),
        # 6/10 -> (0.3127, 0.8318) and 5/10 -> (0.2366, 0.7634): overlapping.
        ({"a": (6, 4), "b": (5, 5)}, [("a", 1, True), ("b", 1, True)]),
        # 48/50 (0.8654, 0.9890), 40/50 (0.6696, 0.8876), 30/50 (0.4618, 0.7239): a and b
        # overlap, b and c overlap, a and c do not; only a is separated above c.
        (
            {"a": (48, 2), "b": (40, 10), "c": (30, 20)},
            [("a", 1, True), ("b", 1, True), ("c", 2, False)],
        ),
        # Same chain plus a group with nothing matured: its (0, 1) interval separates it from
        # nobody, so it ranks 1 (tying a and b) and leaves c at 2.
        (
            {"a": (48, 2), "b": (40, 10), "c": (30, 20), "d": (0, 0)},
            [("a", 1, True), ("b", 1, True), ("c", 2, False), ("d", 1, True)],
        ),
        # A lone unmatured group ranks 1 and is not tied.
        ({"d": (0, 0)}, [("d", 1, False)]),
        # 0/50 (0.0, 0.0713) below two separated leaders: 1 + two groups separated above it.
        (
            {"a": (50, 0), "b": (49, 1), "c": (0, 50)},
            [("a", 1, True), ("b", 1, True), ("c", 3, False)],
        ),
    ],
)
def test_rank_is_one_plus_groups_separated_above(
    groups: dict[str, tuple[int, int]], expected: list[tuple[str, int, bool]]
) -> None:
    """Rank counts only groups whose whole interval lies above; equal ranks are ties."""
    mentions = [
        m
        for name, (ok, expired) in groups.items()
        for m in _mentions_for(name, ok, expired, open_=1)
    ]
    assert [(s.group, s.rank, s.tied) for s in score(mentions, [])] == expected


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
    """A log with junk, other events and a restart's repeats scores exactly like the rows."""
    mentions, outcomes = rebuild_from_log(_restarted_log())
    assert score(mentions, outcomes, by) == score(MENTIONS, OUTCOMES, by)


def test_rebuild_from_log_restores_rows() -> None:
    """Rebuilt mentions carry the logged fields, final status and time; outcomes are unique."""
    mentions, outcomes = rebuild_from_log(_restarted_log())
    assert [m.id for m in mentions] == list(range(1, 13))
    logged = ("bot", "model", "picker", "rank", "created_us", "status", "outcome_us", "cost_usd")
    for got, want in zip(mentions, MENTIONS, strict=True):
        assert [getattr(got, f) for f in logged] == [getattr(want, f) for f in logged]
        assert (got.reply_text, got.candidates) == ("", [])
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


LOG_KEYS = [
    "event",
    "model",
    "mentions",
    "matured",
    "successes",
    "success_rate",
    "ci_low",
    "ci_high",
    "likes_per_reply",
    "cost_per_success",
    "by",
    "rank",
    "tied",
    "engagement_per_reply",
    "median_minutes_to_reply",
    "cost_usd",
    "prompt_tokens",
    "completion_tokens",
    "negatives",
]


def test_score_log_fields_has_exactly_the_log_line_keys() -> None:
    """The per-model log line has exactly the specified keys, in order."""
    fields = score_log_fields(score(MENTIONS, OUTCOMES)[0])
    assert list(fields) == LOG_KEYS
    assert (fields["event"], fields["model"], fields["by"]) == (
        "recommender_score",
        "alpha",
        "model",
    )


def test_score_log_fields_keys_the_group_by_its_dimension() -> None:
    """Grouped by picker, the group is under "picker" and there is no "model" key."""
    fields = score_log_fields(score(MENTIONS, OUTCOMES, by="picker")[0])
    assert list(fields) == ["event", "picker", *LOG_KEYS[2:]]
    assert (fields["picker"], fields["by"]) == ("llm", "picker")


def test_score_log_fields_rounds_ratios_to_4_and_dollars_to_6() -> None:
    """Rates, intervals and ratios keep 4 decimals; dollar amounts keep 6."""
    beta = score_log_fields(score(MENTIONS, OUTCOMES)[1])
    assert (beta["success_rate"], beta["ci_low"], beta["ci_high"]) == (0.3333, 0.0615, 0.7923)
    tiny = dataclasses.replace(score(MENTIONS, OUTCOMES)[0], cost_usd=1 / 3, cost_per_success=1e-7)
    fields = score_log_fields(tiny)
    assert (fields["cost_usd"], fields["cost_per_success"]) == (0.333333, 0.0)


def test_score_log_fields_serialize_to_json() -> None:
    """The log fields survive a JSON round trip unchanged (None stays null)."""
    for s in score(MENTIONS, OUTCOMES):
        fields = score_log_fields(s)
        assert orjson.loads(orjson.dumps(fields)) == fields


def test_scores_json_is_log_fields_without_event() -> None:
    """`botsky scores --json` prints the log line fields minus "event"."""
    scores = score(MENTIONS, OUTCOMES)
    rows = scores_json(scores)
    assert [list(r) for r in rows] == [LOG_KEYS[1:]] * 3
    assert rows == [{k: v for k, v in score_log_fields(s).items() if k != "event"} for s in scores]


def _table_text(scores: list[Score]) -> str:
    console = Console(file=io.StringIO(), width=250, color_system=None)
    console.print(render_table(scores))
    out = console.file
    assert isinstance(out, io.StringIO)
    return out.getvalue()


def test_render_table_has_the_columns_and_tie_markers() -> None:
    """The table has the specified columns, one row per group, and "=1" for tied ranks."""
    scores = score(MENTIONS, OUTCOMES)
    table = render_table(scores)
    assert [str(c.header) for c in table.columns] == [
        "rank",
        "model",
        "mentions",
        "matured",
        "successes",
        "rate %",
        "95% CI",
        "likes/reply",
        "engagement/reply",
        "median min to reply",
        "cost",
        "cost/success",
    ]
    assert table.row_count == 3
    assert list(table.columns[0].cells) == ["=1", "=1", "=1"]
    text = _table_text(scores)
    # alpha: 75.0%, 30.1–95.4, $0.006000, $0.002000; gamma has no median and no cost per success.
    for cell in ("75.0", "30.1–95.4", "$0.006000", "$0.002000", "12.0", "0.400", "0.800"):
        assert cell in text
    gamma_row = next(line for line in text.splitlines() if "gamma" in line)
    assert gamma_row.count("–") == 3  # CI dash plus empty median and cost/success


def test_render_table_marks_untied_ranks_plainly() -> None:
    """A rank nobody shares is printed without the tie marker."""
    mentions = _mentions_for("a", 50, 0) + _mentions_for("b", 0, 50)
    assert list(render_table(score(mentions, [])).columns[0].cells) == ["1", "2"]
