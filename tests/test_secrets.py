"""Secrets never leave the process: not in logs, the ledger, checkpoints, /metrics or the web pages.

Two real runs, each a subprocess with fake API keys, app passwords and a web token in its
environment: ``botsky simulate`` (the LLM bots join the army and talk to a loopback fake of the
vendors' APIs) and ``botsky run`` over a replay with the web page enabled, whose pages are
fetched while it runs. The fake model is as bad as it gets: on some calls it copies every
secret it can see into its answer. Afterwards every byte botsky wrote or served is searched for
every secret value.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx
import pytest
from ruamel.yaml import YAML

from botsky.events import event_to_jetstream
from botsky.testing import FakeVendorServer, handles_offered
from tests.support import expert_scenario

REPO = Path(__file__).parent.parent
SIM_ARGS = ("--days", "2", "--users", "60")
SECRETS = {
    "OPENAI_API_KEY": "sk-proj-SECRETopenai-4f8Kq2Vn7Xw1Lz9R",
    "ANTHROPIC_API_KEY": "sk-ant-api03-SECRETanthropic-Hq3Jm8Tp",
    "ADA_APP_PASSWORD": "xkcd-SECRET-pass-word1",
    "BASIL_APP_PASSWORD": "zzzz-SECRET-pass-word2",
    "BOTSKY_WEB__TOKEN": "web-SECRET-token-Yb7Gd2Rk9",
}


class Leaky:
    """A fake model that, every third call, puts every secret into its reply."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, system: str, user: str) -> dict[str, Any]:
        self.calls += 1
        handles = handles_offered(user)
        chosen = handles[0] if handles else "nobody.test"
        leak = " ".join(SECRETS.values()) if self.calls % 3 == 0 else ""
        return {"reply": f"Good question! {leak} @{chosen} knows this.", "mention": chosen}


def _env(data_dir: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOTSKY_")}
    env |= SECRETS
    if data_dir is not None:
        env["BOTSKY_DATA_DIR"] = str(data_dir)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _files(root: Path) -> Iterable[tuple[str, bytes]]:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            yield str(path), path.read_bytes()


def assert_clean(blobs: Iterable[tuple[str, bytes | str]]) -> int:
    """No secret in any blob; returns how many blobs were searched."""
    n = 0
    for name, blob in blobs:
        data = blob.encode() if isinstance(blob, str) else blob
        for var, secret in SECRETS.items():
            assert secret.encode() not in data, f"{var} leaked into {name}"
        n += 1
    return n


@pytest.mark.slow
def test_simulate_with_llm_bots_leaks_no_secret(tmp_path: Path) -> None:
    """`botsky simulate --days 2 --users 60` with keys set: no secret in logs, ledger, files."""
    yaml = YAML()
    with FakeVendorServer(choose=Leaky()) as server:
        bots = yaml.load((REPO / "configs" / "sim-bots.yaml").read_text())
        for bot in bots["bots"]:
            if bot["provider"] == "openai":
                bot["base_url"] = f"{server.url}/v1"
            elif bot["provider"] == "anthropic":
                bot["base_url"] = server.url
        with (tmp_path / "sim-bots.yaml").open("w") as fh:
            yaml.dump(bots, fh)
        (tmp_path / "sim.yaml").write_text((REPO / "configs" / "sim.yaml").read_text())
        data = tmp_path / "data"
        proc = subprocess.run(
            [sys.executable, "-m", "botsky", "simulate", "-c", "sim.yaml", *SIM_ARGS],
            cwd=tmp_path,
            env=_env(data),
            capture_output=True,
            timeout=240,
            check=False,
        )
        paths = {r["path"] for r in server.requests}
    assert proc.returncode == 0, proc.stderr[-3000:]
    # The LLM bots really ran (through the fake), and some of their answers held the secrets.
    assert paths == {"/v1/chat/completions", "/v1/messages"}
    assert len(server.requests) >= 6
    searched = assert_clean(
        [("stdout", proc.stdout), ("stderr", proc.stderr), *_files(tmp_path / "data")]
    )
    assert searched >= 3  # the ledger, the JSON log and the checkpoint at least
    assert b"leaked_secret" in (data / "sim.log.jsonl").read_bytes()


def _write_run_config(tmp: Path, server_url: str, port: int) -> Path:
    events, _ = expert_scenario(40)
    (tmp / "events.jsonl").write_bytes(b"\n".join(map(event_to_jetstream, events)) + b"\n")
    (tmp / "botsky.yaml").write_text(
        "data_dir: data\nseed: 5\n"
        "source: {kind: replay, path: events.jsonl}\n"
        "audience: {mode: open, acknowledge_open_audience: true}\n"
        "presence: {window_s: 100000}\nrecommend: {cooldown_s: 0}\n"
        "dispatch: {lockstep: true, author_cooldown_s: 0, reply_to_replies: false}\n"
        f"web: {{enabled: true, port: {port}}}\n"
        "logging: {format: json}\n"
    )
    (tmp / "bots.yaml").write_text(
        f"""
bots:
  - name: ada
    persona: You are Ada.
    provider: openai
    model: gpt-4.1-mini
    base_url: {server_url}/v1
    account: {{handle: ada.test, did: "did:plc:botada", password_env: ADA_APP_PASSWORD}}
  - name: basil
    persona: You are Basil.
    provider: anthropic
    model: claude-haiku-4-5
    base_url: {server_url}
    account: {{handle: basil.test, did: "did:plc:botbasil", password_env: BASIL_APP_PASSWORD}}
"""
    )
    return tmp / "botsky.yaml"


@pytest.mark.slow
def test_run_with_web_page_leaks_no_secret(tmp_path: Path) -> None:
    """`botsky run` with the web page on: logs, ledger, /metrics and every page are clean."""
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {SECRETS['BOTSKY_WEB__TOKEN']}"}
    pages: list[tuple[str, bytes]] = []
    with FakeVendorServer(choose=Leaky(), delay=0.3) as server:
        cfg = _write_run_config(tmp_path, server.url, port)
        out, err = (tmp_path / "stdout.txt").open("wb"), (tmp_path / "stderr.txt").open("wb")
        # Files, not pipes: nobody reads a pipe while the pages are fetched, and a full one
        # would block botsky's logging.
        proc = subprocess.Popen(
            [sys.executable, "-m", "botsky", "run", "-c", str(cfg)],
            cwd=tmp_path,
            env=_env(),
            stdout=out,
            stderr=err,
        )
        try:
            with httpx.Client(timeout=5, trust_env=False) as client:
                deadline = time.monotonic() + 60
                # Until the page is up and shows a conversation (ledger numbers are cached
                # for 5 s; the slow model keeps the run going for about 12 s).
                while True:
                    assert proc.poll() is None, "botsky ended before the pages were fetched"
                    assert time.monotonic() < deadline, "no conversation on the page in time"
                    try:
                        convs = client.get(f"{base}/api/conversations", headers=auth)
                    except httpx.TransportError:
                        convs = None
                    if convs is not None and convs.status_code == 200 and convs.json():
                        break
                    time.sleep(0.1)
                for path in ("/", "/healthz", "/readyz", "/metrics", "/api/leaderboard"):
                    page = client.get(base + path, headers=auth)
                    assert page.status_code in (200, 503), (path, page.status_code)
                    pages.append((path, page.content))
                pages.append(("/api/conversations", convs.content))
                denied = client.get(f"{base}/metrics")  # without the token
                assert denied.status_code == 401
                pages.append(("401", denied.content + str(denied.headers).encode()))
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            out.close()
            err.close()
    stdout, stderr = (tmp_path / "stdout.txt").read_bytes(), (tmp_path / "stderr.txt").read_bytes()
    assert proc.returncode == 0, stderr.decode()[-3000:]
    assert b"botsky_events_total" in dict(pages)["/metrics"]
    assert b"Good question" in dict(pages)["/api/conversations"]
    assert_clean([("stdout", stdout), ("stderr", stderr), *pages, *_files(tmp_path / "data")])
    assert b"leaked_secret" in stdout


@pytest.mark.parametrize("name", sorted(SECRETS))
def test_secret_values_are_distinct_and_long(name: str) -> None:
    """Each fake secret is long and unique, so a hit can only be a leak of that secret."""
    value = SECRETS[name]
    assert len(value) >= 16 and sum(value in other for other in SECRETS.values()) == 1
