"""Which run ``botsky scores`` shows when no ``-c`` is given: the last one started here.

``botsky run`` and ``botsky simulate`` note, once their run has started, which configuration
they ran from which working directory. ``botsky scores`` without ``-c`` then reads that run's
ledger and says so, so the demo's ``botsky simulate -c configs/sim.yaml`` followed by a plain
``botsky scores`` shows the demo's leaderboard. Without a note for the working directory it
reads ``configs/botsky.yaml``, as every other command does.

The notes live in ``$XDG_STATE_HOME/botsky/last-runs.json`` (``~/.local/state/botsky/`` by
default), one per working directory, because a config's relative ``data_dir`` is relative to
the directory botsky ran in. They hold paths only, never settings or secrets. A note that
cannot be written costs a warning, never the run.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import structlog

__all__ = ["LastRun", "last_run", "record_run", "state_file"]

log = structlog.get_logger(__name__)

_MAX_NOTES: Final = 200  # working directories remembered; the oldest notes go first


@dataclass(frozen=True)
class LastRun:
    """The last run started in a working directory."""

    config: Path  # absolute
    command: str  # "run" or "simulate"
    started: str  # ISO 8601, UTC

    def describe(self, cwd: Path | None = None) -> str:
        """``botsky simulate -c configs/sim.yaml, started 2026-07-04 12:00 UTC``."""
        base = (cwd or Path.cwd()).absolute()
        try:
            shown = self.config.relative_to(base)
        except ValueError:
            shown = self.config
        return f"botsky {self.command} -c {shown}, started {self.started}"


def state_file(environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_STATE_HOME/botsky/last-runs.json`` (``~/.local/state`` when unset)."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "botsky" / "last-runs.json"


def record_run(
    config: Path, command: str, *, cwd: Path | None = None, environ: Mapping[str, str] | None = None
) -> None:
    """Note that ``command`` started a run from ``config`` in ``cwd`` (the working directory)."""
    path = state_file(environ)
    base = (cwd or Path.cwd()).absolute()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    note = {"config": str(base / config), "command": command, "started": started}
    key = str(base)
    try:
        notes = _read(path)
        notes.pop(key, None)
        notes[key] = note  # insertion order is age order: the newest last
        while len(notes) > _MAX_NOTES:
            notes.pop(next(iter(notes)))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(notes, indent=1), encoding="utf-8")
        os.replace(tmp, path)  # atomic: concurrent runs never leave a torn file
    except OSError as exc:
        log.warning("last_run_not_noted", file=str(path), error=str(exc))


def last_run(
    *, cwd: Path | None = None, environ: Mapping[str, str] | None = None
) -> LastRun | None:
    """The last run noted for ``cwd`` whose config file still exists, or None."""
    try:
        notes = _read(state_file(environ))
    except OSError:
        return None
    note = notes.get(str((cwd or Path.cwd()).absolute()))
    if not isinstance(note, dict):
        return None
    config, command, started = note.get("config"), note.get("command"), note.get("started")
    if not (isinstance(config, str) and isinstance(command, str) and isinstance(started, str)):
        return None
    if not Path(config).is_file():
        return None
    return LastRun(Path(config), command, started)


def _read(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except ValueError:  # a damaged file is replaced by the next note
        return {}
    return data if isinstance(data, dict) else {}
