"""A simulation's files on disk: a new run never destroys an earlier one.

A run writes its ledger, its JSON log and its day-boundary checkpoint under ``data_dir``. A new
(not resumed) world needs an empty ledger (it reuses the post URIs of an earlier run with the
same seed, which the old ledger has claimed), so the earlier run's files are **moved aside**,
whole, into ``data_dir/previous/<UTC time the earlier run last wrote>/`` before the new run
starts; nothing is deleted. ``--resume`` replaces the ledger with the checkpoint's copy, so the
ledger as the interrupted run left it is moved aside the same way.

The move is undone when the new run fails before it starts (a missing key, an unreadable file,
Ctrl-C during start-up): the files the failed attempt created are removed and the earlier run's
files go back where they were, byte for byte. Once the run has started, the earlier run stays
in ``previous/`` (its path is printed) and can be moved back by hand; delete ``previous/`` to
reclaim the space.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

__all__ = ["PREVIOUS_DIR", "SetAside", "set_aside"]

PREVIOUS_DIR: Final = "previous"  # under data_dir


@dataclass
class SetAside:
    """A run's files, with the earlier run's copies moved aside (``previous`` is where)."""

    files: tuple[Path, ...]
    previous: Path | None = None
    moved: list[tuple[Path, Path]] = field(default_factory=list)
    # Files the run appends to (a resumed run's log), with their size before; None: absent.
    appended: tuple[tuple[Path, int | None], ...] = ()

    def restore(self) -> None:
        """Undo a start that failed: remove what it wrote at the run's paths, put the earlier
        run's files back, and remove the then empty directories under ``previous/``."""
        for path in self.files:
            path.unlink(missing_ok=True)
        for path, size in self.appended:
            if size is None:
                path.unlink(missing_ok=True)
            elif path.exists():
                os.truncate(path, size)
        self._put_back()

    def _put_back(self) -> None:
        for original, aside in reversed(self.moved):
            os.replace(aside, original)
        self.moved.clear()
        if self.previous is not None:
            for directory in (self.previous, self.previous.parent):
                try:
                    directory.rmdir()
                except OSError:  # not empty (other earlier runs) or already gone
                    break
            self.previous = None


def set_aside(data_dir: Path, files: Sequence[Path], appended: Sequence[Path] = ()) -> SetAside:
    """Move those of ``files`` that exist into a new ``data_dir/previous/<stamp>/``.

    ``appended`` are files the run only appends to: their sizes are noted, so that ``restore``
    cuts off what a failed start wrote.

    ``<stamp>`` is the UTC time the newest of them was last written (when the earlier run
    ended), made unique with ``-2``, ``-3``... Each file is renamed, not copied (atomic on one
    file system); nothing is created when none of the files exists.
    """
    sizes = tuple((path, path.stat().st_size if path.exists() else None) for path in appended)
    result = SetAside(tuple(files), appended=sizes)
    present = [path for path in files if path.exists()]
    if not present:
        return result
    newest = max(path.stat().st_mtime for path in present)
    root = data_dir / PREVIOUS_DIR
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(newest))
    directory = root / stamp
    n = 1
    while directory.exists():
        n += 1
        directory = root / f"{stamp}-{n}"
    directory.mkdir(parents=True)
    result.previous = directory
    try:
        for i, path in enumerate(present):
            aside = directory / path.name
            if aside.exists():  # two files of one name from different directories
                aside = directory / f"{i}-{path.name}"
            os.replace(path, aside)
            result.moved.append((path, aside))
    except BaseException:
        result._put_back()  # the files not moved yet still hold the earlier run's data
        raise
    return result
