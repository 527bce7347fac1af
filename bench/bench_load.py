"""Benchmark: a loopback relay at a fixed event rate into the real App, for longer than CI.

The same harness as ``tests/test_load.py`` (a server process replaying the recorded
subscribeRepos frames with increasing seqs, fresh DIDs per pass and scheduled event times; a
real ``RelaySource`` into ``build_app``'s App with template bots, dry run, SQLite ledger and a
small dispatch queue). For each ``--rate`` it prints: the rate offered and the rate read, lag
(wall clock - newest event time; behind a faster relay, the backlog), RSS, the presence size
against its bound, dispatch drops and replies posted.

    .venv/bin/python bench/bench_load.py                       # 30 s at 20k events/s
    .venv/bin/python bench/bench_load.py --rate 2000 --rate 8000 --rate 20000 --seconds 15
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.test_load import run_load  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, action="append", help="events/s offered (repeat)")
    parser.add_argument("--seconds", type=float, default=30.0, help="how long the relay sends")
    parser.add_argument("--max-users", type=int, default=1000, help="presence.max_users")
    parser.add_argument("--json", action="store_true", help="one JSON object per rate")
    args = parser.parse_args()
    for rate in args.rate or [20_000.0]:
        with tempfile.TemporaryDirectory() as tmp:
            result = asyncio.run(
                run_load(Path(tmp), rate=rate, seconds=args.seconds, max_users=args.max_users)
            )
        figures = {"rate_target": rate, **result.figures()}
        if args.json:
            print(json.dumps(figures), flush=True)
            continue
        print(f"--- target {rate:,.0f} events/s for {args.seconds:g} s", flush=True)
        width = max(len(k) for k in figures)
        for key, value in figures.items():
            print(f"  {key:<{width}}  {value}", flush=True)


if __name__ == "__main__":
    main()
