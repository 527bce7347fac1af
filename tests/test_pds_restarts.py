"""Restarts at random moments, against the reference PDS: no lost work, no forgotten consent.

``botsky run`` reads the PDS's firehose (the relay source, ``subscribeRepos``) and posts to it,
with a loopback model that takes 1-3 s per reply, so replies are queued and in flight whenever
the process dies. Meanwhile users keep posting, also while botsky is down: three askers who
followed a bot (opted in), one who did not, and an expert (a follower too, so mentionable)
whose posts are replies in a thread of her own (not answered: ``reply_to_replies`` is off) and
make her the one online expert. botsky is SIGKILLed 20 times and SIGTERMed 3 times, each at a
random moment after it started (half of them while the model is answering one of its posts),
and restarted each time; a last run answers what is left. The warm-start window is 15 s, so
the follows leave it early on: later runs know the followers only from the ledger.

What must hold: every question of a follower answered exactly once, the non-follower's never;
every reply in the bot's repo in the ledger and every mention's reply in the repo.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from botsky.sources.relay import RelaySource
from botsky.testing import FakeVendorServer
from tests.pds.botsky_run import (
    POST,
    BotskyRun,
    LedgerView,
    bot_replies,
    clean_env,
    now_rfc3339,
    post,
    write_config,
)
from tests.pds.harness import LocalPds, TestAccount
from tests.support import unique_name

pytestmark = pytest.mark.slow

KILLS = 20
TERMS = 3
WARM_S = 15.0
FOLLOW = "app.bsky.graph.follow"
EXPERT_TEXT = "Sourdough rye starter: I bake crusty loaves every morning, feeding it twice a day"


def _question(who: int, n: int) -> str:
    return (
        f"Question {who}.{n}: how do I keep a sourdough rye starter alive and my bread "
        "from going flat?"
    )


def _follow(pds: LocalPds, who: TestAccount, bot: TestAccount) -> str:
    record = {"$type": FOLLOW, "subject": bot.did, "createdAt": now_rfc3339()}
    return pds.create_record(who, FOLLOW, record)["uri"]


def _seq_of(pds: LocalPds, uri: str) -> int:
    """The firehose seq of the commit that created ``uri`` (read with botsky's relay source)."""

    async def find() -> int:
        source = RelaySource(pds.ws_url, after_cursor=0, collections=[FOLLOW, POST])
        try:
            async with asyncio.timeout(30):
                async for event in source:
                    if event.kind == "commit" and event.uri == uri:
                        return event.cursor
        finally:
            await source.aclose()
        raise AssertionError(f"{uri} is not on the firehose")

    return asyncio.run(find())


class Users(threading.Thread):
    """Posts questions (and the expert's thread replies) at random intervals until stopped."""

    def __init__(
        self,
        pds: LocalPds,
        askers: list[TestAccount],
        stranger: TestAccount,
        expert: TestAccount,
        root: dict[str, str],
    ) -> None:
        super().__init__(daemon=True)
        self.pds, self.askers, self.stranger, self.expert, self.root = (
            pds,
            askers,
            stranger,
            expert,
            root,
        )
        self.rng = random.Random()
        self.done = threading.Event()
        self.asked: list[tuple[str, float]] = []  # (uri, when) of the followers' questions
        self.strangers: list[str] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        n = 0
        next_expert = 0.0
        try:
            while not self.done.is_set():
                n += 1
                if time.monotonic() >= next_expert:
                    self._expert_says(n)
                    next_expert = time.monotonic() + 4.0
                if n % 6 == 0:
                    self.strangers.append(post(self.pds, self.stranger, _question(9, n))["uri"])
                else:
                    who = self.rng.randrange(len(self.askers))
                    uri = post(self.pds, self.askers[who], _question(who, n))["uri"]
                    self.asked.append((uri, time.monotonic()))
                self.done.wait(self.rng.uniform(0.6, 2.2))
            self._last()
        except BaseException as exc:  # reported by the test
            self.error = exc

    def _expert_says(self, n: int) -> None:
        ref = {"uri": self.root["uri"], "cid": self.root["cid"]}
        record = {
            "$type": POST,
            "text": f"{EXPERT_TEXT} (day {n})",
            "createdAt": now_rfc3339(),
            "langs": ["en"],
            "reply": {"root": ref, "parent": ref},
        }
        self.pds.create_record(self.expert, POST, record)

    def _last(self) -> None:
        # The last post is a follower's: once it is answered, everything before it was read.
        uri = post(self.pds, self.askers[0], _question(0, 10_000))["uri"]
        self.asked.append((uri, time.monotonic()))


def _settled(view: LedgerView, uris: list[str]) -> bool | None:
    claims = view.claims()
    if all(u in claims and claims[u].status in ("posted", "failed") for u in uris) and not [
        c for c in claims.values() if c.status in ("posting", "retry")
    ]:
        return True
    return None


def test_kills_and_stops_at_random_moments_lose_no_work_and_no_consent(
    pds_factory: Callable[..., LocalPds], tmp_path: Path
) -> None:
    started = time.monotonic()
    pds = pds_factory()
    bot = pds.create_account(unique_name("bot"))
    expert = pds.create_account(unique_name("expert"))
    askers = [pds.create_account(unique_name(f"asker{i}")) for i in range(3)]
    stranger = pds.create_account(unique_name("stranger"))
    root = post(pds, expert, EXPERT_TEXT)  # before her follow: not answered (no consent yet)
    follows = [_follow(pds, who, bot) for who in (expert, *askers)]
    follow_seq = _seq_of(pds, follows[-1])

    rng = random.Random()
    arrivals: list[tuple[float, float]] = []  # (when, delay) of every model call

    def latency() -> float:
        delay = rng.uniform(1.0, 3.0)
        arrivals.append((time.monotonic(), delay))
        return delay

    cfg_extra: dict[str, Any] = {
        "source": {
            "kind": "relay",
            "url": pds.ws_url,
            "name": "pds",
            "resume": True,
            "warm_start_s": WARM_S,
        },
        "identity": {
            "resolve": True,
            "plc_url": pds.plc_url,
            "verify": "xrpc",
            "resolve_handle_url": pds.pds_url,
        },
        "audience": {
            "mode": "opt_in",
            "mentions_per_target_per_day": None,
            "replies_per_author_per_day": None,
        },
        "dispatch": {
            "author_cooldown_s": 0,
            "workers": 4,
            "reply_to_replies": False,
            # SIGTERM: replies in flight get 1 s, so some finish and some are cancelled (kept).
            "shutdown_deadline_s": 1.0,
        },
    }
    with FakeVendorServer() as model:
        model.answer_delay = latency
        cfg = write_config(
            tmp_path,
            pds,
            model_url=model.url,
            bots=[("b0", bot)],
            posting_url=pds.pds_url,
            posting={"posts_per_minute": 600},
            extra=cfg_extra,
        )
        env = clean_env(PW_B0=pds.app_password(bot))
        (tmp_path / "data").mkdir(exist_ok=True)
        view = LedgerView("sqlite", tmp_path / "data")
        view.seed_cursor("pds", 0)
        users = Users(pds, askers, stranger, expert, root)
        users.start()
        terms_at = set(rng.sample(range(KILLS + TERMS), TERMS))
        runs: list[BotskyRun] = []
        busy_kills = terms = 0
        unfinished: list[int] = []  # followers' questions asked but not answered, per kill
        try:
            for i in range(KILLS + TERMS):
                run = BotskyRun(cfg, env, f"r{i:02d}")
                runs.append(run)
                run.wait_for("the start", lambda run=run: run.events("app_started") or None)
                t0 = time.monotonic()
                if i % 2:
                    # While the model answers one of this process's posts, at a random point
                    # of that call.
                    def answering(t0: float = t0) -> tuple[float, float] | None:
                        now = time.monotonic()
                        mine = [(a, d) for a, d in arrivals if a >= t0 and a + d > now]
                        return mine[0] if mine else None

                    when, delay = run.wait_for("a model call", answering, timeout=30)
                    # (Not in its last fifth: the kill must land before the answer does.)
                    until = rng.uniform(when, when + 0.8 * delay)
                    time.sleep(max(0.0, until - time.monotonic()))
                else:
                    time.sleep(rng.uniform(0.0, 4.0))
                now = time.monotonic()
                busy = any(a >= t0 and a + d > now for a, d in arrivals)
                if i in terms_at:
                    assert run.stop() == 0, run.output()
                    terms += 1
                else:
                    run.kill()
                busy_kills += busy
                claims = view.claims()
                asked = [u for u, _ in users.asked]
                unfinished.append(sum(1 for u in asked if u not in claims))
                assert users.error is None, users.error
        finally:
            users.done.set()
            users.join(timeout=30)
        assert users.error is None, users.error
        asked = [u for u, _ in users.asked]
        final = BotskyRun(cfg, env, "final")
        runs.append(final)

        def settled() -> bool | None:
            refused = [e for r in runs for e in r.events("no_candidates")]
            assert not refused, f"refused for want of candidates (a cold start): {refused}"
            return _settled(view, asked)

        try:
            final.wait_for("every question settled", settled, timeout=180)
        finally:
            assert final.stop() == 0, final.output()
    took = time.monotonic() - started

    # 0 duplicate replies, 0 replies without a mention, 0 mentions without a reply.
    replies = bot_replies(pds, [bot])
    per_parent = Counter(r["value"]["reply"]["parent"]["uri"] for r in replies)
    mentions = view.mentions()
    in_ledger = Counter(m.reply_uri for m in mentions)
    in_repo = Counter(r["uri"] for r in replies)
    assert max(per_parent.values()) == 1, [p for p, n in per_parent.items() if n > 1]
    assert in_ledger == in_repo, (in_ledger - in_repo, in_repo - in_ledger)
    # Every follower's question answered (none refused), the stranger's never.
    claims = view.claims()
    assert {claims[u].status for u in asked} == {"posted"}, [
        (u, claims[u]) for u in asked if claims[u].status != "posted"
    ]
    assert set(per_parent) == set(asked)
    assert not set(users.strangers) & set(claims)
    # Consent survived the restarts: the follows are kept in the ledger, and runs that started
    # reading after them (the warm window had passed them) answered followers.
    kept = view.opt_ins()
    assert {kept.get(a.did) for a in (expert, *askers)} == {"followed a bot"}
    after_follows = [r for r in runs if r.events("app_started")[0]["start"] > follow_seq]
    answered_after = sum(len(r.events("reply_posted")) for r in after_follows)
    assert answered_after > 0, [r.events("app_started")[0] for r in runs]
    # Warm starts happened, and queued posts were kept over a SIGTERM, not dropped.
    warm = sum(1 for r in runs if r.events("warm_start_done"))
    assert not any(r.events("pending_posts_dropped") for r in runs)
    assert terms == TERMS and busy_kills >= (KILLS + TERMS) // 2
    print(
        f"\nrestarts: {KILLS} SIGKILL + {TERMS} SIGTERM ({busy_kills} with a model call in "
        f"flight; unanswered questions at each kill: {unfinished}); warm starts: {warm}; "
        f"questions: {len(asked)} by followers, {len(users.strangers)} by a stranger; "
        f"replies: {len(replies)}, duplicates: 0; runs started past the follows answered "
        f"{answered_after}; model calls: {len(arrivals)}; took {took:.0f} s"
    )
