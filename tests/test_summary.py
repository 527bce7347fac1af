"""What ``botsky simulate`` shows on a terminal: a refused or missing API key."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from botsky.testing import FakeVendorServer
from tests.test_sim_run import sim_config


def _env(**more: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOTSKY_")}
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY"):
        env.pop(name, None)
    return env | more


def test_simulate_shows_a_refused_key_and_the_model_leaves_the_leaderboard(
    tmp_path: Path,
) -> None:
    """`botsky simulate` with a revoked key: the terminal says which bot was left out, why and
    how to fix it; a bot without its key says so too; neither model is on the leaderboard."""
    with FakeVendorServer() as vendor:
        vendor.fail_next.append(
            (401, {}, {"error": {"message": "Incorrect API key", "type": "invalid_request_error"}})
        )
        bots = (
            "bots:\n"
            "  - {name: similar, persona: p, provider: template, model: t-similar,"
            " picker: similar, account: {handle: similar.bots.sim.test}}\n"
            f"  - {{name: ada, persona: p, provider: openai, model: gpt-revoked,"
            f" base_url: '{vendor.url}/v1', api_key_env: ADA_KEY,"
            " account: {handle: ada.bots.sim.test}}\n"
            "  - {name: basil, persona: p, provider: anthropic, model: claude-unset,"
            " account: {handle: basil.bots.sim.test}}\n"
        )
        sim_config(tmp_path, bots)
        args = ["-c", str(tmp_path / "sim.yaml"), "--days", "1", "--users", "20"]
        out = subprocess.run(
            [sys.executable, "-m", "botsky", "simulate", *args],
            cwd=tmp_path,
            env=_env(ADA_KEY="sk-revoked-key-123"),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert out.returncode == 0, out.stderr
    notices = [line for line in out.stderr.splitlines() if line.startswith("botsky: ")]
    assert notices == [
        "botsky: bot basil left out: ANTHROPIC_API_KEY is not set. "
        "Fix: set ANTHROPIC_API_KEY to include basil.",
        f"botsky: bot ada left out: {vendor.url}/v1 refused the API key (HTTP 401). "
        "Fix: set a valid key in ADA_KEY, or remove ada from the bots file.",
    ]
    assert "sk-revoked-key-123" not in out.stderr + out.stdout
    assert "gpt-revoked" not in out.stdout and "claude-unset" not in out.stdout
    assert "t-similar" in out.stdout  # the leaderboard by model is there, without them
    log = (tmp_path / "data" / "sim.log.jsonl").read_text().splitlines()
    disabled = [json.loads(x) for x in log if '"bot_disabled"' in x]
    assert {d["bot"] for d in disabled} == {"ada", "basil"}
