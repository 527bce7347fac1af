"""Benchmark: simulated user-days per second with the bots in the loop (stochastic engine).

The whole production pipeline runs (``botsky.sim.run.simulate``: presence, recommender,
control-arm bots, SQLite ledger, outcome watcher, lockstep dispatch) on the default simulation
config, in a temporary data directory, with its share of users reading botsky's feed through
the feed service (``sim.feed.subscribers``, 20%). Full: 300 users for 7 days (the default
world); ``--quick``: 60 users for 2 days. No baseline. Target: >= 2,000 user-days/s.
"""

from __future__ import annotations

import asyncio
import tempfile
from typing import Any

from _harness import ROOT, Row, cli, quiet_logs, report

from botsky.configload import load_config, resolve_secrets
from botsky.sim.run import simulate

CONFIG = ROOT / "configs" / "sim.yaml"


async def run(users: int, days: int, seed: int = 1) -> Any:
    with tempfile.TemporaryDirectory() as tmp:
        loaded = load_config(CONFIG, environ={"BOTSKY_DATA_DIR": tmp})
        secrets = resolve_secrets(loaded, environ={}, live=False)  # no keys: control arms only
        return await simulate(loaded, secrets, days=days, users=users, seed=seed)


def main() -> None:
    args = cli(__doc__)
    quiet_logs()
    users, days = (60, 2) if args.quick else (300, 7)
    result = asyncio.run(run(users, days))
    rate = result.user_days / result.elapsed_s
    report(
        Row(
            "sim",
            f"{rate:,.0f} user-days/s ({users} users × {days} days: {result.user_days:,} "
            f"user-days, {result.summary.events:,} events, "
            f"{result.world.counts['mentions']:,} mentions, "
            f"{result.world.counts['feed_pages']:,} feed pages in {result.elapsed_s:.2f} s)",
            "—",
            "—",
            "≥ 2,000 user-days/s",
            None if args.quick else rate >= 2000,
        ),
        args,
    )


if __name__ == "__main__":
    main()
