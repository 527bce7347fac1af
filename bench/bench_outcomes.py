"""Benchmark: open-mention index memory and match cost with 10^6 open mentions.

In a fresh subprocess, ``OutcomeWatcher.track`` is given 10^6 mentions shaped as the
dispatcher records them (fresh strings for URIs and DIDs, a 200-character persona, a reply of
about 150 characters, 8 candidate DIDs), each dropped by the caller once tracked, as the
dispatcher does. Memory is what is still allocated after ``gc.collect()``: the growth of the
child's resident set (RSS, ``/proc/self/statm``) while tracking them, so whatever the watcher
keeps (it once kept the ``Mention`` objects themselves; now only its columns and tables).
(``tracemalloc`` counts about 10% less at 10^5 but takes minutes at 10^6.)

Match cost: ``OutcomeWatcher.observe`` over 100,000 events (likes of bot replies, replies in
watched threads by the mentioned users, unrelated likes and unrelated top-level posts, 1:1:1:1),
with a null ledger so only the index is timed (half the events are hits, each paying for an
``Outcome`` and a log call: on the real firehose nearly every event is a miss); measured at 10^4
and at 10^6 open mentions: O(1) per event means the two costs are about equal.

Target: <= 300 MB at 10^6, O(1) per event.
"""

from __future__ import annotations

import asyncio
import gc
import json
import random
import subprocess
import sys
import time

from _harness import Row, cli, quiet_logs, report

from botsky.events import Event
from botsky.ledger.base import Mention, Outcome
from botsky.testing import like, post

T0 = 1_767_571_200_000_000


class NullLedger:
    """Accepts every outcome and close (the index is what is measured)."""

    async def record_outcome(self, outcome: Outcome) -> bool:
        return True

    async def close_mention(self, mention_id: int, status: str, time_us: int) -> bool:
        return True


def _did(i: int, salt: int) -> str:
    return f"did:plc:{salt:04d}{i:020x}"  # 24 characters after the method, as on the network


def _mention(i: int) -> Mention:
    author, mentioned, bot = _did(i, 1), _did(i * 7 + 3, 2), f"did:plc:bot{i % 4:021d}"
    post_uri = f"at://{author}/app.bsky.feed.post/3l{i:011d}"
    return Mention(
        post_uri=post_uri, post_cid="bafyrei" + f"{i:052d}", post_author=author,
        root_uri=post_uri, root_cid="bafyrei" + f"{i:052d}", bot=f"bot{i % 4}",
        model="gpt-4.1-mini", provider="openai", persona="You are Ada, a warm, curious " * 7,
        picker="llm", reply_uri=f"at://{bot}/app.bsky.feed.post/3r{i:011d}",
        reply_cid="bafyrei" + f"{i + 1:052d}", reply_text=f"Good point! @u{i}.bsky.social " * 5,
        mentioned_did=mentioned, mentioned_handle=f"u{i}.bsky.social",
        candidates=[_did(i * 7 + k, 2) for k in range(8)], rank=0, created_us=T0 + i,
        prompt_tokens=400, completion_tokens=40, cost_usd=0.0004, latency_ms=900.0, id=i + 1,
    )  # fmt: skip


def _events(n: int, mentions: int, rng: random.Random) -> list[Event]:
    out: list[Event] = []
    for j in range(n):
        i = rng.randrange(mentions)
        m = _mention(i)
        t = T0 + 10**9 + j
        r = j % 4
        if r == 0:
            out.append(like(_did(j, 9), t, m.reply_uri))
        elif r == 1:
            parent = Event(did=m.post_author, time_us=t, kind="commit", cursor=t,
                           operation="create", collection="app.bsky.feed.post",
                           rkey=m.post_uri.rsplit("/", 1)[1], cid=m.post_cid,
                           record={"text": "x"})  # fmt: skip
            out.append(post(m.mentioned_did, t, "yes!", reply_to=parent))
        elif r == 2:
            out.append(like(_did(j, 9), t, f"at://{_did(j, 5)}/app.bsky.feed.post/3x{j}"))
        else:
            out.append(post(_did(j, 9), t, "unrelated post about nothing"))
    return out


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096


def child(mentions: int, events: int) -> dict[str, float]:
    from botsky.outcomes import OutcomeWatcher

    quiet_logs()
    rng = random.Random(1)
    stream = _events(events, mentions, rng)
    gc.collect()
    before = _rss()
    watcher = OutcomeWatcher(NullLedger(), window_s=10**9)  # type: ignore[arg-type]
    for i in range(mentions):
        watcher.track(_mention(i))
    gc.collect()
    after = _rss()

    async def observe_all() -> float:
        t0 = time.perf_counter()
        for event in stream:
            await watcher.observe(event)
        return time.perf_counter() - t0

    seconds = asyncio.run(observe_all())
    return {"bytes": after - before, "open": len(watcher), "us_per_event": seconds / events * 1e6,
            "outcomes": sum(watcher.counts.values())}  # fmt: skip


def measure(mentions: int, events: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(mentions), str(events)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(child(int(sys.argv[2]), int(sys.argv[3]))))
        return
    args = cli(__doc__)
    big, small, events = (20_000, 2_000, 5_000) if args.quick else (1_000_000, 10_000, 100_000)
    b = measure(big, events)
    s = measure(small, events)
    mb = b["bytes"] / 1e6
    growth = b["us_per_event"] / s["us_per_event"]
    report(
        Row(
            "outcomes_memory",
            f"{mb:,.0f} MB for {b['open']:,.0f} open mentions "
            f"({b['bytes'] / b['open']:.0f} B each, RSS growth); "
            f"match {b['us_per_event']:.2f} µs/event",
            f"match at {small:,} open: {s['us_per_event']:.2f} µs/event",
            f"{growth:.2f}× cost for {big // small}× mentions",
            "≤ 300 MB, O(1) per event",
            None if args.quick else (mb <= 300 and growth < 1.5),
        ),
        args,
    )


if __name__ == "__main__":
    main()
