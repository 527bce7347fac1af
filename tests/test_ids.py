"""ids: the one TID encoder and the simulation's CID-shaped names."""

from __future__ import annotations

import subprocess
import sys

import pytest

from botsky.ids import synthetic_cid, tid
from botsky.posting import reply_rkey
from botsky.syntax import is_valid_cid, is_valid_tid

T0 = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z


def test_tids_are_valid_and_sort_like_their_times() -> None:
    """A TID passes the SDK's syntax check, keeps the clock id in its low bits, and orders
    like (time, clock id)."""
    keys = [(t, c) for t in (0, 1, T0, T0 + 1, T0 + 999_999, 2**53 - 1) for c in (0, 1, 1023)]
    encoded = [tid(t, c) for t, c in keys]
    assert all(len(k) == 13 and is_valid_tid(k) for k in encoded[3:])  # ≥ 1 µs after the epoch
    assert encoded == sorted(encoded)
    assert tid(T0, 1024) == tid(T0, 0)  # the clock id is 10 bits
    assert tid(0, 0) == "2222222222222"


def test_reply_rkeys_are_tids_of_the_posts_millisecond() -> None:
    """A reply's record key is a TID within the answered post's millisecond, fixed by the key."""
    rkey = reply_rkey(T0 + 123_456, "did:plc:bot|at://did:plc:a/app.bsky.feed.post/1")
    assert is_valid_tid(rkey)
    assert tid(T0 + 123_000) <= rkey <= tid(T0 + 123_999, 1023)
    assert rkey == reply_rkey(T0 + 123_999, "did:plc:bot|at://did:plc:a/app.bsky.feed.post/1")


def test_synthetic_cids_are_cid_shaped_and_deterministic() -> None:
    """A synthetic CID passes the CID syntax check and depends on its seed only."""
    assert is_valid_cid(synthetic_cid("a")) and synthetic_cid("a") == synthetic_cid("a")
    assert synthetic_cid("a") != synthetic_cid("b")


@pytest.mark.slow
def test_production_code_does_not_import_the_test_fakes() -> None:
    """Importing the CLI, the simulation and every source leaves ``botsky.testing`` unloaded."""
    code = (
        "import sys, botsky.cli, botsky.sim.run, botsky.sim.cli, botsky.sources.relay, "
        "botsky.sources.jetstream, botsky.sources.replay, botsky.web; "
        "print('botsky.testing' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
