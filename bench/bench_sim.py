"""Benchmark: simulated user-days per second with the bots in the loop (stochastic engine).

The whole production pipeline runs (presence, recommender, control-arm bots, SQLite ledger,
outcome watcher) on the default simulation config, in a temporary data directory::

    .venv/bin/python bench/bench_sim.py            # 300 users, 7 days (the default world)
    .venv/bin/python bench/bench_sim.py --quick    # 60 users, 2 days (a smoke run)

Prints one line: user-days, events, mentions, seconds and user-days per second.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import tempfile
from pathlib import Path

import structlog

from botsky.configload import load_config, resolve_secrets
from botsky.sim.run import simulate

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "sim.yaml"


async def _bench(users: int, days: int, seed: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        loaded = load_config(CONFIG, environ={"BOTSKY_DATA_DIR": tmp})
        secrets = resolve_secrets(loaded, environ={}, live=False)  # no keys: control arms only
        result = await simulate(loaded, secrets, days=days, users=users, seed=seed)
    rate = result.user_days / result.elapsed_s
    print(
        f"bench_sim users={users} days={days} user_days={result.user_days} "
        f"events={result.summary.events} mentions={result.world.counts['mentions']} "
        f"seconds={result.elapsed_s:.2f} user_days_per_s={rate:.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="60 users for 2 days")
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    users, days = (60, 2) if args.quick else (args.users, args.days)
    # Logs would measure the terminal; keep warnings only.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    asyncio.run(_bench(users, days, args.seed))


if __name__ == "__main__":
    main()
