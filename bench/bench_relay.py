"""Benchmark: relay frames/s on one core, decode + normalize to Events, against the SDK's path.

The recorded corpus (``tests/data/jetstream/frames.bin.zst``: 150 real subscribeRepos frames,
148 commits) is decoded over and over, in one process on one core:

- figure: ``RelayDecoder(DEFAULT_COLLECTIONS).decode`` (what ``RelaySource`` runs), every
  frame turned into the Events botsky routes;
- baseline: the atproto SDK's plain path, ``Frame.from_bytes`` + ``parse_subscribe_repos_message``
  + ``CAR.from_bytes`` + ``models.get_or_create`` for every op with a record.

Both are timed over the same frames in the same run, alternating, best of a few rounds.
Target: >= 100k frames/s and >= 5x the SDK path.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from pathlib import Path

import zstandard
from _harness import ROOT, Row, cli, report

from botsky.config import DEFAULT_COLLECTIONS
from botsky.sources.relay import RelayDecoder

CORPUS = ROOT / "tests" / "data" / "jetstream" / "frames.bin.zst"


def load_frames(path: Path = CORPUS) -> list[bytes]:
    with path.open("rb") as fh:
        raw = zstandard.ZstdDecompressor().stream_reader(fh).read()
    frames, pos = [], 0
    while pos < len(raw):
        (size,) = struct.unpack_from("<I", raw, pos)
        frames.append(raw[pos + 4 : pos + 4 + size])
        pos += 4 + size
    return frames


def ours(frames: list[bytes]) -> int:
    decoder = RelayDecoder(DEFAULT_COLLECTIONS)
    events = 0
    for frame in frames:
        events += len(decoder.decode(frame)[2])
    return events


def sdk(frames: list[bytes]) -> int:
    from atproto import CAR, models, parse_subscribe_repos_message
    from atproto_subscription.frames import Frame

    records = 0
    for data in frames:
        frame = Frame.from_bytes(data)
        message = parse_subscribe_repos_message(frame)  # type: ignore[arg-type]
        if isinstance(message, models.ComAtprotoSyncSubscribeRepos.Commit):
            car = CAR.from_bytes(message.blocks)
            for op in message.ops:
                if op.cid is not None:
                    raw = car.blocks.get(op.cid)
                    if raw is not None:
                        models.get_or_create(raw, strict=False)
                        records += 1
    return records


def rate(fn: Callable[[list[bytes]], int], frames: list[bytes], rounds: int) -> float:
    """Best frames/s over ``rounds`` passes (the least disturbed one)."""
    best = 0.0
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn(frames)
        best = max(best, len(frames) / (time.perf_counter() - t0))
    return best


def main() -> None:
    args = cli(__doc__)
    corpus = load_frames()
    repeat = 4 if args.quick else 100
    frames = corpus * repeat
    sdk(corpus), ours(corpus)  # warm imports and caches
    rounds = 1 if args.quick else 3
    ours_fps = sdk_fps = 0.0
    for _ in range(rounds):  # alternate, so a noisy neighbour hits both alike
        ours_fps = max(ours_fps, rate(ours, frames, 1))
        sdk_fps = max(sdk_fps, rate(sdk, frames, 1))
    ratio = ours_fps / sdk_fps
    report(
        Row(
            "relay_decode",
            f"{ours_fps:,.0f} frames/s ({len(frames):,} frames, {1e6 / ours_fps:.1f} µs/frame)",
            f"SDK path {sdk_fps:,.0f} frames/s",
            f"{ratio:.1f}×",
            "≥ 100k frames/s, ≥ 5× SDK",
            None if args.quick else (ours_fps >= 100_000 and ratio >= 5),
        ),
        args,
    )


if __name__ == "__main__":
    main()
