"""Run files: written atomically, read back without unpickling arbitrary objects.

A checkpoint is a ``torch.save`` of tensors and plain data (dicts, lists, numbers, strings), so
that ``torch.load(weights_only=True)`` can read it: loading a file never runs code from it.
Every file of a run (checkpoints, config, protocol) is written through a temporary file and a
rename, so that a crash or a full disk leaves the previous version whole, never half a file.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, corrupt, or not one of ours."""


class RunFileError(CheckpointError):
    """Another file of a run (its config, protocol or finish record) cannot be read. A
    :class:`CheckpointError` too, so that whatever reports a damaged checkpoint reports it."""


class RunWriteError(RuntimeError):
    """A file of a run could not be written: a read-only directory, a full disk, ..."""


def _fsync_directory(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a crash right after it keeps the new name)."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_atomic(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Write ``path`` with ``write(handle)`` into a temporary file, then rename it over ``path``.

    Raises :class:`RunWriteError` naming the path if anything cannot be written; the previous
    file at ``path`` is then untouched and the temporary file removed.
    """
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(partial, "wb") as handle:
            try:
                write(handle)
            except RuntimeError as error:
                # torch.save reports a failed write as a RuntimeError; the OSError behind it
                # says why (no space left, read-only file system).
                if isinstance(error.__context__, OSError):
                    raise error.__context__ from error
                raise
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
        _fsync_directory(path.parent)
    except OSError as error:
        with contextlib.suppress(OSError):  # a read-only directory cannot lose it either
            partial.unlink(missing_ok=True)
        raise RunWriteError(f"cannot write {path}: {error.strerror or error}") from error
    return path


def check_writable(folder: str | Path) -> Path:
    """Make ``folder`` if needed and check that a file can be created in it, so that a command
    refuses an unwritable destination before its work, not after; raises :class:`RunWriteError`
    naming the folder. (Permission bits alone cannot tell: a read-only file system, or root.)"""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except FileExistsError as error:
        raise RunWriteError(f"cannot write in {folder}: it is a file, not a folder") from error
    except OSError as error:
        raise RunWriteError(f"cannot write in {folder}: {error.strerror or error}") from error
    return folder


def save_atomic(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` with ``torch.save``, atomically (see :func:`write_atomic`)."""
    return write_atomic(path, lambda handle: torch.save(state, handle))


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`write_atomic`)."""
    return write_atomic(path, lambda handle: handle.write(text.encode()))


def load_state(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_atomic`, with a clear error if it is damaged."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile) as error:
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupt and cannot be read ({error})"
        ) from error
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} does not hold a checkpoint (found {type(state).__name__})")
    return state
