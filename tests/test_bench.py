"""The benchmarks' quick mode: every benchmark runs and prints its row (speed is not judged)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The benchmarks with a row in BENCHMARKS.md (scripts/bench runs the same list).
NAMES = (
    "relay",
    "jetstream",
    "router",
    "latency",
    "replies",
    "presence",
    "outcomes",
    "sim",
    "feed",
)
BENCHES = [ROOT / "bench" / f"bench_{name}.py" for name in NAMES]


def test_scripts_bench_runs_every_benchmark() -> None:
    """scripts/bench and this test run the same benchmarks, and each file exists."""
    script = (ROOT / "scripts" / "bench").read_text()
    assert f"for name in {' '.join(NAMES)}; do" in script
    assert all(bench.is_file() for bench in BENCHES)


@pytest.mark.slow
@pytest.mark.parametrize("bench", BENCHES, ids=lambda p: p.stem)
def test_quick_mode_prints_and_writes_its_row(bench: Path, tmp_path: Path) -> None:
    """``bench_X.py --quick --out FILE`` exits 0, prints one ROW line and writes it to FILE."""
    out = tmp_path / "BENCHMARKS.md"
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    done = subprocess.run(
        [sys.executable, str(bench), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("ROW ")]
    assert len(rows) == 1, done.stdout
    name = rows[0].removeprefix("ROW ").split(" | ")[0]
    assert name.endswith("(quick)")
    table = out.read_text()
    assert f"| {name} |" in table
    assert "| benchmark | figure | baseline (same run) |" in table
