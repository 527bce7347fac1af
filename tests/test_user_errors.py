"""User errors end in a message, never a traceback; a config's relative paths follow the file."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).parent.parent
CORPUS = REPO / "tests" / "data" / "jetstream" / "expected_v1.jsonl"

BOTS = """bots:
  - {name: s, persona: p, provider: template, model: t, picker: similar,
     account: {handle: s.example.org, password_env: S_APP_PASSWORD}}
"""


def _botsky(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("BOTSKY_") and k not in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY")
    }
    return subprocess.run(
        [sys.executable, "-m", "botsky", *args],
        cwd=cwd,
        env=base | (env or {}),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_a_copied_config_reports_the_missing_replay_file(tmp_path: Path) -> None:
    """configs/botsky.yaml copied elsewhere: check-config names the replay file it cannot find
    (and how relative paths resolve), and run says the same in one line, no traceback."""
    for name in ("botsky.yaml", "bots.yaml"):
        shutil.copy(REPO / "configs" / name, tmp_path / name)
    check = _botsky("check-config", "-c", "botsky.yaml", cwd=tmp_path)
    assert check.returncode == 1
    line = next(line for line in check.stderr.splitlines() if "source.path" in line)
    assert line.startswith("botsky.yaml:")
    assert "no such file: ../tests/data/jetstream/expected_v1.jsonl" in line
    assert "relative paths are relative to ./" in line
    run = _botsky("run", "-c", "botsky.yaml", cwd=tmp_path)
    assert run.returncode == 1
    assert "Traceback" not in run.stderr
    assert "cannot read ../tests/data/jetstream/expected_v1.jsonl" in run.stderr


def test_a_copy_of_the_configs_works_from_any_working_directory(tmp_path: Path) -> None:
    """The configs and their replay file copied together run from another directory: every
    relative path (replay file, bots file, data_dir) follows the config file, not the cwd."""
    shutil.copytree(REPO / "configs", tmp_path / "copy" / "configs")
    replay = tmp_path / "copy" / "tests" / "data" / "jetstream"
    replay.mkdir(parents=True)
    shutil.copy(CORPUS, replay)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    config = "../copy/configs/botsky.yaml"
    assert _botsky("check-config", "-c", config, cwd=elsewhere).returncode == 0
    run = _botsky("run", "-c", config, cwd=elsewhere)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "copy" / "data" / "botsky.sqlite3").is_file()
    assert list(elsewhere.iterdir()) == []


# --- every command, typical mistakes -----------------------------------------------------------

# The command and options after its -c.
COMMANDS: dict[str, list[str]] = {
    "check-config": [],
    "run": [],
    "scores": [],
    "simulate": ["--days", "1", "--users", "10"],
    "accounts check": [],
    "accounts label": [],
}


def _mistake(kind: str, tmp: Path) -> tuple[list[str], dict[str, str]]:
    """Files for one kind of mistake under ``tmp``: the -c argument and the environment."""
    (tmp / "bots.yaml").write_text(BOTS)
    (tmp / "events.jsonl").write_bytes(CORPUS.read_bytes())
    good = (
        "data_dir: data\nsource: {kind: replay, path: events.jsonl}\n"
        "audience: {mode: open, acknowledge_open_audience: true}\n"
    )
    if kind == "missing file":
        return ["-c", "nope.yaml"], {}
    if kind == "bad YAML":
        (tmp / "botsky.yaml").write_text(good + "dispatch: {workers: 2\n")
        return ["-c", "botsky.yaml"], {}
    if kind == "missing env":  # live posting without the app password
        (tmp / "botsky.yaml").write_text(good + "posting: {mode: live}\n")
        return ["-c", "botsky.yaml"], {}
    assert kind == "unreachable ledger path"  # data_dir under a regular file
    (tmp / "blocker").write_text("a file, not a directory")
    (tmp / "botsky.yaml").write_text(good.replace("data_dir: data", "data_dir: blocker/data"))
    return ["-c", "botsky.yaml"], {}


@pytest.mark.parametrize(
    "kind", ["missing file", "bad YAML", "missing env", "unreachable ledger path"]
)
@pytest.mark.parametrize("command", list(COMMANDS))
def test_user_errors_get_a_message_not_a_traceback(tmp_path: Path, command: str, kind: str) -> None:
    """Each command, given a typical mistake, exits non-zero with a message and no traceback."""
    config, env = _mistake(kind, tmp_path)
    # The simulation never posts, so its missing variable is the LLM engine's API key.
    extra = ["--engine", "llm"] if (command, kind) == ("simulate", "missing env") else []
    out = _botsky(*command.split(), *config, *COMMANDS[command], *extra, cwd=tmp_path, env=env)
    assert "Traceback" not in out.stderr + out.stdout, out.stderr
    assert out.returncode != 0, out.stdout
    assert out.stderr.strip(), "a failure must say why"


def test_schema_into_an_unusable_directory_is_a_message(tmp_path: Path) -> None:
    """`botsky schema --out` under a regular file: one line naming the path, no traceback."""
    (tmp_path / "blocker").write_text("a file")
    out = _botsky("schema", "--out", "blocker/schema", cwd=tmp_path)
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert "blocker/schema" in out.stderr
