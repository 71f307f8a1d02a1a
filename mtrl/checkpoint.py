"""Checkpoint files: written atomically, read back without unpickling arbitrary objects.

A checkpoint is a ``torch.save`` of tensors and plain data (dicts, lists, numbers, strings), so
that ``torch.load(weights_only=True)`` can read it: loading a file never runs code from it.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, corrupt, or not one of ours."""


def save_atomic(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` through a temporary file and a rename.

    A crash or an interruption mid-write leaves the previous file at ``path`` untouched, never a
    half-written one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)
    return path


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
