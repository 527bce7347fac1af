"""`botsky run` against a Jetstream URL from YAML alone: a loopback Jetstream v1 server serves
real-format JSON events; botsky answers, records, saves its cursor and stops on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import orjson
import pytest
from websockets.asyncio.server import ServerConnection, serve

from botsky.events import event_to_jetstream
from botsky.ledger.sqlite import SqliteLedger
from tests.support import expert_scenario


@pytest.mark.slow
async def test_botsky_run_on_a_jetstream_url_answers_and_resumes(tmp_path: Path) -> None:
    """Questions streamed by a Jetstream v1 server are answered once each; the cursor saved at
    SIGTERM is the last event's time, and the connection asked for our collections."""
    events, expert_of = expert_scenario(20)
    lines = [event_to_jetstream(e).decode() for e in events]
    queries: list[dict[str, list[str]]] = []

    async def handler(ws: ServerConnection) -> None:
        assert ws.request is not None
        queries.append(parse_qs(urlparse(ws.request.path).query))
        for line in lines:
            await ws.send(line)  # a text frame per event, as Jetstream v1 sends them
        await ws.wait_closed()  # a live stream: silence, not an end

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        (tmp_path / "botsky.yaml").write_text(
            "data_dir: data\n"
            f"source: {{kind: jetstream, url: 'ws://127.0.0.1:{port}', jetstream_version: v1}}\n"
            "audience: {mode: open, acknowledge_open_audience: true,"
            " mentions_per_target_per_day: null, replies_per_author_per_day: null}\n"
            "presence: {window_s: 100000}\nrecommend: {cooldown_s: 0}\n"
            "dispatch: {author_cooldown_s: 0, reply_to_replies: false}\n"
            "logging: {format: json}\n"
        )
        (tmp_path / "bots.yaml").write_text(
            "bots:\n  - name: one\n    persona: A connector.\n    provider: template\n"
            "    model: template-one\n    picker: similar\n    account: {handle: one.test}\n"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("BOTSKY_")}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "botsky", "run", "-c", "botsky.yaml",
            cwd=tmp_path, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        repo = tmp_path / "data" / "dry_run_posts.jsonl"
        try:
            async with asyncio.timeout(60):
                while not repo.exists() or not set(expert_of) <= {
                    orjson.loads(line)["parent"] for line in repo.read_bytes().splitlines()
                }:
                    await asyncio.sleep(0.1)
                    assert proc.returncode is None, "botsky exited on its own"
        finally:
            proc.send_signal(signal.SIGTERM)
            stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, stderr.decode()[-2000:]
    replies = [orjson.loads(line) for line in repo.read_bytes().splitlines()]
    parents = [r["parent"] for r in replies]
    # Every question once. (Live, the reader never waits: the seed post may be answered a
    # moment later, once the experts are online, and that is fine.)
    assert set(expert_of) <= set(parents) and len(parents) == len(set(parents))
    (query,) = queries
    assert "app.bsky.feed.post" in query["wantedCollections"]
    log = [json.loads(line) for line in stdout.splitlines() if line.startswith(b"{")]
    (summary,) = [line for line in log if line["event"] == "run_summary"]
    assert summary["interrupted"] is True and summary["events"] == len(events)

    led = SqliteLedger(tmp_path / "data" / "botsky.sqlite3")
    await led.open()
    try:
        assert len(await led.mentions()) == len(parents)
        # Live sources resume from the saved cursor (the source rewinds a little itself).
        assert await led.load_cursor(f"jetstream:ws://127.0.0.1:{port}") == max(
            e.time_us for e in events
        )
    finally:
        await led.close()
