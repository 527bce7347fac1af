"""Readings on the stream clock, end to end: the runtime's score loop, the page of a running
simulation, and `--as-of` readings of a 14-day simulation against its final rates."""

from __future__ import annotations

import itertools
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from scipy.stats import binom
from structlog.testing import capture_logs

from botsky.configload import resolve_secrets
from botsky.ledger.sqlite import SqliteLedger
from botsky.scoring import CLOCK_CURSOR, ScoringOptions, leaderboard
from botsky.sim.run import simulate
from botsky.stats import beta_binomial_cs
from tests.support import sim_config

DAY_US = 86_400_000_000


async def test_the_runtime_reads_scores_every_interval_of_stream_time(tmp_path: Path) -> None:
    """A simulation covers days of stream time in seconds of wall time: the score loop still
    logs readings on boundaries of scoring.interval_s (3,600) of stream time, each as of its
    boundary (the latest passed, when the stream outruns the reading), then one at shutdown,
    and saves the stream clock in the ledger."""
    loaded = sim_config(tmp_path)
    loaded.settings.scoring.interval_s = 3600
    secrets = resolve_secrets(loaded, environ={}, live=False)
    started = time.monotonic()
    with capture_logs() as logs:
        # Half a second of wall time at each simulated day boundary: the readings run in a
        # thread, and a live stream leaves them time, a simulation hardly any.
        result = await simulate(
            loaded, secrets, days=3, users=60, seed=3, on_day=lambda _w: time.sleep(0.5)
        )
    wall_s = time.monotonic() - started
    readings = sorted({e["as_of_us"] for e in logs if e["event"] == "recommender_score"})
    span_s = (readings[-1] - readings[0]) / 1e6
    assert span_s > 3 * 86_400 and wall_s < span_s / 3600  # far more stream hours than seconds
    gaps = [(b - a) / 1e6 for a, b in itertools.pairwise(readings)]
    # Readings mid-run, then the shutdown reading; boundary readings sit on the hourly grid
    # (StreamClock.every is tested on its own in test_outcomes.py).
    assert len(readings) >= 3
    assert all(g > 0 and g % 3600 == 0 for g in gaps[:-1])
    mid_run = [
        e for e in logs if e["event"] == "recommender_score" and e["as_of_us"] < readings[-1]
    ]
    assert mid_run and any(e["pending"] for e in mid_run)
    assert result.ledger_path is not None
    led = SqliteLedger(result.ledger_path)
    await led.open()
    try:
        assert await led.load_cursor(CLOCK_CURSOR) == readings[-1]
        mentions = await led.mentions()
    finally:
        await led.close()
    # While windows were open, a mention counted as decided only once its window had closed
    # (the bug was successes counted at once and failures only at expiry, so early readings
    # were over-stated): every reading's decided count is exactly the arm's mentions whose
    # window closed by the reading's time, and its rate is over those alone. (An arm may still
    # read 100% when its first decided mentions were all answered: a true reading of them.)
    window_us = int(loaded.settings.outcomes.window_s * 1e6)
    checked = 0
    for e in logs:
        if e["event"] != "recommender_score":
            continue
        arm = [m for m in mentions if str(getattr(m, e["by"])) == e[e["by"]]]
        made = [m for m in arm if m.created_us <= e["as_of_us"]]
        closed = [m for m in made if m.created_us + window_us <= e["as_of_us"]]
        assert (e["mentions"], e["decided"]) == (len(made), len(closed)), e
        assert e["decided"] + e["pending"] == e["mentions"], e
        assert e["successes"] <= e["decided"], e
        if e["decided"]:
            assert e["success_rate"] == pytest.approx(e["successes"] / e["decided"], abs=1e-4)
        else:
            assert e["success_rate"] is None
        checked += bool(e["pending"] and e["decided"])
    assert checked  # some readings had both decided and pending mentions


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("BOTSKY_", "OPENAI", "ANTH"))}


@pytest.mark.slow
def test_a_served_simulation_never_shows_100_percent_on_pending_mentions(tmp_path: Path) -> None:
    """`botsky simulate --serve`, polled while it runs: the API shows decided and pending
    mentions, and no arm is ever at 100% while it has pending mentions (the bug was 100% for
    both arms mid-run, because successes counted at once and failures only after expiry)."""
    sim_config(tmp_path)  # the shipped sim.yaml with its data under tmp_path
    cfg, data = tmp_path / "sim.yaml", tmp_path / "data"
    # A 10-hour outcome window: from the first simulated day on, most polls catch arms with
    # both decided and pending mentions (the case the bug showed as 100%); the page reloads the
    # ledger every 0.2 s (web.refresh_s) instead of 5.
    text = cfg.read_text()
    assert text.count("window_s: 86400") == 1
    cfg.write_text(
        text.replace("window_s: 86400", "window_s: 36000") + "\nweb:\n  refresh_s: 0.2\n"
    )
    cmd = ["simulate", "-c", str(cfg), "--days", "5", "--users", "200", "--serve", "--port", "0"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "botsky", *cmd],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    log = data / "sim.log.jsonl"
    polls: list[dict] = []
    truths: list[dict] = []
    try:
        # The URL is the first line on stdout, printed when the page accepts, before the run's
        # first event (with --port 0 nothing else could tell it during the run).
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("leaderboard page: http://127.0.0.1:"), first
        assert "live during the run" in first
        url = first.split()[2]
        deadline = time.monotonic() + 120
        with httpx.Client(timeout=10) as client:
            while time.monotonic() < deadline:
                r = client.get(f"{url}/api/leaderboard", params={"by": "picker"})
                assert r.status_code == 200
                polls.append(r.json())
                truths.append(client.get(f"{url}/api/truth", params={"by": "picker"}).json())
                finished = b'"run_summary"' in log.read_bytes()  # the run is over
                if finished:
                    break
                time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    # The same URL again after the results, now that the run is over.
    assert f"leaderboard page: {url}  (run finished; Ctrl-C to stop)" in rest
    mid_run = [p for p in polls if any(s["pending"] for s in p["scores"])]
    assert len(mid_run) >= 3, f"only {len(mid_run)} polls caught the run with pending mentions"
    assert any(s["decided"] for p in mid_run for s in p["scores"])
    for p in polls:
        for s in p["scores"]:
            assert {"decided", "pending", "cs_low", "cs_high", "design_effect"} <= set(s)
            if s["pending"]:
                assert s["success_rate"] is None or s["success_rate"] < 1.0, s
    # Readings move forward in stream time as the run goes on.
    times = [p["as_of_us"] for p in polls]
    assert times == sorted(times) and times[0] < times[-1]
    # The world's truth so far, read as of the page's reading, is over the estimates' decided
    # mentions (compared where both answers came from one reading of the ledger).
    same = 0
    for p, t in zip(polls, truths, strict=True):
        if p["as_of_us"] == t["as_of_us"]:
            decided = {s["picker"]: s["decided"] for s in p["scores"] if s["decided"]}
            assert {a["group"]: a["mentions"] for a in t["arms"]} == decided
            same += 1
    assert same >= 1


@pytest.mark.slow
async def test_as_of_readings_of_a_14_day_simulation_cover_the_final_rates(
    tmp_path: Path,
) -> None:
    """Read as of days 3, 7 and 10 of a 14-day simulation, each arm's anytime-valid interval
    covers its final rate, and no early rate is above the final one by more than its
    interval's half-width (the censoring bias this fixes showed early rates too high).

    Intervals at 99.9% (scoring.alpha: 0.001), each reading with at least 80 decided mentions
    per arm. The seed is drawn fresh. Chance of failing by luck, for arms whose success
    probability does not drift, computed exactly under the binomial model by
    ``_luck_failure`` (and checked by the next test): at most 1.2e-4 per arm (rates up to 0.6,
    80 decided at day 3, the later readings adding under 1e-6), so below 3 in 10,000 for the
    two arms.
    """
    loaded = sim_config(tmp_path)
    secrets = resolve_secrets(loaded, environ={}, live=False)
    seed = int.from_bytes(os.urandom(4), "big")
    result = await simulate(loaded, secrets, days=14, users=200, seed=seed)
    assert result.ledger_path is not None
    led = SqliteLedger(result.ledger_path)
    await led.open()
    try:
        mentions, outcomes = await led.mentions(), await led.outcomes()
        clock = await led.load_cursor(CLOCK_CURSOR)
    finally:
        await led.close()
    assert clock is not None
    options = ScoringOptions(window_s=loaded.settings.outcomes.window_s, alpha=0.001)
    final = {s.group: s for s in leaderboard(mentions, outcomes, by="picker", as_of_us=clock,
                                             options=options).scores}  # fmt: skip
    assert all(s.pending == 0 and s.decided > 1000 for s in final.values())
    start = min(m.created_us for m in mentions)
    for day in (3, 7, 10):
        board = leaderboard(
            mentions, outcomes, by="picker", as_of_us=start + day * DAY_US, options=options
        )
        for s in board.scores:
            f = final[s.group]
            assert s.success_rate is not None and f.success_rate is not None
            assert s.decided >= 80, (seed, day, s.group)
            assert s.cs_low <= f.success_rate <= s.cs_high, (seed, day, s.group)
            half = (s.cs_high - s.cs_low) / 2
            assert s.success_rate - f.success_rate <= half, (seed, day, s.group)


def _luck_failure(p: float, n_d: int, n_final: int, alpha: float) -> float:
    """P(the final rate leaves the day-d confidence sequence, or the day-d rate exceeds it by
    more than the half-width) when outcomes are Bernoulli(p): exact, summing over the day-d
    successes k and the binomial successes after it."""
    total = 0.0
    for k in range(n_d + 1):
        weight = float(binom.pmf(k, n_d, p))
        if weight < 1e-16:
            continue
        low, high = beta_binomial_cs(k, n_d, alpha)
        lower = max(low, k / n_d - (high - low) / 2)
        later = n_final - n_d
        # final = (k + B) / n_final with B ~ Binomial(later, p): below `lower` or above `high`.
        below = float(binom.cdf(math.ceil(lower * n_final - k) - 1, later, p))
        above = float(binom.sf(math.floor(high * n_final - k), later, p))
        total += weight * (below + above)
    return total


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5, 0.6])
def test_the_as_of_check_fails_by_luck_rarely(p: float) -> None:
    """The 14-day check's chance of failing by luck, per arm: at most 1.2e-4 at 80 decided
    mentions on day 3 and a final count of 1,500 (more decided later only lowers it)."""
    assert _luck_failure(p, 80, 1500, 0.001) <= 1.2e-4
    assert _luck_failure(p, 80, 1500, 0.001) >= _luck_failure(p, 300, 1500, 0.001)
