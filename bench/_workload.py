"""Synthetic firehose traffic and the real pipeline, for the router, latency and reply benchmarks.

Traffic: a firehose-like mix of commits (posts, likes, reposts, follows, blocks, profile
updates, deletes) by a population of DIDs, with post texts of real length and vocabulary shape:
the recorded corpus's own post texts mixed with texts drawn from a Zipf-distributed vocabulary
of pronounceable pseudo-words (the network's vocabulary is large and heavy-tailed; a handful of
topic words would make every profile the same).

Pipeline: the real components (Presence, MemoryIdentity, AudiencePolicy, OutcomeWatcher,
Recommender, Selector, Dispatcher with a real SQLite ledger in a temporary directory and
``RecordingPoster``), wired as ``wiring.build_app`` wires them, into an ``App`` whose ``route`` is
what the reader calls per event.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from botsky.army import Army, Bot
from botsky.dispatch import Dispatcher, Selector
from botsky.events import PROFILE, Event
from botsky.identity import MemoryIdentity
from botsky.ledger.sqlite import SqliteLedger
from botsky.llm.base import Completion
from botsky.outcomes import OutcomeWatcher
from botsky.policy import AudiencePolicy
from botsky.presence import Presence
from botsky.recommend import Recommender
from botsky.runtime import App
from botsky.secretguard import SecretGuard
from botsky.testing import (
    FakeModel,
    ListSource,
    RecordingPoster,
    _default_answer,
    block,
    follow,
    like,
    post,
    repost,
)

__all__ = [
    "DelayedModel",
    "Pipeline",
    "build_pipeline",
    "dids",
    "firehose",
    "post_texts",
    "tag_of",
]

_CORPUS = Path(__file__).resolve().parent.parent / "tests" / "data" / "jetstream"
_SYLLABLES = [c + v for c in "bcdfghjklmnprstvwz" for v in ("a", "e", "i", "o", "u", "ai", "ou")]
_FILLER = [
    "the",
    "a",
    "and",
    "to",
    "of",
    "in",
    "is",
    "it",
    "for",
    "on",
    "that",
    "this",
    "with",
    "just",
    "so",
    "i",
    "you",
    "my",
    "be",
    "at",
]
_START_US = 1_767_571_200_000_000


def dids(n: int, seed: int = 7) -> list[str]:
    """``n`` distinct did:plc-shaped DIDs (24 base32 characters, as on the network)."""
    rng = random.Random(seed)
    alphabet = "234567abcdefghijklmnopqrstuvwxyz"
    return ["did:plc:" + "".join(rng.choices(alphabet, k=24)) for _ in range(n)]


def _vocabulary(n: int, rng: random.Random) -> list[str]:
    words: dict[str, None] = {}
    while len(words) < n:
        words["".join(rng.choices(_SYLLABLES, k=rng.randint(2, 4)))] = None
    return list(words)


def _corpus_texts() -> list[str]:
    out = []
    for line in (_CORPUS / "expected_v1.jsonl").read_bytes().splitlines():
        if not line.strip():
            continue
        data = orjson.loads(line)
        record = (data.get("commit") or {}).get("record") or {}
        text = record.get("text")
        if isinstance(text, str) and text.strip():
            out.append(text)
    return out


def post_texts(rng: random.Random, vocabulary: int = 50_000) -> Callable[[], str]:
    """A function returning post texts: 1 in 4 a real recorded post, else a Zipf draw.

    Lengths follow the network's (most posts are short, a few use the whole 300 characters).
    """
    vocab = _vocabulary(vocabulary, rng)
    cum = list(itertools.accumulate(1.0 / (i + 1) for i in range(len(vocab))))
    real = _corpus_texts()

    def text() -> str:
        if real and rng.random() < 0.25:
            return rng.choice(real)
        n = min(45, max(3, int(rng.lognormvariate(2.4, 0.7))))
        words = rng.choices(vocab, cum_weights=cum, k=n)
        fill = rng.choices(_FILLER, k=n // 2)
        mixed = [w for pair in zip(words, fill + [""] * n, strict=False) for w in pair if w]
        return " ".join(mixed)[:300].capitalize()

    return text


# A Bluesky-like mix of commits (likes dominate, then follows, posts, reposts).
_MIX = (("like", 0.52), ("follow", 0.14), ("post", 0.14), ("repost", 0.1), ("block", 0.01))
_MIX += (("profile", 0.01), ("delete", 0.08))


def firehose(
    n: int,
    authors: Sequence[str],
    *,
    seed: int = 11,
    rate_per_s: float = 1000.0,
    tag_posts: bool = False,
    text: Callable[[], str] | None = None,
) -> list[Event]:
    """``n`` commits by ``authors``, ``rate_per_s`` per second of stream time.

    ``tag_posts`` ends every post text with `` #e<index>`` so a model can tell which event
    it is answering (the latency benchmark).
    """
    rng = random.Random(seed)
    text = text or post_texts(rng)
    kinds = [k for k, _ in _MIX]
    weights = [w for _, w in _MIX]
    step = int(1e6 / rate_per_s)
    recent: list[Event] = []
    out: list[Event] = []
    t = _START_US
    for i in range(n):
        t += step
        did = rng.choice(authors)
        kind = rng.choices(kinds, weights=weights)[0]
        if kind == "post" or not recent:
            body = text() + (f" #e{i}" if tag_posts else "")
            parent = rng.choice(recent) if recent and rng.random() < 0.3 else None
            e = post(did, t, body, reply_to=parent)
            recent.append(e)
            if len(recent) > 2000:
                recent = recent[-1000:]
        elif kind == "like":
            e = like(did, t, rng.choice(recent).uri)
        elif kind == "repost":
            e = repost(did, t, rng.choice(recent).uri)
        elif kind == "follow":
            e = follow(did, t, rng.choice(authors))
        elif kind == "block":
            e = block(did, t, rng.choice(authors))
        elif kind == "profile":
            e = Event(did=did, time_us=t, kind="commit", cursor=t, operation="update",
                      collection=PROFILE, rkey="self", cid=None,
                      record={"$type": PROFILE, "displayName": "x"})  # fmt: skip
        else:
            victim = rng.choice(recent)
            e = Event(did=did, time_us=t, kind="commit", cursor=t, operation="delete",
                      collection=victim.collection, rkey=victim.rkey)  # fmt: skip
        out.append(e)
    return out


class DelayedModel(FakeModel):
    """``FakeModel`` that takes ``delay_s`` to answer (a slow LLM), with ``on_call(user)``."""

    def __init__(self, delay_s: float = 0.0, on_call: Callable[[str], None] | None = None):
        super().__init__()
        self.delay_s = delay_s
        self.on_call = on_call
        self.in_flight = 0
        self.max_in_flight = 0

    async def complete_json(
        self, *, system: str, user: str, schema: dict[str, Any], schema_name: str
    ) -> Completion:
        if self.on_call is not None:
            self.on_call(user)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            self.script(_default_answer)
            done = await super().complete_json(
                system=system, user=user, schema=schema, schema_name=schema_name
            )
            self.calls.clear()  # do not keep every prompt for the whole run
            return done
        finally:
            self.in_flight -= 1


@dataclass
class Pipeline:
    app: App
    ledger: SqliteLedger
    poster: RecordingPoster
    model: DelayedModel
    dispatcher: Dispatcher


async def build_pipeline(
    tmp: Path,
    population: Sequence[str],
    model: DelayedModel,
    *,
    workers: int = 4,
    queue_size: int = 100,
    sample_rate: float = 1.0,
) -> Pipeline:
    """The real components, as ``build_app`` wires them (open audience: everyone consents)."""
    ledger = SqliteLedger(tmp / "bench.sqlite3")
    await ledger.open()
    bots = [
        Bot(f"bot{i}", "persona", model, picker, f"bot{i}.bench.test", f"did:web:bot{i}.bench.test")
        for i, picker in enumerate(("llm", "llm", "similar", "random"))
    ]
    known = {d: f"u{i}.bench.test" for i, d in enumerate(population)}
    known.update({b.did: b.handle for b in bots})
    identity = MemoryIdentity(known)
    presence = Presence(window_s=1800)
    policy = AudiencePolicy(
        mode="open", bot_dids=[b.did for b in bots], handle_of=identity.handle,
        clock=lambda: presence.now_us,
    )  # fmt: skip
    outcomes = OutcomeWatcher(ledger)
    rng = random.Random(3)
    army = Army(bots, random.Random(rng.random()))
    recommender = Recommender(
        presence, identity, is_bot=army.is_bot, may_mention=policy.may_mention
    )
    selector = Selector(
        is_bot=army.is_bot, may_answer=policy.may_answer, sample_rate=sample_rate,
        rng=random.Random(rng.random()),
    )  # fmt: skip
    poster = RecordingPoster()
    dispatcher = Dispatcher(
        army=army, recommender=recommender, presence=presence, identity=identity,
        ledger=ledger, poster=poster, outcomes=outcomes, queue_size=queue_size,
        workers=workers, rng=random.Random(rng.random()), on_reply=policy.note_reply,
        paused=policy.posting_paused, guard=SecretGuard(),
    )  # fmt: skip
    app = App(
        source=ListSource([]), ledger=ledger, presence=presence, identity=identity,
        policy=policy, outcomes=outcomes, selector=selector, dispatcher=dispatcher,
        cursor_name="bench",
    )  # fmt: skip
    return Pipeline(app, ledger, poster, model, dispatcher)


_TAG = re.compile(r"<post>.*?#e(\d+)\s*</post>", re.S)


def tag_of(prompt: str) -> int | None:
    """The event index the answered post carries (see ``firehose(tag_posts=True)``)."""
    found = _TAG.search(prompt)
    return int(found.group(1)) if found else None
