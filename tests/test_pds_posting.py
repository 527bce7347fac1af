"""Posting through PDS faults and under the PDS's rate limits, against the reference PDS.

``botsky run`` reads the PDS's firehose and posts through the fault proxy (``tests/pds``) while
the test freezes the PDS (SIGSTOP longer than botsky's timeout), kills it with creates in
flight, cuts answers after the commit, answers 5xx and holds requests; or switches the PDS's
own rate limits on and gives botsky a low budget, restarts it and runs two replicas. What is
checked is what a user of botsky must be able to rely on: every reply in the bots' repos is in
the ledger exactly once, every post is answered once or refused with a recorded reason, and no
write goes to the PDS for an account it blocked with a 429 until the reset.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from botsky.ledger.base import Claim
from botsky.testing import FakeVendorServer
from tests.pds.botsky_run import (
    BotskyRun,
    LedgerView,
    bot_replies,
    clean_env,
    post,
    write_config,
)
from tests.pds.harness import Fault, LocalPds, TestAccount
from tests.support import unique_name

pytestmark = pytest.mark.slow

CREATE = "com.atproto.repo.createRecord"
EXPERT_TEXT = "Sourdough rye starter: I bake crusty loaves every morning, feeding it twice a day"


def _question(n: int) -> str:
    return (
        f"Question {n}: how do I keep a sourdough rye starter alive and my bread from going flat?"
    )


def _world(pds: LocalPds, bots: int = 2) -> tuple[list[TestAccount], TestAccount, TestAccount]:
    """Bot accounts, an expert who has posted on the topic (a candidate), and an asker."""
    made = [pds.create_account(unique_name(f"bot{i}")) for i in range(bots)]
    expert = pds.create_account(unique_name("expert"))
    asker = pds.create_account(unique_name("asker"))
    post(pds, expert, EXPERT_TEXT)
    return made, expert, asker


def _start(
    tmp: Path,
    pds: LocalPds,
    bots: list[TestAccount],
    model_url: str,
    posting_url: str,
    *,
    name: str = "run",
    **kw: Any,
) -> tuple[BotskyRun, LedgerView, Path, dict[str, str]]:
    named = [(f"b{i}", b) for i, b in enumerate(bots)]
    cfg = write_config(tmp, pds, model_url=model_url, bots=named, posting_url=posting_url, **kw)
    env = clean_env(**{f"PW_B{i}": pds.app_password(b) for i, b in enumerate(bots)})
    url = kw.get("ledger_url", "sqlite")
    view = LedgerView(url, tmp / "data")
    (tmp / "data").mkdir(exist_ok=True)
    return BotskyRun(cfg, env, name), view, cfg, env


def _exactly_once(pds: LocalPds, bots: list[TestAccount], view: LedgerView) -> list[Any]:
    """Every reply in the bots' repos is in the ledger exactly once, and every mention's reply
    is in a repo; returns the replies."""
    replies = bot_replies(pds, bots)
    in_ledger = Counter(m.reply_uri for m in view.mentions())
    in_repos = Counter(r["uri"] for r in replies)
    assert in_ledger == in_repos, (in_ledger, in_repos)
    assert set(in_ledger.values()) <= {1}
    return replies


def test_pds_frozen_killed_and_faulty_while_creates_are_in_flight(
    pds_factory: Callable[..., LocalPds], tmp_path: Path
) -> None:
    """Answers cut after the commit, 5xx before and after it, held requests, a PDS frozen
    (SIGSTOP) for longer than botsky's timeout and a PDS killed with creates in flight, then
    restarted on its data: every question is answered exactly once, every reply in the bots'
    repos is in the ledger exactly once, and nothing is left unsettled."""
    pds = pds_factory()
    bots, _expert, asker = _world(pds)
    questions: list[str] = []

    def ask(n: int) -> str:
        uri = post(pds, asker, _question(n))["uri"]
        questions.append(uri)
        return uri

    with FakeVendorServer() as model, pds.proxy() as proxy:
        run, view, _, _ = _start(
            tmp_path,
            pds,
            bots,
            model.url,
            proxy.url,
            posting={
                "timeout_s": 2.0,
                "retry_initial_s": 0.5,
                "retry_max_s": 3.0,
                "retry_attempts": 30,
                "posts_per_minute": 600,
            },
        )
        view.seed_cursor("pds", 0)

        def claims() -> dict[str, Claim]:
            return view.claims()

        def posted(*uris: str) -> bool | None:
            got = claims()
            return all(u in got and got[u].status == "posted" for u in uris) or None

        def writing(*numbers: int) -> bool | None:
            """Whether the model has been asked to answer each of these questions."""
            asked = [json.dumps(r["body"]) for r in model.requests]
            return all(any(f"Question {n}:" in a for a in asked) for n in numbers) or None

        try:
            # Warm up: botsky is reading and posting.
            q0 = ask(0)
            run.wait_for("the first reply", lambda: posted(q0))

            # Answers cut after the commit (the reply landed, botsky saw a network error).
            proxy.set(Fault("drop_after_commit", match=CREATE, times=2))
            q = ask(1), ask(2)
            run.wait_for("replies whose answers were cut", lambda: posted(*q))

            # A 502 after the commit, and a 503 that never reached the PDS.
            proxy.set(
                Fault("error_after_commit", match=CREATE, status=502, times=1),
                Fault("error", match=CREATE, status=503, times=1),
            )
            q = ask(3), ask(4)
            run.wait_for("replies after 5xx answers", lambda: posted(*q))

            # Held by the proxy until botsky gives up: the create never reaches the PDS.
            proxy.set(Fault("hang", match=CREATE, seconds=None))
            q5 = ask(5)
            held = lambda: any(f.fault == "hang" for f in proxy.requests(CREATE)) or None  # noqa: E731
            run.wait_for("botsky to give the held create up", held)
            proxy.clear()
            run.wait_for("the held create to be posted again", lambda: posted(q5))

            # Frozen with creates in its socket, longer than botsky's timeout (2 s): the PDS
            # is stopped while the (slow) model writes the replies, so the creates that follow
            # reach a frozen PDS, which commits them when it wakes.
            model.delay = 1.5
            q = ask(6), ask(7)
            run.wait_for("the model to be writing 6 and 7", lambda: writing(6, 7))
            pds.pause()
            time.sleep(8.0)
            pds.resume()
            run.wait_for("replies after the freeze", lambda: posted(*q))
            frozen = claims()
            assert all(frozen[u].attempts >= 1 for u in q), [frozen[u] for u in q]

            # Killed with creates in its socket (frozen first, so they are in it and never
            # processed), down a while, restarted on the same data.
            q = ask(8), ask(9)
            run.wait_for("the model to be writing 8 and 9", lambda: writing(8, 9))
            pds.pause()
            time.sleep(4.0)  # the model answers after 1.5 s; the creates go to the frozen PDS
            pds.kill()
            model.delay = 0.0
            time.sleep(3.0)  # botsky's retries meet a dead PDS (the proxy answers 502)
            pds.start_pds()
            run.wait_for("replies after the restart", lambda: posted(*q), timeout=120)
            killed = claims()
            assert all(killed[u].attempts >= 1 for u in q), [killed[u] for u in q]

            # And on as before.
            q10 = ask(10)
            run.wait_for("a reply after it all", lambda: posted(q10))
        finally:
            code = run.stop()
        assert code == 0, run.output()

    replies = _exactly_once(pds, bots, view)
    per_parent = Counter(r["value"]["reply"]["parent"]["uri"] for r in replies)
    assert [per_parent[q] for q in questions] == [1] * len(questions), per_parent
    assert max(per_parent.values()) == 1
    final = view.claims()
    assert {final[q].status for q in questions} == {"posted"}
    assert not [c for c in final.values() if c.status in ("posting", "retry")]
    assert run.events("post_outcome_unknown")  # the unknown path was taken, not avoided


# --- the PDS's own rate limits ---------------------------------------------------------------

BUDGETED = {
    # 15 points an hour at full headroom: 5 creates per account per hour, far below the
    # PDS's 5,000 points; a reply beyond it is refused at once (no waiting for an hour).
    "points_per_hour": 15,
    "budget_headroom": 1.0,
    "max_wait_s": 0.5,
    "posts_per_minute": 600,
    "timeout_s": 5.0,
}


def _settled(view: LedgerView, uris: list[str]) -> dict[str, Claim] | None:
    """The claims of ``uris`` once each is posted or failed (None before)."""
    got = view.claims()
    if all(u in got and got[u].status in ("posted", "failed") for u in uris):
        return {u: got[u] for u in uris}
    return None


def test_the_budget_holds_across_a_restart_and_two_replicas(
    pds_factory: Callable[..., LocalPds], tmp_path: Path, postgres_schema_dsn: str
) -> None:
    """With the PDS's rate limits on and a budget of 5 replies an hour: one replica answers 3
    questions, is restarted beside a second replica, and 5 more questions come: the two
    replicas together post only what is left of the budget, refuse the rest with the reason
    recorded (budget_spent), and the PDS never answers 429."""
    pds = pds_factory(rate_limits=True)
    (bot,), _expert, asker = _world(pds, bots=1)
    with FakeVendorServer() as model, pds.proxy() as proxy:
        kw: dict[str, Any] = {
            "ledger_url": postgres_schema_dsn,
            "posting": BUDGETED,
            "extra": {"scale": {"partitions": 8, "rebalance_s": 0.5}},
        }
        first, view, cfg, env = _start(tmp_path, pds, [bot], model.url, proxy.url, name="a1", **kw)
        view.seed_cursor("pds", 0)
        try:
            early = [post(pds, asker, _question(n))["uri"] for n in range(3)]
            first.wait_for("3 answers", lambda: _settled(view, early))
        finally:
            assert first.stop() == 0, first.output()
        # The restarted replicas start warm: they read the firehose from a window before
        # their marks again, observe-only, to know who is online (botsky.watermark).
        replicas = [BotskyRun(cfg, env, "a2"), BotskyRun(cfg, env, "b1")]
        try:
            for r in replicas:
                r.wait_for("the replica to start", lambda r=r: r.events("app_started") or None)
            # Both are in the group before the questions come (each rebalances every 0.5 s).
            time.sleep(2.0)
            late = [post(pds, asker, _question(n))["uri"] for n in range(3, 8)]
            replicas[0].wait_for("every late question settled", lambda: _settled(view, late))
        finally:
            codes = [r.stop() for r in replicas]
        assert codes == [0, 0], [r.output() for r in replicas]

    claims = view.claims()
    for q in early + late:
        assert q in claims, f"{q} was neither answered nor refused"
    posted = [c for c in claims.values() if c.status == "posted"]
    refused = [c for c in claims.values() if c.status == "failed"]
    assert len(posted) == 5, claims  # the whole budget, and not one reply more
    assert {c.reason for c in refused} == {"budget_spent"} and len(refused) >= 3
    assert {c.status for c in claims.values()} <= {"posted", "failed"}
    assert len(_exactly_once(pds, [bot], view)) == 5
    statuses = Counter(f.status for f in proxy.requests(CREATE))
    assert statuses == {200: 5}, statuses  # no 429, and no create beyond the budget


def _exhaust_writes(pds: LocalPds, who: TestAccount, leave: int = 2) -> None:
    """Spend ``who``'s hourly write points on the PDS down to ``leave`` (real, counted
    requests: applyWrites of up to 200 creates, 3 points each), as another client of the same
    account would."""
    points = 5000 - leave
    while points >= 3:
        n = min(200, points // 3)
        writes = [
            {
                "$type": "com.atproto.repo.applyWrites#create",
                "collection": "app.bsky.feed.post",
                "value": {
                    "$type": "app.bsky.feed.post",
                    "text": "x",
                    "createdAt": "2026-01-01T00:00:00Z",
                },
            }
        ] * n
        resp = pds.call(
            "com.atproto.repo.applyWrites",
            body={"repo": who.did, "writes": writes},
            jwt=who.access_jwt,
            bypass=False,
        )
        assert resp.status_code == 200, resp.text
        points -= 3 * n


def test_a_real_write_429_is_honoured_after_a_restart(
    pds_factory: Callable[..., LocalPds], tmp_path: Path
) -> None:
    """The bot's hourly write points are spent on the PDS by another client; botsky (whose own
    budget has room) gets a real 429 with ratelimit-reset about an hour away, refuses the reply
    with the reason, records the block, and after a restart sends no create for that account:
    the next question is refused without a call. (The reset is an hour away: that the block
    ends there is shown on a fake clock by tests/test_atposter.py.)"""
    pds = pds_factory(rate_limits=True)
    (bot,), _expert, asker = _world(pds, bots=1)
    _exhaust_writes(pds, bot)
    posting = {"points_per_hour": 5000, "budget_headroom": 1.0, "posts_per_minute": 600}
    with FakeVendorServer() as model, pds.proxy() as proxy:
        run, view, cfg, env = _start(
            tmp_path, pds, [bot], model.url, proxy.url, name="r1", posting=posting
        )
        view.seed_cursor("pds", 0)
        t0 = time.time()
        try:
            q1 = post(pds, asker, _question(1))["uri"]
            settled = run.wait_for("the first question settled", lambda: _settled(view, [q1]))
        finally:
            assert run.stop() == 0, run.output()
        assert settled[q1].status == "failed" and settled[q1].reason == "rate_limited"
        assert [f.status for f in proxy.requests(CREATE)] == [429]
        until_us, why = view.blocks()[bot.did]
        assert t0 + 3500 < until_us / 1e6 < time.time() + 3601 and "5000;w=3600" in why

        again = BotskyRun(cfg, env, "r2")
        try:
            q2 = post(pds, asker, _question(2))["uri"]
            settled = again.wait_for("the second question settled", lambda: _settled(view, [q2]))
        finally:
            assert again.stop() == 0, again.output()
        assert settled[q2].status == "failed" and settled[q2].reason == "rate_limited"
        assert [f.status for f in proxy.requests(CREATE)] == [429]  # no call since the 429
    assert bot_replies(pds, [bot]) == []


def test_a_real_login_429_is_honoured_after_a_restart(
    pds_factory: Callable[..., LocalPds], tmp_path: Path
) -> None:
    """createSession is limited to 30 per 5 minutes per identifier: with them spent (30 wrong
    passwords), botsky's login gets a real 429, the start fails with one line naming the
    wait, the block is recorded, and the next start does not call createSession at all."""
    pds = pds_factory(rate_limits=True)
    (bot,), _expert, _asker = _world(pds, bots=1)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:  # each login costs the PDS ~0.45 s of hashing
        tries = list(pool.map(lambda _: pds.login(bot.handle, "wrong").status_code, range(30)))
    assert tries == [401] * 30
    login = "com.atproto.server.createSession"
    with FakeVendorServer() as model, pds.proxy() as proxy:
        run, view, cfg, env = _start(tmp_path, pds, [bot], model.url, proxy.url, name="l1")
        assert run.proc.wait(timeout=60) == 1, run.output()
        assert "will not" in run.err_path.read_text() or "rate-limited" in run.err_path.read_text()
        assert [f.status for f in proxy.requests(login)] == [429]
        until_us, _ = view.blocks()[f"login:{bot.handle}"]
        assert until_us / 1e6 > time.time() + 200

        again = BotskyRun(cfg, env, "l2")
        assert again.proc.wait(timeout=60) == 1, again.output()
        assert "will not try again" in again.err_path.read_text()
        assert [f.status for f in proxy.requests(login)] == [429]  # not called again
