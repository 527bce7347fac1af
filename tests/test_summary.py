"""Why posts were not answered: ``botsky.summary`` and what ``botsky run`` and ``botsky
simulate`` show on a terminal at the end of a run (the bundled replay, a bad API key)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from botsky.summary import HINTS, Unanswered, bot_notes, unanswered_lines, why_unanswered
from botsky.testing import FakeVendorServer
from tests.test_sim_run import sim_config

REPO = Path(__file__).parent.parent
OPT_IN_HINT = (
    "audience.mode is opt_in: add users to audience.allow_list or let them follow or mention a bot"
)


def test_reasons_come_from_both_stages_most_frequent_first() -> None:
    """Selector and dispatch reasons are listed by count with their hints; queued, posted and
    the bots' own posts are not reasons."""
    summary = {
        "selector": {"queued": 14, "no_consent": 3, "author_cooldown": 2, "by_bot": 40},
        "dispatch": {"queued": 14, "posted": 0, "no_candidates": 10, "no_bot_for_language": 4},
    }
    assert why_unanswered(summary) == [
        Unanswered("dispatch", "no_candidates", 10, HINTS["no_candidates"]),
        Unanswered("dispatch", "no_bot_for_language", 4, HINTS["no_bot_for_language"]),
        Unanswered("selector", "no_consent", 3, OPT_IN_HINT),
        Unanswered("selector", "author_cooldown", 2, HINTS["author_cooldown"]),
    ]


@pytest.mark.parametrize(
    ("reason", "mode", "says"),
    [
        ("no_consent", "opt_in", "audience.allow_list"),
        ("no_consent", "open", "opted out"),
        ("inactive_account", "opt_in", "#account"),
        ("rejected_too_long", "opt_in", "broke a rule (too_long)"),
        ("model_access_denied", "opt_in", "refused the API key"),
        ("no_bot_available", "opt_in", "bot_paused"),
        ("budget_spent", "opt_in", "posting.points_per_hour"),
        ("rate_limited", "opt_in", "ratelimit-reset"),
        ("unsettled", "opt_in", "settled after the restart"),
        ("settled_gave_up", "opt_in", "settled later: posting.retry_attempts"),
        ("something_new", "opt_in", "see the log lines"),
    ],
)
def test_every_reason_has_a_hint(reason: str, mode: str, says: str) -> None:
    """Hints follow the audience mode; rejected drafts name their rule; an unknown reason still
    gets a pointer to the log."""
    (why,) = why_unanswered({"dispatch": {reason: 1}}, audience_mode=mode)
    assert says in why.hint


def test_bot_notes_name_left_out_and_paused_bots() -> None:
    """Bots left out at start and re-draws away from paused bots get one line each."""
    summary: dict[str, Any] = {
        "left_out": {"cleo": "http://127.0.0.1:11434/v1 is not reachable (connection refused)"},
        "redrawn": {"flaky": 3},
    }
    assert bot_notes(summary) == [
        "bot cleo was left out: http://127.0.0.1:11434/v1 is not reachable (connection refused)",
        "bot flaky was paused: 3 posts drawn for it went to other bots "
        "(bot_redrawn lines; mentions keep extra.redrawn_from)",
    ]


def test_nothing_to_say_prints_nothing() -> None:
    """A run that answered every post it queued prints no reasons section (a reply posted by
    the settle loop is answered too)."""
    assert unanswered_lines({"selector": {"queued": 2}, "dispatch": {"posted": 2}}) == []
    settled = {"posted": 1, "post_unknown": 2, "settled_post_unknown": 1, "settled_posted": 2}
    assert unanswered_lines({"dispatch": settled}) == []


# --- the commands -----------------------------------------------------------------------------


def _env(**more: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOTSKY_")}
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY"):
        env.pop(name, None)
    return env | more


def _bundled(tmp: Path, *, open_audience: bool = False) -> Path:
    """The shipped botsky.yaml and bots.yaml, copied elsewhere (paths made absolute)."""
    text = (REPO / "configs" / "botsky.yaml").read_text()
    text = text.replace("../tests/data", str(REPO / "tests" / "data"))
    text = re.sub(r"(?m)^data_dir: .*$", f"data_dir: {tmp / 'data'}", text)
    if open_audience:
        text = text.replace("mode: opt_in\n", "mode: open\n").replace(
            "acknowledge_open_audience: false", "acknowledge_open_audience: true"
        )
    shutil.copy(REPO / "configs" / "bots.yaml", tmp / "bots.yaml")
    (tmp / "botsky.yaml").write_text(text)
    return tmp / "botsky.yaml"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("open_audience", "expected"),
    [
        (False, [("16", "no_consent", OPT_IN_HINT)]),
        (
            True,
            [
                ("10", "no_candidates", HINTS["no_candidates"]),
                ("4", "no_bot_for_language", HINTS["no_bot_for_language"]),
                ("2", "author_cooldown", HINTS["author_cooldown"]),
            ],
        ),
    ],
    ids=["shipped", "open_audience"],
)
def test_the_bundled_replay_says_why_nothing_was_answered(
    tmp_path: Path, open_audience: bool, expected: list[tuple[str, str, str]]
) -> None:
    """`botsky run` on the shipped replay lists why its posts were not answered, with a hint
    each (opt-in consent as shipped; candidates and languages once the audience is open), and
    names the bots that were left out."""
    cfg = _bundled(tmp_path, open_audience=open_audience)
    out = subprocess.run(
        [sys.executable, "-m", "botsky", "run", "-c", str(cfg)],
        cwd=tmp_path,
        # Logs for people, as on a terminal: the summary table and the reasons on stderr.
        env=_env(BOTSKY_LOGGING__FORMAT="console"),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stderr.splitlines()
    start = lines.index("why posts were not answered:")
    shown = [tuple(line.split(maxsplit=2)) for line in lines[start + 1 : start + 1 + len(expected)]]
    assert shown[: len(expected)] == expected
    assert "bot ada was left out: OPENAI_API_KEY is not set" in out.stderr
    assert "bot cleo was left out: http://127.0.0.1:11434/v1 is not reachable" in out.stderr


@pytest.mark.slow
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
    assert f"bot ada was left out: {vendor.url}/v1 refused the API key (HTTP 401)" in out.stdout
    log = (tmp_path / "data" / "sim.log.jsonl").read_text().splitlines()
    disabled = [json.loads(x) for x in log if '"bot_disabled"' in x]
    assert {d["bot"] for d in disabled} == {"ada", "basil"}
