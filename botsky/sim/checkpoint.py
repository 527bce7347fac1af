"""Checkpoints: stop a simulation at a day boundary and continue it later, bit for bit.

A checkpoint is two files written at the start of every simulated day (after the previous
day's events and bot replies have all been handled, which lockstep guarantees):

- ``<path>`` (pickle, version 6): ``{"version": 6, "day": d, "world": World, "pipeline": {...}}``.
  The world holds users, hidden states, posts, notifications, the clock and its RNG state; the
  pipeline part holds what the app keeps in memory, each component's through its own contract
  (``snapshot()`` → plain values, ``restore(value)``; see ``Stateful``), never its attributes:
  presence, identity, audience policy, outcome watcher, with bots the recommender, selector,
  army and dispatcher, and with botsky's feed the feed service. Each is saved as
  ``{"version": <its STATE_VERSION>, "state": ...}``, so a component whose snapshot changed
  refuses an old checkpoint by name.
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
from typing import TYPE_CHECKING, Any, ClassVar, Final, Protocol, runtime_checkable

from botsky.errors import ConfigError
from botsky.sim.world import World

if TYPE_CHECKING:
    from botsky.runtime import App

__all__ = [
    "VERSION",
    "Stateful",
    "ledger_copy_path",
    "load_checkpoint",
    "restore_ledger",
    "restore_pipeline",
    "save_checkpoint",
]

# 2: posts know their topic, users pickle without derived fields. 3: the pipeline is saved
# through the components' snapshot()/restore() contracts, with a version per component.
# 4: the world of issue 14 (topic registers, several logons a day, ties, truth records).
# 5: the truth of decided mentions (World.decided_truth: per-mention oracle and engagement).
# 6: botsky's feed in the world (subscribers, exposures and their truth; the feed's state).
VERSION: Final = 6


@runtime_checkable
class Stateful(Protocol):
    """A component whose in-memory state a checkpoint saves and restores.

    ``snapshot()`` returns plain picklable values (built-in types, ``array``, ``bytes``) that no
    later change of the component affects, documented where it is defined; ``restore(value)``
    puts that state back into an instance built with the same configuration, in place (other
    components hold references to it) and without keeping references into ``value``.
    ``STATE_VERSION`` names the shape of the value: bump it when the keys change.
    """

    STATE_VERSION: ClassVar[int]

    def snapshot(self) -> Any: ...

    def restore(self, state: Any) -> None: ...


def ledger_copy_path(path: Path) -> Path:
    return path.with_name(path.name + ".ledger.sqlite3")


def _components(app: App) -> dict[str, Stateful]:
    """The stateful components of the app, by the name their state is saved under."""
    if not isinstance(app.identity, Stateful):
        raise ConfigError(
            "a simulation checkpoint needs the in-memory identity (identity.resolve: false)"
        )
    out: dict[str, Stateful] = {
        "presence": app.presence,
        "identity": app.identity,
        "policy": app.policy,
        "outcomes": app.outcomes,
    }
    if app.dispatcher is not None and app.selector is not None:
        out |= {
            "recommender": app.dispatcher.recommender,
            "selector": app.selector,
            "army": app.dispatcher.army,
            "dispatcher": app.dispatcher,
        }
    if app.feed is not None:
        out["feed"] = app.feed
    return out


def _capture(app: App) -> dict[str, Any]:
    return {
        name: {"version": c.STATE_VERSION, "state": c.snapshot()}
        for name, c in _components(app).items()
    }


def restore_pipeline(app: App, saved: dict[str, Any]) -> None:
    """Put captured pipeline state back into a freshly built app (same configuration).

    A component the checkpoint has no state for (an army where the run had none) or whose state
    has another version is a ``ConfigError``; nothing is restored then.
    """
    components = _components(app)
    for name, component in components.items():
        entry = saved.get(name)
        if entry is None:
            raise ConfigError(f"the checkpoint holds no {name} state (was the bots file changed?)")
        if entry.get("version") != component.STATE_VERSION:
            raise ConfigError(
                f"the checkpoint's {name} state is version {entry.get('version')}, this botsky "
                f"reads version {component.STATE_VERSION}: start the simulation afresh"
            )
    for name, component in components.items():
        component.restore(saved[name]["state"])


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
