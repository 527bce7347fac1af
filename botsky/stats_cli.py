"""The statistics side of the command line: ``botsky scores``' options and output, ``botsky plan``.

``cli.scores_cmd`` reads the rows (from the ledger or a log) and hands them to ``show_scores``;
``plan_cmd`` is registered on the ``botsky`` group by ``botsky.cli``. Every figure comes from
``scoring.leaderboard`` or ``stats``; methods are in ``docs/statistics.md``.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TypeVar

import click
import orjson
from rich.console import Console
from rich.table import Table

from botsky.ledger.base import Mention, Outcome
from botsky.scoring import (
    GROUP_BY,
    ScoringOptions,
    latest_time_us,
    leaderboard,
    leaderboard_json,
    render_comparisons,
    render_table,
)

__all__ = [
    "FACTOR_GROUPINGS",
    "Rows",
    "parse_as_of",
    "plan_cmd",
    "scores_options",
    "show_scores",
]

F = TypeVar("F", bound=Callable[..., Any])

# `--by model,persona` (and the other pairs): the logistic model with both factors.
FACTOR_GROUPINGS: Final = tuple(f"{a},{b}" for a in GROUP_BY for b in GROUP_BY if a != b)
_WIDTH: Final = 100  # tables fit 100 columns unless --wide
_RELATIVE = re.compile(r"^-(\d+(?:\.\d+)?)([smhdw])$")
_UNIT_US: Final = {"s": 10**6, "m": 60 * 10**6, "h": 3600 * 10**6, "d": 86400 * 10**6}
_UNIT_US["w"] = 7 * _UNIT_US["d"]


@dataclass(frozen=True, slots=True)
class Rows:
    """What a reading is made from: the rows, and the stream time they were watched up to
    (the clock the runtime saved, or the log's last reading; None if unknown)."""

    mentions: list[Mention]
    outcomes: list[Outcome]
    clock_us: int | None


def parse_as_of(text: str, clock_us: int) -> int:
    """``--as-of``: an ISO 8601 time (UTC unless it says otherwise) or ``-2d``/``-36h``/``-90m``/
    ``-30s``/``-1w``, counted back from ``clock_us`` (the latest stream time the rows were
    watched up to, not the wall clock: a finished run is read back from its own end)."""
    m = _RELATIVE.match(text.strip())
    if m:
        return clock_us - int(float(m.group(1)) * _UNIT_US[m.group(2)])
    try:
        dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is neither an ISO time (2026-05-01T12:00:00Z) nor -Nd/-Nh/-Nm/-Ns/-Nw",
            param_hint="--as-of",
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1_000_000)


def scores_options(fn: F) -> F:
    """The options of ``botsky scores`` (applied in ``botsky.cli``)."""
    options = [
        click.option(
            "--by",
            type=click.Choice([*GROUP_BY, *FACTOR_GROUPINGS]),
            default="model",
            show_default=True,
            metavar="FIELD[,FIELD]",
            help=(
                "Group by model, persona, bot, picker or provider; two fields (model,persona) "
                "fit a logistic model that separates their effects."
            ),
        ),
        click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables."),
        click.option(
            "--logs",
            "log_file",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            default=None,
            help="Rebuild the scores from a botsky JSON log file instead of the ledger.",
        ),
        click.option(
            "--plot",
            "plot_file",
            type=click.Path(dir_okay=False, path_type=Path),
            default=None,
            help="Also write success rates with their intervals per model and picker as a PNG.",
        ),
        click.option(
            "--as-of",
            "as_of",
            default=None,
            metavar="TIME",
            help=(
                "Read every figure as it was at TIME: ISO (2026-05-01T12:00:00Z) or -2d, -36h "
                "(back from the last stream time the ledger was watched to)."
            ),
        ),
        click.option("--wide", is_flag=True, help="Show every column (default: fit 100 columns)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def show_scores(
    rows: Rows,
    options: ScoringOptions,
    *,
    by: str,
    as_json: bool,
    plot_file: Path | None,
    as_of: str | None,
    wide: bool,
) -> None:
    """Print the reading (tables or JSON) and write the plot; exit 1 on a bad ``--as-of``."""
    clock = rows.clock_us or latest_time_us(rows.mentions, rows.outcomes)
    # Rows recorded after the saved clock (a reading is saved every scoring interval) are
    # still at or before the stream time the watcher reached: read up to the latest of both.
    clock = max(clock, latest_time_us(rows.mentions, rows.outcomes))
    as_of_us: int | None = None
    if as_of is not None:
        try:
            as_of_us = parse_as_of(as_of, clock)
        except click.BadParameter as exc:
            click.echo(f"botsky: {exc.format_message()}", err=True)
            sys.exit(2)
        if clock and as_of_us > clock:
            click.echo(
                f"botsky: --as-of {as_of} is after {_iso(clock)}, the last stream time this "
                "ledger was watched to: mentions would count as decided before their window "
                "was watched",
                err=True,
            )
            sys.exit(1)
    else:
        as_of_us = clock or None
    if "," in by:
        _show_factors(rows, options, by.split(","), as_of_us, as_json)
        return
    board = leaderboard(rows.mentions, rows.outcomes, by=by, as_of_us=as_of_us, options=options)
    if plot_file is not None:
        from botsky.plot import plot_scores

        def read(group: str) -> Any:
            return leaderboard(
                rows.mentions, rows.outcomes, by=group, as_of_us=as_of_us, options=options
            )

        plot_scores(read("model"), read("picker"), plot_file)
        click.echo(f"plot written to {plot_file}", err=True)
    if as_json:
        click.echo(orjson.dumps(leaderboard_json(board), option=orjson.OPT_INDENT_2).decode())
        return
    console = _console(wide)
    console.print(
        f"as of {_iso(board.as_of_us)} · success: an answer within "
        f"{_duration(options.window_s)} · rates over decided mentions"
    )
    console.print(render_table(board, wide=wide))
    if board.comparisons:
        console.print(render_comparisons(board))


def _show_factors(
    rows: Rows, options: ScoringOptions, factors: Sequence[str], as_of_us: int | None, as_json: bool
) -> None:
    from botsky.stats import factor_effects

    as_of = as_of_us if as_of_us is not None else latest_time_us(rows.mentions, rows.outcomes)
    y, users, columns = _decided(rows, options, as_of, factors)
    effects = factor_effects(y, columns, users, alpha=options.alpha)
    if as_json:
        payload = {
            "by": ",".join(factors),
            "as_of_us": as_of,
            "as_of": _iso(as_of),
            "decided": effects.n,
            "clusters": effects.clusters,
            "problem": effects.problem,
            "tests": [
                {
                    "factor": t.factor,
                    "chi2": round(t.chi2, 4),
                    "df": t.df,
                    "p_value": round(t.p_value, 6),
                }
                for t in effects.tests
            ],
            "levels": [
                {
                    "factor": lv.factor,
                    "level": lv.level,
                    "decided": lv.n,
                    "reference": lv.odds_ratio is None,
                    "odds_ratio": _r(lv.odds_ratio),
                    "or_low": _r(lv.or_low),
                    "or_high": _r(lv.or_high),
                    "p_value": _r(lv.p_value, 6),
                    "adjusted_rate": _r(lv.adjusted_rate),
                }
                for lv in effects.levels
            ],
        }
        click.echo(orjson.dumps(payload, option=orjson.OPT_INDENT_2).decode())
        return
    console = _console(False)
    console.print(
        f"as of {_iso(as_of)}: logistic model of success on {' + '.join(factors)} over "
        f"{effects.n} decided mentions, {effects.clusters} mentioned users (standard errors "
        "clustered by user; fixed-n, one look)"
    )
    if effects.problem is not None:
        console.print(f"no estimate: {effects.problem}")
        return
    tests = Table(title="does the factor matter? (joint Wald test)")
    for header in ("factor", "chi²", "df", "p-value"):
        tests.add_column(header, justify="left" if header == "factor" else "right")
    for t in effects.tests:
        tests.add_row(t.factor, f"{t.chi2:.2f}", str(t.df), f"{t.p_value:.4f}")
    console.print(tests)
    table = Table(title="effects: odds ratio against the reference level, adjusted rate")
    for header in ("factor", "level", "decided", "odds ratio", "95% interval", "p", "adj. rate %"):
        table.add_column(header, justify="left" if header in ("factor", "level") else "right")
    for lv in effects.levels:
        level = lv.level if len(lv.level) <= 24 else lv.level[:23] + "…"
        if lv.odds_ratio is None:
            adjusted = f"{lv.adjusted_rate * 100:.1f}"
            table.add_row(lv.factor, level, str(lv.n), "reference", "", "", adjusted)
            continue
        assert lv.or_low is not None and lv.or_high is not None
        table.add_row(
            lv.factor,
            level,
            str(lv.n),
            f"{lv.odds_ratio:.2f}",
            f"{lv.or_low:.2f}–{lv.or_high:.2f}",
            "–" if lv.p_value is None else f"{lv.p_value:.4f}",
            f"{lv.adjusted_rate * 100:.1f}",
        )
    console.print(table)


def _decided(
    rows: Rows, options: ScoringOptions, as_of: int, factors: Sequence[str]
) -> tuple[list[int], list[str], dict[str, list[str]]]:
    """The decided mentions at ``as_of`` as (outcome, mentioned user, factor values): the same
    rule as ``scoring.leaderboard`` (one per-arm reading gives the same decided counts)."""
    from botsky.scoring import decided_outcomes

    y: list[int] = []
    users: list[str] = []
    columns: dict[str, list[str]] = {f: [] for f in factors}
    for m, success in decided_outcomes(rows.mentions, rows.outcomes, as_of, options):
        y.append(int(success))
        users.append(m.mentioned_did)
        for f in factors:
            columns[f].append(getattr(m, f))
    return y, users, columns


def _r(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def _console(wide: bool) -> Console:
    # Tables fit 100 columns by default, also on a pipe; --wide lets them be as wide as needed.
    return Console(width=1000 if wide else _WIDTH, soft_wrap=wide)


def _iso(time_us: int) -> str:
    if not time_us:
        return "(no data)"
    return datetime.fromtimestamp(time_us / 1e6, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(seconds: float) -> str:
    if seconds % 86400 == 0:
        return f"{seconds / 86400:g} d"
    if seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    return f"{seconds:g} s"


# --- botsky plan -----------------------------------------------------------------------------


@click.command("plan")
@click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default=None,
    help="With --observed: the botsky.yaml whose ledger to read.",
)
@click.option(
    "--rate",
    type=click.FloatRange(0.001, 0.999),
    default=None,
    help="Baseline success rate (default 0.2, or the observed control rate with --observed).",
)
@click.option(
    "--differences",
    default="2,5,10",
    show_default=True,
    metavar="POINTS",
    help="Differences to detect, in percentage points, comma-separated.",
)
@click.option(
    "--audience",
    type=click.IntRange(1),
    default=None,
    help="People who may be mentioned (opt-in audience size).",
)
@click.option(
    "--mentions-per-person-per-day",
    "cap",
    type=click.FloatRange(0, min_open=True),
    default=1.0,
    show_default=True,
    help="The audience cap (audience.mentions_per_target_per_day).",
)
@click.option(
    "--arms",
    type=click.IntRange(2),
    default=3,
    show_default=True,
    help="Arms sharing the audience.",
)
@click.option(
    "--posts-per-day",
    type=click.FloatRange(0, min_open=True),
    default=None,
    help="Posting budget of one arm, replies per day (default: the write budget, 9,333/day).",
)
@click.option(
    "--window-h",
    type=click.FloatRange(0, min_open=True),
    default=None,
    help=(
        "Outcome window in hours: the last mentions are decided this long after posting "
        "(default 24, or outcomes.window_s with --observed)."
    ),
)
@click.option(
    "--design-effect",
    type=click.FloatRange(1.0),
    default=None,
    help="Variance inflation from repeated people (default 1.0, or the observed one).",
)
@click.option("--alpha", type=click.FloatRange(0.0001, 0.5), default=0.05, show_default=True)
@click.option("--power", type=click.FloatRange(0.5, 0.999), default=0.8, show_default=True)
@click.option(
    "--comparisons",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Comparisons read together (alpha is split among them, as the leaderboard does).",
)
@click.option(
    "--observed",
    is_flag=True,
    help="Take the rate, mentions per day and design effect from the ledger (-c).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def plan_cmd(
    config_path: Path | None,
    rate: float | None,
    differences: str,
    audience: int | None,
    cap: float,
    arms: int,
    posts_per_day: float | None,
    window_h: float | None,
    design_effect: float | None,
    alpha: float,
    power: float,
    comparisons: int,
    observed: bool,
    as_json: bool,
) -> None:
    """How many decided mentions and days an experiment needs to separate two arms.

    For each difference (percentage points above the baseline rate): mentions per arm and days
    for a one-look two-proportion z-test (fixed-n) and for the anytime-valid rule the
    leaderboard uses (valid however often it is read). Mentions per arm per day are the
    smaller of audience x cap / arms and the arm's posting budget.
    """
    from botsky.stats import anytime_n_per_arm, fixed_n_per_arm

    try:
        points = [float(p) for p in differences.split(",") if p.strip()]
    except ValueError:
        click.echo(f"botsky: --differences {differences!r}: give numbers like 2,5,10", err=True)
        sys.exit(2)
    if not points or any(p <= 0 or p >= 100 for p in points):
        click.echo("botsky: --differences must be percentage points between 0 and 100", err=True)
        sys.exit(2)
    seen_rate = seen_flow = seen_deff = None
    if observed:
        seen_rate, seen_flow, seen_deff, seen_window_s = _observed(config_path)
        window_h = window_h if window_h is not None else seen_window_s / 3600
    window_h = window_h if window_h is not None else 24.0
    base = rate if rate is not None else seen_rate if seen_rate is not None else 0.2
    deff = design_effect or (max(1.0, seen_deff) if seen_deff else 1.0)
    # A post costs 3 write points; 35,000 a day per account, used up to 80% by default.
    budget = posts_per_day if posts_per_day is not None else 35_000 * 0.8 / 3
    flows = [budget]
    if audience is not None:
        flows.append(audience * cap / arms)
    if seen_flow is not None and audience is None and posts_per_day is None:
        flows = [seen_flow]
    per_day = min(flows)
    each = alpha / comparisons
    rows_out: list[dict[str, Any]] = []
    for p in points:
        p2 = base + p / 100
        if p2 >= 1:
            click.echo(f"botsky: {base:.2f} + {p} points is not a rate below 1", err=True)
            sys.exit(2)
        fixed = fixed_n_per_arm(base, p2, alpha=each, power=power, design_effect=deff)
        anytime = anytime_n_per_arm(base, p2, alpha=each, power=power, design_effect=deff)
        rows_out.append(
            {
                "difference_points": p,
                "rates": [round(base, 4), round(p2, 4)],
                "fixed_n_per_arm": math.ceil(fixed),
                "fixed_n_days": _days(fixed, per_day, window_h),
                "anytime_n_per_arm": math.ceil(anytime) if math.isfinite(anytime) else None,
                "anytime_days": _days(anytime, per_day, window_h),
            }
        )
    summary = {
        "baseline_rate": round(base, 4),
        "mentions_per_arm_per_day": round(per_day, 2),
        "design_effect": round(deff, 4),
        "alpha": alpha,
        "alpha_each": each,
        "power": power,
        "window_h": window_h,
        "plans": rows_out,
    }
    if as_json:
        click.echo(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
        return
    console = _console(False)
    console.print(
        f"baseline {base:.1%} · {per_day:,.0f} decided mentions per arm a day · design effect "
        f"{deff:.2f}\n{power:.0%} power · alpha {each:g} per comparison · window {window_h:g} h"
    )
    table = Table(title="to separate a difference of")
    for header in (
        "points",
        "rates %",
        "fixed-n: mentions/arm",
        "days",
        "anytime-valid: mentions/arm",
        "days",
    ):
        table.add_column(header, justify="right")
    for r in rows_out:
        table.add_row(
            f"{r['difference_points']:g}",
            f"{r['rates'][0] * 100:.1f} vs {r['rates'][1] * 100:.1f}",
            f"{r['fixed_n_per_arm']:,}",
            _fmt_days(r["fixed_n_days"]),
            "–" if r["anytime_n_per_arm"] is None else f"{r['anytime_n_per_arm']:,}",
            _fmt_days(r["anytime_days"]),
        )
    console.print(table)


def _days(n: float, per_day: float, window_h: float) -> float | None:
    if not math.isfinite(n) or per_day <= 0:
        return None
    return round(n / per_day + window_h / 24, 1)


def _fmt_days(days: float | None) -> str:
    return "–" if days is None else f"{days:,.1f}"


def _observed(
    config_path: Path | None,
) -> tuple[float | None, float | None, float | None, float]:
    """The control arms' pooled rate, the mean mentions per arm per day, the largest design
    effect and the outcome window, from the ledger's current reading."""
    from botsky.cli import ledger_rows
    from botsky.wiring import scoring_options

    loaded, rows, _feed = ledger_rows(config_path)
    options = scoring_options(loaded.settings)
    board = leaderboard(
        rows.mentions,
        rows.outcomes,
        by="picker",
        as_of_us=rows.clock_us,
        options=options,
    )
    if not board.scores:
        click.echo("botsky: the ledger has no mentions yet: give --rate and --audience", err=True)
        sys.exit(1)
    controls = [s for s in board.scores if s.control and s.decided] or [
        s for s in board.scores if s.decided
    ]
    decided = sum(s.decided for s in controls)
    rate = sum(s.successes for s in controls) / decided if decided else None
    flow = sum(s.mentions_per_day for s in board.scores) / len(board.scores)
    deffs = [s.design_effect for s in board.scores if s.design_effect is not None]
    return rate, flow, max(deffs) if deffs else None, options.window_s
