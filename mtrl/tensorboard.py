"""Writing a run's TensorBoard events, with failed writes reported like the run's other files.

TensorBoard writes events in a thread of its own. When a write fails (a read-only folder, a full
disk), the thread keeps the error and the next write or flush from the main thread raises it;
here it becomes a :class:`mtrl.checkpoint.RunWriteError` naming the file, so that the run stops
with the message every other unwritable run file gives.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from stable_baselines3.common.logger import Logger, TensorBoardOutputFormat, make_output_format
from tensorboard.summary.writer.event_file_writer import _AsyncWriterThread  # no public name

from mtrl.checkpoint import RunWriteError


def _quiet_writer_threads() -> None:
    """Keep TensorBoard's writer thread from printing a traceback for a failed write: the main
    thread raises that same error next, and it is reported there."""
    previous = threading.excepthook
    if getattr(previous, "quiets_event_writers", False):
        return

    def hook(args: threading.ExceptHookArgs) -> None:
        if not (isinstance(args.thread, _AsyncWriterThread) and issubclass(args.exc_type, OSError)):
            previous(args)

    hook.quiets_event_writers = True
    threading.excepthook = hook


@contextlib.contextmanager
def reported_writes(name: str | Path) -> Iterator[None]:
    """Turn an ``OSError`` from writing the events ``name`` (a file or folder) into a
    :class:`RunWriteError` naming it."""
    _quiet_writer_threads()
    try:
        yield
    except OSError as error:
        raise RunWriteError(f"cannot write {name}: {error.strerror or error}") from error


class TensorBoardEvents(TensorBoardOutputFormat):
    """SB3's TensorBoard output, whose failed writes raise :class:`RunWriteError`."""

    def __init__(self, folder: str | Path) -> None:
        with reported_writes(f"TensorBoard events in {folder}"):
            super().__init__(str(folder))
        # TensorBoard keeps the file's name private; its folder is the next best thing to name.
        self.path = getattr(self.writer.file_writer.event_writer, "_file_name", str(folder))

    def write(
        self, key_values: dict[str, Any], key_excluded: dict[str, Any], step: int = 0
    ) -> None:
        with reported_writes(self.path):
            super().write(key_values, key_excluded, step)

    def close(self) -> None:
        with reported_writes(self.path):
            super().close()


def run_logger(folder: str | Path, stdout: bool = False) -> Logger:
    """SB3's logger for a run: TensorBoard events in ``folder`` (their files add up across
    resumes, where a CSV would be overwritten), and SB3's table on stdout if asked."""
    formats = [TensorBoardEvents(folder)]
    if stdout:
        formats.append(make_output_format("stdout", str(folder)))
    return Logger(str(folder), formats)
