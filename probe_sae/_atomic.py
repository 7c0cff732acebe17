"""Atomic file writes: write to a temporary name in the same folder, then rename into place.

:func:`atomic_write` replaces one file; :func:`atomic_write_files` replaces several files of
one folder as a whole (an SAE's ``config.json`` and ``model.safetensors``): every new file is
written completely before any is renamed into place, and the previous versions are kept as
hard links until every rename has succeeded, so an error at any point puts the previous
files back. Files of the folder that are not named are never touched. Temporary files
(``.<name>.<random>.tmp`` / ``.bak``) are removed whatever happens.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import stat
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any


def atomic_write(path: Path, write: Callable[[str], Any]) -> None:
    """Call ``write(tmp_path)`` and move the result to ``path``; a failure leaves ``path`` as it was."""
    atomic_write_files(path.parent, {path.name: write})


def atomic_write_files(folder: Path, writers: Mapping[str, Callable[[str], Any]]) -> None:
    """Write the files ``{name: write}`` of ``folder`` as one: all new or, on error, all old.

    Each ``write(tmp_path)`` writes one file under a temporary name in ``folder``; only when
    all succeeded are they renamed into place. An exception from a writer or a rename is
    re-raised after the previous files (or their absence) are restored.
    """
    staged: dict[str, Path] = {}
    try:
        for name, write in writers.items():
            staged[name] = tmp = _temporary(folder, name, ".tmp")
            mode = stat.S_IMODE(tmp.stat().st_mode)  # what the umask gives a new file
            write(str(tmp))
            tmp.chmod(mode)  # a writer that replaced the file (safetensors does) made it private
            _fsync(tmp)
        # the last rename needs no backup: when it fails, its file is still the previous one
        with _previous_versions(folder, list(staged)[:-1]) as previous:
            _rename_all(folder, staged, previous)
        _fsync_folder(folder)
    finally:
        for tmp in staged.values():
            tmp.unlink(missing_ok=True)


def _temporary(folder: Path, name: str, suffix: str) -> Path:
    """A new empty file ``.<name>.<random><suffix>`` in ``folder``, with the permissions the
    umask gives new files (``tempfile.mkstemp`` would make it private to its owner)."""
    for _ in range(100):
        tmp = folder / f".{name}.{secrets.token_hex(4)}{suffix}"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"could not find a free temporary name for {folder / name}")


def _fsync(path: Path) -> None:
    """Flush ``path`` to the disk, so that a renamed file is never an empty one after a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(folder: Path) -> None:
    """Flush the folder's entries (the renames); a no-op where folders cannot be opened."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def _previous_versions(folder: Path, names: list[str]) -> Iterator[dict[str, Path | None]]:
    """``{name: a backup of the existing file, or None}``; backups left are removed on exit."""
    previous: dict[str, Path | None] = {}
    try:
        for name in names:
            previous[name] = _backup(folder / name) if (folder / name).exists() else None
        yield previous
    finally:
        for backup in previous.values():
            if backup is not None:
                backup.unlink(missing_ok=True)


def _backup(path: Path) -> Path:
    """A second name for ``path`` (a hard link; a copy where links are not supported)."""
    backup = _temporary(path.parent, path.name, ".bak")
    backup.unlink()
    try:
        os.link(path, backup)
    except OSError:
        try:
            shutil.copy2(path, backup)
        except BaseException:
            backup.unlink(missing_ok=True)
            raise
    return backup


def _rename_all(folder: Path, staged: Mapping[str, Path], previous: dict[str, Path | None]) -> None:
    """Move every staged file into place; on error, put the previous files back."""
    done: list[str] = []
    try:
        for name, tmp in staged.items():
            os.replace(tmp, folder / name)
            done.append(name)
    except BaseException:
        for name in reversed(done):
            _restore(folder / name, previous, name)
        raise


def _restore(path: Path, previous: dict[str, Path | None], name: str) -> None:
    """Put the previous version of ``path`` back (or remove ``path`` if it had none).

    Should that fail too, the backup is left on disk: it is the only copy of the old file."""
    backup = previous.get(name)
    try:
        if backup is None:
            path.unlink(missing_ok=True)
        else:
            os.replace(backup, path)
    except OSError:
        pass
    previous[name] = None  # moved back, or kept as the last copy: not to be removed
