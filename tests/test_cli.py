"""The botsky command: check-config exit codes and messages, clean shutdown on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from botsky.events import event_to_jetstream
from botsky.ledger.sqlite import SqliteLedger
from botsky.testing import FakeVendorServer, identity, post
from tests.support import T0

REPO = Path(__file__).parent.parent


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOTSKY_")}
    return env | {"SIGTERM_TEST_KEY": "sk-sigterm-test"}


def test_check_config_accepts_the_shipped_configs() -> None:
    """The example configuration validates with exit code 0."""
    out = subprocess.run(
        [sys.executable, "-m", "botsky", "check-config", "-c", "configs/botsky.yaml"],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "configuration OK" in out.stdout


def test_check_config_reports_file_line_and_field(tmp_path: Path) -> None:
    """A broken bots.yaml exits 1 with one precise line per problem."""
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "botsky.yaml").write_text(
        "data_dir: ./d\nsource: {kind: replay, path: x.jsonl}\n"
    )
    (tmp_path / "configs" / "x.jsonl").write_bytes(b"")
    (tmp_path / "configs" / "bots.yaml").write_text(
        "bots:\n"
        "  - name: ada\n"
        "    persona: hi\n"
        "    provider: opena1\n"
        "    model: m\n"
        "    account: {handle: ada.test}\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "botsky", "check-config"],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 1
    assert out.stderr.splitlines() == [
        "configs/bots.yaml:4 bots[0].provider: 'opena1' is not one of openai, anthropic, "
        "openai_compatible, template"
    ]
    assert out.stdout == ""


def test_check_config_without_a_config_file_says_so(tmp_path: Path) -> None:
    """With no configs/botsky.yaml in the working directory the error names the path."""
    out = subprocess.run(
        [sys.executable, "-m", "botsky", "check-config"],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 1
    assert out.stderr.startswith("configs/botsky.yaml: cannot read")


@pytest.mark.slow
def test_sigterm_stops_intake_saves_the_cursor_and_exits_zero(tmp_path: Path) -> None:
    """SIGTERM mid-replay: in-flight work finishes, the cursor is saved, exit code 0."""
    users = [(f"did:plc:u{i}", f"user{i}.test") for i in range(40)]
    events = [identity(did, T0 + i, h) for i, (did, h) in enumerate(users)]
    events += [
        post(did, T0 + 1000 + i, f"sourdough bread baking question number {i}")
        for i, (did, _) in enumerate(users)
    ]
    (tmp_path / "events.jsonl").write_bytes(b"\n".join(map(event_to_jetstream, events)))
    with FakeVendorServer(delay=0.3) as server:
        (tmp_path / "botsky.yaml").write_text(
            "data_dir: data\nsource: {kind: replay, path: events.jsonl}\n"
            "audience: {mode: open, acknowledge_open_audience: true}\n"
            "dispatch: {lockstep: true, workers: 2}\nlogging: {format: json}\ncursor_every: 1000\n"
        )
        (tmp_path / "bots.yaml").write_text(
            "bots:\n  - name: ada\n    persona: hi\n    provider: openai_compatible\n"
            f"    base_url: {server.url}/v1\n    api_key_env: SIGTERM_TEST_KEY\n"
            "    model: slow-model\n    account: {handle: ada.test}\n"
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "botsky", "run", "-c", "botsky.yaml"],
            cwd=tmp_path,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 60
        while len(server.requests) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        sent_at = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
        stopped_in = time.monotonic() - sent_at
    assert proc.returncode == 0, stderr
    assert stopped_in < 5
    lines = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    (summary,) = [line for line in lines if line["event"] == "run_summary"]
    assert summary["interrupted"] is True
    assert 0 < summary["events"] < len(events)
    posted = [line for line in lines if line["event"] == "reply_posted"]
    assert 3 <= len(posted) < len(users)

    async def _check() -> None:
        led = SqliteLedger(tmp_path / "data" / "botsky.sqlite3")
        await led.open()
        try:
            # The saved cursor is the low-water mark: never past the last event routed to the
            # end (a stop may land while the reader routes the next one), and never past a
            # post kept unfinished.
            saved = await led.load_cursor(f"replay:{Path('events.jsonl')}")
            assert saved == summary["mark"] and saved is not None
            assert saved <= summary["cursor"]
            assert summary["pending_kept"] or saved == summary["cursor"]
            # Every reply that was posted is recorded; none is left half-done.
            assert len(await led.mentions()) == len(posted)
            assert await led.claims_with_status("posting") == []
        finally:
            await led.close()

    asyncio.run(_check())


class _HangingModel:
    """A model whose call never returns (a stuck vendor)."""

    provider = "fake"
    model = "hangs"

    def __init__(self) -> None:
        self.called = asyncio.Event()

    async def complete_json(self, **_: object) -> object:
        self.called.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        return None


async def test_shutdown_deadline_cancels_stuck_replies(tmp_path: Path) -> None:
    """On stop, a reply stuck in a model call is cancelled at the deadline; nothing half-done
    is left in the ledger."""
    import dataclasses

    from botsky.configload import load_config, resolve_secrets
    from botsky.testing import ListSource
    from botsky.wiring import build_app

    (tmp_path / "botsky.yaml").write_text(
        f"data_dir: {tmp_path / 'data'}\nsource: {{kind: replay, path: x.jsonl}}\n"
        "audience: {mode: open, acknowledge_open_audience: true}\n"
        "dispatch: {shutdown_deadline_s: 0.3}\n"
    )
    (tmp_path / "bots.yaml").write_text(
        "bots:\n  - name: ada\n    persona: hi\n    provider: template\n    model: t\n"
        "    picker: similar\n    account: {handle: ada.test}\n"
    )
    loaded = load_config(tmp_path / "botsky.yaml", environ={})
    events = [
        identity("did:plc:b", T0, "bob.test"),
        post("did:plc:b", T0 + 1, "sourdough bread baking all day"),
        post("did:plc:a", T0 + 2, "any sourdough bread tips?"),
    ]
    app = await build_app(
        loaded, resolve_secrets(loaded, environ={}, live=False), source=ListSource(events)
    )
    model = _HangingModel()
    assert app.dispatcher is not None
    army = app.dispatcher.army
    army.bots = tuple(dataclasses.replace(b, model=model) for b in army.bots)
    stop = asyncio.Event()

    async def stop_when_stuck() -> None:
        await model.called.wait()
        stop.set()

    try:
        started = time.monotonic()
        stopper = asyncio.create_task(stop_when_stuck())
        summary = await app.run(stop)
        await stopper
        assert time.monotonic() - started < 5
        assert summary.interrupted
        assert await app.ledger.mentions() == []
        assert await app.ledger.pending_claims() == []
    finally:
        await app.aclose()


@pytest.mark.parametrize(
    ("source", "lockstep", "inline"),
    [
        ("{kind: replay, path: x.jsonl}", True, True),
        ("{kind: replay, path: x.jsonl}", False, False),
        ("{kind: jetstream, url: 'ws://127.0.0.1:9/subscribe'}", True, False),
    ],
)
async def test_sqlite_runs_inline_only_for_lockstep_finite_sources(
    tmp_path: Path, source: str, lockstep: bool, inline: bool
) -> None:
    """Lockstep replays run SQLite on the loop's thread; a live source keeps the worker thread
    even if the config asks for lockstep (its reader must never wait on the disk)."""
    from botsky.configload import load_config, resolve_secrets
    from botsky.testing import ListSource
    from botsky.wiring import build_app

    (tmp_path / "botsky.yaml").write_text(
        f"data_dir: {tmp_path / 'data'}\nsource: {source}\n"
        "audience: {mode: open, acknowledge_open_audience: true}\n"
        f"dispatch: {{lockstep: {str(lockstep).lower()}}}\n"
    )
    (tmp_path / "bots.yaml").write_text(
        "bots:\n  - name: ada\n    persona: hi\n    provider: template\n    model: t\n"
        "    picker: similar\n    account: {handle: ada.test}\n"
    )
    loaded = load_config(tmp_path / "botsky.yaml", environ={})
    app = await build_app(
        loaded, resolve_secrets(loaded, environ={}, live=False), source=ListSource([])
    )
    try:
        inner = app.ledger.inner  # type: ignore[attr-defined]
        assert isinstance(inner, SqliteLedger)
        assert inner.inline is inline
    finally:
        await app.aclose()


@pytest.mark.slow
def test_run_freezes_the_startup_heap(tmp_path: Path) -> None:
    """`botsky run` takes what start-up built (SDK modules, the app) out of the collector's
    full passes: nearly every container alive after ``build_app`` is frozen, so a full
    collection later walks only what the run itself keeps."""
    events = [identity("did:plc:b", T0, "bob.test"), post("did:plc:b", T0 + 1, "bread")]
    (tmp_path / "events.jsonl").write_bytes(b"\n".join(map(event_to_jetstream, events)))
    (tmp_path / "botsky.yaml").write_text(
        "data_dir: data\nsource: {kind: replay, path: events.jsonl}\n"
        "audience: {mode: open, acknowledge_open_audience: true}\nlogging: {format: json}\n"
    )
    (tmp_path / "bots.yaml").write_text(
        "bots:\n  - name: ada\n    persona: hi\n    provider: template\n    model: t\n"
        "    picker: similar\n    account: {handle: ada.test}\n"
    )
    spy = (
        "import gc, sys\n"
        "import botsky.wiring as app\n"
        "real = app.freeze_startup_heap\n"
        "def spy():\n"
        "    before = len(gc.get_objects())\n"
        "    real()\n"
        "    print('FROZEN', before, gc.get_freeze_count(), len(gc.get_objects()), flush=True)\n"
        "app.freeze_startup_heap = spy\n"
        "from botsky.cli import main\n"
        "sys.argv = ['botsky', 'run', '-c', 'botsky.yaml']\n"
        "main()\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", spy],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    line = next(x for x in out.stdout.splitlines() if x.startswith("FROZEN"))
    before, frozen, left = map(int, line.split()[1:])
    assert before > 50_000  # the imported SDKs alone
    assert frozen >= before * 0.9
    assert left < 1_000


def test_check_config_warns_about_misspelt_variables_and_still_passes() -> None:
    """A BOTSKY_* typo is a warning line with a did-you-mean; the config itself is OK."""
    out = subprocess.run(
        [sys.executable, "-m", "botsky", "check-config", "-c", "configs/botsky.yaml"],
        cwd=REPO,
        env=_env() | {"BOTSKY_DISPACH__WORKERS": "8"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stderr.splitlines() == [
        "warning: env BOTSKY_DISPACH__WORKERS matches no setting and is ignored; "
        "did you mean BOTSKY_DISPATCH__WORKERS?"
    ]
    assert out.stdout == "configuration OK\n"


@pytest.mark.slow
def test_importing_the_cli_and_the_wiring_never_imports_psycopg() -> None:
    """SQLite installs need no PostgreSQL driver: importing the CLI (``-X importtime`` lists
    every module loaded) and the composition root loads no psycopg module."""
    out = subprocess.run(
        [
            sys.executable,
            "-X",
            "importtime",
            "-c",
            "import sys, botsky.cli, botsky.wiring, botsky.runtime\n"
            "print(sorted(m for m in sys.modules if m.partition('.')[0] == 'psycopg'))",
        ],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    imported = [line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines()]
    assert any(name.startswith("botsky.wiring") for name in imported)  # importtime did list
    assert not [name for name in imported if name.partition(".")[0] == "psycopg"]
    assert out.stdout.strip() == "[]"
