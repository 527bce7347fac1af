"""Crash safety: `botsky run` killed with SIGKILL at random points, restarted each time.

The replay has N questions, each on a topic exactly one online "expert" posts about, so the
`similar` arm's mention is known in advance and the expert's later reply in the thread is a
success to record. The poster is the persistent dry-run repo (a JSONL file under data_dir,
fsynced per reply), which is what a crash can leave ahead of the ledger.

Each kill lands at a point chosen by progress, never by the clock: the child (``botsky run``
with a few of its methods wrapped, ``_KILL_AT``) stops at the chosen pass through a chosen step
of a reply (claimed, posted, recorded) or of start-up (recovering the last kill's claims),
tells the parent through a pipe and waits; the parent kills it there. A fast or a slow machine
changes when that happens, not where.
"""

from __future__ import annotations

import asyncio
import os
import random
import select
import subprocess
import sys
from collections import Counter
from pathlib import Path

import orjson
import pytest

from botsky.events import Event, event_to_jetstream
from botsky.ledger.sqlite import SqliteLedger
from tests.support import expert_scenario

N = 300
KILLS = 20


def _config(tmp: Path, events: list[Event]) -> Path:
    (tmp / "events.jsonl").write_bytes(b"\n".join(map(event_to_jetstream, events)) + b"\n")
    (tmp / "botsky.yaml").write_text(
        "data_dir: data\nseed: 3\ncursor_every: 50\n"
        "source: {kind: replay, path: events.jsonl}\n"
        "audience: {mode: open, acknowledge_open_audience: true,"
        " mentions_per_target_per_day: null, replies_per_author_per_day: null}\n"
        "presence: {window_s: 100000}\nrecommend: {cooldown_s: 0}\n"
        "dispatch: {lockstep: true, author_cooldown_s: 0, reply_to_replies: false}\n"
        "logging: {format: json}\n"
    )
    bots = "\n".join(
        f"  - name: {name}\n    persona: A connector.\n    provider: template\n"
        f"    model: template-{name}\n    picker: similar\n    account: {{handle: {name}.test}}"
        for name in ("one", "two")
    )
    (tmp / "bots.yaml").write_text("bots:\n" + bots + "\n")
    return tmp / "botsky.yaml"


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("BOTSKY_")}


# ``botsky run`` with one step wrapped: its ``at``-th pass writes "!" to the pipe ``fd`` and
# blocks the process (the event loop included), so nothing moves past it before the kill.
_KILL_AT = """
import os, sys, time
from botsky.cli import main
from botsky.dispatch import Dispatcher
from botsky.ledger.sqlite import SqliteLedger
from botsky.posting import DryRunPoster

step, at, fd = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
sys.argv = ["botsky", *sys.argv[4:]]
passes = 0

def reached():
    global passes
    passes += 1
    if passes == at:
        os.write(fd, b"!")
        time.sleep(3600)

def wrap(cls, name, before):
    original = getattr(cls, name)
    async def wrapped(*args, **kwargs):
        if before:
            reached()
        result = await original(*args, **kwargs)
        if not before:
            reached()
        return result
    setattr(cls, name, wrapped)

target = {
    "recovering": (Dispatcher, "recover", True),  # start-up: settling the last kill's claims
    "claimed": (SqliteLedger, "claim", False),  # claim and intent stored, nothing posted
    "posted": (DryRunPoster, "reply", False),  # in the repo, not yet in the ledger
    "recorded": (SqliteLedger, "record_mention", False),  # recorded, outcomes not yet tracked
}[step]
wrap(*target)
main()
"""
REPLY_STEPS = ("claimed", "posted", "recorded")


def _kill_at(cfg: Path, step: str, at: int) -> bool:
    """Run botsky until its ``at``-th pass through ``step``, SIGKILL it there; False if the
    run ended before getting there."""
    read_end, write_end = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILL_AT, step, str(at), str(write_end), "run", "-c", str(cfg)],
        cwd=cfg.parent,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        pass_fds=(write_end,),
    )
    os.close(write_end)
    try:
        # "!" at the kill point; b"" (end of file) if the process exited first. The timeout
        # only guards against a hang: a healthy run gets there in seconds.
        ready, _, _ = select.select([read_end], [], [], 120)
        reached = bool(ready) and os.read(read_end, 1) == b"!"
    finally:
        os.close(read_end)
        proc.kill()  # SIGKILL
        proc.wait(timeout=30)
    return reached


async def _ledger_state(path: Path):  # type: ignore[no-untyped-def]
    led = SqliteLedger(path)
    await led.open()
    try:
        return await led.mentions(), await led.outcomes(), await led.pending_claims()
    finally:
        await led.close()


@pytest.mark.slow
def test_sigkill_at_random_points_never_double_replies_or_loses_a_mention(tmp_path: Path) -> None:
    """20 SIGKILLs mid-run, then a clean run: one reply per question, each recorded, each
    expert's answer scored as a success."""
    events, expert_of = expert_scenario(N)
    cfg = _config(tmp_path, events)
    repo = tmp_path / "data" / "dry_run_posts.jsonl"
    rng = random.Random(20261121)
    kills_mid_run = 0
    for k in range(KILLS):
        if k % 4 == 3:
            landed = _kill_at(cfg, "recovering", 1)
        else:
            # A few replies into the run: at most 8 of the replies still to come, so the
            # chosen pass always comes (20 kills x 8 < N questions).
            landed = _kill_at(cfg, rng.choice(REPLY_STEPS), rng.randint(1, 8))
        kills_mid_run += landed
    final = subprocess.run(
        [sys.executable, "-m", "botsky", "run", "-c", str(cfg)],
        cwd=cfg.parent,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=300,
    )
    assert final.returncode == 0, final.stderr.decode()[-3000:]
    assert kills_mid_run == KILLS  # every kill landed where it was aimed, mid-run

    replies = [orjson.loads(line) for line in repo.read_bytes().splitlines()]
    per_parent = Counter(r["parent"] for r in replies)
    assert set(per_parent) == set(expert_of)  # every question answered
    assert max(per_parent.values()) == 1  # ... exactly once

    mentions, outcomes, pending = asyncio.run(_ledger_state(tmp_path / "data" / "botsky.sqlite3"))
    assert pending == []
    assert sorted(m.reply_uri for m in mentions) == sorted(r["uri"] for r in replies)
    for m in mentions:
        assert m.mentioned_did == expert_of[m.post_uri]
        assert m.status == "succeeded"
    successes = Counter((o.mention_id, o.kind) for o in outcomes)
    assert len(successes) == N and set(successes.values()) == {1}
