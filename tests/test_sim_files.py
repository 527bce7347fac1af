"""A simulation's files: a new run moves the earlier one aside, a failed start changes nothing."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from botsky.configload import resolve_secrets
from botsky.errors import ConfigError
from botsky.sim.run import simulate
from botsky.sim.rundir import PREVIOUS_DIR, set_aside
from tests.support import sim_config

pytestmark = pytest.mark.usefixtures("quiet_logs")

LLM_BOTS = """bots:
  - {name: similar, persona: p, provider: template, model: t-similar, picker: similar,
     account: {handle: similar.bots.sim.test}}
  - {name: ada, persona: p, provider: openai, model: gpt-4.1-mini, picker: llm,
     account: {handle: ada.bots.sim.test}}
"""


def snapshot(directory: Path) -> dict[str, str]:
    """Every file under ``directory``: relative path → SHA-256 of its bytes."""
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


async def _earlier_run(tmp: Path, **kwargs: Any) -> dict[str, str]:
    """Run a small world into ``tmp/data`` and return the snapshot of its files."""
    loaded = sim_config(tmp)
    await simulate(loaded, resolve_secrets(loaded, environ={}, live=False), **kwargs)
    data = tmp / "data"
    (data / "sim.log.jsonl").write_text('{"event": "earlier"}\n', encoding="utf-8")
    files = snapshot(data)
    assert {"botsky.sqlite3", "sim.log.jsonl", "sim-checkpoint.pkl"} <= set(files)
    return files


async def test_a_new_run_moves_the_earlier_one_aside_whole(tmp_path: Path) -> None:
    """A second run keeps every file of the first, byte for byte, under previous/<stamp>/."""
    before = await _earlier_run(tmp_path, days=1, users=20, seed=5)
    loaded = sim_config(tmp_path)
    result = await simulate(
        loaded, resolve_secrets(loaded, environ={}, live=False), days=1, users=20, seed=5
    )
    assert result.previous_run is not None
    assert result.previous_run.parent == tmp_path / "data" / PREVIOUS_DIR
    assert snapshot(result.previous_run) == before
    assert (tmp_path / "data" / "botsky.sqlite3").exists()  # the new run's own ledger


async def test_an_engine_without_a_model_changes_no_file(tmp_path: Path) -> None:
    """--engine llm with no API key fails before the run starts and leaves every file as is."""
    before = await _earlier_run(tmp_path, days=1, users=20, seed=2)
    loaded = sim_config(tmp_path, LLM_BOTS)
    with pytest.raises(ConfigError, match="set the environment variable OPENAI_API_KEY"):
        await simulate(
            loaded, resolve_secrets(loaded, environ={}, live=False), days=1, users=20,
            engine="llm", export=tmp_path / "data" / "sim.log.jsonl",
        )  # fmt: skip
    assert snapshot(tmp_path / "data") == before


async def test_a_bad_config_changes_no_file(tmp_path: Path) -> None:
    """A config the simulation refuses (not an open audience) leaves the earlier run as is."""
    before = await _earlier_run(tmp_path, days=1, users=20, seed=2)
    loaded = sim_config(tmp_path, audience="opt_in")
    with pytest.raises(ConfigError, match=r"audience\.mode: open"):
        await simulate(loaded, resolve_secrets(loaded, environ={}, live=False), days=1)
    assert snapshot(tmp_path / "data") == before


@pytest.mark.parametrize("resume", [False, True])
async def test_an_interrupt_during_start_up_puts_everything_back(
    tmp_path: Path, resume: bool
) -> None:
    """Ctrl-C after the files were moved aside but before the run starts restores them exactly
    (for a new world and for a resume; the resumed run's log is cut back to its length)."""
    before = await _earlier_run(tmp_path, days=1, users=20, seed=2)
    loaded = sim_config(tmp_path)

    def interrupt(previous: Path | None) -> None:
        with (tmp_path / "data" / "sim.log.jsonl").open("a") as log:
            log.write("written by the failed start\n")
        (tmp_path / "data" / "botsky.sqlite3").write_bytes(b"half-made ledger")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        await simulate(
            loaded, resolve_secrets(loaded, environ={}, live=False), days=2, users=20,
            seed=2, resume=resume, on_ready=interrupt,
        )  # fmt: skip
    assert snapshot(tmp_path / "data") == before
    assert not (tmp_path / "data" / PREVIOUS_DIR).exists()


def test_set_aside_with_nothing_there_creates_nothing(tmp_path: Path) -> None:
    """A first run has nothing to move: no previous/ directory appears, restore is harmless."""
    aside = set_aside(tmp_path, [tmp_path / "a.sqlite3", tmp_path / "log.jsonl"])
    assert aside.previous is None and list(tmp_path.iterdir()) == []
    (tmp_path / "a.sqlite3").write_bytes(b"made by a start that then failed")
    aside.restore()
    assert list(tmp_path.iterdir()) == []


def test_set_aside_names_are_unique(tmp_path: Path) -> None:
    """Two earlier runs last written in the same second get two directories."""
    paths = []
    for content in (b"first", b"second"):
        (tmp_path / "ledger").write_bytes(content)
        os.utime(tmp_path / "ledger", (1_700_000_000, 1_700_000_000))
        aside = set_aside(tmp_path, [tmp_path / "ledger"])
        assert aside.previous is not None
        paths.append(aside.previous)
    assert [p.name for p in paths] == ["20231114T221320Z", "20231114T221320Z-2"]
    assert [(p / "ledger").read_bytes() for p in paths] == [b"first", b"second"]


def _simulate_cli(tmp: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    # The first line on stderr says botsky's modules are imported (see the Ctrl-C test).
    code = (
        "import sys; from botsky.cli import main; "
        "print('imported', file=sys.stderr, flush=True); main()"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code, "simulate", "-c", str(tmp / "sim.yaml"), *args],
        cwd=tmp,
        env=env or _env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _env() -> dict[str, str]:
    drop = ("BOTSKY_", "OPENAI_API_KEY", "ANTHROPIC_API_KEY")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)}


async def test_the_command_without_a_key_leaves_the_earlier_run(tmp_path: Path) -> None:
    """`botsky simulate --engine llm` without a key exits 1 and no file changes (no bar)."""
    before = await _earlier_run(tmp_path, days=1, users=20, seed=2)
    sim_config(tmp_path, LLM_BOTS)
    proc = _simulate_cli(tmp_path, "--engine", "llm", "--days", "1", "--users", "20")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    assert "set the environment variable OPENAI_API_KEY" in err
    assert "day" not in err and "Traceback" not in err
    assert snapshot(tmp_path / "data") == before


def _runs(data: Path) -> tuple[dict[str, str], dict[Path, dict[str, str]]]:
    """The current run's files and each run kept under previous/."""
    current = {k: v for k, v in snapshot(data).items() if not k.startswith(PREVIOUS_DIR + "/")}
    return current, {p: snapshot(p) for p in sorted((data / PREVIOUS_DIR).glob("*"))}


async def test_resume_keeps_the_replaced_ledger_and_appends_to_the_log(tmp_path: Path) -> None:
    """`simulate --resume` moves the ledger and truth.json it replaces aside and appends to the
    log."""
    before = await _earlier_run(tmp_path, days=1, users=20, seed=2)
    proc = _simulate_cli(tmp_path, "--resume", "--days", "2", "--users", "20", "--seed", "2")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    (kept,) = (tmp_path / "data" / PREVIOUS_DIR).iterdir()
    assert snapshot(kept) == {
        "botsky.sqlite3": before["botsky.sqlite3"],
        "truth.json": before["truth.json"],
    }
    assert f"earlier run moved to {kept}" in out.replace("\n", "")
    log = (tmp_path / "data" / "sim.log.jsonl").read_text()
    assert log.startswith('{"event": "earlier"}\n') and "simulation_finished" in log


@pytest.mark.slow
async def test_ctrl_c_at_any_moment_keeps_the_earlier_run(tmp_path: Path) -> None:
    """SIGINT at a random moment of start-up or of the run: the earlier run survives whole,
    where it was (start undone) or under previous/ (run started), runs kept before stay as
    they were, and the command ends without a traceback. Every delay drawn must pass.

    (The delays start once botsky's modules are imported, which the child announces on stderr:
    before that, Ctrl-C is the Python interpreter's own KeyboardInterrupt, as for any Python
    program, and on a loaded machine the imports alone can take seconds.)"""
    await _earlier_run(tmp_path, days=1, users=20, seed=2)
    data = tmp_path / "data"
    for _ in range(3):
        current, kept = _runs(data)
        proc = _simulate_cli(tmp_path, "--days", "7", "--users", "1000")
        assert (await asyncio.to_thread(proc.stderr.readline)).strip() == "imported"
        await asyncio.sleep(random.uniform(0.0, 4.5))
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        assert "Traceback" not in err, err
        now, now_kept = _runs(data)
        assert all(now_kept[p] == files for p, files in kept.items())
        new = [files for p, files in now_kept.items() if p not in kept]
        assert now == current or new == [current], (proc.returncode, err)
        if proc.returncode != 0:  # 0: it finished before the signal, a complete run
            # 130 from botsky's own handler; click's "Aborted!" (1) during the command's imports.
            assert (proc.returncode == 130 and "interrupted" in err) or (
                proc.returncode == 1 and "Aborted!" in err
            ), err
