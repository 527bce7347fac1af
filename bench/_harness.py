"""What every benchmark shares: the command line, the machine line and the BENCHMARKS.md row.

A benchmark measures its figure and, where there is one, its baseline in the same process and
the same run, so the ratio means something on any machine. ``report`` prints one line
(``ROW <benchmark> | figure | baseline | ratio | target | met``) and, unless told not to,
writes or replaces the benchmark's row in the results table of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import structlog

__all__ = ["ROOT", "Row", "Timer", "cli", "machine", "quiet_logs", "report"]

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "BENCHMARKS.md"
_START = "<!-- bench:results:start -->"
_END = "<!-- bench:results:end -->"
_HEADER = (
    "| benchmark | figure | baseline (same run) | ratio | target | met? | machine | date |\n"
    "|---|---|---|---|---|---|---|---|"
)
# The table's order, whatever order the benchmarks ran in.
ORDER = (
    "relay_decode",
    "jetstream_v1",
    "router",
    "latency",
    "replies",
    "presence_memory",
    "outcomes_memory",
    "sim",
    "feed",
)


@dataclass
class Row:
    """One result. ``met`` is None when the target cannot be judged at this size (quick)."""

    benchmark: str
    figure: str
    baseline: str
    ratio: str
    target: str
    met: bool | None

    def cells(self, mode: str) -> list[str]:
        met = "n/a (quick)" if self.met is None else ("yes" if self.met else "**no**")
        name = self.benchmark if mode == "full" else f"{self.benchmark} (quick)"
        date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        return [name, self.figure, self.baseline, self.ratio, self.target, met, machine(), date]


def machine() -> str:
    """``nproc``, the CPU model and the Python version, for the machine column."""
    model = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()}× {model}, Python {platform.python_version()}"


def quiet_logs() -> None:
    """Warnings only: logging every reply would measure the terminal."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    logging.getLogger().setLevel(logging.WARNING)


def cli(doc: str | None) -> argparse.Namespace:
    """``--quick`` (small sizes, nothing judged) and ``--out`` (the table to update)."""
    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (CI smoke run)")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="the Markdown file whose results table gets the row (default: BENCHMARKS.md in "
        "full mode, none in quick mode)",
    )
    parser.add_argument("--no-write", action="store_true", help="print the row only")
    args = parser.parse_args()
    if args.out is None and not args.quick and not args.no_write:
        args.out = BENCHMARKS
    if args.no_write:
        args.out = None
    return args


class Timer:
    """``with Timer() as t: ...`` then ``t.s``: wall-clock seconds (perf_counter)."""

    def __enter__(self) -> Timer:
        self._t0 = time.perf_counter()
        self.s = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.s = time.perf_counter() - self._t0


def report(row: Row, args: argparse.Namespace) -> None:
    """Print the row; write it into ``args.out`` when set."""
    mode = "quick" if args.quick else "full"
    cells = row.cells(mode)
    print("ROW " + " | ".join(cells), flush=True)
    if args.out is not None:
        _write(Path(args.out), cells)


def _write(path: Path, cells: list[str]) -> None:
    text = path.read_text() if path.exists() else f"# Benchmarks\n\n{_START}\n{_END}\n"
    if _START not in text or _END not in text:
        text = text.rstrip("\n") + f"\n\n{_START}\n{_END}\n"
    head, rest = text.split(_START, 1)
    table, tail = rest.split(_END, 1)
    rows: dict[str, str] = {}
    for line in table.strip().splitlines():
        if line.startswith("| ") and not line.startswith(("| benchmark ", "|---")):
            rows[line.split("|")[1].strip()] = line
    rows[cells[0]] = "| " + " | ".join(c.replace("|", "/") for c in cells) + " |"

    def key(name: str) -> tuple[int, str]:
        base = re.sub(r" \(quick\)$", "", name)
        return (ORDER.index(base) if base in ORDER else len(ORDER), name)

    body = "\n".join(rows[k] for k in sorted(rows, key=key))
    path.write_text(f"{head}{_START}\n{_HEADER}\n{body}\n{_END}{tail}")
