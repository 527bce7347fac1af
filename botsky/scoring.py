"""The scoreboard: pure functions from ledger rows to per-group scores.

A mention *matures* when it succeeds (the mentioned user posted in the thread) or expires (the
window closed first); open mentions count towards ``mentions`` and cost but not towards the
success rate, because their outcome is still unknown. Rates carry a Wilson 95% interval, and
groups whose intervals cannot be told apart share a rank (see ``score``).

The same numbers come from two places: the ledger (``botsky scores`` on a database) and the
JSON log (``rebuild_from_log``), so a run can be scored after the fact from its log alone. Both
paths go through ``score`` and round in exactly one place (``score_log_fields``).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any, Final

import orjson
from rich.table import Table

from botsky.ledger.base import Mention, Outcome, mention_from_log

__all__ = [
    "GROUP_BY",
    "Score",
    "rebuild_from_log",
    "render_table",
    "score",
    "score_log_fields",
    "scores_json",
    "wilson_interval",
]

GROUP_BY: Final = ("model", "persona", "bot", "picker", "provider")

# z for a two-sided 95% interval: the 0.975 quantile of the standard normal.
_Z95: Final = 1.959963984540054
# Ratios, rates and minutes are printed to 4 decimals; dollar amounts to 6, because a cheap
# model's cost per reply is a fraction of a cent and 4 decimals would round it to zero.
_RATIO_DIGITS: Final = 4
_USD_DIGITS: Final = 6
_ENGAGEMENT: Final = frozenset({"like", "repost", "quote", "author_reply"})
_CLOSED: Final = ("succeeded", "expired")


def wilson_interval(successes: int, n: int, z: float = _Z95) -> tuple[float, float]:
    """Wilson score interval for ``successes`` out of ``n``; ``(0.0, 1.0)`` when ``n == 0``.

    Wilson rather than the normal approximation because early on a bot has a handful of
    matured mentions, often 0 or all successes, where the normal interval collapses to a point.
    """
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z2 / (4 * n * n)) / denom
    # At p == 0 (p == 1) the lower (upper) bound is exactly 0 (1), but float rounding leaves
    # it a hair off, which would print as a nonzero bound or fail a "low <= p" check.
    low = 0.0 if successes <= 0 else max(0.0, centre - half)
    high = 1.0 if successes >= n else min(1.0, centre + half)
    return (low, high)


@dataclass(frozen=True, slots=True)
class Score:
    """One group's line on the scoreboard (exact values; rounding happens on output).

    ``group`` is the key value (a model name, persona, ...) and ``by`` the attribute grouped
    on. Per-reply ratios divide by all ``mentions``; ``success_rate`` and its interval use only
    ``matured`` ones (succeeded + expired). ``rank`` and ``tied`` are explained in ``score``.
    """

    group: str
    by: str
    mentions: int
    matured: int
    successes: int
    success_rate: float | None
    ci_low: float
    ci_high: float
    likes_per_reply: float
    engagement_per_reply: float
    negatives: int
    median_minutes_to_reply: float | None
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    cost_per_success: float | None
    rank: int = 1
    tied: bool = False


def score(
    mentions: Iterable[Mention], outcomes: Iterable[Outcome], by: str = "model"
) -> list[Score]:
    """Score mentions grouped by ``by`` (one of ``GROUP_BY``), best first.

    Order: success rate descending (groups with nothing matured last), then more mentions
    first, then group name, so the output is deterministic.

    Engagement counts each ``(mention, kind, uri)`` once, so a replayed like is one like; the
    ``success`` outcome is not engagement (it is ``successes``, taken from mention status) and
    ``block`` outcomes are ``negatives``. Outcomes of mentions not in ``mentions`` are ignored.

    Rank rule: ``rank = 1 + the number of groups whose ci_low > this group's ci_high``, i.e.
    only groups that are better with non-overlapping intervals push a group down; ``tied`` is
    True when another group has the same rank. A group with nothing matured has the interval
    (0, 1), so nothing is separated from it: it ranks 1 and pushes nobody down (we cannot yet
    tell it apart from anyone). Because ranks come from intervals and the order from point
    estimates, a group can rarely show a larger rank than one listed below it.
    """
    if by not in GROUP_BY:
        raise ValueError(f"cannot group by {by!r}; expected one of {', '.join(GROUP_BY)}")
    groups: dict[str, list[Mention]] = {}
    for m in mentions:
        groups.setdefault(getattr(m, by), []).append(m)

    # kind -> mention id -> distinct uris; a set per mention is what makes replays count once.
    seen: dict[str, dict[int, set[str]]] = {}
    for o in outcomes:
        seen.setdefault(o.kind, {}).setdefault(o.mention_id, set()).add(o.uri)

    unranked = [_score_group(name, by, rows, seen) for name, rows in groups.items()]
    unranked.sort(
        key=lambda s: (
            s.success_rate is None,
            -(s.success_rate or 0.0),
            -s.mentions,
            s.group,
        )
    )
    ranks = [1 + sum(o.ci_low > s.ci_high for o in unranked) for s in unranked]
    return [
        replace(s, rank=r, tied=ranks.count(r) > 1) for s, r in zip(unranked, ranks, strict=True)
    ]


def _score_group(
    name: str, by: str, rows: list[Mention], seen: dict[str, dict[int, set[str]]]
) -> Score:
    """One group's exact numbers; ``seen`` maps kind -> mention id -> distinct outcome uris."""

    def count(kind: str) -> int:
        by_mention = seen.get(kind, {})
        return sum(len(by_mention.get(m.id, ())) for m in rows)

    n = len(rows)
    succeeded = [m for m in rows if m.status == "succeeded"]
    matured = len(succeeded) + sum(m.status == "expired" for m in rows)
    successes = len(succeeded)
    low, high = wilson_interval(successes, matured)
    engagement = sum(count(kind) for kind in _ENGAGEMENT)
    minutes = [(m.outcome_us - m.created_us) / 60e6 for m in succeeded if m.outcome_us is not None]
    # fsum is exactly rounded, hence independent of row order: the ledger and the log list
    # mentions in different orders and must still print the same cost.
    cost = math.fsum(m.cost_usd for m in rows)
    return Score(
        group=name,
        by=by,
        mentions=n,
        matured=matured,
        successes=successes,
        success_rate=successes / matured if matured else None,
        ci_low=low,
        ci_high=high,
        likes_per_reply=count("like") / n,
        engagement_per_reply=engagement / n,
        negatives=count("block"),
        median_minutes_to_reply=statistics.median(minutes) if minutes else None,
        prompt_tokens=sum(m.prompt_tokens for m in rows),
        completion_tokens=sum(m.completion_tokens for m in rows),
        cost_usd=cost,
        cost_per_success=cost / successes if successes else None,
    )


def _round(value: float | None, digits: int = _RATIO_DIGITS) -> float | None:
    return None if value is None else round(value, digits)


def score_log_fields(s: Score) -> dict[str, Any]:
    """The ``recommender_score`` log line for one score (rounded; the one rounding point).

    The group is keyed by its ``by`` name: ``{"model": "gpt-x", ...}`` or ``{"picker":
    "similar", ...}``.
    """
    return {
        "event": "recommender_score",
        s.by: s.group,
        "mentions": s.mentions,
        "matured": s.matured,
        "successes": s.successes,
        "success_rate": _round(s.success_rate),
        "ci_low": _round(s.ci_low),
        "ci_high": _round(s.ci_high),
        "likes_per_reply": _round(s.likes_per_reply),
        "cost_per_success": _round(s.cost_per_success, _USD_DIGITS),
        "by": s.by,
        "rank": s.rank,
        "tied": s.tied,
        "engagement_per_reply": _round(s.engagement_per_reply),
        "median_minutes_to_reply": _round(s.median_minutes_to_reply),
        "cost_usd": _round(s.cost_usd, _USD_DIGITS),
        "prompt_tokens": s.prompt_tokens,
        "completion_tokens": s.completion_tokens,
        "negatives": s.negatives,
    }


def scores_json(scores: Iterable[Score]) -> list[dict[str, Any]]:
    """``botsky scores --json``: the log line fields of each score, without ``event``."""
    out = []
    for s in scores:
        fields = score_log_fields(s)
        del fields["event"]
        out.append(fields)
    return out


def render_table(scores: list[Score]) -> Table:
    """The scoreboard as a rich table; tied ranks are marked ``=`` (``=1``)."""
    by = scores[0].by if scores else "group"
    table = Table(title=f"botsky scores by {by}")
    table.add_column("rank", justify="right")
    table.add_column(by)
    for header in ("mentions", "matured", "successes", "rate %", "95% CI"):
        table.add_column(header, justify="right")
    for header in ("likes/reply", "engagement/reply", "median min to reply"):
        table.add_column(header, justify="right")
    table.add_column("cost", justify="right")
    table.add_column("cost/success", justify="right")
    for s in scores:
        # Format from the rounded log fields so the table can never disagree with the JSON.
        f = score_log_fields(s)
        table.add_row(
            f"{'=' if s.tied else ''}{s.rank}",
            s.group,
            str(s.mentions),
            str(s.matured),
            str(s.successes),
            _fmt(f["success_rate"], "{:.1f}", 100),
            f"{f['ci_low'] * 100:.1f}–{f['ci_high'] * 100:.1f}",
            _fmt(f["likes_per_reply"], "{:.3f}"),
            _fmt(f["engagement_per_reply"], "{:.3f}"),
            _fmt(f["median_minutes_to_reply"], "{:.1f}"),
            _fmt(f["cost_usd"], "${:.6f}"),
            _fmt(f["cost_per_success"], "${:.6f}"),
        )
    return table


def _fmt(value: float | None, spec: str, scale: float = 1.0) -> str:
    return "–" if value is None else spec.format(value * scale)


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
