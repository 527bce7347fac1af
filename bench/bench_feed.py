"""Benchmark: getFeedSkeleton latency at 200 requests/s on loopback, 100,000 candidate replies.

The server is botsky's web app with the feed mounted (``botsky.web.serve`` + ``FeedService``
over a real SQLite ledger holding 100,000 bot replies in 5 arms), in its own process, as
``botsky run`` serves it. The client (this process) sends requests open-loop at a steady 200/s
on keep-alive connections and measures each one from its scheduled send time (so a slow
answer delays nothing and queueing is counted, no coordinated omission). Requests are what the
AppView sends: a viewer's service JWT (ES256K, verified with the atproto SDK against the
viewer's key; keys are served from memory, as after the DID cache is warm), limit 30, a third
of them continuing a session with its cursor. Every page is queued for the ledger before it is
answered and written behind the answer (batched every 10 ms); those writes run in the server
process, so its CPU per request counts them. Baseline, same server, same run, same rate:
``/healthz`` (a trivial JSON route of the same app). The row gives the server's CPU per request
(from /proc, the figure that carries across machines and load) and the 1-minute load average
before and after the run (latency at a fixed rate depends on the CPU share the server gets).

Target: getFeedSkeleton p99 < 20 ms.
"""

from __future__ import annotations

import asyncio
import gc
import os
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from _harness import ROOT, Row, cli, quiet_logs, report

sys.path.insert(0, str(ROOT))

RATE = 200.0
SERVICE = "did:web:feed.bench.test"
FEED = "at://did:plc:publisher/app.bsky.feed.generator/botsky-fair"
ARMS = ("gpt-4.1-mini", "claude-haiku-4-5", "qwen2.5", "template-similar", "template-random")


def _fill(path: Path, n: int) -> None:
    """n bot replies, created over the last 40 hours, written in bulk."""
    import asyncio as aio

    from botsky.ledger.migrations import MENTION_COLUMNS
    from botsky.ledger.sqlite import SqliteLedger

    async def migrate() -> None:
        led = SqliteLedger(path)
        await led.open()
        await led.close()

    aio.run(migrate())
    now = time.time_ns() // 1000
    rows = []
    for i in range(n):
        values: dict[str, Any] = {
            "post_uri": f"at://did:plc:author{i % 5000}/app.bsky.feed.post/p{i}",
            "post_cid": "bafypost",
            "post_author": f"did:plc:author{i % 5000}",
            "root_uri": f"at://did:plc:author{i % 5000}/app.bsky.feed.post/p{i}",
            "root_cid": "bafypost",
            "bot": f"bot{i % len(ARMS)}",
            "model": ARMS[i % len(ARMS)],
            "provider": "openai",
            "persona": "p",
            "picker": "llm",
            "reply_uri": f"at://did:plc:bot{i % len(ARMS)}/app.bsky.feed.post/r{i}",
            "reply_cid": "bafyreply",
            "reply_text": "a reply",
            "mentioned_did": f"did:plc:user{i % 7000}",
            "mentioned_handle": "user.test",
            "candidates": "[]",
            "rank": 0,
            "created_us": now - 40 * 3600 * 1_000_000 + i * (40 * 3600 * 1_000_000 // n),
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "cost_usd": 0.0,
            "latency_ms": 0.0,
            "status": "open",
            "outcome_us": None,
            "extra": "{}",
        }
        rows.append(tuple(values[c] for c in MENTION_COLUMNS))
    conn = sqlite3.connect(path)
    marks = ", ".join("?" for _ in MENTION_COLUMNS)
    with conn:
        conn.executemany(
            f"INSERT INTO mentions ({', '.join(MENTION_COLUMNS)}) VALUES ({marks})", rows
        )
    conn.close()


def serve_main(db: str, keys_file: str) -> None:
    """The server process: the web app with the feed, until stdin closes."""
    import orjson

    from botsky.feed import tune_interpreter
    from botsky.feed.auth import DidKeys, ServiceAuth
    from botsky.feed.limits import RateLimiter
    from botsky.feed.service import FeedService
    from botsky.ledger.sqlite import SqliteLedger
    from botsky.scoring import ScoringOptions
    from botsky.sources.base import SourceStats
    from botsky.web import serve
    from botsky.wiring import freeze_startup_heap

    quiet_logs()
    keys: dict[str, str] = orjson.loads(Path(keys_file).read_bytes())

    async def resolve(did: str, fresh: bool) -> str:
        return keys[did]

    class _View:  # the slice of an App the web app reads (none of it on the measured routes)
        def __init__(self, ledger: SqliteLedger) -> None:
            self.ledger = ledger
            self.source = type("S", (), {"name": "bench", "stats": SourceStats()})()
            self.presence = type("P", (), {"now_us": 0})()
            self.outcomes = type("O", (), {"counts": {}, "__len__": lambda s: 0})()
            self.dispatcher = None
            self.summary = None
            self.cursor_name = "bench"
            self.scoring = ScoringOptions()

    async def main() -> None:
        ledger = SqliteLedger(Path(db))
        await ledger.open()
        feed = FeedService(
            ledger=ledger,
            service_did=SERVICE,
            feed_uri=FEED,
            auth=ServiceAuth(SERVICE, DidKeys(resolve=resolve)),
            viewer_limit=RateLimiter(1e6, 10**6),
            ip_limit=RateLimiter(1e6, 10**6),
            refresh_s=5.0,
            score_interval_s=3600.0,
        )
        await feed.start()
        server = await serve(_View(ledger), host="127.0.0.1", port=0, feed=feed)  # type: ignore[arg-type]
        gc.collect()
        freeze_startup_heap()  # what `botsky run` does after start-up with the feed enabled
        tune_interpreter()
        print(server.url, flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)
        await server.stop()
        await feed.stop()
        await ledger.close()

    asyncio.run(main())


class _Conn:
    """One keep-alive HTTP/1.1 connection: a minimal client, so the load generator costs far
    less CPU than the server it measures (httpx spent ~3 ms of CPU per request here)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def get(self, target: str, headers: dict[str, str]) -> tuple[int, bytes]:
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.writer.write(f"GET {target} HTTP/1.1\r\nhost: bench\r\n{head}\r\n".encode())
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionResetError("the server closed the idle connection")
        length = 0
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = await self.reader.readexactly(length)
        return int(status_line.split()[1]), body


async def _load(
    url: str, seconds: float, request: Any, connections: int = 512
) -> tuple[list[float], int]:
    """Open-loop at RATE/s for ``seconds``; latency of each request from its scheduled time."""
    host, port = url.removeprefix("http://").split(":")
    n = int(seconds * RATE)
    idle: list[_Conn] = []
    opened = 0
    latencies: list[float] = []
    errors = 0

    async def connection(reuse: bool = True) -> _Conn:
        nonlocal opened
        if idle and reuse:
            return idle.pop()
        opened += 1
        if opened > connections:
            raise RuntimeError("too many connections: the server has fallen far behind")
        return _Conn(*await asyncio.open_connection(host, int(port)))

    async def one(i: int, due: float) -> None:
        nonlocal errors
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        conn = await connection()
        try:
            try:
                ok = await request(conn, i)
            except ConnectionResetError:  # keep-alive expired (uvicorn: 5 s idle): reconnect
                conn.writer.close()
                conn = await connection(reuse=False)
                ok = await request(conn, i)
            idle.append(conn)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            ok = False
        latencies.append(time.perf_counter() - due)
        if not ok:
            errors += 1

    t0 = time.perf_counter() + 0.2
    await asyncio.gather(*(one(i, t0 + i / RATE) for i in range(n)))
    for conn in idle:
        conn.writer.close()
    return latencies, errors


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3


def main() -> None:
    args = cli(__doc__)
    if os.environ.get("BOTSKY_BENCH_FEED_SERVER"):
        db, keys = os.environ["BOTSKY_BENCH_FEED_SERVER"].split(os.pathsep)
        profile = os.environ.get("BOTSKY_BENCH_FEED_PROFILE")  # text, or .pyisession
        if profile:
            from pyinstrument import Profiler

            with Profiler(async_mode="disabled") as profiler:
                serve_main(db, keys)
            if profile.endswith(".pyisession"):  # for `pyinstrument --load`, any renderer
                assert profiler.last_session is not None
                profiler.last_session.save(profile)
            else:
                Path(profile).write_text(profiler.output_text(unicode=False, show_all=False))
            return
        serve_main(db, keys)
        return
    import subprocess

    import orjson

    from tests.feed_tokens import Signer

    quiet_logs()
    load_before = os.getloadavg()[0]
    candidates = 2_000 if args.quick else 100_000
    seconds = 3.0 if args.quick else 30.0
    viewers = [f"did:plc:viewer{i:04d}" for i in range(300)]
    signer = Signer()
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "ledger.sqlite3"
        _fill(db, candidates)
        keys = Path(tmp) / "keys.json"
        keys.write_bytes(orjson.dumps({v: signer.did_key(v) for v in viewers}))
        tokens = {
            v: signer.token(v, SERVICE, "app.bsky.feed.getFeedSkeleton", exp_in=3600)
            for v in viewers
        }
        env = {**os.environ, "BOTSKY_BENCH_FEED_SERVER": f"{db}{os.pathsep}{keys}"}
        server = subprocess.Popen(
            [sys.executable, __file__, "--no-write"],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stdout is not None
            url = server.stdout.readline().strip()
            if not url.startswith("http"):
                raise SystemExit(f"the feed server did not start: {url!r}")
            rng = random.Random(7)
            cursors: dict[str, str] = {}

            async def skeleton(conn: _Conn, i: int) -> bool:
                viewer = viewers[rng.randrange(len(viewers))]
                params = {"feed": FEED, "limit": "30"}
                if viewer in cursors and rng.random() < 0.5:
                    params["cursor"] = cursors.pop(viewer)
                status, raw = await conn.get(
                    "/xrpc/app.bsky.feed.getFeedSkeleton?" + urlencode(params),
                    {"authorization": f"Bearer {tokens[viewer]}"},
                )
                if status != 200:
                    return False
                body = orjson.loads(raw)
                if "cursor" in body:
                    cursors[viewer] = body["cursor"]
                return len(body["feed"]) > 0

            async def healthz(conn: _Conn, i: int) -> bool:
                status, _ = await conn.get("/healthz", {})
                return status == 200

            cpu: dict[str, float] = {}

            async def both() -> tuple[list[float], int, list[float], int]:
                await _load(url, 1.0, healthz)  # warm the connections
                before = _cpu_s(server.pid)
                base, base_err = await _load(url, seconds, healthz)
                middle = _cpu_s(server.pid)
                lat, err = await _load(url, seconds, skeleton)
                cpu["healthz"] = (middle - before) / len(base)
                cpu["skeleton"] = (_cpu_s(server.pid) - middle) / len(lat)
                return base, base_err, lat, err

            base, base_err, lat, err = asyncio.run(both())
        finally:
            if server.stdin is not None:
                server.stdin.close()
            server.wait(timeout=60)
    p50, p99 = _pct(lat, 0.5), _pct(lat, 0.99)
    b50, b99 = _pct(base, 0.5), _pct(base, 0.99)
    report(
        Row(
            "feed",
            f"getFeedSkeleton p99 {p99:.1f} ms, p50 {p50:.1f} ms ({len(lat):,} requests at "
            f"200/s, {candidates:,} candidates, limit 30, {err} errors; server CPU "
            f"{cpu['skeleton'] * 1e3:.2f} ms/request; load average {load_before:.1f} -> "
            f"{os.getloadavg()[0]:.1f})",
            f"/healthz p99 {b99:.1f} ms, p50 {b50:.1f} ms ({len(base):,} at 200/s, "
            f"{base_err} errors; server CPU {cpu['healthz'] * 1e3:.2f} ms/request)",
            f"p99 {p99 / b99:.1f}x",
            "p99 < 20 ms at 200 requests/s",
            None if args.quick else (p99 < 20.0 and err == 0),
        ),
        args,
    )


if __name__ == "__main__":
    main()
