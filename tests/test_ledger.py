"""The ledger contract, run against SQLite and PostgreSQL alike, plus each backend's own edges."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import orjson
import pytest

from botsky.errors import ConfigError, LedgerError, LedgerUnavailable
from botsky.ledger import Ledger, Mention, Outcome, open_ledger
from botsky.ledger.base import AccountStatus, WriteSpends
from botsky.ledger.postgres import PostgresLedger
from botsky.ledger.sqlite import SqliteLedger

T0 = 1_700_000_000_000_000  # a realistic microsecond timestamp


# fixtures -----------------------------------------------------------------------------------
@pytest.fixture(
    params=["sqlite", "sqlite-inline", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Ledger]:
    """Makes unopened ledgers that all share one empty database of the parametrized backend."""
    if request.param.startswith("sqlite"):
        path = tmp_path / "not-yet-created" / "botsky.sqlite3"
        inline = request.param == "sqlite-inline"
        return lambda: SqliteLedger(path, inline=inline)
    dsn = request.getfixturevalue("postgres_schema_dsn")
    return lambda: PostgresLedger(dsn)


@pytest.fixture
async def ledgers(store: Callable[[], Ledger]) -> AsyncIterator[Callable[[], Awaitable[Ledger]]]:
    """Opens ledgers on the shared database and closes all of them after the test."""
    made: list[Ledger] = []

    async def new() -> Ledger:
        ledger = store()
        made.append(ledger)
        await ledger.open()
        return ledger

    yield new
    for ledger in made:
        await ledger.close()


@pytest.fixture
async def ledger(ledgers: Callable[[], Awaitable[Ledger]]) -> Ledger:
    """One open ledger on a fresh database."""
    return await ledgers()


def make_mention(n: int, **changes: object) -> Mention:
    """A mention with every field set to something other than its default."""
    mention = Mention(
        post_uri=f"at://did:plc:author/app.bsky.feed.post/{n}",
        post_cid=f"bafypost{n}",
        post_author="did:plc:author",
        root_uri="at://did:plc:root/app.bsky.feed.post/root",
        root_cid="bafyroot",
        bot="bot-a",
        model="gpt-test",
        provider="openai",
        persona="gardener",
        picker="llm",
        reply_uri=f"at://did:plc:bot/app.bsky.feed.post/r{n}",
        reply_cid=f"bafyreply{n}",
        reply_text="héllo 👋 @bob.test, you might like this",
        mentioned_did=f"did:plc:bob{n}",
        mentioned_handle="bob.test",
        candidates=["did:plc:carol", f"did:plc:bob{n}", "did:plc:dave"],
        rank=1,
        created_us=T0 + n,
        prompt_tokens=321,
        completion_tokens=45,
        cost_usd=0.00123,
        latency_ms=812.5,
        extra={"seed": 7, "score": 0.25, "tags": ["a", "b"], "nested": {"ok": True}},
    )
    return dataclasses.replace(mention, **changes)  # type: ignore[arg-type]


# the contract -------------------------------------------------------------------------------
class TestLedgerContract:
    """Behaviour every backend must share."""

    async def test_is_a_ledger(self, ledger: Ledger) -> None:
        """Each backend satisfies the runtime-checkable Ledger protocol."""
        assert isinstance(ledger, Ledger)

    async def test_open_and_close_are_idempotent(self, store: Callable[[], Ledger]) -> None:
        """Opening twice and closing twice are harmless."""
        ledger = store()
        await ledger.open()
        await ledger.open()
        assert await ledger.claim("at://p/1", "me", T0)
        await ledger.close()
        await ledger.close()

    async def test_second_ledger_sees_migrated_schema_and_data(
        self, ledgers: Callable[[], Awaitable[Ledger]]
    ) -> None:
        """A second ledger on the same database skips applied migrations and sees the data."""
        first = await ledgers()
        await first.save_cursor("jetstream", 42)
        second = await ledgers()
        assert await second.load_cursor("jetstream") == 42

    async def test_concurrent_first_opens_migrate_once(
        self, ledgers: Callable[[], Awaitable[Ledger]]
    ) -> None:
        """Several ledgers opening an empty database at once all end up working."""
        opened = await asyncio.gather(*(ledgers() for _ in range(3)))
        assert [await ledger.claim("at://p/1", "me", T0) for ledger in opened] == [
            True,
            False,
            False,
        ]

    async def test_data_survives_close_and_reopen(self, store: Callable[[], Ledger]) -> None:
        """What one ledger wrote is there after it closes and a new one opens."""
        ledger = store()
        await ledger.open()
        mention = make_mention(1)
        await ledger.record_mention(mention)
        await ledger.save_cursor("relay", 2**40 + 1)
        await ledger.close()
        reopened = store()
        await reopened.open()
        try:
            assert await reopened.mentions() == [mention]
            assert await reopened.load_cursor("relay") == 2**40 + 1
            assert not await reopened.claim(mention.post_uri, "other", T0)
        finally:
            await reopened.close()

    async def test_calls_before_open_raise_ledger_error(self, store: Callable[[], Ledger]) -> None:
        """Using a ledger that is not open is a bug, reported as LedgerError."""
        with pytest.raises(LedgerError):
            await store().claim("at://p/1", "me", T0)

    async def test_claim_is_true_once(self, ledger: Ledger) -> None:
        """Only the first claim of a post wins, whoever the later claimers are."""
        assert not await ledger.is_claimed("at://p/1")
        assert await ledger.claim("at://p/1", "replica-0", T0)
        assert await ledger.is_claimed("at://p/1")
        assert not await ledger.claim("at://p/1", "replica-0", T0 + 1)
        assert not await ledger.claim("at://p/1", "replica-1", T0 + 2)
        assert await ledger.claims_with_status("posting") == [("at://p/1", "replica-0")]

    async def test_concurrent_claims_on_separate_connections(
        self, ledgers: Callable[[], Awaitable[Ledger]]
    ) -> None:
        """Claimers racing on separate ledgers (connections) get exactly one True per post."""
        a, b = await ledgers(), await ledgers()
        for round_ in range(50):
            uri = f"at://p/{round_}"
            claimers = [a, b, a, b]
            results = await asyncio.gather(
                *(c.claim(uri, f"owner-{i}", T0) for i, c in enumerate(claimers))
            )
            assert results.count(True) == 1, (round_, results)

    async def test_finish_claim_moves_between_statuses(self, ledger: Ledger) -> None:
        """finish_claim changes which status list a claim appears in."""
        for n in range(3):
            await ledger.claim(f"at://p/{n}", f"owner-{n}", T0 + n)
        await ledger.finish_claim("at://p/0", "posted")
        await ledger.finish_claim("at://p/2", "failed")
        assert await ledger.claims_with_status("posting") == [("at://p/1", "owner-1")]
        assert await ledger.claims_with_status("posted") == [("at://p/0", "owner-0")]
        assert await ledger.claims_with_status("failed") == [("at://p/2", "owner-2")]
        assert not await ledger.claim("at://p/2", "again", T0)

    async def test_finish_claim_rejects_unknown_status(self, ledger: Ledger) -> None:
        """A status outside CLAIM_STATUSES is a caller bug (ValueError)."""
        await ledger.claim("at://p/1", "me", T0)
        with pytest.raises(ValueError):
            await ledger.finish_claim("at://p/1", "done")

    async def test_record_mention_roundtrips_every_field(self, ledger: Ledger) -> None:
        """Every Mention field, including the JSON and float ones, comes back unchanged."""
        mention = make_mention(1, outcome_us=None)
        mention_id = await ledger.record_mention(mention)
        assert mention_id > 0
        assert mention.id == mention_id
        (stored,) = await ledger.mentions()
        assert stored == mention
        assert isinstance(stored.cost_usd, float)
        assert stored.extra == {
            "seed": 7,
            "score": 0.25,
            "tags": ["a", "b"],
            "nested": {"ok": True},
        }

    async def test_record_mention_marks_the_claim_posted(self, ledger: Ledger) -> None:
        """Recording a mention moves its post's claim from posting to posted."""
        mention = make_mention(1)
        assert await ledger.claim(mention.post_uri, "replica-0", T0)
        await ledger.record_mention(mention)
        assert await ledger.claims_with_status("posting") == []
        assert await ledger.claims_with_status("posted") == [(mention.post_uri, "replica-0")]

    async def test_record_mention_without_claim_still_blocks_the_post(self, ledger: Ledger) -> None:
        """A mention recorded without a prior claim still makes later claims of its post fail."""
        mention = make_mention(1)
        await ledger.record_mention(mention)
        assert not await ledger.claim(mention.post_uri, "late", T0)
        assert await ledger.claims_with_status("posted") == [(mention.post_uri, mention.bot)]

    async def test_mentions_are_oldest_first(self, ledger: Ledger) -> None:
        """mentions() and open_mentions() list in insertion order, not by created_us."""
        recorded = [make_mention(n, created_us=T0 - n) for n in range(5)]
        for mention in recorded:
            await ledger.record_mention(mention)
        assert [m.id for m in recorded] == sorted(m.id for m in recorded)
        assert await ledger.mentions() == recorded
        assert await ledger.open_mentions() == recorded

    async def test_close_mention_only_from_open(self, ledger: Ledger) -> None:
        """An open mention closes once; closing it again, or another way, returns False."""
        first, second = make_mention(1), make_mention(2)
        await ledger.record_mention(first)
        await ledger.record_mention(second)
        assert await ledger.close_mention(first.id, "succeeded", T0 + 100)
        assert not await ledger.close_mention(first.id, "expired", T0 + 200)
        assert not await ledger.close_mention(999_999, "expired", T0 + 200)
        assert await ledger.open_mentions() == [second]
        closed, still_open = await ledger.mentions()
        assert (closed.status, closed.outcome_us) == ("succeeded", T0 + 100)
        assert (still_open.status, still_open.outcome_us) == ("open", None)

    async def test_close_mention_rejects_unknown_status(self, ledger: Ledger) -> None:
        """Only succeeded and expired are valid targets for close_mention."""
        mention = make_mention(1)
        await ledger.record_mention(mention)
        with pytest.raises(ValueError):
            await ledger.close_mention(mention.id, "open", T0)

    async def test_mentioned_since_filters_by_created_us(self, ledger: Ledger) -> None:
        """mentioned_since includes the boundary and excludes older mentions."""
        for n in range(4):
            await ledger.record_mention(make_mention(n, created_us=T0 + 10 * n))
        assert await ledger.mentioned_since(T0 + 10) == [
            ("did:plc:bob1", T0 + 10),
            ("did:plc:bob2", T0 + 20),
            ("did:plc:bob3", T0 + 30),
        ]
        assert await ledger.mentioned_since(T0 + 31) == []

    async def test_record_outcome_once_per_mention_kind_uri(self, ledger: Ledger) -> None:
        """The same (mention, kind, uri) is stored once; any other combination is new."""
        mention = make_mention(1)
        await ledger.record_mention(mention)
        like = Outcome(mention.id, "like", "did:plc:fan", "at://did:plc:fan/like/1", T0 + 5)
        assert await ledger.record_outcome(like)
        assert not await ledger.record_outcome(dataclasses.replace(like, time_us=T0 + 9))
        repost = dataclasses.replace(like, kind="repost")
        other_like = dataclasses.replace(like, uri="at://did:plc:fan/like/2")
        assert await ledger.record_outcome(repost)
        assert await ledger.record_outcome(other_like)
        assert await ledger.outcomes() == [like, repost, other_like]

    async def test_record_outcome_for_unknown_mention_is_an_error(self, ledger: Ledger) -> None:
        """An outcome must point at a recorded mention (foreign key)."""
        with pytest.raises(LedgerError):
            await ledger.record_outcome(Outcome(12345, "like", "did:plc:x", "at://x", T0))

    async def test_cursor_roundtrip_beyond_32_bits(self, ledger: Ledger) -> None:
        """Cursors are 64-bit, and saving again overwrites."""
        assert await ledger.load_cursor("relay") is None
        await ledger.save_cursor("relay", 2**40 + 7)
        assert await ledger.load_cursor("relay") == 2**40 + 7
        await ledger.save_cursor("relay", 2**62)
        await ledger.save_cursor("jetstream", 5)
        assert await ledger.load_cursor("relay") == 2**62
        assert await ledger.load_cursor("jetstream") == 5

    async def test_opt_out_is_recorded_once(self, ledger: Ledger) -> None:
        """The first opt-out of a DID wins; a repeat returns False and keeps the first reason."""
        assert await ledger.add_opt_out("did:plc:a", "blocked bot-a", T0)
        assert not await ledger.add_opt_out("did:plc:a", "said stop", T0 + 1)
        assert await ledger.add_opt_out("did:plc:b", "#nobot", T0 + 2)
        assert await ledger.opt_outs() == {"did:plc:a": "blocked bot-a", "did:plc:b": "#nobot"}

    async def test_opt_ins_are_kept_once_and_survive_a_reopen(
        self, ledgers: Callable[[], Awaitable[Ledger]]
    ) -> None:
        """The first opt-in of a DID keeps its reason; an allow-list opt-in can be withdrawn
        (only under that reason); another connection (a restart) reads them all."""
        ledger = await ledgers()
        assert await ledger.add_opt_in("did:plc:a", "followed a bot", T0)
        assert not await ledger.add_opt_in("did:plc:a", "mentioned a bot", T0 + 1)
        assert await ledger.add_opt_in("did:plc:b", "allow list", T0 + 2)
        assert await ledger.add_opt_in("did:plc:c", "mentioned a bot", T0 + 3)
        assert not await ledger.withdraw_opt_in("did:plc:a", "allow list")
        assert await ledger.withdraw_opt_in("did:plc:b", "allow list")
        assert not await ledger.withdraw_opt_in("did:plc:b", "allow list")
        again = await ledgers()
        assert await again.opt_ins() == {
            "did:plc:a": ("followed a bot", T0),
            "did:plc:c": ("mentioned a bot", T0 + 3),
        }

    async def test_account_status_newest_event_wins(self, ledger: Ledger) -> None:
        """An inactive status is listed until a newer event reactivates it; older events are
        ignored (a rewound stream replaying a deactivation cannot undo a later reactivation)."""
        off = AccountStatus("did:plc:a", False, "deactivated", T0 + 10)
        assert await ledger.set_account_status(off)
        assert await ledger.set_account_status(AccountStatus("did:plc:b", False, "takendown", T0))
        assert await ledger.inactive_accounts() == [
            AccountStatus("did:plc:b", False, "takendown", T0),
            off,
        ]
        # An older reactivation does not undo the newer deactivation.
        assert not await ledger.set_account_status(AccountStatus("did:plc:a", True, "active", T0))
        assert [s.did for s in await ledger.inactive_accounts()] == ["did:plc:b", "did:plc:a"]
        # A newer one does; then the older deactivation, replayed, changes nothing.
        on = AccountStatus("did:plc:a", True, "active", T0 + 20)
        assert await ledger.set_account_status(on)
        assert not await ledger.set_account_status(off)
        assert [s.did for s in await ledger.inactive_accounts()] == ["did:plc:b"]

    async def test_account_status_survives_reopen(self, store: Callable[[], Ledger]) -> None:
        """An inactive account is still inactive for the next process."""
        ledger = store()
        await ledger.open()
        status = AccountStatus("did:plc:gone", False, "suspended", 2**60)
        await ledger.set_account_status(status)
        await ledger.close()
        reopened = store()
        await reopened.open()
        try:
            assert await reopened.inactive_accounts() == [status]
        finally:
            await reopened.close()


# SQLite only --------------------------------------------------------------------------------
_RACER = """
import asyncio, json, sys, time
from pathlib import Path
from botsky.ledger.sqlite import SqliteLedger

async def main(path, owner, n, offset):
    # Each racer starts at its own offset and wraps around, so every post is contended once
    # the racers' paths meet, whoever is scheduled first.
    order = [(offset + i) % n for i in range(n)]
    ledger = SqliteLedger(Path(path))
    await ledger.open()
    try:
        print("ready", flush=True)
        # The parent sends one wall-clock start time to every racer, so they start together
        # instead of in the order the OS happens to wake them.
        await asyncio.sleep(float(sys.stdin.readline()) - time.time())
        won = [i for i in order if await ledger.claim(f"at://p/{i}", owner, i)]
    finally:
        await ledger.close()
    print(json.dumps(won), flush=True)

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
"""


async def test_sqlite_claims_are_atomic_across_processes(tmp_path: Path) -> None:
    """Processes racing to claim the same posts claim each post exactly once in total."""
    path, posts = tmp_path / "race.sqlite3", 300
    setup = SqliteLedger(path)
    await setup.open()
    await setup.close()
    racers = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _RACER,
            str(path),
            f"proc-{k}",
            str(posts),
            str(k * posts // 3),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for k in range(3)
    ]
    try:
        for racer in racers:
            assert racer.stdout is not None
            assert await racer.stdout.readline() == b"ready\n"
        start = f"{time.time() + 0.2}\n".encode()
        results = await asyncio.gather(*(racer.communicate(start) for racer in racers))
    finally:
        for racer in racers:  # a failed assertion above must not leave racers behind
            if racer.returncode is None:
                racer.kill()
                await racer.communicate()
    for racer, (_, stderr) in zip(racers, results, strict=True):
        assert racer.returncode == 0, stderr.decode()
    won = [orjson.loads(stdout) for stdout, _ in results]
    assert sorted(i for wins in won for i in wins) == list(range(posts))
    check = SqliteLedger(path)
    await check.open()
    try:
        assert len(await check.claims_with_status("posting")) == posts
    finally:
        await check.close()


async def test_sqlite_inline_runs_on_the_loop_thread(tmp_path: Path) -> None:
    """``inline=True`` starts no worker thread; the default keeps one per ledger."""
    import threading

    before = {t.name for t in threading.enumerate()}
    inline = SqliteLedger(tmp_path / "inline.sqlite3", inline=True)
    await inline.open()
    assert not {t.name for t in threading.enumerate()} - before
    assert await inline.claim("at://p/1", "me", T0)
    await inline.close()
    with pytest.raises(LedgerError, match="not open"):
        await inline.load_cursor("x")
    threaded = SqliteLedger(tmp_path / "threaded.sqlite3")
    await threaded.open()
    assert any(n.startswith("botsky-sqlite") for n in {t.name for t in threading.enumerate()})
    await threaded.close()


async def test_sqlite_uses_wal_mode(tmp_path: Path) -> None:
    """The file is switched to WAL, so readers never wait for the writer."""
    ledger = SqliteLedger(tmp_path / "wal.sqlite3")
    await ledger.open()
    await ledger.close()
    with sqlite3.connect(tmp_path / "wal.sqlite3") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    conn.close()


async def test_sqlite_locked_database_raises_ledger_unavailable(tmp_path: Path) -> None:
    """A write lock held past busy_timeout is LedgerUnavailable, and the ledger recovers after."""
    path = tmp_path / "locked.sqlite3"
    ledger = SqliteLedger(path, busy_timeout=0.1)
    await ledger.open()
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        blocker.execute("BEGIN EXCLUSIVE")
        with pytest.raises(LedgerUnavailable) as caught:
            await ledger.claim("at://p/1", "me", T0)
        assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
        blocker.execute("ROLLBACK")
        assert await ledger.claim("at://p/1", "me", T0)
    finally:
        blocker.close()
        await ledger.close()


async def test_sqlite_corrupt_file_raises_ledger_error(tmp_path: Path) -> None:
    """A file that is not a database is a fatal LedgerError, and the failed open leaks nothing."""
    path = tmp_path / "corrupt.sqlite3"
    path.write_bytes(b"this is not a database " * 100)
    ledger = SqliteLedger(path)
    with pytest.raises(LedgerError) as caught:
        await ledger.open()
    assert isinstance(caught.value.__cause__, sqlite3.DatabaseError)
    with pytest.raises(LedgerError, match="not open"):
        await ledger.load_cursor("x")


# PostgreSQL only (no server needed) ---------------------------------------------------------
async def test_postgres_unreachable_raises_ledger_unavailable() -> None:
    """A server that refuses connections makes open() raise LedgerUnavailable."""
    ledger = PostgresLedger("postgresql://postgres@127.0.0.1:1/test", timeout=0.5)
    with pytest.raises(LedgerUnavailable):
        await ledger.open()
    await ledger.close()


def test_postgres_bad_dsn_is_a_config_error_without_the_password() -> None:
    """An unparsable DSN is a ConfigError that does not echo the DSN (it may hold a password)."""
    with pytest.raises(ConfigError) as caught:
        PostgresLedger("host=db password=hunter2 nonsense")
    assert "hunter2" not in str(caught.value)


# the factory --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite", "DATA/botsky.sqlite3"),
        ("sqlite:ledger.db", "DATA/ledger.db"),
        ("sqlite:sub/dir/ledger.db", "DATA/sub/dir/ledger.db"),
        ("sqlite:///abs/ledger.db", "/abs/ledger.db"),
        ("sqlite:/abs/ledger.db", "/abs/ledger.db"),
    ],
)
def test_open_ledger_sqlite_paths(url: str, expected: str, tmp_path: Path) -> None:
    """SQLite URLs resolve relative paths against data_dir and keep absolute ones."""
    ledger = open_ledger(url, tmp_path)
    assert isinstance(ledger, SqliteLedger)
    assert ledger.path == Path(expected.replace("DATA", str(tmp_path)))


@pytest.mark.parametrize(
    "url", ["postgresql://botsky@db:5432/botsky", "postgres://botsky:pw@db/botsky"]
)
def test_open_ledger_postgres(url: str, tmp_path: Path) -> None:
    """postgresql:// and postgres:// URLs make an unopened PostgresLedger with that DSN."""
    ledger = open_ledger(url, tmp_path)
    assert isinstance(ledger, PostgresLedger)
    assert ledger.dsn == url


@pytest.mark.parametrize(
    "url", ["mysql://root:s3cret@db/x", "sqlite://host/x.db", "sqlite:", "sqlite://", "", "pg"]
)
def test_open_ledger_rejects_unknown_urls(url: str, tmp_path: Path) -> None:
    """Anything else is a ConfigError that never echoes a password."""
    with pytest.raises(ConfigError) as caught:
        open_ledger(url, tmp_path)
    assert "s3cret" not in str(caught.value)


class TestClaimIntent:
    """The intent stored with a claim survives until the claim is settled."""

    async def test_pending_claims_carry_their_intent(self, ledger: Ledger) -> None:
        """A posting claim returns its intent; posted and failed claims are not pending."""
        intent = {"rkey": "3mptbyplj5d2a", "text": "héllo @b.test", "facets": [{"x": 1}]}
        assert await ledger.claim("at://p/1", "bot-a", T0, intent)
        assert await ledger.claim("at://p/2", "bot-b", T0 + 1)
        assert await ledger.claim("at://p/3", "bot-c", T0 + 2, {"rkey": "x"})
        await ledger.finish_claim("at://p/3", "failed")
        assert await ledger.pending_claims() == [
            ("at://p/1", "bot-a", intent),
            ("at://p/2", "bot-b", None),
        ]


class TestRetryClaims:
    """A claim whose create had an unknown outcome waits as 'retry' until it is settled."""

    async def test_a_claim_waits_as_retry_and_is_taken_back_once(self, ledger: Ledger) -> None:
        """retry_claim parks a posting claim with its attempts, due time and reason; it is
        still claimed (no second claim), not pending, due from its time on, and take_claim
        moves it back to posting under the taker's replica, once (a retried take by the same
        replica is answered as taken)."""
        intent = {"replica": "r1", "reply": {"rkey": "3abc"}}
        assert await ledger.claim("at://p/1", "bot-a", T0, intent)
        assert await ledger.retry_claim("at://p/1", 1, T0 + 5_000_000, "unknown: timeout")
        assert not await ledger.retry_claim("at://p/1", 2, T0, "not posting any more")
        (waiting,) = await ledger.claims("retry")
        assert (waiting.post_uri, waiting.owner, waiting.intent) == ("at://p/1", "bot-a", intent)
        assert (waiting.attempts, waiting.next_try_us) == (1, T0 + 5_000_000)
        assert waiting.reason == "unknown: timeout"
        assert await ledger.is_claimed("at://p/1")
        assert not await ledger.claim("at://p/1", "bot-b", T0, {"replica": "r2"})
        assert await ledger.pending_claims() == []
        assert await ledger.due_claims(T0 + 4_999_999) == []
        assert [c.post_uri for c in await ledger.due_claims(T0 + 5_000_000)] == ["at://p/1"]

        assert await ledger.take_claim("at://p/1", 0, "r2") is None  # stale attempt count
        taken = await ledger.take_claim("at://p/1", 1, "r2")
        assert taken == {**intent, "replica": "r2"}
        assert await ledger.take_claim("at://p/1", 1, "r3") is None
        # The same take again (a retry after a lost commit acknowledgement) is still r2's.
        assert await ledger.take_claim("at://p/1", 1, "r2") == taken
        assert await ledger.pending_claims() == [("at://p/1", "bot-a", taken)]
        (posting,) = await ledger.claims("posting")
        assert posting.attempts == 1 and posting.status == "posting"

    async def test_racing_takers_on_separate_connections_get_one_claim(
        self, ledgers: Callable[[], Awaitable[Ledger]]
    ) -> None:
        """Two processes seeing the same due claim: exactly one takes it."""
        a, b = await ledgers(), await ledgers()
        for n in range(20):
            uri = f"at://p/{n}"
            assert await a.claim(uri, "bot", T0, {"replica": "dead"})
            assert await a.retry_claim(uri, 3, T0, "unknown")
            got = await asyncio.gather(a.take_claim(uri, 3, "a"), b.take_claim(uri, 3, "b"))
            assert sum(g is not None for g in got) == 1, got

    async def test_due_claims_come_longest_waiting_first_up_to_the_limit(
        self, ledger: Ledger
    ) -> None:
        """Due claims are ordered by due time and bounded by ``limit``."""
        for n, due in enumerate([30, 10, 20, 99]):
            await ledger.claim(f"at://p/{n}", "bot", T0 + n, {"n": n})
            await ledger.retry_claim(f"at://p/{n}", 1, T0 + due, "unknown")
        assert [c.post_uri for c in await ledger.due_claims(T0 + 50)] == [
            "at://p/1",
            "at://p/2",
            "at://p/0",
        ]
        assert [c.post_uri for c in await ledger.due_claims(T0 + 50, limit=1)] == ["at://p/1"]

    async def test_a_failed_claim_keeps_its_reason(self, ledger: Ledger) -> None:
        """finish_claim records why a claim failed (a refusal, a spent budget)."""
        await ledger.claim("at://p/1", "bot", T0, {"x": 1})
        await ledger.finish_claim("at://p/1", "failed", "budget_spent")
        (failed,) = await ledger.claims("failed")
        assert failed.reason == "budget_spent"
        with pytest.raises(ValueError):
            await ledger.claims("done")


def _fits(limit: int) -> Callable[[WriteSpends], float]:
    """A decision: the account may spend up to ``limit`` points in its window."""
    return lambda s: 0.0 if sum(c for _, c in s.account) + 3 <= limit else 60.0


class TestWriteBudgets:
    """Write-budget spends and server blocks: shared, atomic and durable."""

    async def test_a_spend_is_recorded_only_when_it_fits(self, ledger: Ledger) -> None:
        """decide sees the account's spends in its window, everyone's in the global window and
        the account's block; a spend that does not fit is not recorded."""
        seen: list[WriteSpends] = []

        def decide(spends: WriteSpends) -> float:
            seen.append(spends)
            return _fits(6)(spends)

        kw = {"since_us": T0, "everyone_since_us": T0 + 15}
        assert await ledger.spend_write("did:a", 3, T0 + 10, decide=decide, **kw) == 0
        assert await ledger.spend_write("did:b", 3, T0 + 20, decide=decide, **kw) == 0
        assert await ledger.spend_write("did:a", 3, T0 + 30, decide=decide, **kw) == 0
        assert await ledger.spend_write("did:a", 3, T0 + 40, decide=decide, **kw) == 60.0
        assert seen[-1] == WriteSpends(
            account=[(T0 + 10, 3), (T0 + 30, 3)], everyone=[T0 + 20, T0 + 30]
        )
        assert await ledger.write_spends("did:a", T0 + 10, T0) == WriteSpends(
            account=[(T0 + 30, 3)], everyone=[T0 + 10, T0 + 20, T0 + 30]
        )

    async def test_spends_older_than_both_windows_are_dropped(self, ledger: Ledger) -> None:
        """A spend prunes its account's rows that no window can see any more."""
        for t in (1, 2, 3):
            await ledger.spend_write(
                "did:a", 3, T0 + t, since_us=T0, everyone_since_us=T0, decide=lambda s: 0
            )
        await ledger.spend_write(
            "did:a", 3, T0 + 9, since_us=T0 + 2, everyone_since_us=T0 + 5, decide=lambda s: 0
        )
        assert (await ledger.write_spends("did:a", 0, 0)).account == [(T0 + 3, 3), (T0 + 9, 3)]

    async def test_racing_spenders_on_separate_connections_never_overspend(
        self, ledgers: Callable[[], Awaitable[Ledger]]
    ) -> None:
        """Three processes spending at once on one account: exactly the budget is spent
        (the read, the decision and the write are one transaction)."""
        spenders = [await ledgers() for _ in range(3)]

        async def spend(ledger: Ledger, n: int) -> float:
            return await ledger.spend_write(
                "did:a", 3, T0 + n, since_us=T0 - 1, everyone_since_us=T0 - 1, decide=_fits(21)
            )

        waits = await asyncio.gather(*(spend(led, n) for n in range(10) for led in spenders))
        assert sum(w <= 0 for w in waits) == 7
        assert len((await spenders[0].write_spends("did:a", 0, 0)).account) == 7

    async def test_blocks_keep_the_later_reset_and_reach_the_decision(self, ledger: Ledger) -> None:
        """block_account keeps the latest reset per key; the decision sees the account's."""
        await ledger.block_account("did:a", T0 + 100, "429 createRecord")
        await ledger.block_account("did:a", T0 + 50, "an earlier reset")
        await ledger.block_account("login:bot.test", T0 + 7, "429 createSession")
        assert await ledger.account_blocks() == {
            "did:a": (T0 + 100, "429 createRecord"),
            "login:bot.test": (T0 + 7, "429 createSession"),
        }
        assert (await ledger.write_spends("did:a", 0, 0)).blocked_until_us == T0 + 100
        assert (await ledger.write_spends("did:b", 0, 0)).blocked_until_us == 0

    async def test_spends_and_blocks_survive_a_restart(self, store: Callable[[], Ledger]) -> None:
        """What one process spent and was blocked for is there for the next."""
        first = store()
        await first.open()
        await first.spend_write(
            "did:a", 3, T0, since_us=T0 - 1, everyone_since_us=T0 - 1, decide=lambda s: 0
        )
        await first.block_account("did:a", T0 + 9, "429")
        await first.close()
        second = store()
        await second.open()
        try:
            assert await second.write_spends("did:a", T0 - 1, T0 - 1) == WriteSpends(
                account=[(T0, 3)], everyone=[T0], blocked_until_us=T0 + 9
            )
        finally:
            await second.close()


def test_both_backends_run_one_set_of_statements() -> None:
    """The statements are written once: PostgreSQL's differ from SQLite's only in the
    parameter marks, and neither backend has its own copy of the shared Ledger methods."""
    from botsky.ledger._sql import SqlLedger

    lite, pg = SqliteLedger.sql, PostgresLedger.sql
    for f in dataclasses.fields(lite):
        a, b = getattr(lite, f.name), getattr(pg, f.name)
        assert "%s" not in a and "?" not in b and a.replace("?", "%s") == b, f.name
    shared = {n for n in vars(SqlLedger) if not n.startswith("_") and n != "sql"}
    assert {"claim", "mentions", "save_cursor", "opt_outs"} <= shared
    for backend in (SqliteLedger, PostgresLedger):
        assert shared.isdisjoint(vars(backend)), backend.__name__


class TestReadOnly:
    """Readers (`botsky scores`) open the ledger read-only: nothing is ever created or written."""

    @pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
    def url(self, request: pytest.FixtureRequest, tmp_path: Path) -> str:
        """A ledger URL of the parametrized backend with nothing in it yet."""
        if request.param == "sqlite":
            return "sqlite"
        return str(request.getfixturevalue("postgres_schema_dsn"))

    @staticmethod
    async def _tables(url: str, tmp_path: Path) -> list[str]:
        if url == "sqlite":
            return sorted(p.name for p in tmp_path.rglob("*"))  # noqa: ASYNC240
        import psycopg

        async with await psycopg.AsyncConnection.connect(url) as conn:
            cursor = await conn.execute(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = current_schema()"
            )
            return sorted(name for (name,) in await cursor.fetchall())

    async def test_nothing_there_is_an_error_and_creates_nothing(
        self, url: str, tmp_path: Path
    ) -> None:
        """Opening a ledger that does not exist yet fails clearly and creates no file or table."""
        reader = open_ledger(url, tmp_path / "data", read_only=True)
        with pytest.raises(LedgerError, match=r"no (botsky )?ledger"):
            await reader.open()
        assert await self._tables(url, tmp_path) == []

    async def test_reads_what_a_writer_wrote_and_refuses_writes(
        self, url: str, tmp_path: Path
    ) -> None:
        """A read-only ledger sees the writer's rows; a write through it fails."""
        writer = open_ledger(url, tmp_path / "data")
        await writer.open()
        try:
            await writer.claim("at://p/1", "bot-a", T0)
            await writer.record_mention(make_mention(1))
            reader = open_ledger(url, tmp_path / "data", read_only=True)
            await reader.open()
            try:
                assert await reader.mentions() == await writer.mentions()
                with pytest.raises(LedgerError):
                    await reader.claim("at://p/2", "bot-b", T0)
            finally:
                await reader.close()
            assert not await writer.is_claimed("at://p/2")
        finally:
            await writer.close()

    async def test_an_older_schema_is_refused_not_migrated(self, url: str, tmp_path: Path) -> None:
        """A ledger missing a migration is not upgraded by a reader; the message says how."""
        writer = open_ledger(url, tmp_path / "data")
        await writer.open()
        await writer.close()
        if url == "sqlite":
            with sqlite3.connect(tmp_path / "data" / "botsky.sqlite3") as conn:
                conn.execute("DELETE FROM schema_migrations WHERE version = 1")
        else:
            import psycopg

            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                await conn.execute("DELETE FROM schema_migrations WHERE version = 1")
        reader = open_ledger(url, tmp_path / "data", read_only=True)
        with pytest.raises(LedgerError, match="older botsky"):
            await reader.open()
