"""``botsky scores --plot FILE.png``: success rates with their 95% intervals, as a PNG.

One panel per grouping (models, then pickers, the control arms), one row per group, best at the
top, in ``scoring.leaderboard`` order: the point is the success rate over decided mentions, the
thick pale bar the anytime-valid interval (confidence sequence), the thin dark bar inside it the
fixed-n Wilson interval; the label carries the rank (from the anytime-valid comparisons), the
decided and pending counts and the design effect. Groups with nothing decided get the full
0-100% bar and no point, which is exactly what is known about them.

Output is deterministic for the same scores: matplotlib's Agg backend (no display), its bundled
DejaVu font (nothing fetched or looked up on the system), and no timestamp or version in the
PNG's metadata.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final

from botsky.scoring import Comparison, Leaderboard, Score, comparison_fields, score_log_fields

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["plot_scores"]

_POINT: Final = "#1d3f73"
_BAR: Final = "#b9d0ee"
_FIXED: Final = "#2f6db5"
_EMPTY: Final = "#c8ccd2"
_MAX_NOTES: Final = 6


def plot_scores(
    by_model: Sequence[Score] | Leaderboard,
    by_picker: Sequence[Score] | Leaderboard,
    path: str | Path,
    *,
    title: str = (
        "botsky: success rate by model and picker (95%: anytime-valid thick, fixed-n thin)"
    ),
) -> Path:
    """Write the plot to ``path`` (PNG) and return the path.

    Given ``Leaderboard``s, each panel also lists its comparisons' verdicts (up to six) under
    the axis.
    """
    # Imported here so that the CLI and the service do not pay matplotlib's import time unless
    # a plot is asked for; `use` before pyplot picks the non-interactive backend.
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    panels = [
        (p, list(_scores(b)), _comparisons(b))
        for p, b in (("model", by_model), ("picker", by_picker))
        if _scores(b)
    ]
    if not panels:
        panels = [("model", [], [])]
    notes = [min(len(c), _MAX_NOTES) for _, _, c in panels]
    heights = [max(len(rows), 1) + 0.5 * n for (_, rows, _), n in zip(panels, notes, strict=True)]
    out = Path(path)
    # DejaVu Sans ships inside matplotlib, so no system font lookup can change the pixels.
    with plt.rc_context({"font.family": "DejaVu Sans", "font.size": 10}):
        fig, axes = plt.subplots(
            len(panels),
            1,
            figsize=(9.0, 1.4 + 0.45 * sum(heights) + 0.6 * len(panels)),
            gridspec_kw={"height_ratios": heights},
            squeeze=False,
        )
        try:
            for ax, (by, rows, comparisons) in zip(axes[:, 0], panels, strict=True):
                _panel(ax, by, rows)
                _notes(ax, comparisons)
            fig.suptitle(title, fontsize=11, x=0.01, ha="left")
            fig.tight_layout()
            fig.savefig(out, format="png", dpi=110, metadata={"Software": None})
        finally:
            plt.close(fig)
    return out


def _scores(board: Sequence[Score] | Leaderboard) -> Sequence[Score]:
    return board.scores if isinstance(board, Leaderboard) else board


def _comparisons(board: Sequence[Score] | Leaderboard) -> list[Comparison]:
    return board.comparisons if isinstance(board, Leaderboard) else []


def _notes(ax: Axes, comparisons: list[Comparison]) -> None:
    """The comparisons' verdicts as text lines under the panel's axis label."""
    lines = []
    for c in comparisons[:_MAX_NOTES]:
        f = comparison_fields(c)
        lines.append(
            f"{c.a} vs {c.b}: {f['diff'] * 100:+.1f} points "
            f"[{f['low'] * 100:+.1f}, {f['high'] * 100:+.1f}], {c.verdict}"
        )
    if len(comparisons) > _MAX_NOTES:
        lines.append(f"… {len(comparisons) - _MAX_NOTES} more in `botsky scores`")
    if lines:
        ax.annotate(
            "\n".join(lines),
            xy=(0.0, 0.0),
            xycoords="axes fraction",
            xytext=(0, -34),
            textcoords="offset points",
            va="top",
            fontsize=8,
            color="#444",
        )


def _panel(ax: Axes, by: str, rows: list[Score]) -> None:
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("success rate (mentioned user replied in the thread)")
    ax.xaxis.set_major_formatter(lambda v, _pos: f"{v * 100:.0f}%")
    ax.grid(axis="x", color="#e3e6ea", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.set_title(f"by {by}", loc="left", fontsize=10, color="#444")
    if not rows:
        ax.set_yticks([])
        ax.text(0.5, 0.5, "no mentions yet", ha="center", va="center", color="#888")
        return
    n = len(rows)
    ys = list(range(n - 1, -1, -1))  # best (first) at the top
    labels = []
    for y, s in zip(ys, rows, strict=True):
        f = score_log_fields(s)
        rank = f"{'=' if s.tied else ''}{s.rank}"
        name = s.group if len(s.group) <= 32 else s.group[:31] + "…"
        deff = f["design_effect"]
        extra = f", deff {deff:.2f}" if deff is not None else ""
        labels.append(f"{rank}  {name}  ({s.decided} decided, {s.pending} pending{extra})")
        low, high = f["cs_low"], f["cs_high"]
        if s.success_rate is None:
            ax.plot([low, high], [y, y], color=_EMPTY, linewidth=6, solid_capstyle="butt")
            ax.text(0.5, y + 0.28, "nothing decided yet", ha="center", fontsize=8, color="#888")
            continue
        ax.plot([low, high], [y, y], color=_BAR, linewidth=7, solid_capstyle="butt")
        ax.plot([f["ci_low"], f["ci_high"]], [y, y], color=_FIXED, linewidth=2.5)
        ax.plot([f["success_rate"]], [y], marker="o", color=_POINT, markersize=7)
        ax.text(
            min(high + 0.01, 0.9),
            y + 0.22,
            f"{f['success_rate'] * 100:.1f}%",
            fontsize=8,
            color=_POINT,
        )
    ax.set_yticks(ys, labels)
    ax.set_ylim(-0.7, n - 0.3)
