"""Benchmark: presence memory with 10^6 active DIDs and realistic post texts.

In a fresh subprocess per structure (so nothing else is counted), 10^6 distinct DIDs are
active within the window: every DID makes a commit (a like), and 3 in 10 also post 1-3 posts
with texts from ``_workload.post_texts`` (a quarter real recorded posts, the rest drawn from a
50,000-word Zipf vocabulary, real post lengths). Events are generated one at a time and
dropped, so only what the structure keeps is live.

Measured as the growth of the child's resident set (``/proc/self/statm``) from before the
first event to after ``gc.collect()`` once the structure is built (imports and the vocabulary
come before). ``--quick`` uses ``tracemalloc`` instead (exact Python allocations, but 4× slower
to build, too slow at 10^6); at 10^5 the RSS growth is about 20% above the tracemalloc figure.

- figure: ``botsky.presence.Presence`` (default settings: 48 terms, 3 texts per user). The DIDs
  are did:plc-shaped (24 characters after the prefix), as nearly all on the network are:
  Presence keeps those as their 24 identifier bytes;
- baseline: a plain ``dict`` of DID -> last-seen time_us over the same events.

Target: <= 300 MB.
"""

from __future__ import annotations

import gc
import json
import random
import subprocess
import sys
import time
import tracemalloc

from _harness import Row, cli, report

from botsky.events import LIKE, POST, Event


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096


def _event(did: str, t: int, collection: str, record: dict[str, object]) -> Event:
    return Event(did=did, time_us=t, kind="commit", cursor=t, operation="create",
                 collection=collection, rkey="3l", record=record)  # fmt: skip


def child(kind: str, users: int, traced: bool) -> dict[str, float]:
    from _workload import post_texts

    from botsky.presence import Presence

    rng = random.Random(5)
    text = post_texts(rng)
    alphabet = "234567abcdefghijklmnopqrstuvwxyz"
    # DIDs are made inside the measured region: each structure pays for the strings it keeps.
    population = (
        "did:plc:" + "".join(alphabet[(i * 7919 + k * 104729) % 32] for k in range(16)) + f"{i:08d}"
        for i in range(users)
    )
    gc.collect()
    rss0 = _rss()
    if traced:
        tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    presence = Presence(window_s=1800) if kind == "presence" else None
    seen: dict[str, int] = {}
    t = 1_767_571_200_000_000
    posts = 0
    t0 = time.perf_counter()
    for did in population:
        t += 1000
        if presence is None:
            seen[did] = t
        else:
            presence.observe(_event(did, t, LIKE, {"subject": {"uri": "at://x/y/z", "cid": "b"}}))
        if rng.random() < 0.3:
            for _ in range(rng.randint(1, 3)):
                t += 1000
                posts += 1
                if presence is None:
                    seen[did] = t
                else:
                    presence.observe(_event(did, t, POST, {"text": text(), "langs": ["en"]}))
    built_s = time.perf_counter() - t0
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    rss = _rss() - rss0
    size = len(presence) if presence is not None else len(seen)
    return {"bytes": after - before if traced else rss, "rss": rss, "users": size, "posts": posts,
            "seconds": built_s}  # fmt: skip


def measure(kind: str, users: int, traced: bool) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, str(users), "traced" if traced else "rss"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2], int(sys.argv[3]), sys.argv[4] == "traced")))
        return
    args = cli(__doc__)
    users = 20_000 if args.quick else 1_000_000
    # tracemalloc is exact but slows the build about 4×: at 10^6 the RSS growth is used.
    traced = args.quick
    ours = measure("presence", users, traced)
    base = measure("dict", users, traced)
    how = "tracemalloc" if traced else "RSS growth"
    mb, base_mb = ours["bytes"] / 1e6, base["bytes"] / 1e6
    report(
        Row(
            "presence_memory",
            f"{mb:,.0f} MB for {ours['users']:,.0f} DIDs, {ours['posts']:,.0f} posts "
            f"({ours['bytes'] / ours['users']:.0f} B/DID; {how})",
            f"dict DID→last-seen {base_mb:,.0f} MB ({base['bytes'] / base['users']:.0f} B/DID)",
            f"{mb / base_mb:.1f}×",
            "≤ 300 MB at 10^6 DIDs",
            None if args.quick else mb <= 300,
        ),
        args,
    )


if __name__ == "__main__":
    main()
