"""Benchmark: Jetstream v1 JSON events/s normalized to Events, against ``json.loads`` per line.

``tests/data/jetstream/expected_v1.jsonl`` (152 real events served by production Jetstream) is
repeated and parsed line by line on one core:

- figure: ``botsky.events.parse_jetstream`` (orjson + validation + ``Event``), what the v1
  source and the replay source run per message;
- baseline: the standard library's ``json.loads`` per line (parsing only, no Event).

Target: >= 300k events/s.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from _harness import ROOT, Row, cli, report

from botsky.events import parse_jetstream

CORPUS = ROOT / "tests" / "data" / "jetstream" / "expected_v1.jsonl"


def ours(lines: list[bytes]) -> None:
    parse = parse_jetstream
    for line in lines:
        parse(line)


def baseline(lines: list[bytes]) -> None:
    loads = json.loads
    for line in lines:
        loads(line)


def rate(fn: Callable[[list[bytes]], None], lines: list[bytes]) -> float:
    t0 = time.perf_counter()
    fn(lines)
    return len(lines) / (time.perf_counter() - t0)


def main() -> None:
    args = cli(__doc__)
    corpus = [line for line in CORPUS.read_bytes().splitlines() if line.strip()]
    lines = corpus * (20 if args.quick else 2000)
    ours(corpus), baseline(corpus)
    ours_eps = base_eps = 0.0
    for _ in range(1 if args.quick else 3):
        ours_eps = max(ours_eps, rate(ours, lines))
        base_eps = max(base_eps, rate(baseline, lines))
    report(
        Row(
            "jetstream_v1",
            f"{ours_eps:,.0f} events/s ({len(lines):,} lines, {1e6 / ours_eps:.2f} µs/event)",
            f"json.loads {base_eps:,.0f} lines/s",
            f"{ours_eps / base_eps:.2f}×",
            "≥ 300k events/s",
            None if args.quick else ours_eps >= 300_000,
        ),
        args,
    )


if __name__ == "__main__":
    main()
