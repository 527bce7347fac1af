"""scripts/test: the one test command, and its --fast inner loop."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support import ROOT


def _collect(*args: str) -> str:
    out = subprocess.run(
        [str(ROOT / "scripts" / "test"), *args, "--collect-only", "-q", "tests/test_crash.py"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert out.returncode in (0, 5), out.stdout + out.stderr  # 5: pytest collected nothing
    return out.stdout


@pytest.mark.slow
def test_fast_leaves_out_slow_tests_and_passes_other_arguments_to_pytest() -> None:
    """``--fast`` deselects the tests marked slow; every other argument reaches pytest."""
    assert Path(ROOT / "tests" / "test_crash.py").exists()
    everything = _collect()
    assert "test_sigkill_at_random_points" in everything and "1 test collected" in everything
    fast = _collect("--fast")
    assert "test_sigkill_at_random_points" not in fast and "1 deselected" in fast


def test_readme_quick_start_is_the_two_commands_ci_runs() -> None:
    """README's Quick start block holds exactly scripts/demo and scripts/test, both executable,
    and .ci/run ends in scripts/test (the README claim a fresh machine relies on)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    commands = [line.split("#", 1)[0].strip() for line in block.splitlines() if line.strip()]
    assert commands == ["scripts/demo", "scripts/test"], commands
    for command in commands:
        path = ROOT / command
        assert path.is_file() and path.stat().st_mode & 0o111, command
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert ci.rstrip().splitlines()[-1] == "exec scripts/test"
