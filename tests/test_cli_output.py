"""What the terminal shows: help without markup, a progress bar of the days asked for, one
summary at the end of a run, simulate's tables within 100 columns."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import click
from rich.console import Console

from botsky.cli import cli
from botsky.configload import resolve_secrets
from botsky.sim.cli import _print_result
from botsky.sim.run import simulate
from tests.support import sim_config

REPO = Path(__file__).parent.parent
CORPUS = REPO / "tests" / "data" / "jetstream" / "expected_v1.jsonl"
# reStructuredText that means nothing on a terminal: ``literals``, :roles:, .. directives.
RST = re.compile(r"``|:[a-z]+:`|^\s*\.\. ", re.M)


def _commands(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [path]
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            found += _commands(command, (*path, name))
        else:
            found.append((*path, name))
    return found


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("BOTSKY_")}


def test_no_help_text_shows_restructuredtext() -> None:
    """`--help` of the group and of every command, as printed, has no RST markup."""
    seen = []
    for path in _commands(cli):
        out = subprocess.run(
            [sys.executable, "-m", "botsky", *path, "--help"],
            capture_output=True,
            text=True,
            env=_env() | {"COLUMNS": "100"},
            check=False,
        )
        assert out.returncode == 0, (path, out.stderr)
        assert not RST.search(out.stdout), (path, RST.findall(out.stdout))
        seen.append(" ".join(path))
    assert {"", "run", "simulate", "scores", "check-config", "schema", "accounts label"} <= set(
        seen
    )


def test_the_progress_bar_counts_the_days_asked_for_and_finishes(tmp_path: Path) -> None:
    """`simulate --days 2`: the bar reads days 2/2 at the end, never a count of 3; printed to
    a file (no terminal, no COLUMNS) it is not cut off at 80 columns."""
    sim_config(tmp_path)
    env = {k: v for k, v in _env().items() if k != "COLUMNS"}
    out = subprocess.run(
        [sys.executable, "-m", "botsky", "simulate", "-c", "sim.yaml", "--days", "2",
         "--users", "20"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert re.search(r"days\s+\S*\s+2/2\b", out.stderr), out.stderr
    assert not re.search(r"\d/3\b", out.stderr), out.stderr
    assert "answered mentions" in out.stderr and "…" not in out.stderr, out.stderr


def _replay(tmp: Path, fmt: str) -> subprocess.CompletedProcess[str]:
    (tmp / "bots.yaml").write_text(
        "bots:\n  - {name: s, persona: p, provider: template, model: t, picker: similar,\n"
        "     account: {handle: s.test}}\n"
    )
    (tmp / "botsky.yaml").write_text(
        f"data_dir: data\nsource: {{kind: replay, path: {CORPUS}}}\n"
        f"logging: {{format: {fmt}, file: log.jsonl}}\n"
    )
    return subprocess.run(
        [sys.executable, "-m", "botsky", "run", "-c", "botsky.yaml"],
        cwd=tmp, env=_env() | {"COLUMNS": "120"}, capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip


def test_a_run_ends_with_one_summary_for_machines(tmp_path: Path) -> None:
    """JSON logs: the run_summary line is the summary; no table besides it."""
    out = _replay(tmp_path, "json")
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [line["events"] for line in lines if line["event"] == "run_summary"] == [152]
    assert "summary" not in out.stderr


def test_a_run_ends_with_one_summary_for_people(tmp_path: Path) -> None:
    """Console logs: one summary table, the run_summary line only in the log file."""
    out = _replay(tmp_path, "console")
    assert out.returncode == 0, out.stderr
    assert "run_summary" not in out.stdout
    assert out.stderr.count("botsky run summary") == 1
    logged = [
        json.loads(line) for line in (tmp_path / "data" / "log.jsonl").read_text().splitlines()
    ]
    assert [line["events"] for line in logged if line["event"] == "run_summary"] == [152]


async def test_simulate_prints_its_tables_within_100_columns(tmp_path: Path) -> None:
    """simulate's leaderboards and its estimate-vs-truth tables fit a 100-column terminal with
    no cut cell, units named in the headers (%, / reply); wider terminals also get likes."""
    loaded = sim_config(tmp_path)
    loaded.settings.logging.file = None
    secrets = resolve_secrets(loaded, environ={}, live=False)
    result = await simulate(loaded, secrets, days=2, users=40, seed=1)
    printed = {}
    for width in (100, 160):
        console = Console(file=io.StringIO(), width=width, color_system=None)
        _print_result(console, result, 1, None, "open")
        out = console.file
        assert isinstance(out, io.StringIO)
        printed[width] = out.getvalue()
    narrow = printed[100]
    tables = narrow[: narrow.index("why posts were not answered")]
    assert max(len(line.rstrip()) for line in tables.splitlines()) <= 100
    assert "…" not in tables
    for header in ("estimate vs truth by picker", "rate %", "bound %", "Wilson", "/ reply"):
        assert header in tables, header
    assert "true likes" not in tables and "true likes" in printed[160]
