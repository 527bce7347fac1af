"""``plot_scores``: a deterministic PNG of success rates with Wilson intervals."""

from __future__ import annotations

import struct
from pathlib import Path

from botsky.ledger.base import Mention
from botsky.plot import plot_scores
from botsky.scoring import Score, score
from tests.support import MIN, T0


def _mentions() -> list[Mention]:
    """Three models and two pickers with different success counts, one group still open."""
    plan = [
        ("gpt-4.1-mini", "llm", 12, 5),
        ("claude-haiku-4-5", "llm", 10, 2),
        ("template-v1", "similar", 8, 1),
        ("brand-new-model", "random", 2, None),  # nothing matured yet
    ]
    rows: list[Mention] = []
    for model, picker, n, wins in plan:
        for i in range(n):
            status = "open" if wins is None else "succeeded" if i < wins else "expired"
            rows.append(
                Mention(
                    post_uri=f"at://did:plc:a/app.bsky.feed.post/{model}{i}",
                    post_cid="c",
                    post_author="did:plc:a",
                    root_uri=f"at://did:plc:a/app.bsky.feed.post/{model}{i}",
                    root_cid="c",
                    bot=model,
                    model=model,
                    provider="fake",
                    persona="p",
                    picker=picker,
                    reply_uri=f"at://did:plc:bot/app.bsky.feed.post/{model}{i}",
                    reply_cid="c",
                    reply_text="hi",
                    mentioned_did="did:plc:b",
                    mentioned_handle="b.test",
                    candidates=[],
                    rank=0,
                    created_us=T0 + i * MIN,
                    status=status,
                    outcome_us=None if status == "open" else T0 + (i + 5) * MIN,
                )
            )
    return rows


def _scores() -> tuple[list[Score], list[Score]]:
    rows = _mentions()
    return score(rows, [], by="model"), score(rows, [], by="picker")


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_plot_writes_a_png_with_a_row_per_group(tmp_path: Path) -> None:
    """The file is a PNG whose height grows with the number of groups plotted."""
    by_model, by_picker = _scores()
    out = plot_scores(by_model, by_picker, tmp_path / "scores.png")
    small = plot_scores(by_model[:1], [], tmp_path / "one.png")
    (w, h), (_, h_small) = _png_size(out), _png_size(small)
    assert w > 600 and h > h_small


def test_plot_is_byte_for_byte_deterministic(tmp_path: Path) -> None:
    """The same scores give the same bytes: no timestamp, version or system font in the PNG."""
    by_model, by_picker = _scores()
    a = plot_scores(by_model, by_picker, tmp_path / "a.png").read_bytes()
    b = plot_scores(by_model, by_picker, tmp_path / "b.png").read_bytes()
    assert a == b
    assert b"matplotlib" not in a.lower() and b"Creation Time" not in a


def test_plot_of_an_empty_ledger_is_still_an_image(tmp_path: Path) -> None:
    """No mentions yet gives a PNG saying so rather than an error."""
    out = plot_scores([], [], tmp_path / "empty.png")
    assert _png_size(out)[0] > 0
