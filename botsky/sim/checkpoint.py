"""Checkpoints: stop a simulation at a day boundary and continue it later, bit for bit.

A checkpoint is two files written at the start of every simulated day (after the previous
day's events and bot replies have all been handled, which lockstep guarantees):

- ``<path>`` (pickle, version 2): ``{"version": 2, "day": d, "world": World, "pipeline": {...}}``.
  The world holds users, hidden states, posts, notifications, the clock and its RNG state; the
  pipeline part holds what the app keeps in memory: presence, identity, consent sets, the
  outcome watcher's index, the recommender's cooldowns, the selector's author cooldowns, and the
  RNG states of the army, selector and dispatcher.
- ``<path>.ledger.sqlite3``: a consistent copy of the SQLite ledger (SQLite's backup API).

``simulate(resume=True)`` restores the ledger copy over the ledger file, rebuilds the app,
restores the pipeline state into it and lets the world continue from day ``d``; the leaderboard
then equals that of an uninterrupted run. Only the SQLite ledger can be checkpointed. Pickles
run code when loaded: resume only from checkpoints you wrote yourself.
"""

from __future__ import annotations

import gc
import os
import pickle
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from botsky.errors import ConfigError
from botsky.sim.world import World

if TYPE_CHECKING:
    from botsky.runtime import App

__all__ = [
    "VERSION",
    "ledger_copy_path",
    "load_checkpoint",
    "restore_ledger",
    "restore_pipeline",
    "save_checkpoint",
]

VERSION: Final = 2  # 2: posts know their topic, users pickle without derived fields


def ledger_copy_path(path: Path) -> Path:
    return path.with_name(path.name + ".ledger.sqlite3")


def _capture(app: App) -> dict[str, Any]:
    out: dict[str, Any] = {
        "presence": app.presence,
        "identity": app.identity,
        "opted_in": app.policy.opted_in,
        "opted_out": app.policy.opted_out,
        "outcomes": {k: v for k, v in vars(app.outcomes).items() if k != "ledger"},
    }
    if app.dispatcher is not None and app.selector is not None:
        d = app.dispatcher
        out |= {
            "army_rng": d.army.rng.getstate(),
            "dispatch_rng": d.rng.getstate(),
            "dispatch_counts": d.counts,
            "last_mentioned": d.recommender._last_mentioned,
            "selector_rng": app.selector.rng.getstate(),
            "last_answered": app.selector._last_answered,
        }
    return out


def restore_pipeline(app: App, saved: dict[str, Any]) -> None:
    """Put captured pipeline state back into a freshly built app (same configuration)."""
    # In place: the recommender, dispatcher and policy hold references to these objects.
    vars(app.presence).update(vars(saved["presence"]))
    vars(app.identity).update(vars(saved["identity"]))
    app.policy.opted_in = saved["opted_in"]
    app.policy.opted_out = saved["opted_out"]
    vars(app.outcomes).update(saved["outcomes"])
    if app.dispatcher is not None and app.selector is not None and "army_rng" in saved:
        d = app.dispatcher
        d.army.rng.setstate(saved["army_rng"])
        d.rng.setstate(saved["dispatch_rng"])
        d.counts = saved["dispatch_counts"]
        d.recommender._last_mentioned = saved["last_mentioned"]
        app.selector.rng.setstate(saved["selector_rng"])
        app.selector._last_answered = saved["last_answered"]


def save_checkpoint(path: Path, world: World, app: App, ledger_path: Path) -> None:
    """Write the checkpoint files atomically (a crash mid-write keeps the previous one).

    ``ledger_path`` is the app's SQLite ledger file. Like the pickle, the ledger copy is not
    synced to disk (SQLite would sync it once per day boundary, which is most of the cost of a
    copy): a crash of the process keeps the previous checkpoint, a crash of the machine may not.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    copy = ledger_copy_path(path)
    tmp_copy = copy.with_name(copy.name + ".tmp")
    tmp_copy.unlink(missing_ok=True)
    src = sqlite3.connect(ledger_path)
    dst = sqlite3.connect(tmp_copy)
    try:
        dst.execute("PRAGMA synchronous=OFF")
        dst.execute("PRAGMA journal_mode=OFF")  # a new file: nothing to roll back to
        src.backup(dst)
    finally:
        dst.close()
        src.close()
    blob = {"version": VERSION, "day": world.day, "world": world, "pipeline": _capture(app)}
    tmp = path.with_name(path.name + ".tmp")
    # Pickling allocates a tuple per post and user (``SimPost.__reduce__``), which sets off
    # garbage collections that find nothing to free: paused, the dump is about a fifth faster.
    collecting = gc.isenabled()
    gc.disable()
    try:
        with tmp.open("wb") as fh:
            pickle.dump(blob, fh, protocol=5)
    finally:
        if collecting:
            gc.enable()
    os.replace(tmp_copy, copy)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> tuple[World, dict[str, Any]]:
    """The world and the pipeline state saved in ``path``."""
    if not path.exists() or not ledger_copy_path(path).exists():
        raise ConfigError(f"no simulation checkpoint at {path} (run without --resume first)")
    with path.open("rb") as fh:
        blob = pickle.load(fh)  # our own file: see the module docstring
    if not isinstance(blob, dict) or blob.get("version") != VERSION:
        raise ConfigError(f"{path}: not a version {VERSION} simulation checkpoint")
    world = blob["world"]
    if not isinstance(world, World):
        raise ConfigError(f"{path}: the checkpoint holds no world")
    return world, blob["pipeline"]


def restore_ledger(path: Path, ledger_path: Path) -> None:
    """Replace the ledger file with the checkpoint's copy (and drop its WAL files)."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{ledger_path}{suffix}").unlink(missing_ok=True)
    ledger_path.parent.mkdir(parents=True, exist_ok=True)
    src = sqlite3.connect(ledger_copy_path(path))
    dst = sqlite3.connect(ledger_path)
    try:
        src.backup(dst)
    finally:
        dst.close()
        src.close()
