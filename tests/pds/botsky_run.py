"""``botsky run`` as a subprocess against the local PDS: the config, the process, the ledger.

The PDS fault and limit tests (``tests/test_pds_posting.py``) start botsky, change the PDS under
it (freeze, kill, restart, a fault proxy in front, its own rate limits) and read what botsky
recorded through the ledger's own contract, never its tables.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from botsky.ledger import Ledger, open_ledger
from botsky.ledger.base import Claim, Mention
from tests.pds.harness import LocalPds, TestAccount

__all__ = [
    "POST",
    "BotskyRun",
    "LedgerView",
    "bot_replies",
    "clean_env",
    "now_rfc3339",
    "post",
    "write_config",
]

POST = "app.bsky.feed.post"
T = TypeVar("T")


def now_rfc3339() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"


def post(pds: LocalPds, who: TestAccount, text: str) -> dict[str, str]:
    """A new English post by ``who`` (written directly to the PDS, past any proxy)."""
    record = {"$type": POST, "text": text, "createdAt": now_rfc3339(), "langs": ["en"]}
    return pds.create_record(who, POST, record)


def bot_replies(pds: LocalPds, bots: list[TestAccount]) -> list[dict[str, Any]]:
    """Every reply record in the bots' repos (their other posts left out)."""
    out = []
    for bot in bots:
        cursor = None
        while True:
            params: dict[str, Any] = {"repo": bot.did, "collection": POST, "limit": 100}
            if cursor:
                params["cursor"] = cursor
            page = pds.xrpc("com.atproto.repo.listRecords", params=params)
            out += [r for r in page["records"] if "reply" in r["value"]]
            cursor = page.get("cursor")
            if not cursor or not page["records"]:
                break
    return out


def write_config(
    tmp: Path,
    pds: LocalPds,
    *,
    model_url: str,
    bots: list[tuple[str, TestAccount]],
    posting_url: str,
    ledger_url: str = "sqlite",
    posting: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """botsky.yaml and bots.yaml in ``tmp``: the PDS's firehose as the source (from the cursor
    the caller seeds), an open audience (the PDS is ours), live posting to ``posting_url``."""
    bots_yaml = {
        "bots": [
            {
                "name": name,
                "persona": f"You are {name}, brief and kind.",
                "provider": "openai_compatible",
                "base_url": f"{model_url}/v1",
                "model": f"fake-{name}",
                "picker": "similar",
                "account": {
                    "handle": acct.handle,
                    "did": acct.did,
                    "password_env": f"PW_{name.upper()}",
                },
                "languages": ["en"],
            }
            for name, acct in bots
        ]
    }
    (tmp / "bots.yaml").write_text(json.dumps(bots_yaml))
    cfg: dict[str, Any] = {
        "data_dir": str(tmp / "data"),
        "bots_file": "bots.yaml",
        "seed": 11,
        "source": {"kind": "relay", "url": pds.ws_url, "name": "pds", "resume": True},
        "ledger": {"url": ledger_url},
        "posting": {"mode": "live", "pds_url": posting_url, **(posting or {})},
        # Handles come from the firehose's #identity events (the PDS emits one per account).
        "identity": {"resolve": False},
        "audience": {
            "mode": "open",
            "acknowledge_open_audience": True,
            "mentions_per_target_per_day": None,
            "replies_per_author_per_day": None,
        },
        "dispatch": {"author_cooldown_s": 0, "workers": 4},
        "recommend": {"cooldown_s": 0},
        "scoring": {"interval_s": 5},
        "logging": {"format": "json", "level": "info"},
        **(extra or {}),
    }
    path = tmp / "botsky.yaml"
    path.write_text(json.dumps(cfg))
    return path


class LedgerView:
    """What botsky recorded, read through the Ledger contract (a fresh connection per look)."""

    def __init__(self, url: str, data_dir: Path) -> None:
        self.url = url
        self.data_dir = data_dir

    def _read(self, fn: Callable[[Ledger], Any]) -> Any:
        async def go() -> Any:
            ledger = open_ledger(self.url, self.data_dir)
            await ledger.open()
            try:
                return await fn(ledger)
            finally:
                await ledger.close()

        return asyncio.run(go())

    def mentions(self) -> list[Mention]:
        result: list[Mention] = self._read(lambda led: led.mentions())
        return result

    def claims(self) -> dict[str, Claim]:
        """Every claim by post URI, whatever its status."""

        async def all_claims(led: Ledger) -> dict[str, Claim]:
            out: dict[str, Claim] = {}
            for status in ("posting", "retry", "posted", "failed"):
                out |= {c.post_uri: c for c in await led.claims(status)}
            return out

        result: dict[str, Claim] = self._read(all_claims)
        return result

    def blocks(self) -> dict[str, tuple[int, str]]:
        result: dict[str, tuple[int, str]] = self._read(lambda led: led.account_blocks())
        return result

    def seed_cursor(self, source: str, cursor: int) -> None:
        self._read(lambda led: led.save_cursor(source, cursor))

    def cursor(self, source: str) -> int | None:
        result: int | None = self._read(lambda led: led.load_cursor(source))
        return result

    def opt_ins(self) -> dict[str, str]:
        """Every opt-in's reason, by DID."""
        result: dict[str, tuple[str, int]] = self._read(lambda led: led.opt_ins())
        return {did: reason for did, (reason, _) in result.items()}


class BotskyRun:
    """``botsky run -c cfg`` as a subprocess; its output goes to files so it cannot block."""

    def __init__(self, cfg: Path, env: dict[str, str], name: str = "run") -> None:
        self.out_path = cfg.parent / f"{name}.stdout"
        self.err_path = cfg.parent / f"{name}.stderr"
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "botsky", "run", "-c", str(cfg)],
                cwd=cfg.parent,
                env=env,
                stdout=out,
                stderr=err,
                text=True,
            )

    def output(self) -> str:
        return self.out_path.read_text()[-8000:] + "\n--- stderr ---\n" + self.err_path.read_text()

    def events(self, name: str) -> list[dict[str, Any]]:
        """The JSON log lines whose event is ``name``."""
        found = []
        for line in self.out_path.read_text().splitlines():
            if f'"{name}"' in line:
                rec = json.loads(line)
                if rec.get("event") == name:
                    found.append(rec)
        return found

    def wait_for(self, what: str, probe: Callable[[], T | None], timeout: float = 90.0) -> T:
        """Poll ``probe`` until it returns something; fail fast if botsky died."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                pytest.fail(
                    f"botsky exited ({self.proc.returncode}) before {what}:\n{self.output()}"
                )
            found = probe()
            if found is not None:
                return found
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}:\n{self.output()}")
            time.sleep(0.05)

    def stop(self) -> int:
        """SIGTERM, then wait (bounded) for a clean exit."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
                pytest.fail(f"botsky ignored SIGTERM:\n{self.output()}")
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def clean_env(**passwords: str) -> dict[str, str]:
    """The test's environment without BOTSKY_* settings, plus the bots' app passwords."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOTSKY_")}
    return env | passwords
