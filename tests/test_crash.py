"""Crash safety: `botsky run` killed with SIGKILL at random points, restarted each time.

The replay has N questions, each on a topic exactly one online "expert" posts about, so the
`similar` arm's mention is known in advance and the expert's later reply in the thread is a
success to record. The poster is the persistent dry-run repo (a JSONL file under data_dir,
fsynced per reply), which is what a crash can leave ahead of the ledger.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import signal
import string
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest

from botsky.events import Event, event_to_jetstream
from botsky.ledger.sqlite import SqliteLedger
from botsky.testing import identity, post
from tests.conftest import MIN, T0

N = 300
KILLS = 20


def _topics(n: int) -> list[str]:
    """Distinct made-up words (letters only, so the tokenizer keeps them)."""
    letters = string.ascii_lowercase
    words = ("zq" + "".join(t) for t in itertools.product(letters, repeat=3))
    return list(itertools.islice(words, n))


def _scenario(n: int = N) -> tuple[list[Event], dict[str, str]]:
    """Experts post, askers ask, each expert answers its question later in the file."""
    topics = _topics(n)
    events: list[Event] = []
    questions: list[Event] = []
    expert_of: dict[str, str] = {}
    for i in range(len(topics)):
        events.append(identity(f"did:plc:expert{i}", T0 + i, f"expert{i}.test"))
        events.append(identity(f"did:plc:asker{i}", T0 + i, f"asker{i}.test"))
    # Experts talk in a reply thread (replies are not answered in this config), so only the
    # questions are eligible; the seed post finds nobody online and is skipped.
    seed = post("did:plc:seed", T0, "Tell us what you study!")
    events.append(seed)
    for i, word in enumerate(topics):
        events.append(
            post(f"did:plc:expert{i}", T0 + MIN + i, f"I study {word} every day", reply_to=seed)
        )
    for i, word in enumerate(topics):
        q = post(f"did:plc:asker{i}", T0 + 2 * MIN + i * 1000, f"What about {word}?")
        questions.append(q)
        expert_of[q.uri] = f"did:plc:expert{i}"
    events += questions
    for i, q in enumerate(questions):
        events.append(
            post(f"did:plc:expert{i}", T0 + 30 * MIN + i, "Me! Happy to help.", reply_to=q)
        )
    return events, expert_of


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


def _start(cfg: Path, stderr: int = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOTSKY_")}
    return subprocess.Popen(
        [sys.executable, "-m", "botsky", "run", "-c", str(cfg)],
        cwd=cfg.parent,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
    )


def _replies(repo: Path) -> int:
    """Replies in the dry-run repository so far (a line each)."""
    try:
        return repo.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


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
    events, expert_of = _scenario()
    cfg = _config(tmp_path, events)
    repo = tmp_path / "data" / "dry_run_posts.jsonl"
    rng = random.Random(20261121)
    kills_mid_run = 0
    for k in range(KILLS):
        proc = _start(cfg)
        if k % 4 == 3:
            # During start-up and the recovery of the previous kill's claims.
            time.sleep(rng.uniform(0.3, 0.9))
        else:
            # A few replies into the run, at a random point of a reply's steps: by progress,
            # not by the clock, so the kills land mid-run however fast the machine or the code.
            target = _replies(repo) + rng.randint(1, 8)
            deadline = time.monotonic() + 60
            while _replies(repo) < target and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.002)
            time.sleep(rng.uniform(0, 0.01))
        if proc.poll() is None:
            kills_mid_run += 1
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    final = _start(cfg, stderr=subprocess.PIPE)
    _, stderr = final.communicate(timeout=300)
    assert final.returncode == 0, stderr.decode()[-3000:]
    assert kills_mid_run >= KILLS // 2  # the kills really landed during runs

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
