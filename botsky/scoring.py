"""The scoreboard: one pure function from ledger rows, read *as of* a time, to every figure.

``leaderboard(mentions, outcomes, as_of_us=..., by=..., options=...)`` is the only place figures
are computed; the ``recommender_score`` log lines, ``botsky scores`` (table, ``--json``,
``--as-of``, ``--plot``), the web page, ``/metrics`` and the validation study all call it.
Methods, assumptions and references: ``docs/statistics.md``.

**Decided, pending.** A mention is *decided* at ``as_of`` once its outcome window has closed
(``created_us + window <= as_of``); it *succeeded* when the mentioned user answered within the
window. Everything else is *pending* and never enters a rate, so an early success and an early
failure count at the same moment and a reading taken mid-run is not biased upwards. Each mention
is read with the window it was watched under (stored with it as ``extra["window_s"]``; rows from
before that use ``ScoringOptions.window_s``). The reading depends only on row times, never on
when expiry ran, so it can be recomputed exactly for any past time (``--as-of``).

The same numbers come from two places: the ledger (``botsky scores`` on a database) and the
JSON log (``rebuild_from_log``), so a run can be scored after the fact from its log alone. Both
paths go through ``leaderboard`` and round in exactly one place (``score_log_fields``).
"""

from __future__ import annotations

import asyncio
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from itertools import combinations
from typing import Any, Final

import orjson
import structlog
from rich import box
from rich.table import Table
from scipy.optimize import brentq
from scipy.stats import norm

from botsky.ledger.base import Ledger, Mention, Outcome, mention_from_log
from botsky.stats import (
    beta_binomial_cs,
    cluster_variance,
    km_probability,
    mixture_halfwidth,
    wilson_interval,
)

__all__ = [
    "CLOCK_CURSOR",
    "GROUP_BY",
    "Comparison",
    "Leaderboard",
    "Score",
    "ScoringOptions",
    "comparison_fields",
    "decided_outcomes",
    "latest_time_us",
    "leaderboard",
    "leaderboard_json",
    "log_clock_us",
    "log_lines",
    "log_reading",
    "rebuild_from_log",
    "render_comparisons",
    "render_table",
    "score",
    "score_log_fields",
    "scores_json",
    "wilson_interval",
]

log = structlog.get_logger("botsky.scoring")

GROUP_BY: Final = ("model", "persona", "bot", "picker", "provider")
# The ledger cursor under which the runtime saves the stream time it has watched up to at every
# reading: `botsky scores` reads the ledger as of that time (a mention is decided only when the
# stream was watched past its window).
CLOCK_CURSOR: Final = "stream_clock_us"

# Ratios, rates and minutes are printed to 4 decimals; dollar amounts to 6, because a cheap
# model's cost per reply is a fraction of a cent and 4 decimals would round it to zero.
_RATIO_DIGITS: Final = 4
_USD_DIGITS: Final = 6
_ENGAGEMENT: Final = frozenset({"like", "repost", "quote", "author_reply"})
_CLOSED: Final = ("succeeded", "expired")
_HOUR_US: Final = 3_600_000_000
_DAY_US: Final = 86_400_000_000
_RATE_DAYS: Final = 7  # mentions per day are measured over the last week of stream time
_MAX_DAYS: Final = 3650.0  # "days to separate" beyond ten years is reported as unknown (None)


@dataclass(frozen=True, slots=True)
class ScoringOptions:
    """How a reading is made (from ``outcomes`` and ``scoring`` settings).

    ``window_s``: the outcome window for mentions stored without one. ``horizon_s``: engagement
    is counted within this time after the reply, over replies older than it. ``alpha``: 1 minus
    the coverage of every interval (per arm), and the family-wise error rate of the comparisons
    shown together. ``controls``: pickers whose arms are control arms.
    """

    window_s: float = 86_400.0
    horizon_s: float = 86_400.0
    alpha: float = 0.05
    controls: tuple[str, ...] = ("similar", "random")


@dataclass(frozen=True, slots=True)
class Score:
    """One group's line on the scoreboard as of ``as_of_us`` (exact values; rounded on output).

    Rates are over ``decided`` mentions; ``pending`` ones are counted apart. ``ci_*`` is the
    fixed-n Wilson interval and ``cs_*`` the anytime-valid confidence sequence, both on the
    effective sample size ``decided / max(1, design_effect)``. ``km_rate`` uses every mention
    (open ones censored). Engagement ratios are over ``engagement_replies`` (replies older than
    the horizon). ``rank``/``tied`` come from the comparisons (see ``leaderboard``).
    """

    group: str
    by: str
    control: bool
    mentions: int
    decided: int
    pending: int
    successes: int
    success_rate: float | None
    ci_low: float
    ci_high: float
    cs_low: float
    cs_high: float
    design_effect: float | None
    effective_n: float
    km_rate: float | None
    km_se: float | None
    answered_1h: float | None
    answered_6h: float | None
    median_minutes_to_answer: float | None
    mentions_per_day: float
    engagement_replies: int
    likes_per_reply: float | None
    engagement_per_reply: float | None
    negatives: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    cost_per_success: float | None
    rank: int = 1
    tied: bool = False


@dataclass(frozen=True, slots=True)
class Comparison:
    """Arm ``a`` minus arm ``b`` (success rates), with an anytime-valid interval.

    ``low``/``high`` is the normal-mixture confidence sequence at level ``alpha_each`` (alpha
    split over the comparisons shown, Bonferroni), with cluster-robust variance; ``verdict``
    is ``better`` (a is better than b: low > 0), ``worse`` (high < 0) or ``not yet separable``.
    ``fixed_low``/``fixed_high`` is the one-look 95% z-interval, for reference only.
    ``days_to_separate``: at the current rates and mention flow, the expected days until the
    interval excludes 0 (None when separated, or not estimable within ten years).
    """

    a: str
    b: str
    kind: str  # "vs control", "between arms" or "between controls"
    diff: float
    low: float
    high: float
    fixed_low: float
    fixed_high: float
    alpha_each: float
    verdict: str
    days_to_separate: float | None


@dataclass(frozen=True, slots=True)
class Leaderboard:
    """Every figure of one reading: per-group scores (best first) and the comparisons."""

    by: str
    as_of_us: int
    options: ScoringOptions
    scores: list[Score]
    comparisons: list[Comparison]


def latest_time_us(mentions: Iterable[Mention], outcomes: Iterable[Outcome]) -> int:
    """The latest stream time the rows themselves show (creation, outcome or close), or 0."""
    t = 0
    for m in mentions:
        t = max(t, m.created_us, m.outcome_us or 0)
    for o in outcomes:
        t = max(t, o.time_us)
    return t


def score(
    mentions: Iterable[Mention],
    outcomes: Iterable[Outcome],
    by: str = "model",
    *,
    as_of_us: int | None = None,
    options: ScoringOptions | None = None,
) -> list[Score]:
    """``leaderboard(...).scores``: the per-group lines only."""
    return leaderboard(mentions, outcomes, by=by, as_of_us=as_of_us, options=options).scores


def leaderboard(
    mentions: Iterable[Mention],
    outcomes: Iterable[Outcome],
    *,
    by: str = "model",
    as_of_us: int | None = None,
    options: ScoringOptions | None = None,
) -> Leaderboard:
    """Every figure, as it reads at ``as_of_us`` (default: the latest time in the rows).

    Only mentions created and outcomes recorded at or before ``as_of_us`` are used. Groups are
    ordered by success rate (none decided last), then decided mentions, then name.

    Comparisons: every pair of groups with decided mentions, each at level ``alpha / K`` for K
    pairs (Bonferroni), so all verdicts shown hold together with probability ``1 - alpha`` at
    every reading. ``rank = 1 + the number of groups declared better than this one``; ``tied``
    when another group has the same rank. A model arm is listed as ``a`` against a control.
    """
    if by not in GROUP_BY:
        raise ValueError(f"cannot group by {by!r}; expected one of {', '.join(GROUP_BY)}")
    opts = options or ScoringOptions()
    rows = list(mentions)
    outs = list(outcomes)
    as_of = latest_time_us(rows, outs) if as_of_us is None else as_of_us
    rows = [m for m in rows if m.created_us <= as_of]
    ids = {m.id for m in rows}
    outs = [o for o in outs if o.time_us <= as_of and o.mention_id in ids]
    answered = _answer_times(rows, outs, as_of)
    # kind -> mention id -> {uri: time}; distinct uris are what make replays count once.
    seen: dict[str, dict[int, dict[str, int]]] = {}
    for o in outs:
        by_uri = seen.setdefault(o.kind, {}).setdefault(o.mention_id, {})
        by_uri[o.uri] = min(by_uri.get(o.uri, o.time_us), o.time_us)

    groups: dict[str, list[Mention]] = {}
    for m in rows:
        groups.setdefault(getattr(m, by), []).append(m)
    arms = {name: _arm(name, by, ms, answered, seen, as_of, opts) for name, ms in groups.items()}
    unranked = sorted(
        (a.score for a in arms.values()),
        key=lambda s: (s.success_rate is None, -(s.success_rate or 0.0), -s.decided, s.group),
    )
    comparisons = _compare([arms[s.group] for s in unranked], as_of, opts)
    better_than: dict[str, int] = {s.group: 0 for s in unranked}
    for c in comparisons:
        if c.verdict == "better":
            better_than[c.b] += 1
        elif c.verdict == "worse":
            better_than[c.a] += 1
    ranks = [1 + better_than[s.group] for s in unranked]
    scores = [
        replace(s, rank=r, tied=ranks.count(r) > 1) for s, r in zip(unranked, ranks, strict=True)
    ]
    return Leaderboard(by, as_of, opts, scores, comparisons)


def decided_outcomes(
    mentions: Iterable[Mention],
    outcomes: Iterable[Outcome],
    as_of_us: int,
    options: ScoringOptions | None = None,
) -> list[tuple[Mention, bool]]:
    """Every mention decided at ``as_of_us``, with whether it succeeded: the rule of
    ``leaderboard`` (window closed; success = an answer within the window)."""
    opts = options or ScoringOptions()
    rows = [m for m in mentions if m.created_us <= as_of_us]
    ids = {m.id for m in rows}
    outs = [o for o in outcomes if o.time_us <= as_of_us and o.mention_id in ids]
    answered = _answer_times(rows, outs, as_of_us)
    out = []
    for m in rows:
        w = _window_us(m, opts.window_s)
        if m.created_us + w <= as_of_us:
            t = answered.get(m.id)
            out.append((m, t is not None and t - m.created_us <= w))
    return out


# --- one arm ---------------------------------------------------------------------------------


@dataclass(slots=True)
class _Arm:
    score: Score
    y: list[float]  # outcome of each decided mention (1 succeeded, 0 not)
    users: list[str]  # the mentioned user of each decided mention
    rate: float  # a smoothed rate for variances: (successes + 1) / (decided + 2)


def _window_us(m: Mention, default_s: float) -> int:
    w = m.extra.get("window_s") if m.extra else None
    if isinstance(w, int | float) and not isinstance(w, bool) and w > 0:
        return int(w * 1e6)
    return int(default_s * 1e6)


def _answer_times(rows: list[Mention], outs: list[Outcome], as_of: int) -> dict[int, int]:
    """Mention id -> time of its first answer known at ``as_of`` (a ``success`` outcome, or the
    ledger's close time for a mention closed ``succeeded`` without one)."""
    first: dict[int, int] = {}
    for o in outs:
        if o.kind == "success":
            first[o.mention_id] = min(first.get(o.mention_id, o.time_us), o.time_us)
    for m in rows:
        if m.status == "succeeded" and m.outcome_us is not None and m.outcome_us <= as_of:
            first[m.id] = min(first.get(m.id, m.outcome_us), m.outcome_us)
    return first


def _arm(
    name: str,
    by: str,
    rows: list[Mention],
    answered: dict[int, int],
    seen: dict[str, dict[int, dict[str, int]]],
    as_of: int,
    opts: ScoringOptions,
) -> _Arm:
    y: list[float] = []
    users: list[str] = []
    minutes: list[float] = []
    durations: list[float] = []
    events: list[bool] = []
    within = {_HOUR_US: [0, 0], 6 * _HOUR_US: [0, 0]}  # horizon -> [answered, eligible]
    km_horizon = int(opts.window_s * 1e6)
    for m in rows:
        w = _window_us(m, opts.window_s)
        t = answered.get(m.id)
        delay = None if t is None else max(0, t - m.created_us)
        in_window = delay is not None and delay <= w
        if m.created_us + w <= as_of:
            y.append(1.0 if in_window else 0.0)
            users.append(m.mentioned_did)
            if in_window and delay is not None:
                minutes.append(delay / 60e6)
        # Kaplan-Meier: an answer within the window is an event; otherwise the mention is
        # followed up to the reading time or its own window, whichever comes first.
        if in_window and delay is not None:
            durations.append(float(delay))
            events.append(True)
        else:
            durations.append(float(min(as_of - m.created_us, w)))
            events.append(False)
        for h, counts in within.items():
            if h <= w and m.created_us + h <= as_of:
                counts[1] += 1
                counts[0] += delay is not None and delay <= h
    decided = len(y)
    successes = int(sum(y))
    rate = successes / decided if decided else None
    deff = _design_effect(y, users)
    n_eff = decided / max(1.0, deff or 1.0)
    s_eff = successes * (n_eff / decided) if decided else 0.0
    km = km_probability(durations, events, km_horizon)
    horizon = int(opts.horizon_s * 1e6)
    old = [m for m in rows if m.created_us + horizon <= as_of]

    def count(kinds: Iterable[str], pool: Sequence[Mention], limit_us: int | None) -> int:
        total = 0
        for kind in kinds:
            by_mention = seen.get(kind, {})
            for m in pool:
                times = by_mention.get(m.id)
                if times:
                    end = None if limit_us is None else m.created_us + limit_us
                    total += sum(1 for t in times.values() if end is None or t <= end)
        return total

    likes = count(("like",), old, horizon)
    engagement = count(sorted(_ENGAGEMENT), old, horizon)
    # fsum is exactly rounded, hence independent of row order: the ledger and the log list
    # mentions in different orders and must still print the same cost.
    cost = math.fsum(m.cost_usd for m in rows)
    decided_cost = math.fsum(
        m.cost_usd for m in rows if m.created_us + _window_us(m, opts.window_s) <= as_of
    )
    first = min(m.created_us for m in rows)
    span_days = min(_RATE_DAYS, max((as_of - first) / _DAY_US, 1.0))
    # Over the last week, or since the arm's first mention if it is younger.
    recent = sum(m.created_us >= as_of - span_days * _DAY_US for m in rows)
    s = Score(
        group=name,
        by=by,
        control=all(m.picker in opts.controls for m in rows),
        mentions=len(rows),
        decided=decided,
        pending=len(rows) - decided,
        successes=successes,
        success_rate=rate,
        ci_low=(ci := wilson_interval(s_eff, n_eff, opts.alpha))[0],
        ci_high=ci[1],
        cs_low=(cs := beta_binomial_cs(s_eff, n_eff, opts.alpha))[0],
        cs_high=cs[1],
        design_effect=deff,
        effective_n=n_eff,
        km_rate=None if km is None else km[0],
        km_se=None if km is None else km[1],
        answered_1h=_share(within[_HOUR_US]),
        answered_6h=_share(within[6 * _HOUR_US]),
        median_minutes_to_answer=statistics.median(minutes) if minutes else None,
        mentions_per_day=recent / span_days,
        engagement_replies=len(old),
        likes_per_reply=likes / len(old) if old else None,
        engagement_per_reply=engagement / len(old) if old else None,
        negatives=count(("block",), rows, None),
        prompt_tokens=sum(m.prompt_tokens for m in rows),
        completion_tokens=sum(m.completion_tokens for m in rows),
        cost_usd=cost,
        cost_per_success=decided_cost / successes if successes else None,
    )
    return _Arm(s, y, users, (successes + 1) / (decided + 2))


def _share(counts: list[int]) -> float | None:
    return counts[0] / counts[1] if counts[1] else None


def _design_effect(y: list[float], users: list[str]) -> float | None:
    """Cluster-robust variance of the rate over its variance for independent mentions
    (``p (1 - p) / (n - 1)``, the same small-sample scale, so a design effect is exactly 1 when
    nobody is mentioned twice); None when undefined (fewer than 2 mentions, a rate of 0 or 1,
    or a single mentioned user)."""
    n = len(y)
    if n < 2:
        return None
    p = sum(y) / n
    binomial = p * (1 - p) / (n - 1)
    if binomial <= 0:
        return None
    robust = cluster_variance(y, users)
    return None if math.isnan(robust) else robust / binomial


# --- comparisons -----------------------------------------------------------------------------


def _compare(arms: list[_Arm], as_of: int, opts: ScoringOptions) -> list[Comparison]:
    live = [a for a in arms if a.score.decided > 0]
    pairs = list(combinations(live, 2))
    if not pairs:
        return []
    alpha_each = opts.alpha / len(pairs)
    z = float(norm.ppf(0.975))
    out = []
    for first, second in pairs:
        a, b = first, second
        if a.score.control and not b.score.control:
            a, b = b, a
        kind = (
            "between controls"
            if a.score.control and b.score.control
            else "vs control"
            if b.score.control
            else "between arms"
        )
        sa, sb = a.score, b.score
        assert sa.success_rate is not None and sb.success_rate is not None
        diff = sa.success_rate - sb.success_rate
        v = _diff_variance(a, b)
        h = mixture_halfwidth(v, alpha_each)
        low, high = max(-1.0, diff - h), min(1.0, diff + h)
        verdict = "better" if low > 0 else "worse" if high < 0 else "not yet separable"
        days = (
            None
            if verdict != "not yet separable"
            else _days_to_separate(a, b, alpha_each, opts.window_s)
        )
        fixed = z * math.sqrt(v)
        out.append(
            Comparison(
                a=sa.group,
                b=sb.group,
                kind=kind,
                diff=diff,
                low=low,
                high=high,
                fixed_low=max(-1.0, diff - fixed),
                fixed_high=min(1.0, diff + fixed),
                alpha_each=alpha_each,
                verdict=verdict,
                days_to_separate=days,
            )
        )
    return out


def _binomial_variance(arm: _Arm) -> float:
    return arm.rate * (1 - arm.rate) / arm.score.decided


def _diff_variance(a: _Arm, b: _Arm) -> float:
    """Variance of the difference of rates: cluster-robust (people mentioned in both arms add
    their covariance), never below the binomial variance at smoothed rates (a design effect
    below 1 is noise, and 0/n must not look certain)."""
    floor = _binomial_variance(a) + _binomial_variance(b)
    robust = cluster_variance(
        [*a.y, *b.y], [*a.users, *b.users], [False] * len(a.y) + [True] * len(b.y)
    )
    return floor if math.isnan(robust) else max(robust, floor)


def _days_to_separate(a: _Arm, b: _Arm, alpha_each: float, window_s: float) -> float | None:
    """Days until the interval for the current difference would exclude 0 if the rates, design
    effects and mention flow stay as they are; None when there is no difference or no flow.

    Mentions made from now on are decided one window later, which is included."""
    sa, sb = a.score, b.score
    assert sa.success_rate is not None and sb.success_rate is not None
    delta = abs(sa.success_rate - sb.success_rate)
    ra, rb = sa.mentions_per_day, sb.mentions_per_day
    if delta == 0 or ra <= 0 or rb <= 0:
        return None
    ua = max(1.0, sa.design_effect or 1.0) * a.rate * (1 - a.rate)
    ub = max(1.0, sb.design_effect or 1.0) * b.rate * (1 - b.rate)
    # Pending mentions will be decided within a window: count them as decided already, and
    # add one window at the end (for the mentions still to be made to be decided).
    na, nb = sa.decided + sa.pending, sb.decided + sb.pending

    def gap(days: float) -> float:
        v = ua / (na + ra * days) + ub / (nb + rb * days)
        return delta - mixture_halfwidth(v, alpha_each)

    if gap(_MAX_DAYS) < 0:
        return None
    days = 0.0 if gap(0.0) >= 0 else float(brentq(gap, 0.0, _MAX_DAYS, xtol=1e-3))
    return days + window_s / 86_400


# --- output ----------------------------------------------------------------------------------


def _round(value: float | None, digits: int = _RATIO_DIGITS) -> float | None:
    # A figure that is not a finite number (e.g. a standard error at a survival of 0) is
    # unknown: null in JSON, "–" in tables.
    return None if value is None or not math.isfinite(value) else round(value, digits)


def score_log_fields(s: Score) -> dict[str, Any]:
    """The ``recommender_score`` log line for one score (rounded; the one rounding point).

    The group is keyed by its ``by`` name: ``{"model": "gpt-x", ...}`` or ``{"picker":
    "similar", ...}``.
    """
    return {
        "event": "recommender_score",
        s.by: s.group,
        "by": s.by,
        "control": s.control,
        "mentions": s.mentions,
        "decided": s.decided,
        "pending": s.pending,
        "successes": s.successes,
        "success_rate": _round(s.success_rate),
        "ci_low": _round(s.ci_low),
        "ci_high": _round(s.ci_high),
        "cs_low": _round(s.cs_low),
        "cs_high": _round(s.cs_high),
        "design_effect": _round(s.design_effect),
        "effective_n": _round(s.effective_n, 2),
        "km_rate": _round(s.km_rate),
        "km_se": _round(s.km_se),
        "answered_1h": _round(s.answered_1h),
        "answered_6h": _round(s.answered_6h),
        "median_minutes_to_answer": _round(s.median_minutes_to_answer),
        "mentions_per_day": _round(s.mentions_per_day, 2),
        "engagement_replies": s.engagement_replies,
        "likes_per_reply": _round(s.likes_per_reply),
        "engagement_per_reply": _round(s.engagement_per_reply),
        "negatives": s.negatives,
        "cost_usd": _round(s.cost_usd, _USD_DIGITS),
        "cost_per_success": _round(s.cost_per_success, _USD_DIGITS),
        "prompt_tokens": s.prompt_tokens,
        "completion_tokens": s.completion_tokens,
        "rank": s.rank,
        "tied": s.tied,
    }


def comparison_fields(c: Comparison) -> dict[str, Any]:
    """One comparison, rounded (the ``recommender_comparison`` log line without ``event``)."""
    return {
        "a": c.a,
        "b": c.b,
        "kind": c.kind,
        "diff": _round(c.diff),
        "low": _round(c.low),
        "high": _round(c.high),
        "alpha_each": _round(c.alpha_each, 6),
        "verdict": c.verdict,
        "days_to_separate": _round(c.days_to_separate, 1),
        "fixed_low": _round(c.fixed_low),
        "fixed_high": _round(c.fixed_high),
    }


def scores_json(scores: Iterable[Score]) -> list[dict[str, Any]]:
    """The log line fields of each score, without ``event``."""
    out = []
    for s in scores:
        fields = score_log_fields(s)
        del fields["event"]
        out.append(fields)
    return out


def leaderboard_json(board: Leaderboard) -> dict[str, Any]:
    """``botsky scores --json`` and ``/api/leaderboard``: the reading, its scores and its
    comparisons (rounded as in the log)."""
    o = board.options
    return {
        "by": board.by,
        "as_of_us": board.as_of_us,
        "as_of": _iso(board.as_of_us),
        "window_s": o.window_s,
        "horizon_s": o.horizon_s,
        "alpha": o.alpha,
        "scores": scores_json(board.scores),
        "comparisons": [comparison_fields(c) for c in board.comparisons],
    }


def _iso(time_us: int) -> str:
    return datetime.fromtimestamp(time_us / 1e6, tz=UTC).isoformat().replace("+00:00", "Z")


def render_table(board: Leaderboard | Sequence[Score], *, wide: bool = False) -> Table:
    """The scoreboard as a rich table; tied ranks are marked ``=`` (``=1``).

    By default it fits 100 columns: rank, group, decided, pending, rate, the anytime-valid
    interval, the design effect, engagement and, when something cost money, cost per success.
    ``wide`` adds the fixed-n interval, Kaplan–Meier, answered within 1 h / 6 h, the median
    minutes to answer, likes, tokens and cost.
    """
    scores = board.scores if isinstance(board, Leaderboard) else list(board)
    by = scores[0].by if scores else "group"
    # No vertical rules (box.SIMPLE_HEAD): two spaces between columns is what lets the default
    # table fit 100 columns.
    table = Table(title=f"botsky scores by {by}", box=box.SIMPLE_HEAD, pad_edge=False)
    paid = any(s.cost_usd > 0 for s in scores)
    columns: list[tuple[str, str]] = [("rank", "right"), (by, "left")]
    columns += [("decided", "right"), ("pending", "right"), ("rate %", "right")]
    columns += [("anytime 95%", "right")]
    if wide:
        columns += [("fixed-n 95%", "right"), ("KM %", "right")]
        columns += [("≤1 h %", "right"), ("≤6 h %", "right")]
        columns += [("median minutes to answer", "right")]
    columns += [("design\neffect", "right"), ("engagement\n/ reply", "right")]
    if wide:
        columns += [("likes\n/ reply", "right"), ("tokens\nin/out", "right"), ("cost $", "right")]
    if paid or wide:
        columns += [("$ /\nsuccess", "right")]
    for header, justify in columns:
        table.add_column(header, justify=justify)  # type: ignore[arg-type]
    for s in scores:
        # Format from the rounded log fields so the table can never disagree with the JSON.
        f = score_log_fields(s)
        cells = [
            f"{'=' if s.tied else ''}{s.rank}",
            s.group if wide or len(s.group) <= 20 else s.group[:19] + "…",
            str(s.decided),
            str(s.pending),
            _fmt(f["success_rate"], "{:.1f}", 100),
            f"{f['cs_low'] * 100:.1f}–{f['cs_high'] * 100:.1f}",
        ]
        if wide:
            cells += [
                f"{f['ci_low'] * 100:.1f}–{f['ci_high'] * 100:.1f}",
                _fmt(f["km_rate"], "{:.1f}", 100),
                _fmt(f["answered_1h"], "{:.1f}", 100),
                _fmt(f["answered_6h"], "{:.1f}", 100),
                _fmt(f["median_minutes_to_answer"], "{:.1f}"),
            ]
        cells += [_fmt(f["design_effect"], "{:.2f}"), _fmt(f["engagement_per_reply"], "{:.3f}")]
        if wide:
            cells += [
                _fmt(f["likes_per_reply"], "{:.3f}"),
                f"{s.prompt_tokens}/{s.completion_tokens}",
                _fmt(f["cost_usd"], "{:.6f}"),
            ]
        if paid or wide:
            cells += [_fmt(f["cost_per_success"], "{:.6f}")]
        table.add_row(*cells)
    return table


def render_comparisons(board: Leaderboard) -> Table:
    """The comparisons as a rich table (fits 100 columns)."""
    k = len(board.comparisons)
    table = Table(
        title=f"comparisons by {board.by}: success rate difference, points\n"
        f"(anytime-valid intervals, family-wise 95% over {k})",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    for header, justify in (
        ("arm", "left"),
        ("vs", "left"),
        ("diff", "right"),
        ("interval", "right"),
        ("verdict", "left"),
        ("days to\nseparate", "right"),
    ):
        table.add_column(header, justify=justify)  # type: ignore[arg-type]
    for c in board.comparisons:
        f = comparison_fields(c)
        days = f["days_to_separate"]
        table.add_row(
            c.a if len(c.a) <= 20 else c.a[:19] + "…",
            c.b if len(c.b) <= 20 else c.b[:19] + "…",
            f"{f['diff'] * 100:+.1f}",
            f"{f['low'] * 100:+.1f} to {f['high'] * 100:+.1f}",
            c.verdict,
            "–" if days is None else f"{days:.0f}",
        )
    return table


def _fmt(value: float | None, spec: str, scale: float = 1.0) -> str:
    return "–" if value is None else spec.format(value * scale)


def log_lines(board: Leaderboard) -> list[dict[str, Any]]:
    """The log lines of one reading: a ``recommender_score`` line per group, then a
    ``recommender_comparison`` line per comparison; each carries ``as_of_us``."""
    lines = [{**score_log_fields(s), "as_of_us": board.as_of_us} for s in board.scores]
    for c in board.comparisons:
        lines.append(
            {
                "event": "recommender_comparison",
                "by": board.by,
                **comparison_fields(c),
                "as_of_us": board.as_of_us,
            }
        )
    return lines


async def log_reading(
    ledger: Ledger, as_of_us: int, clock_us: int, options: ScoringOptions
) -> Leaderboard:
    """Read the ledger as of ``as_of_us`` (a stream time at or before the stream clock
    ``clock_us``; the rows' latest time while no event has been seen), log the reading by
    model, and save the clock under ``CLOCK_CURSOR``."""
    mentions, outcomes = await ledger.mentions(), await ledger.outcomes()
    # Pure and about 1 s at 10^5 mentions: in a thread, so the event loop keeps reading events
    # (the GIL is shared, but the loop gets its turns instead of one long stall).
    board = await asyncio.to_thread(
        leaderboard, mentions, outcomes, by="model", as_of_us=as_of_us or None, options=options
    )
    if clock_us:
        await ledger.save_cursor(CLOCK_CURSOR, clock_us)
    for line in log_lines(board):
        log.info(line.pop("event"), **line)
    return board


def log_clock_us(lines: Iterable[bytes | str]) -> int | None:
    """The latest ``as_of_us`` of the ``recommender_score`` lines in a log: the stream time the
    run had watched up to at its last reading (None if the log has none)."""
    clock: int | None = None
    for line in lines:
        if b"recommender_score" not in (line if isinstance(line, bytes) else line.encode()):
            continue
        try:
            rec = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(rec, dict) and rec.get("event") == "recommender_score":
            t = _int(rec, "as_of_us")
            if t is not None and (clock is None or t > clock):
                clock = t
    return clock


def rebuild_from_log(lines: Iterable[bytes | str]) -> tuple[list[Mention], list[Outcome]]:
    """Reconstruct ledger rows from botsky's JSON log lines, to score a run from its log.

    Reads ``reply_posted`` (a mention), ``outcome_recorded`` (an outcome) and
    ``mention_closed`` (its final status); every other line, and any line that is not a JSON
    object with the fields it needs, is skipped. A log may hold several appended runs, so
    repeats are merged the way the ledger would: a mention id is one mention (the last
    ``reply_posted`` wins), an outcome is recorded once per ``(mention_id, kind, uri)`` and a
    mention closes once (the first ``mention_closed`` wins, as ``close_mention`` only moves an
    open mention). Fields the log does not carry (cids, reply text, candidates) are left empty.
    Mentions come back in id order, outcomes in first-seen order.
    """
    mentions: dict[int, Mention] = {}
    closed: dict[int, tuple[str, int]] = {}
    outcomes: dict[tuple[int, str, str], Outcome] = {}
    for line in lines:
        try:
            rec = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(rec, dict):
            continue
        event = rec.get("event")
        if event == "reply_posted":
            mention = mention_from_log(rec)
            if mention is not None:
                mentions[mention.id] = mention
        elif event == "outcome_recorded":
            outcome = _outcome_from_log(rec)
            if outcome is not None:
                outcomes.setdefault((outcome.mention_id, outcome.kind, outcome.uri), outcome)
        elif event == "mention_closed":
            mention_id, time_us = _int(rec, "mention_id"), _int(rec, "time_us")
            status = rec.get("status")
            if mention_id is not None and time_us is not None and status in _CLOSED:
                closed.setdefault(mention_id, (status, time_us))
    for mention_id, (status, time_us) in closed.items():
        if mention_id in mentions:
            mentions[mention_id].status = status
            mentions[mention_id].outcome_us = time_us
    return [mentions[k] for k in sorted(mentions)], list(outcomes.values())


def _int(rec: dict[str, Any], key: str) -> int | None:
    value = rec.get(key)
    # bool is an int subclass, but a JSON true is never a valid id, count or timestamp.
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _outcome_from_log(rec: dict[str, Any]) -> Outcome | None:
    """An ``outcome_recorded`` line as an Outcome, or None if a field is missing or mistyped."""
    mention_id, time_us = _int(rec, "mention_id"), _int(rec, "time_us")
    kind, actor, uri = rec.get("kind"), rec.get("actor"), rec.get("uri")
    if mention_id is None or time_us is None:
        return None
    if not (isinstance(kind, str) and isinstance(actor, str) and isinstance(uri, str)):
        return None
    return Outcome(mention_id=mention_id, kind=kind, actor=actor, uri=uri, time_us=time_us)
