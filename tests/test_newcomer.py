"""A newcomer's first hour, end to end (issue 16's "done when"): from a fresh copy of the
repository's configs and bundled replay, the demo, `botsky scores`, `botsky scores --plot`, the
bundled replay, a copied config, a broken config and a missing key each give a result or a
stated reason, and never a traceback.

Every command runs as its own process, as typed, in a temporary copy of the repository's
``configs/`` and the replay file they name; no API keys, no ``BOTSKY_*`` variables, runs noted
under a temporary ``XDG_STATE_HOME``. `botsky run` writes its terminal lines to a
pseudo-terminal, where a person would read them.
"""

from __future__ import annotations

import json
import os
import pty
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).parent.parent
REPLAY = Path("tests/data/jetstream/expected_v1.jsonl")  # what configs/botsky.yaml replays


@dataclass
class Ran:
    code: int
    stdout: str
    stderr: str  # with ``terminal=True``: what the terminal showed

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def _env(tmp: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("BOTSKY_", "OPENAI", "ANTHROPIC", "XDG_STATE_HOME", "COLUMNS"))
    }
    return env | {"XDG_STATE_HOME": str(tmp / "state"), "COLUMNS": "100"} | (extra or {})


def _botsky(
    tmp: Path, *args: str, cwd: Path, terminal: bool = False, env: dict[str, str] | None = None
) -> Ran:
    """``botsky ARGS`` in ``cwd``; with ``terminal``, stderr is a pseudo-terminal."""
    cmd = [sys.executable, "-m", "botsky", *args]
    if not terminal:
        out = subprocess.run(
            cmd,
            cwd=cwd,
            env=_env(tmp, env),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        ran = Ran(out.returncode, out.stdout, out.stderr)
    else:
        master, slave = pty.openpty()
        with open(tmp / "stdout.txt", "w") as stdout:
            proc = subprocess.Popen(cmd, cwd=cwd, env=_env(tmp, env), stdout=stdout, stderr=slave)
        os.close(slave)
        shown = bytearray()
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            shown += chunk
        os.close(master)
        code = proc.wait(timeout=300)
        ran = Ran(code, (tmp / "stdout.txt").read_text(), shown.decode(errors="replace"))
    assert "Traceback" not in ran.output, (args, ran.output[-3000:])
    return ran


def _rows(table: str, *groups: str) -> dict[str, int]:
    """The decided count of each group's row in a printed leaderboard."""
    found = {}
    for group in groups:
        m = re.search(rf"^\s*=?\d+\s+{re.escape(group)}\s+(\d+)\s+\d+\s", table, re.M)
        assert m, (group, table)
        found[group] = int(m.group(1))
    return found


@pytest.mark.slow
def test_a_newcomers_first_hour_has_no_traceback_and_no_unexplained_empty_result(
    tmp_path: Path,
) -> None:
    clone = tmp_path / "clone"
    shutil.copytree(REPO / "configs", clone / "configs")
    (clone / REPLAY).parent.mkdir(parents=True)
    shutil.copy(REPO / REPLAY, clone / REPLAY)

    def botsky(
        *args: str, terminal: bool = False, cwd: Path = clone, env: dict[str, str] | None = None
    ) -> Ran:
        return _botsky(tmp_path, *args, cwd=cwd, terminal=terminal, env=env)

    # 1. The demo (scripts/demo's two commands, on a smaller world). The LLM bots have no
    # key: each is left out with one line saying which variable to set.
    check = botsky("check-config", "-c", "configs/sim.yaml")
    assert check.code == 0 and "configuration OK" in check.stdout
    demo = botsky("simulate", "-c", "configs/sim.yaml", "--days", "2", "--users", "60")
    assert demo.code == 0, demo.stderr
    assert "bot ada left out: OPENAI_API_KEY is not set" in demo.stderr
    assert "set ANTHROPIC_API_KEY to include basil" in demo.stderr
    picker = demo.stdout[demo.stdout.index("leaderboard by picker") :]
    assert all(n > 0 for n in _rows(picker, "similar", "random").values())
    assert "estimate vs truth by picker" in demo.stdout

    # 2. `botsky scores` right after the demo: the demo's leaderboard, said so.
    scores = botsky("scores")
    assert scores.code == 0
    assert scores.stderr.startswith("scores of the last run here: botsky simulate")
    assert all(n > 0 for n in _rows(scores.stdout, "template-similar", "template-random").values())
    as_json = botsky("scores", "--json")
    assert sum(s["decided"] for s in json.loads(as_json.stdout)["scores"]) > 0

    # 3. `botsky scores --plot`: a chart of the demo.
    plot = botsky("scores", "--plot", "scores.png")
    assert plot.code == 0 and "plot written to scores.png" in plot.stderr
    png = (clone / "scores.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000

    # 4. The bundled replay (configs/botsky.yaml): it answers nothing, and says why on the
    # terminal: the audience is opt-in; the keyless bots and the Ollama bot without a server
    # are left out, each with a line.
    replay = botsky("run", terminal=True)
    assert replay.code == 0, replay.stderr
    assert "why posts were not answered:" in replay.stderr
    assert re.search(r"16\s+no_consent\s+audience\.mode is opt_in", replay.stderr)
    assert "cleo" in replay.stderr and "11434" in replay.stderr
    assert "OPENAI_API_KEY" in replay.stderr

    # 5. `botsky scores` after the replay: nothing to show, and why.
    for args in ((), ("--plot", "replay.png")):
        empty = botsky("scores", *args)
        assert empty.code == 0
        assert empty.stderr.startswith("scores of the last run here: botsky run")
        assert "no mentions recorded yet in the ledger of configs/botsky.yaml" in empty.stderr
        assert re.search(r"16\s+no_consent\s+audience\.mode is opt_in", empty.stderr)

    # 6. A copy of configs/botsky.yaml elsewhere, alone, as its header suggests: check-config
    # names both files it is missing; run and scores refuse in one line; with its bots.yaml
    # beside it and the replay path fixed, it runs.
    mine = tmp_path / "elsewhere"
    mine.mkdir()
    shutil.copy(clone / "configs" / "botsky.yaml", mine / "my.yaml")
    copied = botsky("check-config", "-c", str(mine / "my.yaml"))
    assert copied.code == 1
    assert "bots.yaml: cannot read" in copied.stderr
    assert "source.path: no such file" in copied.stderr and "relative to" in copied.stderr
    for args in (("run",), ("scores",)):
        refused = botsky(*args, "-c", str(mine / "my.yaml"))
        assert refused.code == 1 and "bots.yaml: cannot read" in refused.stderr
    shutil.copy(clone / "configs" / "bots.yaml", mine / "bots.yaml")
    text = (mine / "my.yaml").read_text()
    (mine / "my.yaml").write_text(text.replace(f"../{REPLAY}", str(clone / REPLAY)))
    assert botsky("check-config", "-c", str(mine / "my.yaml")).code == 0
    elsewhere = botsky("run", "-c", str(mine / "my.yaml"), cwd=tmp_path)
    assert elsewhere.code == 0
    assert '"event":"run_summary"' in elsewhere.stdout.replace(" ", "")
    assert (mine.parent / "data" / "botsky.sqlite3").exists()  # data_dir ../data from my.yaml

    # 7. Broken configs: a YAML syntax error, and schema errors (all reported in one pass);
    # every command says where, in one line each.
    (clone / "broken.yaml").write_text("data_dir: d\nsource: {kind: replay\n")
    (clone / "wrong.yaml").write_text("data_dir: d\ndispatch: {workers: -1}\nsourc: 1\n")
    for args in (("check-config",), ("run",), ("scores",), ("simulate", "--days", "1")):
        broken = botsky(*args, "-c", "broken.yaml")
        assert broken.code == 1, (args, broken.output)
        assert "broken.yaml:3 YAML syntax error" in broken.stderr, (args, broken.stderr)
    wrong = botsky("check-config", "-c", "wrong.yaml")
    assert wrong.code == 1
    assert "wrong.yaml:2 dispatch.workers" in wrong.stderr
    assert "wrong.yaml:3 sourc: unknown field, did you mean 'source'?" in wrong.stderr

    # 8. Missing keys where they are required: the bots' app passwords for live posting (every
    # one named, with its line in bots.yaml), and the simulation's LLM user model (the message
    # names the variable; the demo's data stays as it was).
    live = botsky("run", env={"BOTSKY_POSTING__MODE": "live"})
    assert live.code == 1
    assert "environment variable ADA_APP_PASSWORD is not set" in live.stderr
    bots = (clone / "configs" / "bots.yaml").read_text()
    needed = len(re.findall(r"^\s*password_env:", bots, re.M))
    assert needed and live.stderr.count("is not set (needed for live posting)") == needed
    ledger = clone / "data" / "sim" / "botsky.sqlite3"
    before = ledger.read_bytes()
    keyless = botsky("simulate", "-c", "configs/sim.yaml", "--engine", "llm")
    assert keyless.code == 1
    assert "set the environment variable OPENAI_API_KEY" in keyless.stderr
    assert ledger.read_bytes() == before
    again = botsky("scores", "-c", "configs/sim.yaml", "--json")
    assert again.code == 0 and json.loads(again.stdout) == json.loads(as_json.stdout)
