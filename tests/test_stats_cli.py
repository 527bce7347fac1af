"""``botsky scores`` (``--as-of``, ``--wide``, ``--by model,persona``, JSON) and ``botsky plan``,
run through the real command line over a real SQLite ledger."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import re
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner, Result
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import proportion_effectsize

from botsky.cli import cli
from botsky.ledger.base import Mention, Outcome
from botsky.ledger.sqlite import SqliteLedger
from botsky.scoring import CLOCK_CURSOR, ScoringOptions, leaderboard, leaderboard_json
from botsky.stats_cli import parse_as_of
from tests.test_scoring import AS_OF, DAY, HOUR, MENTIONS, OUTCOMES, T0, _mention


def _config(tmp: Path) -> Path:
    (tmp / "bots.yaml").write_text(
        "bots:\n"
        "  - name: ctl\n"
        "    persona: control\n"
        "    provider: template\n"
        "    model: template-similar\n"
        "    picker: similar\n"
        "    account: {handle: ctl.test}\n"
    )
    cfg = tmp / "botsky.yaml"
    cfg.write_text(f"data_dir: {tmp / 'data'}\nsource: {{kind: replay, path: x.jsonl}}\n")
    return cfg


def _ledger(tmp: Path, mentions: list[Mention], outcomes: list[Outcome], clock: int | None) -> Path:
    """A ledger file holding these rows (ids as given) and the saved stream clock."""
    cfg = _config(tmp)

    async def fill() -> None:
        led = SqliteLedger(tmp / "data" / "botsky.sqlite3")
        await led.open()
        try:
            ids: dict[int, int] = {}
            for m in mentions:
                copy = dataclasses.replace(m, id=0)
                ids[m.id] = await led.record_mention(copy)
                if m.status != "open":
                    assert m.outcome_us is not None
                    await led.close_mention(ids[m.id], m.status, m.outcome_us)
            for o in outcomes:
                if o.mention_id in ids:
                    await led.record_outcome(dataclasses.replace(o, mention_id=ids[o.mention_id]))
            if clock is not None:
                await led.save_cursor(CLOCK_CURSOR, clock)
        finally:
            await led.close()

    (tmp / "data").mkdir()
    asyncio.run(fill())
    return cfg


def _run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    return _ledger(tmp_path, MENTIONS, OUTCOMES, AS_OF)


def _json(result: Result) -> dict:
    assert result.exit_code == 0, result.output
    return orjson.loads(result.stdout)


def test_scores_json_reads_the_ledger_as_of_its_saved_clock(cfg: Path) -> None:
    """Without --as-of, scores are read as of the stream clock the runtime saved, and equal
    scoring.leaderboard_json over the same rows."""
    got = _json(_run("scores", "-c", str(cfg), "--json"))
    assert got["as_of_us"] == AS_OF
    expected = leaderboard_json(leaderboard(MENTIONS, OUTCOMES, as_of_us=AS_OF))
    assert [s["model"] for s in got["scores"]] == ["alpha", "beta", "gamma"]
    for key in ("decided", "pending", "cs_low", "cs_high", "design_effect", "km_rate"):
        assert [s[key] for s in got["scores"]] == [s[key] for s in expected["scores"]]
    assert got["comparisons"] == expected["comparisons"]


@pytest.mark.parametrize(
    ("as_of", "at"),
    [
        ("-2d", AS_OF - 2 * DAY),
        ("-36h", AS_OF - 36 * HOUR),
        ("2023-11-20T00:00:00Z", 1_700_438_400_000_000),
        ("2023-11-20T01:00:00+01:00", 1_700_438_400_000_000),
    ],
)
def test_scores_as_of_reads_every_figure_as_it_was_then(cfg: Path, as_of: str, at: int) -> None:
    """--as-of (relative to the saved clock, or ISO) recomputes the reading at that time."""
    got = _json(_run("scores", "-c", str(cfg), "--json", "--as-of", as_of, "--by", "picker"))
    assert got["as_of_us"] == at
    expected = leaderboard_json(leaderboard(MENTIONS, OUTCOMES, by="picker", as_of_us=at))
    assert [(s["picker"], s["decided"], s["pending"], s["successes"]) for s in got["scores"]] == [
        (s["picker"], s["decided"], s["pending"], s["successes"]) for s in expected["scores"]
    ]


def test_scores_as_of_refuses_a_time_after_the_watched_stream(cfg: Path) -> None:
    """A time past the saved clock would decide mentions nobody watched: exit 1, no traceback."""
    result = _run("scores", "-c", str(cfg), "--as-of", "2030-01-01T00:00:00Z")
    assert result.exit_code == 1
    assert "after" in result.stderr and "Traceback" not in result.output


def test_scores_as_of_rejects_an_unreadable_time(cfg: Path) -> None:
    """A malformed --as-of is a clear usage error (exit 2)."""
    result = _run("scores", "-c", str(cfg), "--as-of", "last tuesday")
    assert result.exit_code == 2
    assert "ISO" in result.stderr and "Traceback" not in result.output


def test_parse_as_of_counts_back_from_the_clock() -> None:
    """Relative times count back from the given clock; naive ISO times are UTC."""
    assert parse_as_of("-90m", 10**12) == 10**12 - 90 * 60 * 10**6
    assert parse_as_of("-1w", 10**15) == 10**15 - 7 * 86_400 * 10**6
    assert parse_as_of("2023-11-20T00:00:00", 0) == 1_700_438_400_000_000


def test_scores_table_fits_100_columns_and_wide_shows_everything(cfg: Path) -> None:
    """The default output fits 100 columns with no cut cell; --wide adds the fixed-n interval,
    Kaplan-Meier and the named units."""
    narrow = _run("scores", "-c", str(cfg))
    assert narrow.exit_code == 0, narrow.output
    assert max(len(line) for line in narrow.stdout.splitlines()) <= 100
    assert "…" not in narrow.stdout
    assert "anytime 95%" in narrow.stdout and "not yet separable" in narrow.stdout
    wide = _run("scores", "-c", str(cfg), "--wide")
    for header in ("fixed-n 95%", "KM %", "median minutes to answer"):
        assert header in wide.stdout


def test_scores_help_has_no_markup() -> None:
    """--help reads as plain text: no reStructuredText or Markdown markup."""
    for command in (("scores", "--help"), ("plan", "--help")):
        text = _run(*command).stdout
        assert "``" not in text and ":func:" not in text and "\n.. " not in text


def _crossed_rows(tmp: Path) -> Path:
    """Two models crossed with two personas; model b answers half as often."""
    mentions, i = [], 1
    for model, rate in (("a", 0.6), ("b", 0.3)):
        for persona in ("kind", "terse"):
            for k in range(100):
                status = "succeeded" if k < rate * 100 else "expired"
                m = _mention(i, model, status, minutes=10 if status == "succeeded" else 1440,
                             persona=persona, created=T0 + i * 60_000_000)  # fmt: skip
                mentions.append(m)
                i += 1
    return _ledger(tmp, mentions, [], T0 + 30 * DAY)


def test_scores_by_model_and_persona_separates_the_effects(tmp_path: Path) -> None:
    """--by model,persona fits the logistic model: the model matters, the persona does not."""
    cfg = _crossed_rows(tmp_path)
    got = _json(_run("scores", "-c", str(cfg), "--by", "model,persona", "--json"))
    tests = {t["factor"]: t for t in got["tests"]}
    assert tests["model"]["p_value"] < 1e-6 and tests["persona"]["p_value"] > 0.99
    b = next(lv for lv in got["levels"] if lv["level"] == "b")
    assert b["odds_ratio"] == pytest.approx((0.3 / 0.7) / (0.6 / 0.4), rel=1e-3)
    assert got["decided"] == 400 and got["problem"] is None
    text = _run("scores", "-c", str(cfg), "--by", "model,persona")
    assert "clustered by user" in text.stdout and "odds ratio" in text.stdout


def test_scores_by_two_nested_factors_says_why_there_is_no_estimate(cfg: Path) -> None:
    """When each persona runs on one model the command says the effects cannot be separated."""
    result = _run("scores", "-c", str(cfg), "--by", "model,persona")
    assert result.exit_code == 0
    assert "not crossed" in result.stdout


def test_plan_matches_a_standard_power_calculation(tmp_path: Path) -> None:
    """botsky plan's fixed-n mentions per arm are within 10% of statsmodels' NormalIndPower,
    and days follow from the audience (1,000 people, 1 a day, 3 arms: 333 a day per arm)."""
    got = _json(_run("plan", "--rate", "0.43", "--differences", "2,5,10", "--audience", "1000",
                     "--json"))  # fmt: skip
    assert got["mentions_per_arm_per_day"] == pytest.approx(1000 / 3, abs=0.01)
    for plan in got["plans"]:
        p1, p2 = plan["rates"]
        theirs = NormalIndPower().solve_power(proportion_effectsize(p2, p1), alpha=0.05, power=0.8)
        assert plan["fixed_n_per_arm"] == pytest.approx(theirs, rel=0.10)
        assert plan["anytime_n_per_arm"] > plan["fixed_n_per_arm"]
        days = plan["fixed_n_per_arm"] / (1000 / 3) + 1.0  # + the 24 h window
        assert plan["fixed_n_days"] == pytest.approx(days, abs=0.1)
    five = got["plans"][1]
    assert five["fixed_n_per_arm"] == pytest.approx(1556, abs=2)


def test_plan_table_and_bad_input(tmp_path: Path) -> None:
    """The table names its units; nonsense differences are a clear error, not a traceback."""
    out = _run("plan", "--rate", "0.2", "--audience", "1000")
    assert out.exit_code == 0
    assert "mentions/arm" in out.stdout and "days" in out.stdout
    assert max(len(line) for line in out.stdout.splitlines()) <= 100
    bad = _run("plan", "--differences", "two")
    assert bad.exit_code == 2 and "Traceback" not in bad.output


def test_plan_observed_reads_rates_and_flow_from_the_ledger(cfg: Path) -> None:
    """--observed takes the control arms' rate and the mentions per day from the ledger."""
    got = _json(_run("plan", "-c", str(cfg), "--observed", "--json"))
    board = leaderboard(MENTIONS, OUTCOMES, by="picker", as_of_us=AS_OF, options=ScoringOptions())
    controls = [s for s in board.scores if s.control and s.decided]
    rate = sum(s.successes for s in controls) / sum(s.decided for s in controls)
    assert got["baseline_rate"] == pytest.approx(rate, abs=1e-4)
    flow = sum(s.mentions_per_day for s in board.scores) / len(board.scores)
    assert got["mentions_per_arm_per_day"] == pytest.approx(flow, abs=0.01)
    assert all(math.isfinite(p["fixed_n_days"]) for p in got["plans"])
    assert re.match(r"^\d", str(got["plans"][0]["fixed_n_per_arm"]))
