"""The live path end to end: ``botsky run`` on the reference PDS's firehose, posting for real.

Two bot accounts and four users on a loopback PDS (with its in-memory PLC); the models are a
fake OpenAI-compatible server. botsky reads the PDS's ``subscribeRepos`` (source ``relay``),
answers the opted-in author A with a mention of the opted-in, similar user B (checked on the
PDS: facet byte range, reply refs), records B's answer in the thread as a success, never
answers or mentions C (who never opted in), and never mentions B again once B blocks a bot.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from click.testing import CliRunner

from botsky.accounts import accounts
from botsky.ledger.base import AccountStatus, Mention, Outcome
from botsky.ledger.sqlite import SqliteLedger
from botsky.testing import FakeVendorServer, handles_offered
from tests.pds.botsky_run import BotskyRun
from tests.pds.harness import LocalPds, TestAccount
from tests.support import unique_name

pytestmark = pytest.mark.slow

REPO = Path(__file__).parent.parent
POST = "app.bsky.feed.post"
SOURCE_NAME = "it-relay"
RESOLVE_HANDLE = "com.atproto.identity.resolveHandle"
WAIT_S = 90.0

T = TypeVar("T")


def _now() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"


def _post(
    pds: LocalPds, who: TestAccount, text: str, reply: dict[str, Any] | None = None
) -> dict[str, str]:
    record: dict[str, Any] = {"$type": POST, "text": text, "createdAt": _now(), "langs": ["en"]}
    if reply is not None:
        record["reply"] = reply
    return pds.create_record(who, POST, record)


def _graph(pds: LocalPds, who: TestAccount, kind: str, subject: str) -> dict[str, str]:
    collection = f"app.bsky.graph.{kind}"
    return pds.create_record(
        who, collection, {"$type": collection, "subject": subject, "createdAt": _now()}
    )


def _write_config(
    tmp: Path, pds: LocalPds, model_url: str, bots: list[tuple[str, TestAccount]]
) -> Path:
    bots_yaml = {
        "bots": [
            {
                "name": name,
                "persona": f"You are {name}, brief and kind.",
                "provider": "openai_compatible",
                "base_url": f"{model_url}/v1",
                "model": f"fake-{name}",
                "picker": "llm",
                "account": {
                    "handle": acct.handle,
                    "did": acct.did,
                    "password_env": f"IT_PW_{name.upper()}",
                },
                "languages": ["en"],
            }
            for name, acct in bots
        ]
    }
    (tmp / "bots.yaml").write_text(json.dumps(bots_yaml))
    cfg = {
        "data_dir": str(tmp / "data"),
        "bots_file": "bots.yaml",
        "seed": 7,
        # Resume from cursor 0 (seeded below): the firehose replays the users' history first.
        "source": {"kind": "relay", "url": pds.ws_url, "name": SOURCE_NAME, "resume": True},
        "posting": {"mode": "live", "pds_url": pds.pds_url, "posts_per_minute": 60},
        "identity": {
            "resolve": True,
            "plc_url": pds.plc_url,
            "verify": "xrpc",
            "resolve_handle_url": pds.pds_url,
        },
        "audience": {
            "mode": "opt_in",
            "mentions_per_target_per_day": 10,
            "replies_per_author_per_day": 10,
        },
        "dispatch": {"author_cooldown_s": 0, "workers": 2},
        "recommend": {"cooldown_s": 0},
        "scoring": {"interval_s": 1},
        "logging": {"format": "json", "level": "info"},
    }
    path = tmp / "botsky.yaml"
    path.write_text(json.dumps(cfg))
    return path


async def _inactive(path: Path) -> list[AccountStatus]:
    led = SqliteLedger(path)
    await led.open()
    try:
        return await led.inactive_accounts()
    finally:
        await led.close()


async def _ledger_state(path: Path) -> tuple[list[Mention], list[Outcome], dict[str, str]]:
    led = SqliteLedger(path)
    await led.open()
    try:
        return await led.mentions(), await led.outcomes(), await led.opt_outs()
    finally:
        await led.close()


async def _seed_cursor(path: Path) -> None:
    """Seed the relay cursor at 0 so botsky replays the firehose from the first event."""
    led = SqliteLedger(path)
    await led.open()
    try:
        await led.save_cursor(SOURCE_NAME, 0)
    finally:
        await led.close()


class Botsky(BotskyRun):
    """``botsky run`` as a subprocess (``tests/pds/botsky_run.py``), reading its ledger."""

    def __init__(self, cfg: Path, env: dict[str, str], tmp: Path) -> None:
        super().__init__(cfg, env)
        self.ledger = tmp / "data" / "botsky.sqlite3"

    def state(self) -> tuple[list[Mention], list[Outcome], dict[str, str]]:
        return asyncio.run(_ledger_state(self.ledger))

    def inactive(self) -> list[AccountStatus]:
        return asyncio.run(_inactive(self.ledger))


def _bot_replies(pds: LocalPds, bots: list[TestAccount]) -> list[dict[str, Any]]:
    return [r for b in bots for r in pds.list_records(b.did, POST)]


def test_live_run_on_the_reference_pds(local_pds: LocalPds, tmp_path: Path) -> None:
    """A's post gets a reply mentioning B, B's answer scores a success, C is left alone, and a
    block by B stops every later mention of B."""
    pds = local_pds
    bot1 = pds.create_account(unique_name("botone"))
    bot2 = pds.create_account(unique_name("bottwo"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOTSKY_")}
    env |= {"IT_PW_ONE": pds.app_password(bot1), "IT_PW_TWO": pds.app_password(bot2)}
    a, b, c, d = (pds.create_account(unique_name(n)) for n in ("usera", "userb", "userc", "userd"))

    # B and D post while not yet opted in (so their posts are not answered), then opt in by
    # following a bot; C posts on B's topic but never opts in; A opts in and asks later.
    _post(pds, b, "Sourdough baking: my rye starter doubles overnight, crusty loaves every day")
    _post(pds, c, "Sourdough bread and rye starters are my whole life, baking every morning")
    _post(pds, d, "Chess openings at the club, then a warm rye coffee after the endgame")
    _graph(pds, b, "follow", bot2.did)
    _graph(pds, d, "follow", bot2.did)
    _graph(pds, a, "follow", bot1.did)

    def choose(system: str, user: str) -> dict[str, Any]:
        offered = handles_offered(user)
        chosen = next((h for h in offered if h == b.handle), offered[0] if offered else "x.test")
        return {"reply": f"Lovely! @{chosen} bakes a lot, ask them.", "mention": chosen}

    with FakeVendorServer(choose=choose) as model:
        cfg = _write_config(tmp_path, pds, model.url, [("one", bot1), ("two", bot2)])
        labelled = CliRunner().invoke(accounts, ["label", "-c", str(cfg)], env=env)
        assert labelled.exit_code == 0, labelled.output
        for bot in (bot1, bot2):
            profile = pds.get_record(f"at://{bot.did}/app.bsky.actor.profile/self")["value"]
            assert {"val": "bot"} in profile["labels"]["values"]

        (tmp_path / "data").mkdir(exist_ok=True)
        asyncio.run(_seed_cursor(tmp_path / "data" / "botsky.sqlite3"))

        resolved_before = pds.counts().get(RESOLVE_HANDLE, 0)
        run = Botsky(cfg, env, tmp_path)
        try:
            # botsky verifies each post author's handle (PLC document, then resolveHandle on the
            # PDS) in the background; a user is mentionable only once that is done, so A asks
            # once B, C and D are verified, as on a real network where they were online before.
            def verified() -> bool | None:
                return pds.counts().get(RESOLVE_HANDLE, 0) - resolved_before >= 3 or None

            run.wait_for("botsky to verify the handles of B, C and D", verified)
            question = _post(
                pds, a, "Any tips for a sourdough rye starter? My loaves come out flat"
            )

            def first_mention() -> Mention | None:
                mentions, _, _ = run.state()
                return mentions[0] if mentions else None

            m1 = run.wait_for("the reply to A", first_mention)
            assert m1.post_uri == question["uri"] and m1.post_author == a.did
            assert m1.mentioned_did == b.did and m1.mentioned_handle == b.handle
            assert m1.bot in ("one", "two")

            # The reply on the PDS: in the bot's repo, threaded under A's post, facet on @B.
            bot = bot1 if m1.bot == "one" else bot2
            reply = pds.get_record(m1.reply_uri)
            assert m1.reply_uri.startswith(f"at://{bot.did}/{POST}/")
            assert reply["cid"] == m1.reply_cid
            value = reply["value"]
            assert value["reply"] == {"root": question, "parent": question}
            (facet,) = value["facets"]
            start, end = facet["index"]["byteStart"], facet["index"]["byteEnd"]
            assert value["text"].encode()[start:end] == f"@{b.handle}".encode()
            assert facet["features"] == [{"$type": "app.bsky.richtext.facet#mention", "did": b.did}]

            # B answers in the thread: a success.
            _post(
                pds,
                b,
                "Feed it twice a day and keep it warm!",
                reply={"root": question, "parent": {"uri": m1.reply_uri, "cid": m1.reply_cid}},
            )

            def success() -> Outcome | None:
                _, outcomes, _ = run.state()
                return next(
                    (o for o in outcomes if o.kind == "success" and o.mention_id == m1.id), None
                )

            assert run.wait_for("B's success", success).actor == b.did

            # C asks too: never answered (no consent). B blocks bot one: opted out for good.
            c_question = _post(pds, c, "Sourdough question: how do I revive a sleepy rye starter?")
            _graph(pds, b, "block", bot1.did)

            def b_opted_out() -> str | None:
                _, _, opted_out = run.state()
                return opted_out.get(b.did)

            run.wait_for("B's opt-out", b_opted_out)

            # A asks again on B's topic: the only mentionable user left is D.
            second = _post(pds, a, "Rye sourdough again: how warm should the starter be?")

            def second_mention() -> Mention | None:
                mentions, _, _ = run.state()
                return next((m for m in mentions if m.post_uri == second["uri"]), None)

            m2 = run.wait_for("the reply to A's second post", second_mention)
            assert m2.mentioned_did == d.did
        finally:
            code = run.stop()
        assert code == 0, run.output()

    mentions, _, opted_out = asyncio.run(_ledger_state(run.ledger))
    assert [m.mentioned_did for m in mentions] == [b.did, d.did]
    assert all(c.did not in m.candidates for m in mentions)
    assert b.did not in mentions[1].candidates
    assert opted_out[b.did]
    replies = _bot_replies(pds, [bot1, bot2])
    assert len(replies) == 2
    assert not any(r["value"]["reply"]["parent"]["uri"] == c_question["uri"] for r in replies)
    mentioned = [f["did"] for r in replies for fc in r["value"]["facets"] for f in fc["features"]]
    assert c.did not in mentioned and mentioned.count(b.did) == 1

    scores = subprocess.run(
        [sys.executable, "-m", "botsky", "scores", "--json", "-c", str(cfg)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert scores.returncode == 0, scores.stderr
    rows = json.loads(scores.stdout)["scores"]
    assert sum(r["mentions"] for r in rows) == 2
    # Both windows (a day) are still open: pending, and B's answer shows in Kaplan-Meier.
    assert sum(r["pending"] for r in rows) == 2
    assert any(r["km_rate"] and r["km_rate"] > 0 for r in rows)


def test_deactivated_account_is_not_mentioned_until_reactivated(
    local_pds: LocalPds, tmp_path: Path
) -> None:
    """The PDS's own #account event (com.atproto.server.deactivateAccount) makes botsky stop
    offering that user; activateAccount's event makes the user mentionable again."""
    pds = local_pds
    bot = pds.create_account(unique_name("botthree"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOTSKY_")}
    env |= {"IT_PW_THREE": pds.app_password(bot)}
    a, b, d = (pds.create_account(unique_name(n)) for n in ("askera", "bakerb", "bakerd"))
    _post(pds, b, "Sourdough baking: my rye starter doubles overnight, crusty loaves every day")
    _post(pds, d, "Sourdough bread with a rye starter, baking loaves every weekend")
    for who in (a, b, d):
        _graph(pds, who, "follow", bot.did)

    def choose(system: str, user: str) -> dict[str, Any]:
        offered = handles_offered(user)
        chosen = next((h for h in offered if h == b.handle), offered[0] if offered else "x.test")
        return {"reply": f"Ask @{chosen}, a keen baker.", "mention": chosen}

    with FakeVendorServer(choose=choose) as model:
        cfg = _write_config(tmp_path, pds, model.url, [("three", bot)])
        (tmp_path / "data").mkdir(exist_ok=True)
        asyncio.run(_seed_cursor(tmp_path / "data" / "botsky.sqlite3"))
        resolved_before = pds.counts().get(RESOLVE_HANDLE, 0)
        run = Botsky(cfg, env, tmp_path)
        try:

            def verified() -> bool | None:
                return pds.counts().get(RESOLVE_HANDLE, 0) - resolved_before >= 2 or None

            run.wait_for("botsky to verify the handles of B and D", verified)
            pds.xrpc("com.atproto.server.deactivateAccount", body={}, jwt=b.access_jwt)
            (gone,) = run.wait_for("B's deactivation", lambda: run.inactive() or None)
            assert gone.did == b.did and not gone.active and gone.status == "deactivated"

            first = _post(pds, a, "Any tips for a sourdough rye starter? My loaves come out flat")

            def mention_of(uri: str) -> Callable[[], Mention | None]:
                def probe() -> Mention | None:
                    mentions, _, _ = run.state()
                    return next((m for m in mentions if m.post_uri == uri), None)

                return probe

            m1 = run.wait_for("the reply to A", mention_of(first["uri"]))
            assert m1.mentioned_did == d.did and b.did not in m1.candidates

            pds.xrpc("com.atproto.server.activateAccount", post=True, jwt=b.access_jwt)
            run.wait_for("B's reactivation", lambda: run.inactive() == [] or None)
            # B is back and posts again (online); A asks again: B is offered and chosen.
            _post(pds, b, "Back to sourdough baking: the rye starter survived my break")
            second = _post(pds, a, "Rye sourdough again: how warm should the starter be?")
            m2 = run.wait_for("the reply to A's second post", mention_of(second["uri"]))
            assert m2.mentioned_did == b.did
        finally:
            code = run.stop()
        assert code == 0, run.output()
