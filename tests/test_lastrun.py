"""`botsky scores` without -c shows the last run started here, and never creates a ledger."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from botsky.lastrun import last_run, record_run, state_file
from tests.support import sim_config

REPO = Path(__file__).parent.parent


def _botsky(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOTSKY_")}
    return subprocess.run(
        [sys.executable, "-m", "botsky", *args],
        cwd=cwd,
        env=env | {"COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_scores_after_a_simulation_show_its_leaderboard(tmp_path: Path) -> None:
    """`botsky simulate -c sim.yaml` then a plain `botsky scores` (and --plot) read that run."""
    sim_config(tmp_path)
    sim = _botsky("simulate", "-c", "sim.yaml", "--days", "1", "--users", "30", cwd=tmp_path)
    assert sim.returncode == 0, sim.stderr
    out = _botsky("scores", "--by", "picker", "--plot", "p.png", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stderr.startswith("scores of the last run here: botsky simulate -c sim.yaml")
    assert "similar" in out.stdout and "random" in out.stdout
    assert (tmp_path / "p.png").read_bytes().startswith(b"\x89PNG")
    as_json = _botsky("scores", "--json", cwd=tmp_path)
    assert sum(row["mentions"] for row in json.loads(as_json.stdout)["scores"]) > 0


def test_scores_after_botsky_run_show_that_run(tmp_path: Path) -> None:
    """`botsky run -c X` is noted too: a plain `botsky scores` then reads X's ledger; with no
    mention in it, it says why the run answered nothing."""
    (tmp_path / "bots.yaml").write_text(
        "bots:\n  - {name: s, persona: p, provider: template, model: t, picker: similar,\n"
        "     account: {handle: s.test}}\n"
    )
    corpus = REPO / "tests" / "data" / "jetstream" / "expected_v1.jsonl"
    (tmp_path / "replay.yaml").write_text(
        f"data_dir: out\nsource: {{kind: replay, path: {corpus}}}\nlogging: {{format: json}}\n"
    )
    assert _botsky("run", "-c", "replay.yaml", cwd=tmp_path).returncode == 0
    out = _botsky("scores", cwd=tmp_path)
    assert out.stderr.startswith("scores of the last run here: botsky run -c replay.yaml")
    assert "no mentions recorded yet in the ledger of" in out.stderr  # the opt-in replay
    # ... and why, from the run's summary in its log, with the hint.
    assert "the last run in out/botsky.log.jsonl:" in out.stderr
    assert "why posts were not answered:" in out.stderr
    assert "no_consent  audience.mode is opt_in" in out.stderr
    assert out.returncode == 0, out.stderr


def test_scores_with_nothing_run_yet_say_so_and_create_nothing(tmp_path: Path) -> None:
    """A fresh copy of the configs: exit 1 with the missing ledger and a hint; no data/ made."""
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    for args in ((), ("--plot", "x.png")):
        out = _botsky("scores", *args, cwd=tmp_path)
        assert out.returncode == 1
        assert out.stderr.splitlines() == [
            "botsky: no ledger at data/botsky.sqlite3 (configs/botsky.yaml)",
            "nothing to score yet: run `botsky simulate` (offline, no keys) or `botsky run` "
            "first, or name the config of a run with -c",
        ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["configs"]


def test_runs_are_noted_per_working_directory(tmp_path: Path) -> None:
    """Each directory has its own last run; a note whose config is gone is ignored."""
    env = {"XDG_STATE_HOME": str(tmp_path / "state")}
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        (d / "c.yaml").write_text("")
    assert last_run(cwd=a, environ=env) is None
    record_run(Path("c.yaml"), "simulate", cwd=a, environ=env)
    record_run(b / "c.yaml", "run", cwd=b, environ=env)
    found = last_run(cwd=a, environ=env)
    assert found is not None and found.config == a / "c.yaml"
    assert found.command == "simulate"
    last_b = last_run(cwd=b, environ=env)
    assert last_b is not None and last_b.describe(cwd=b).startswith("botsky run -c c.yaml, ")
    (b / "c.yaml").unlink()
    assert last_run(cwd=b, environ=env) is None
    assert state_file(env) == tmp_path / "state" / "botsky" / "last-runs.json"


def test_a_damaged_notes_file_is_ignored_then_replaced(tmp_path: Path) -> None:
    """A notes file that is not JSON reads as empty and the next run writes a good one."""
    env = {"XDG_STATE_HOME": str(tmp_path)}
    state_file(env).parent.mkdir(parents=True)
    state_file(env).write_text("{not json")
    (tmp_path / "c.yaml").write_text("")
    assert last_run(cwd=tmp_path, environ=env) is None
    record_run(tmp_path / "c.yaml", "run", cwd=tmp_path, environ=env)
    assert last_run(cwd=tmp_path, environ=env) is not None
