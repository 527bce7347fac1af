"""Restarts through the whole App (``build_app`` + ``App.run``), on a replay file that grows
between runs like a stream: a stop keeps queued and in-flight posts, a warm start rebuilds
presence before the mark and answers only after it, and consent survives a restart.

The model is an OpenAI-compatible server on loopback; the ledger is a real SQLite file.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from pathlib import Path
from typing import Any

from websockets.asyncio.server import ServerConnection

from botsky.configload import load_config, resolve_secrets
from botsky.events import Event, event_to_jetstream
from botsky.partition import partition_of
from botsky.runtime import RunSummary
from botsky.testing import (
    FakeVendorServer,
    RecordingPoster,
    follow,
    handles_offered,
    identity,
    post,
)
from botsky.watermark import warm_key
from botsky.wiring import build_app
from tests.support import MIN, T0, frame_server

BOT = "did:plc:botada"
BOB = "did:plc:bob"
CAROL = "did:plc:carol"
ASKERS = [f"did:plc:asker{i}" for i in range(6)]
WAIT_S = 30.0


def _config(tmp: Path, model_url: str, extra: str = "", audience: str = "") -> Path:
    (tmp / "botsky.yaml").write_text(
        f"""
data_dir: {tmp / "data"}
seed: 5
source: {{kind: replay, path: {tmp / "events.jsonl"}, resume: true{extra}}}
audience: {audience or "{mode: open, acknowledge_open_audience: true}"}
dispatch: {{author_cooldown_s: 0, workers: 1, shutdown_deadline_s: 0.2, reply_to_replies: false}}
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
    picker: similar
    account: {{handle: ada.test, did: "{BOT}"}}
"""
    )
    return tmp / "botsky.yaml"


def _write(tmp: Path, events: list[Event]) -> None:
    (tmp / "events.jsonl").write_bytes(b"".join(event_to_jetstream(e) + b"\n" for e in events))


def _users() -> list[Event]:
    """Bob (whom the questions fit) and the askers, with handles."""
    events = [identity(BOB, T0, "bob.test")]
    events += [identity(d, T0 + 1 + i, f"asker{i}.test") for i, d in enumerate(ASKERS)]
    return events


def _question(i: int, time_us: int) -> Event:
    return post(ASKERS[i], time_us, f"Any tips for a sourdough rye starter? Flat loaves ({i})")


# Bob talks in a thread of his own (replies are not answered here: reply_to_replies is off),
# so the questions are the only posts botsky answers; its root is not in the stream.
ROOT = post(BOB, T0, "Bread diary")
BOB_POST = post(
    BOB, T0 + MIN, "Sourdough bread baking all day, my rye starter and crumb", reply_to=ROOT
)


async def _run(
    cfg: Path, poster: RecordingPoster, stop_when: threading.Event | None = None
) -> RunSummary:
    """One start of botsky on the config; ``stop_when``: stop once it is set (a SIGTERM)."""
    loaded = load_config(cfg, environ={})
    app = await build_app(loaded, resolve_secrets(loaded, environ={}, live=False), poster=poster)
    stop = asyncio.Event()
    try:
        if stop_when is not None:

            async def stopper() -> None:
                assert await asyncio.to_thread(stop_when.wait, WAIT_S), "never got there"
                stop.set()

            task = asyncio.create_task(stopper())
        summary = await asyncio.wait_for(app.run(stop), WAIT_S)
        if stop_when is not None:
            await task
        return summary
    finally:
        await app.aclose()


class Gate:
    """The model's answers: mention the first handle offered; with ``hold``, the first call
    waits until ``release`` is set (``in_flight`` tells it has started)."""

    def __init__(self, hold: bool = False) -> None:
        self.hold = hold
        self.in_flight = threading.Event()
        self.release = threading.Event()
        self.calls = 0

    def __call__(self, system: str, user: str) -> dict[str, Any]:
        self.calls += 1
        if self.hold and self.calls == 1:
            self.in_flight.set()
            assert self.release.wait(WAIT_S), "the test never released the model"
        chosen = handles_offered(user)[0]
        return {"reply": f"Good question! @{chosen} bakes every day.", "mention": chosen}


def _answered(poster: RecordingPoster) -> Counter[str]:
    return Counter(r.parent.uri for r in poster.posted)


async def test_a_stop_keeps_queued_and_in_flight_posts_and_the_next_start_answers_them(
    tmp_path: Path,
) -> None:
    questions = [_question(i, T0 + 2 * MIN + i) for i in range(6)]
    _write(tmp_path, [*_users(), BOB_POST, *questions])
    gate = Gate(hold=True)
    poster = RecordingPoster()
    with FakeVendorServer(choose=gate) as server:
        cfg = _config(tmp_path, server.url)
        try:
            # One worker: the first question is in flight (held), the other five queued, when
            # the stop comes; the in-flight one outlives the shutdown deadline (cancelled).
            first = await _run(cfg, poster, stop_when=gate.in_flight)
        finally:
            gate.release.set()
        assert first.interrupted and first.pending_kept == 6
        assert poster.posted == []
        second = await _run(cfg, poster)
    answered = _answered(poster)
    assert answered == Counter({q.uri: 1 for q in questions})
    # The second run read the questions again (the mark was before the first), and the users
    # before them in observe-only mode: their posts fed presence, no reply was offered for them.
    assert second.warm_observed == 1  # Bob's post
    assert second.dispatch["posted"] == 6 and second.pending_kept == 0


async def _warm_or_cold(tmp_path: Path, warm_start_s: float) -> tuple[RunSummary, Counter[str]]:
    """Run 1 answers question 0; then (botsky down) question 1 is posted; run 2 restarts."""
    q0, q1 = _question(0, T0 + 2 * MIN), _question(1, T0 + 3 * MIN)
    events = [*_users(), BOB_POST, q0]
    tmp_path.mkdir()  # noqa: ASYNC240 (a test's own directory, before anything runs)
    _write(tmp_path, events)
    poster = RecordingPoster()
    with FakeVendorServer(choose=Gate()) as server:
        cfg = _config(tmp_path, server.url, extra=f", warm_start_s: {warm_start_s}")
        await _run(cfg, poster)
        assert _answered(poster) == {q0.uri: 1}
        _write(tmp_path, [*events, q1])  # posted while botsky was down
        second = await _run(cfg, poster)
    return second, _answered(poster)


async def test_a_warm_start_rebuilds_presence_before_the_mark_and_answers_only_after_it(
    tmp_path: Path,
) -> None:
    """With the warm-start window, run 2 re-reads Bob's post and the question run 1 answered
    (observe only: no second reply, no model call) and answers the new question mentioning
    Bob; without it (a cold start at the mark) the same question finds nobody to mention."""
    warm, answered = await _warm_or_cold(tmp_path / "warm", 1800.0)
    assert warm.warm_observed == 2  # Bob's post and question 0
    assert warm.dispatch == {"queued": 1, "posted": 1}
    assert set(answered.values()) == {1} and len(answered) == 2

    cold, answered = await _warm_or_cold(tmp_path / "cold", 0.0)
    assert cold.warm_observed == 0
    assert cold.dispatch["no_candidates"] == 1 and len(answered) == 1


async def test_opt_ins_survive_a_restart_and_the_allow_list_is_kept_in_step(
    tmp_path: Path,
) -> None:
    """opt_in audience: asker 0 follows the bot, asker 1 mentions it, Bob and Carol follow it
    (so they may be mentioned), asker 3 is on the allow list. After a restart whose stream no longer
    holds any of that (a new file, no warm window), their questions are answered from the
    ledger's opt-ins, asker 2's are not (never opted in); asker 3, taken off the allow list,
    no longer is either."""
    listed = ASKERS[3]
    opt_in = "{{mode: opt_in, allow_list: [{}], mentions_per_target_per_day: null}}"
    events = [
        *_users(),
        follow(BOB, T0 + 30_000_000, BOT),
        follow(CAROL, T0 + 30_500_000, BOT),
        follow(ASKERS[0], T0 + 31_000_000, BOT),
        post(ASKERS[1], T0 + 32_000_000, "hello @ada.test", mentions=[(BOT, "ada.test")]),
        BOB_POST,
    ]
    _write(tmp_path, events)
    poster = RecordingPoster()
    with FakeVendorServer(choose=Gate()) as server:
        cfg = _config(tmp_path, server.url, ", warm_start_s: 0", opt_in.format(f'"{listed}"'))
        first = await _run(cfg, poster)
        assert first.opt_ins == 4
        kept = await _opt_ins(cfg)
        assert kept == {
            BOB: "followed a bot",
            CAROL: "followed a bot",
            ASKERS[0]: "followed a bot",
            ASKERS[1]: "mentioned a bot",
            listed: "allow list",
        }
        # Later: only Bob's presence and the questions are in the stream (the file is read
        # from the mark on: the follows and the mention are behind it).
        questions = [_question(i, T0 + 5 * MIN + i) for i in range(4)]
        later = [
            # Their handles (no warm window here) and their talk: the candidates. Two of them:
            # a user mentioned at the stream's present is not offered again right away.
            identity(BOB, T0 + 4 * MIN - 2, "bob.test"),
            identity(CAROL, T0 + 4 * MIN - 1, "carol.test"),
            post(BOB, T0 + 4 * MIN, "More sourdough rye bread today, starter fine", reply_to=ROOT),
            post(CAROL, T0 + 4 * MIN + 1, "Rye sourdough starter: feed it warm", reply_to=ROOT),
        ]
        _write(tmp_path, [*events, *later, *questions])
        cfg = _config(tmp_path, server.url, ", warm_start_s: 0", opt_in.format(""))
        second = await _run(cfg, poster)
    answered = _answered(poster)
    assert answered == {questions[0].uri: 1, questions[1].uri: 1}
    assert second.selector["no_consent"] == 2  # asker 2 and the delisted asker 3
    assert listed not in await _opt_ins(cfg)


async def _opt_ins(cfg: Path) -> dict[str, str]:
    from botsky.ledger.sqlite import SqliteLedger

    led = SqliteLedger(cfg.parent / "data" / "botsky.sqlite3")
    await led.open()
    try:
        return {did: reason for did, (reason, _) in (await led.opt_ins()).items()}
    finally:
        await led.close()


async def test_the_warm_position_is_saved_beside_the_mark(tmp_path: Path) -> None:
    """A run over 40 minutes of stream saves a warm position 30 minutes (the default window)
    before its mark, and the next start begins there."""
    events = [*_users()]
    events += [post(BOB, T0 + m * MIN, f"Sourdough note {m}", reply_to=ROOT) for m in range(40)]
    _write(tmp_path, events)
    poster = RecordingPoster()
    with FakeVendorServer(choose=Gate()) as server:
        cfg = _config(tmp_path, server.url)
        summary = await _run(cfg, poster)
    from botsky.ledger.sqlite import SqliteLedger

    led = SqliteLedger(tmp_path / "data" / "botsky.sqlite3")
    await led.open()
    try:
        name = f"replay:{tmp_path / 'events.jsonl'}"
        mark, warm = await led.load_cursor(name), await led.load_cursor(warm_key(name))
    finally:
        await led.close()
    data = (tmp_path / "events.jsonl").read_bytes()
    assert mark == len(data)
    # The line at the warm position is Bob's note of minute 9 (30 minutes before minute 39).
    assert warm is not None and b'Sourdough note 9"' in data[warm:].split(b"\n", 1)[0]
    assert summary.mark == mark


async def test_jetstream_resumes_before_unfinished_posts_rewound_and_answers_once(
    tmp_path: Path,
) -> None:
    """The same stop and restart over a Jetstream (v1 wire) server on loopback whose events'
    ``time_us`` step back (question 2 is older than question 1): the mark saved at the stop is
    ``time_us - 1`` of the oldest unfinished question, the restart dials the warm position less
    ``rewind_s``, and every question is answered once."""
    questions = [
        _question(0, T0 + 2 * MIN),
        _question(1, T0 + 2 * MIN + 3_000_000),
        _question(2, T0 + 2 * MIN + 1_000_000),  # arrives after 1 but is older
    ]
    events = [*_users(), BOB_POST, *questions]
    lines = [event_to_jetstream(e).decode() for e in events]

    async def script(ws: ServerConnection, n: int, query: dict[str, list[str]]) -> None:
        cursor = int(query["cursor"][0]) if "cursor" in query else 0
        for event, line in zip(events, lines, strict=True):
            if event.time_us >= cursor:  # Jetstream replays from the cursor's time on
                await ws.send(line)
        await ws.wait_closed()

    gate = Gate(hold=True)
    poster = RecordingPoster()
    async with frame_server(script) as server:
        with FakeVendorServer(choose=gate) as model:
            cfg = _config(tmp_path, model.url)
            text = cfg.read_text().replace(
                f"{{kind: replay, path: {tmp_path / 'events.jsonl'}, resume: true}}",
                f"{{kind: jetstream, jetstream_version: v1, url: '{server.url}', name: js,"
                " rewind_s: 2}",
            )
            cfg.write_text(text)
            try:
                first = await _run(cfg, poster, stop_when=gate.in_flight)
            finally:
                gate.release.set()
            assert first.pending_kept == 3 and poster.posted == []
            assert first.mark == questions[0].time_us - 1
            second = await _run(cfg, poster, stop_when=_posted(poster, 3))
    assert _answered(poster) == Counter({q.uri: 1 for q in questions})
    assert second.warm_observed == 1  # Bob's post, before the mark
    # The second dial: the warm position (the first run's first event) less the rewind.
    assert int(server.queries[-1]["cursor"][0]) == events[0].time_us - 1 - 2_000_000


def _posted(poster: RecordingPoster, n: int) -> threading.Event:
    """Set once ``poster`` has posted ``n`` replies (a live source never ends by itself)."""
    done = threading.Event()
    original = poster.reply

    async def reply(p: Any) -> Any:
        result = await original(p)
        if len(poster.posted) >= n:
            done.set()
        return result

    poster.reply = reply  # type: ignore[method-assign]
    return done


class HalfOwner:
    """A replica that owns partition 0 of 2 (the other belongs to a replica elsewhere)."""

    member = "a"
    single = False
    count = 2

    def __init__(self) -> None:
        self.on_acquire: Any = None
        self.owned = {0}

    def partition(self, uri: str) -> int:
        return partition_of(uri, self.count)

    def owns(self, uri: str) -> bool:
        return self.partition(uri) in self.owned

    def alive(self) -> frozenset[str]:
        return frozenset({"a", "b"})

    async def start(self) -> None:
        return None

    async def run(self) -> None:
        return None

    async def settle(self, timeout_s: float = 60.0) -> None:
        return None

    async def stop(self) -> None:
        return None


async def test_a_replica_saves_the_mark_of_its_own_partitions_only(tmp_path: Path) -> None:
    """A replica owning one partition of two, stopped with its posts unfinished, saves that
    partition's mark before its oldest unfinished post, and no mark for the partition it does
    not own (its owner's unfinished work there is not this replica's to pass)."""
    questions = [_question(i, T0 + 2 * MIN + i) for i in range(6)]
    mine = [q for q in questions if partition_of(q.uri, 2) == 0]
    assert mine and len(mine) < len(questions)  # both partitions have questions
    events = [*_users(), BOB_POST, *questions]
    _write(tmp_path, events)
    gate = Gate(hold=True)
    with FakeVendorServer(choose=gate) as server:
        loaded = load_config(_config(tmp_path, server.url), environ={})
        app = await build_app(
            loaded, resolve_secrets(loaded, environ={}, live=False), poster=RecordingPoster()
        )
        app.partitions = HalfOwner()
        stop = asyncio.Event()
        try:
            task = asyncio.create_task(app.run(stop))
            assert await asyncio.to_thread(gate.in_flight.wait, WAIT_S)
            stop.set()
            summary = await asyncio.wait_for(task, WAIT_S)
            name = app.cursor_name
            marks = [await app.ledger.load_cursor(f"{name}#p{p}") for p in (0, 1)]
            single = await app.ledger.load_cursor(name)
        finally:
            gate.release.set()
            await app.aclose()
    assert summary.pending_kept == len(mine)
    assert summary.selector["other_replica"] == len(questions) - len(mine)
    data = (tmp_path / "events.jsonl").read_bytes()
    # The mark of partition 0 is where the line of its first question starts.
    first = data.index(mine[0].uri.rsplit("/", 1)[1].encode())
    assert marks[0] == data.rindex(b"\n", 0, first) + 1
    assert marks[1] is None and single is None


async def test_a_stop_while_routing_a_post_leaves_the_mark_before_it(tmp_path: Path) -> None:
    """The reader is cancelled at a stop wherever it awaits: here inside ``route`` for
    question 1, before its post is held. The saved mark must stay before that question (the
    read position moves only once an event is routed to the end), so the next start answers
    it; before the fix the mark had already moved past it and it was never answered."""
    questions = [_question(i, T0 + 2 * MIN + i) for i in range(3)]
    events = [*_users(), BOB_POST, *questions]
    _write(tmp_path, events)
    # A replay cursor is the byte offset where the next line starts: question 1's line
    # starts where question 0's ends.
    before_q1 = sum(len(event_to_jetstream(e)) + 1 for e in events[: events.index(questions[1])])
    poster = RecordingPoster()
    with FakeVendorServer(choose=Gate()) as server:
        cfg = _config(tmp_path, server.url)
        loaded = load_config(cfg, environ={})
        app = await build_app(
            loaded, resolve_secrets(loaded, environ={}, live=False), poster=poster
        )
        stop = asyncio.Event()
        observe = app.outcomes.observe

        async def stuck_on_question_1(event: Event) -> None:
            if event.uri == questions[1].uri:
                stop.set()
                await asyncio.Event().wait()  # until the reader is cancelled
            await observe(event)

        app.outcomes.observe = stuck_on_question_1  # type: ignore[method-assign]
        try:
            first = await asyncio.wait_for(app.run(stop), WAIT_S)
        finally:
            await app.aclose()
        assert first.interrupted
        assert first.mark is not None and first.cursor is not None
        assert first.mark <= first.cursor == before_q1
        assert _answered(poster) == {questions[0].uri: 1}
        await _run(cfg, poster)
    assert _answered(poster) == Counter({q.uri: 1 for q in questions})
