"""Consent that changes while a model call is in flight, through the whole App.

build_app wires a real ledger, policy, recommender and dispatcher; the model is an
OpenAI-compatible server on loopback whose first answer is held back until the stream has
delivered an opt-out, so the opt-out arrives exactly while the call is in flight. The reader
keeps routing events meanwhile (no lockstep), as in a live run.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from botsky.configload import load_config, resolve_secrets
from botsky.events import Event
from botsky.sources.base import SourceStats
from botsky.testing import FakeVendorServer, RecordingPoster, block, handles_offered, identity, post
from botsky.wiring import build_app
from tests.support import MIN, T0

BOT = "did:plc:botada"
AUTHOR, BAKER, COOK = "did:plc:author", "did:plc:baker", "did:plc:cook"
HANDLES = {AUTHOR: "author.test", BAKER: "baker.test", COOK: "cook.test"}
WAIT_S = 30.0


class HeldModel:
    """Answers every call with a mention of baker.test when offered; the first call is held
    until ``release`` is set (``in_flight`` tells the test it has started)."""

    def __init__(self) -> None:
        self.in_flight = threading.Event()
        self.release = threading.Event()
        self.offered: list[list[str]] = []

    def __call__(self, system: str, user: str) -> dict[str, Any]:
        offered = handles_offered(user)
        self.offered.append(offered)
        if len(self.offered) == 1:
            self.in_flight.set()
            assert self.release.wait(WAIT_S), "the test never released the model"
        chosen = "baker.test" if "baker.test" in offered else offered[0]
        return {"reply": f"Good question! @{chosen} bakes bread every day.", "mention": chosen}


class GatedSource:
    """The stream: users online, a question, then (while the model thinks) the opt-out."""

    name = "gated"

    def __init__(self, model: HeldModel, opt_out: Event) -> None:
        self.stats = SourceStats()
        self.model = model
        self.opt_out = opt_out

    async def __aiter__(self) -> AsyncIterator[Event]:
        events = [identity(did, T0 + i, h) for i, (did, h) in enumerate(HANDLES.items())]
        # The two bakers talk in a thread (replies are not answered here: only the author's
        # questions are, so the first model call is for the author).
        root = post(COOK, T0, "Who bakes sourdough here?")
        events += [
            post(BAKER, T0 + MIN, "Sourdough bread baking, my rye starter doubles", reply_to=root),
            post(COOK, T0 + MIN + 1, "Sourdough bread and rye loaves every morning", reply_to=root),
            post(AUTHOR, T0 + 2 * MIN, "Any tips for a sourdough rye starter? Flat loaves again"),
        ]
        for event in events:
            yield event
        started = await asyncio.to_thread(self.model.in_flight.wait, WAIT_S)
        assert started, "the model was never called"
        yield self.opt_out
        # The reader asks for the next event only once the opt-out has been routed: only now
        # does the held model answer.
        self.model.release.set()
        yield post(AUTHOR, T0 + 4 * MIN, "Sourdough again: how warm should a rye starter be?")

    async def aclose(self) -> None:
        return None


def _config(tmp: Path, model_url: str) -> Path:
    (tmp / "botsky.yaml").write_text(
        f"""
data_dir: {tmp / "data"}
seed: 5
source: {{kind: replay, path: unused.jsonl}}
audience:
  mode: open
  acknowledge_open_audience: true
  mentions_per_target_per_day: null
  replies_per_author_per_day: null
presence: {{window_s: 100000}}
dispatch: {{author_cooldown_s: 0, workers: 2, reply_to_replies: false}}
recommend: {{cooldown_s: 0}}
"""
    )
    (tmp / "bots.yaml").write_text(
        f"""
bots:
  - name: ada
    persona: A friendly baker.
    provider: openai_compatible
    model: fake-ada
    base_url: {model_url}/v1
    picker: llm
    account: {{handle: ada.test, did: "{BOT}"}}
"""
    )
    return tmp / "botsky.yaml"


async def _run(tmp_path: Path, opt_out: Event) -> tuple[dict[str, int], RecordingPoster, Any]:
    model = HeldModel()
    with FakeVendorServer(choose=model) as server:
        loaded = load_config(_config(tmp_path, server.url), environ={})
        poster = RecordingPoster()
        app = await build_app(
            loaded,
            resolve_secrets(loaded, environ={}, live=False),
            poster=poster,
            source=GatedSource(model, opt_out),
        )
        try:
            summary = await asyncio.wait_for(app.run(), WAIT_S)
            mentions = await app.ledger.mentions()
            opt_outs = await app.ledger.opt_outs()
        finally:
            model.release.set()
            await app.aclose()
    assert "baker.test" in model.offered[0]  # the held call could mention the baker
    return dict(summary.dispatch), poster, (mentions, opt_outs)


async def test_a_user_who_blocks_a_bot_during_the_model_call_is_never_mentioned(
    tmp_path: Path,
) -> None:
    """The chosen user blocks the bot while the model writes a reply mentioning them: that
    reply is dropped (``mention_opted_out``) and no later reply mentions them."""
    counts, poster, (mentions, opt_outs) = await _run(tmp_path, block(BAKER, T0 + 3 * MIN, BOT))
    assert counts.get("mention_opted_out") == 1
    assert BAKER in opt_outs
    mentioned = [f["did"] for p in poster.posted for f in p.facets[0]["features"]]
    assert BAKER not in mentioned and all(m.mentioned_did != BAKER for m in mentions)
    # The author's second question was answered, with the other baker.
    assert mentioned == [COOK] and counts.get("posted") == 1


async def test_an_author_who_blocks_a_bot_during_the_model_call_is_not_answered(
    tmp_path: Path,
) -> None:
    """The author blocks the bot while the model writes the reply: it is dropped
    (``author_opted_out``) and the author's later post is not answered either."""
    counts, poster, (mentions, opt_outs) = await _run(tmp_path, block(AUTHOR, T0 + 3 * MIN, BOT))
    assert counts.get("author_opted_out") == 1
    assert AUTHOR in opt_outs
    assert poster.posted == [] and mentions == []
