"""Database faults: PostgreSQL restarted in the middle of a `botsky run`.

The server is the one on this machine, restarted with its own cluster tools; botsky must pause,
retry with backoff, resume, and lose nothing.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import orjson
import psycopg
import pytest

from botsky.events import event_to_jetstream
from botsky.ledger.postgres import PostgresLedger
from botsky.testing import FakeVendorServer
from tests.support import expert_scenario

PG_VERSION = (
    next(iter(sorted(os.listdir("/etc/postgresql"))), "")
    if os.path.isdir("/etc/postgresql")
    else ""
)


def _cluster(action: str) -> None:
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", PG_VERSION, "main", action],
        check=True,
        capture_output=True,
        timeout=60,
    )


def _wait_for_server(dsn: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(dsn, connect_timeout=2):
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.fixture
def restartable(postgres_dsn: str):  # type: ignore[no-untyped-def]
    """The local cluster's restart tool; the server is running again after the test."""
    if not (PG_VERSION and shutil.which("pg_ctlcluster")):
        message = "pg_ctlcluster is not available to restart the local PostgreSQL"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    yield _cluster
    if (
        subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True).stdout.find(
            "online"
        )
        < 0
    ):
        _cluster("start")
    _wait_for_server(postgres_dsn)


@pytest.mark.postgres
@pytest.mark.slow
def test_postgres_restart_mid_run_pauses_and_loses_nothing(
    tmp_path: Path,
    postgres_dsn: str,
    postgres_schema_dsn: str,
    restartable,  # type: ignore[no-untyped-def]
) -> None:
    """A restart while replies are being recorded: the run finishes, every question is
    answered once, every mention and success is in the ledger."""
    events, expert_of = expert_scenario(150)
    (tmp_path / "events.jsonl").write_bytes(b"\n".join(map(event_to_jetstream, events)) + b"\n")
    with FakeVendorServer(delay=0.02) as server:
        (tmp_path / "botsky.yaml").write_text(
            "data_dir: data\nseed: 5\ncursor_every: 20\n"
            "source: {kind: replay, path: events.jsonl}\n"
            "audience: {mode: open, acknowledge_open_audience: true,"
            " mentions_per_target_per_day: null, replies_per_author_per_day: null}\n"
            "presence: {window_s: 100000}\nrecommend: {cooldown_s: 0}\n"
            "dispatch: {lockstep: true, author_cooldown_s: 0, reply_to_replies: false}\n"
            "logging: {format: json}\n"
        )
        (tmp_path / "bots.yaml").write_text(
            "bots:\n  - name: ada\n    persona: hi\n    provider: openai_compatible\n"
            f"    base_url: {server.url}/v1\n    model: m\n    account: {{handle: ada.test}}\n"
            "    picker: similar\n"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("BOTSKY_")}
        env["BOTSKY_LEDGER__URL"] = postgres_schema_dsn
        proc = subprocess.Popen(
            [sys.executable, "-m", "botsky", "run", "-c", "botsky.yaml"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        # Restart once a good part of the questions has been answered.
        deadline = time.monotonic() + 60
        while len(server.requests) < 40 and time.monotonic() < deadline:
            time.sleep(0.05)
        answered_before = len(server.requests)
        restartable("restart")
        stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 0, stderr.decode()[-3000:]
    assert 0 < answered_before < len(expert_of)
    log = [orjson.loads(line) for line in stdout.splitlines() if line.startswith(b"{")]
    assert any(line["event"] == "ledger_unavailable" for line in log)  # it really was down

    replies = [
        orjson.loads(line)
        for line in (tmp_path / "data" / "dry_run_posts.jsonl").read_bytes().splitlines()
    ]
    per_parent = Counter(r["parent"] for r in replies)
    assert set(per_parent) == set(expert_of) and max(per_parent.values()) == 1

    async def _check() -> None:
        led = PostgresLedger(postgres_schema_dsn)
        await led.open()
        try:
            mentions, outcomes = await led.mentions(), await led.outcomes()
            assert await led.pending_claims() == []
        finally:
            await led.close()
        assert sorted(m.reply_uri for m in mentions) == sorted(r["uri"] for r in replies)
        assert all(m.status == "succeeded" for m in mentions)
        assert Counter(o.kind for o in outcomes) == {"success": len(expert_of)}

    asyncio.run(_check())
