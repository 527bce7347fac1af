"""SQLite storage faults: a lock held by another process, read-only storage, a full disk.

Every fault uses real files: a second process really holds the lock, a real tmpfs is really
remounted read-only or really fills up (SQLite's ``max_page_count`` gives the same "full"
without mounting anything). botsky answers each with a clear error naming the file, leaves no
partial rows (a mention and its claim update are one transaction), and recovers once the fault
is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from botsky.errors import LedgerError, LedgerUnavailable
from botsky.ledger.base import Mention
from botsky.ledger.retry import RetryingLedger
from botsky.ledger.sqlite import SqliteLedger
from tests.support import T0

_HOLD_LOCK = textwrap.dedent(
    """
    import sqlite3, sys
    conn = sqlite3.connect(sys.argv[1], isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    print("locked", flush=True)
    sys.stdin.readline()  # released when the test writes a line (or closes stdin)
    conn.execute("COMMIT")
    print("released", flush=True)
    """
)


def _mention(i: int, size: int = 100) -> Mention:
    uri = f"at://did:plc:author{i}/app.bsky.feed.post/{i:013d}"
    return Mention(
        post_uri=uri,
        post_cid=f"bafycid{i}",
        post_author=f"did:plc:author{i}",
        root_uri=uri,
        root_cid=f"bafycid{i}",
        bot="ada",
        model="m",
        provider="openai",
        persona="p",
        picker="llm",
        reply_uri=f"at://did:plc:bot/app.bsky.feed.post/r{i}",
        reply_cid=f"bafyreply{i}",
        reply_text="x" * size,
        mentioned_did="did:plc:bob",
        mentioned_handle="bob.test",
        candidates=[f"did:plc:c{j}" for j in range(8)],
        rank=1,
        created_us=T0 + i,
    )


async def _claim_and_record(led: SqliteLedger, i: int, size: int = 100) -> None:
    m = _mention(i, size)
    assert await led.claim(m.post_uri, "ada", m.created_us, {"i": i})
    await led.record_mention(m)


def _rows(path: Path) -> tuple[set[str], dict[str, str]]:
    """Mentioned posts and claim statuses, read by a separate connection."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        mentions = {uri for (uri,) in conn.execute("SELECT post_uri FROM mentions")}
        claims = dict(conn.execute("SELECT post_uri, status FROM claims").fetchall())
    return mentions, claims


@contextlib.contextmanager
def _tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A real size-limited tmpfs at ``where``; skipped (failed under CI) when mount is denied."""
    where.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0777", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        # CI runs as root in the same image, where mounting a tmpfs was shown to work.
        message = f"cannot mount a tmpfs here: {done.stderr.strip()}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False, capture_output=True)


async def _remount(mnt: Path, mode: str) -> None:
    proc = await asyncio.create_subprocess_exec("mount", "-o", f"remount,{mode}", str(mnt))
    assert await proc.wait() == 0


# --- a lock held by another process ---------------------------------------------------------


async def test_exclusive_lock_raises_unavailable_then_retrying_ledger_waits(
    tmp_path: Path,
) -> None:
    """Another process holding BEGIN EXCLUSIVE: LedgerUnavailable; RetryingLedger waits it out."""
    path = tmp_path / "ledger.sqlite3"
    led = SqliteLedger(path, busy_timeout=0.2)
    await led.open()
    holder = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _HOLD_LOCK,
        str(path),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdin is not None
        assert (await asyncio.wait_for(holder.stdout.readline(), 20)).strip() == b"locked"
        with pytest.raises(LedgerUnavailable, match="locked") as info:
            await led.claim("at://did:plc:a/app.bsky.feed.post/1", "ada", T0)
        assert str(path) in str(info.value)

        retrying = RetryingLedger(led, deadline_s=30, initial_s=0.05, max_wait_s=0.2)
        claim = asyncio.create_task(
            retrying.claim("at://did:plc:a/app.bsky.feed.post/1", "ada", T0)
        )
        await asyncio.sleep(0.8)
        assert not claim.done()  # paused behind the lock, not failed
        holder.stdin.write(b"go\n")
        await holder.stdin.drain()
        assert await asyncio.wait_for(claim, 20) is True
        assert retrying.retries >= 1
        assert await asyncio.wait_for(holder.wait(), 10) == 0
    finally:
        if holder.returncode is None:
            holder.kill()
            await holder.wait()
        await led.close()
    assert _rows(path)[1] == {"at://did:plc:a/app.bsky.feed.post/1": "posting"}


# --- read-only storage ---------------------------------------------------------------------


async def test_read_only_file_system_is_a_clear_error_without_writes(tmp_path: Path) -> None:
    """A ledger on a file system remounted read-only: LedgerError naming the file, no rows."""
    with _tmpfs(tmp_path / "mnt", "4m") as mnt:
        path = mnt / "ledger.sqlite3"
        led = SqliteLedger(path)
        await led.open()
        await _claim_and_record(led, 1)
        await led.close()
        before = _rows(path)
        await _remount(mnt, "ro")

        led = SqliteLedger(path, busy_timeout=0.2)
        with pytest.raises(LedgerError) as info:
            await led.open()
            await _claim_and_record(led, 2)
        await led.close()
        assert str(path) in str(info.value) and "read-only file system" in str(info.value)

        fresh = SqliteLedger(mnt / "sub" / "new.sqlite3")
        with pytest.raises(LedgerError) as info:
            await fresh.open()
        assert str(mnt / "sub") in str(info.value)
        await _remount(mnt, "rw")
        assert _rows(path) == before


async def test_read_only_directory_is_a_clear_error(tmp_path: Path) -> None:
    """A new ledger in a directory the process cannot write: LedgerError naming the path."""
    if os.geteuid() == 0:
        with _tmpfs(tmp_path / "mnt", "1m") as mnt:
            await _remount(mnt, "ro")
            target = mnt / "ledger.sqlite3"
            led = SqliteLedger(target)
            with pytest.raises(LedgerError) as info:
                await led.open()
            await _remount(mnt, "rw")
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        target = locked / "ledger.sqlite3"
        led = SqliteLedger(target)
        with pytest.raises(LedgerError) as info:
            await led.open()
    assert str(target) in str(info.value)
    assert not target.exists()


# --- a full disk ---------------------------------------------------------------------------


async def _fill_until_full(led: SqliteLedger, path: Path, size: int) -> int:
    """Record mentions until the store is full; return the index that failed."""
    for i in range(100_000):
        try:
            await _claim_and_record(led, i, size)
        except LedgerError as exc:
            assert "full" in str(exc) and str(path) in str(exc)
            return i
    raise AssertionError("the store never filled up")


def _assert_atomic(path: Path, failed: int) -> None:
    """Nothing half-written: the failed post has its claim (posting) but no mention."""
    mentions, claims = _rows(path)
    uri = _mention(failed).post_uri
    assert uri not in mentions
    assert claims.get(uri) in (None, "posting")
    assert {u for u, s in claims.items() if s == "posted"} == mentions
    assert len(mentions) == failed


async def test_full_database_max_page_count_is_atomic_and_recovers(tmp_path: Path) -> None:
    """At max_page_count: LedgerError 'full', no partial mention, success once raised again."""
    path = tmp_path / "ledger.sqlite3"
    led = SqliteLedger(path)
    await led.open()
    try:
        pages: int = await led._run(lambda c: c.execute("PRAGMA page_count").fetchone()[0])
        # The limit is per connection: set on the ledger's own, on its worker thread.
        await led._run(lambda c: c.execute(f"PRAGMA max_page_count = {pages + 20}").fetchall())
        failed = await _fill_until_full(led, path, 2000)
        assert failed > 0
        _assert_atomic(path, failed)
        await led._run(lambda c: c.execute("PRAGMA max_page_count = 1000000").fetchall())
        await led.record_mention(_mention(failed, 2000))
        await _claim_and_record(led, failed + 1, 2000)
    finally:
        await led.close()
    mentions, claims = _rows(path)
    assert len(mentions) == failed + 2 and set(claims.values()) == {"posted"}


async def test_full_disk_is_atomic_and_recovers_when_space_is_freed(tmp_path: Path) -> None:
    """A real 1 MiB tmpfs filling up: LedgerError 'full', no partial rows, works once freed."""
    with _tmpfs(tmp_path / "mnt", "1m") as mnt:
        path = mnt / "ledger.sqlite3"
        filler = mnt / "filler.bin"
        led = SqliteLedger(path)
        await led.open()
        try:
            filler.write_bytes(b"\0" * 512 * 1024)
            failed = await _fill_until_full(led, path, 4000)
            assert failed > 0
            _assert_atomic(path, failed)
            filler.unlink()
            await led.record_mention(_mention(failed, 4000))
            await _claim_and_record(led, failed + 1, 4000)
            assert len(await led.mentions()) == failed + 2
        finally:
            await led.close()


# --- through `botsky run` ------------------------------------------------------------------


def _run_botsky(home: Path, ledger_url: str) -> subprocess.CompletedProcess[str]:
    """`botsky run` over ``home/events.jsonl`` with one template bot and the given ledger."""
    (home / "botsky.yaml").write_text(
        f"data_dir: data\nseed: 1\nledger: {{url: '{ledger_url}'}}\n"
        "source: {kind: replay, path: events.jsonl}\n"
        "audience: {mode: open, acknowledge_open_audience: true,"
        " mentions_per_target_per_day: null, replies_per_author_per_day: null}\n"
        "recommend: {cooldown_s: 0}\ndispatch: {lockstep: true, author_cooldown_s: 0}\n"
        "logging: {format: json}\n"
    )
    (home / "bots.yaml").write_text(
        "bots:\n  - name: ada\n    persona: hi\n    provider: template\n    model: t\n"
        "    picker: similar\n    account: {handle: ada.test}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOTSKY_")}
    return subprocess.run(
        [sys.executable, "-m", "botsky", "run", "-c", "botsky.yaml"],
        cwd=home,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def _answered(home: Path) -> list[str]:
    """The posts the dry-run poster answered, in order."""
    lines = (home / "data" / "dry_run_posts.jsonl").read_bytes().splitlines()
    return [orjson.loads(line)["parent"] for line in lines]


@pytest.mark.slow
def test_a_full_disk_stops_botsky_run_with_one_line_and_a_restart_loses_nothing(
    tmp_path: Path,
) -> None:
    """The ledger's disk fills up mid-run: `botsky run` stops in order and exits 1 with one
    line naming the file (no traceback); with space freed, a second run answers exactly the
    posts an undisturbed run answers, each once."""
    from botsky.events import event_to_jetstream
    from botsky.testing import identity, post

    events = [
        identity("did:plc:bob", T0, "bob.test"),
        post("did:plc:bob", T0 + 1, "sourdough bread baking all day, starter and crumb"),
    ]
    events += [
        post(f"did:plc:asker{i}", T0 + 10 + i, f"any sourdough bread tips? {'question ' * 40}{i}")
        for i in range(400)
    ]
    data = b"\n".join(map(event_to_jetstream, events)) + b"\n"
    calm, faulty = tmp_path / "calm", tmp_path / "faulty"
    for home in (calm, faulty):
        home.mkdir()
        (home / "events.jsonl").write_bytes(data)
    reference = _run_botsky(calm, "sqlite")
    assert reference.returncode == 0, reference.stderr[-3000:]
    expected = _answered(calm)
    with _tmpfs(tmp_path / "mnt", "1m") as mnt:
        path = mnt / "ledger.sqlite3"
        first = _run_botsky(faulty, f"sqlite://{path}")
        assert first.returncode == 1, first.stderr[-3000:]
        lines = first.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in first.stderr
        assert lines[0].startswith(f"botsky: {path}: ") and "full" in lines[0]
        assert 0 < len(_answered(faulty)) < len(expected)  # it really stopped mid-run

        subprocess.run(["mount", "-o", "remount,size=64m", str(mnt)], check=True)
        second = _run_botsky(faulty, f"sqlite://{path}")
        assert second.returncode == 0, second.stderr[-3000:]
        answered = _answered(faulty)
        assert len(answered) == len(set(answered)) and set(answered) == set(expected)
        with contextlib.closing(sqlite3.connect(path)) as conn:
            statuses = dict(conn.execute("SELECT status, count(*) FROM claims GROUP BY 1"))
            mentioned = conn.execute("SELECT count(*) FROM mentions").fetchone()[0]
        assert statuses == {"posted": len(expected)} and mentioned == len(expected)
