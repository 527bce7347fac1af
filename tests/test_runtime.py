"""The runtime: each branch of the exception tree, end to end through ``build_app`` and
``App.run`` (a skipped item, a transient outage, a stop, and a bug isolated to one event)."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from botsky.configload import load_config, resolve_secrets
from botsky.errors import LedgerError, ModelError, PostOutcomeUnknown
from botsky.events import Event
from botsky.ledger.sqlite import SqliteLedger
from botsky.posting import Posted, ReplyPost
from botsky.runtime import App
from botsky.summary import why_unanswered
from botsky.testing import FakeModel, ListSource, RecordingPoster, identity, post
from botsky.wiring import build_app
from tests.support import T0, ScriptedSource

_HOLD_LOCK = textwrap.dedent(
    """
    import sqlite3, sys
    conn = sqlite3.connect(sys.argv[1], isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    print("locked", flush=True)
    sys.stdin.readline()
    conn.execute("COMMIT")
    """
)

ASKERS = [f"did:plc:asker{i}" for i in range(6)]


def _events() -> list[Event]:
    """One user to recommend, then six questions she fits, from six authors."""
    events = [
        identity("did:plc:bob", T0, "bob.test"),
        post("did:plc:bob", T0 + 1, "sourdough bread baking all day, starter and crumb"),
    ]
    for i, did in enumerate(ASKERS):
        events.append(post(did, T0 + 10 + i, f"any sourdough bread tips? question {i}"))
    return events


def _config(tmp: Path, extra: str = "") -> Path:
    (tmp / "botsky.yaml").write_text(
        f"data_dir: {tmp / 'data'}\nseed: 1\nsource: {{kind: replay, path: x.jsonl}}\n"
        "audience: {mode: open, acknowledge_open_audience: true,"
        " mentions_per_target_per_day: null, replies_per_author_per_day: null}\n"
        "recommend: {cooldown_s: 0}\n"
        "dispatch: {lockstep: true, author_cooldown_s: 0}\n" + extra
    )
    (tmp / "bots.yaml").write_text(
        "bots:\n  - name: ada\n    persona: hi\n    provider: template\n    model: t\n"
        "    picker: similar\n    account: {handle: ada.test}\n"
    )
    return tmp / "botsky.yaml"


async def _app(tmp: Path, model: FakeModel, events: list[Event], extra: str = "") -> App:
    """The production wiring over a finite source, with the bot's model scripted."""
    loaded = load_config(_config(tmp, extra), environ={})
    app = await build_app(
        loaded, resolve_secrets(loaded, environ={}, live=False), source=ListSource(events)
    )
    assert app.dispatcher is not None
    army = app.dispatcher.army
    army.bots = tuple(dataclasses.replace(b, model=model) for b in army.bots)
    return app


def _inner(app: App) -> SqliteLedger:
    inner = app.ledger.inner  # type: ignore[attr-defined]
    assert isinstance(inner, SqliteLedger)
    return inner


async def _short_busy_wait(app: App) -> None:
    # SQLite waits up to 10 s for a lock by itself; a short wait lets the lock surface as
    # LedgerUnavailable, the branch under test.
    await _inner(app)._run(lambda c: c.execute("PRAGMA busy_timeout = 100").fetchall())


@pytest.fixture
async def holder(tmp_path: Path) -> AsyncIterator[Any]:
    """Starts a process holding an exclusive lock on a SQLite file; released on demand."""
    procs: list[asyncio.subprocess.Process] = []

    async def lock(path: Path) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _HOLD_LOCK,
            str(path),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        procs.append(proc)
        assert proc.stdout is not None
        assert (await asyncio.wait_for(proc.stdout.readline(), 20)).strip() == b"locked"
        return proc

    yield lock
    for proc in procs:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _release(proc: asyncio.subprocess.Process) -> None:
    assert proc.stdin is not None
    proc.stdin.write(b"go\n")
    await proc.stdin.drain()
    assert await asyncio.wait_for(proc.wait(), 10) == 0


@pytest.fixture
def captured() -> Iterator[list[dict[str, Any]]]:
    with structlog.testing.capture_logs() as logs:
        yield logs


async def test_skip_errors_skip_one_post_and_the_run_goes_on(
    tmp_path: Path, captured: list[dict[str, Any]]
) -> None:
    """A rule-breaking draft and a model that fails for good each cost one post (counted,
    nothing claimed); the other posts are answered and the run ends normally."""
    model = FakeModel().script(
        {"reply": "ask @mallory.test", "mention": "mallory.test"},  # not offered
        ModelError("HTTP 400: bad request"),
    )
    app = await _app(tmp_path, model, _events())
    try:
        summary = await app.run()
        mentions = await app.ledger.mentions()
    finally:
        await app.aclose()
    assert not summary.interrupted
    assert summary.dispatch["model_error"] == 1
    assert sum(n for k, n in summary.dispatch.items() if k.startswith("rejected_")) == 1
    assert summary.dispatch["posted"] == len(ASKERS) - 2 == len(mentions)
    assert any(e["event"] == "draft_rejected" for e in captured)


async def test_a_locked_ledger_pauses_the_run_and_loses_nothing(
    tmp_path: Path, holder: Any
) -> None:
    """Another process holding the ledger's lock: LedgerUnavailable is retried, the run
    waits and then answers every post once."""
    app = await _app(tmp_path, FakeModel(), _events())
    try:
        await _short_busy_wait(app)
        proc = await holder(_inner(app).path)
        run = asyncio.create_task(app.run())
        await asyncio.sleep(1.0)
        assert not run.done()  # paused behind the lock, not failed
        await _release(proc)
        summary = await asyncio.wait_for(run, 30)
        mentions = await app.ledger.mentions()
        retries = app.ledger.retries  # type: ignore[attr-defined]
    finally:
        await app.aclose()
    assert retries >= 1
    assert summary.dispatch["posted"] == len(ASKERS)
    assert sorted(m.post_author for m in mentions) == sorted(ASKERS)


async def test_a_ledger_away_past_its_deadline_stops_the_run_and_a_restart_finishes(
    tmp_path: Path, holder: Any
) -> None:
    """Past ledger.retry_deadline_s the run stops in order (LedgerError naming the file, the
    summary logged); once the lock is gone a restart answers every post exactly once."""
    extra = "ledger: {retry_deadline_s: 0.5}\n"
    app = await _app(tmp_path, FakeModel(), _events(), extra)
    path = _inner(app).path
    try:
        await _short_busy_wait(app)
        proc = await holder(path)
        with pytest.raises(LedgerError) as info:
            await asyncio.wait_for(app.run(), 30)
        assert app.summary.interrupted
    finally:
        await app.aclose()
    assert str(path) in str(info.value) and "retry_deadline_s" in str(info.value)
    await _release(proc)

    app = await _app(tmp_path, FakeModel(), _events(), extra)
    try:
        summary = await app.run()
        mentions = await app.ledger.mentions()
        assert await app.ledger.pending_claims() == []
    finally:
        await app.aclose()
    assert not summary.interrupted
    assert sorted(m.post_author for m in mentions) == sorted(ASKERS)
    with sqlite3.connect(path) as conn:
        statuses = [s for (s,) in conn.execute("SELECT status FROM claims")]
    assert statuses == ["posted"] * len(ASKERS)


async def test_a_bug_costs_one_event_and_is_counted(
    tmp_path: Path, captured: list[dict[str, Any]]
) -> None:
    """An unexpected exception (not a BotskyError) in one reply or in routing one event is
    logged with its traceback and counted; every other post is answered."""
    broken = Event(did="did:plc:odd", time_us=T0 + 5, kind="identity", cursor=T0 + 5, handle=42)  # type: ignore[arg-type]
    events = _events()
    events.insert(2, broken)
    model = FakeModel().script(RuntimeError("a bug in a backend"))
    app = await _app(tmp_path, model, events)
    try:
        summary = await app.run()
    finally:
        await app.aclose()
    assert not summary.interrupted
    assert summary.skip_reasons["route_error"] == 1
    assert summary.dispatch["error"] == 1
    assert summary.dispatch["posted"] == len(ASKERS) - 1
    failures = [e for e in captured if e["event"] in ("route_failed", "dispatch_failed")]
    assert len(failures) == 2 and all(e.get("exc_info") for e in failures)


class _FirstCreateLost(RecordingPoster):
    """Every reply's first create times out without reaching the PDS; a second one lands."""

    def __init__(self) -> None:
        super().__init__()
        self.tried: set[str] = set()

    async def reply(self, p: ReplyPost) -> Posted:
        if p.rkey not in self.tried:
            self.tried.add(p.rkey)
            raise PostOutcomeUnknown("InvokeTimeoutError")
        return await super().reply(p)


async def test_the_settle_loop_finishes_replies_whose_outcome_was_unknown(
    tmp_path: Path,
) -> None:
    """Each create times out once: the workers go on (claims wait as 'retry'), and the
    runtime's settle loop posts every reply again under its record key, once, while the
    run goes on."""
    poster = _FirstCreateLost()
    loaded = load_config(
        _config(tmp_path, "posting: {retry_initial_s: 0.05, retry_max_s: 0.1}\n"), environ={}
    )
    app: App | None = None

    async def settled() -> list[Event]:
        assert app is not None
        for _ in range(400):  # the source stays open until the loop has settled every claim
            if not await app.ledger.claims("retry"):
                return []
            await asyncio.sleep(0.05)
        pytest.fail("the settle loop left claims waiting")

    app = await build_app(
        loaded,
        resolve_secrets(loaded, environ={}, live=False),
        source=ScriptedSource(_events(), settled),
        poster=poster,
    )
    try:
        summary = await app.run()
        mentions = await app.ledger.mentions()
    finally:
        await app.aclose()
    assert summary.dispatch["post_unknown"] == len(ASKERS)
    assert summary.dispatch["settled_posted"] == len(ASKERS)
    assert "unsettled" not in summary.dispatch
    assert sorted(m.post_author for m in mentions) == sorted(ASKERS)
    assert len(poster.posted) == len(ASKERS)  # one landed create per reply


class _NeverAnswers(RecordingPoster):
    async def reply(self, p: ReplyPost) -> Posted:
        raise PostOutcomeUnknown("InvokeTimeoutError")


async def test_replies_still_unsettled_at_exit_are_in_the_summary(tmp_path: Path) -> None:
    """A run that ends while creates wait for settlement says so (``unsettled``, with a hint
    among the reasons), and the claims stay in the ledger for the next start."""
    loaded = load_config(_config(tmp_path), environ={})
    app = await build_app(
        loaded,
        resolve_secrets(loaded, environ={}, live=False),
        source=ListSource(_events()),
        poster=_NeverAnswers(),
    )
    try:
        summary = await app.run()
        waiting = await app.ledger.claims("retry")
    finally:
        await app.aclose()
    assert summary.dispatch["unsettled"] == len(waiting) == len(ASKERS)
    reasons = {u.reason: u.count for u in why_unanswered(summary.as_dict())}
    assert reasons["unsettled"] == len(ASKERS) and "post_unknown" not in reasons
