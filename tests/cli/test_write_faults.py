"""A run directory that cannot be written (read-only, or a full disk) stops the run with an error
naming the file, and leaves what was written before intact."""

from __future__ import annotations

import errno
import fnmatch
import os
import subprocess
import sys
from pathlib import Path

import pytest

import mtrl.checkpoint
from mtrl.checkpoint import RunWriteError, load_state
from mtrl.cli import train as train_cli
from mtrl.runs import FINISHED, checkpoint_path, list_checkpoints
from tests.cli.conftest import train_config

RUN = ["experiment=smoke", "benchmark=mt1", "total_steps=200"]  # checkpoints at 150 and 200
# mtrl-train, with the second checkpoint's write failing for want of space.
FULL_AT_SECOND_CHECKPOINT = """
import errno, os, sys
import mtrl.checkpoint
checkpoints = 0
def full(path, mode="r", *args, **kwargs):
    global checkpoints
    if str(path).endswith(".pt.partial"):
        checkpoints += 1
        if checkpoints == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    return open(path, mode, *args, **kwargs)
mtrl.checkpoint.open = full
from mtrl.cli.train import main
sys.argv = ["mtrl-train", *sys.argv[1:]]
main()
"""


class FullDisk:
    """A file whose writes fail as on a full disk."""

    def __init__(self, handle):
        self.handle = handle

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()


def fail_writes(monkeypatch, pattern: str, code: int, skip: int = 0) -> None:
    """Make writes of files named ``pattern`` fail with ``code`` after ``skip`` good ones:
    read-only refuses to create the file, a full disk refuses its contents."""
    seen = []

    def failing_open(path, mode="r", *args, **kwargs):
        name = Path(path).name.removesuffix(".partial")
        if "w" in mode and fnmatch.fnmatch(name, pattern):
            seen.append(name)
            if len(seen) > skip:
                if code == errno.EROFS:
                    raise OSError(code, os.strerror(code), str(path))
                return FullDisk(open(path, mode, *args, **kwargs))
        return open(path, mode, *args, **kwargs)

    monkeypatch.setattr(mtrl.checkpoint, "open", failing_open, raising=False)


def partial_files(run_dir: Path) -> list[Path]:
    return list(run_dir.rglob("*.partial"))


CODES = pytest.mark.parametrize("code", [errno.EROFS, errno.ENOSPC], ids=["read-only", "disk-full"])


@CODES
@pytest.mark.parametrize("name", ["config.yaml", "protocol.json"])
def test_the_run_record_fails_before_any_environment_is_built(name, code, monkeypatch, tmp_path):
    def no_envs(*args, **kwargs):
        raise AssertionError("an environment was built after the run's record failed")

    monkeypatch.setattr(train_cli, "make_vector_env", no_envs)
    fail_writes(monkeypatch, name, code)
    with pytest.raises(RunWriteError, match=f"cannot write {tmp_path / name}: {os.strerror(code)}"):
        train_cli.run(train_config(*RUN), tmp_path)
    assert not partial_files(tmp_path)


@CODES
def test_a_failed_checkpoint_stops_the_run_and_keeps_the_previous_one(code, monkeypatch, tmp_path):
    fail_writes(monkeypatch, "step_*.pt", code, skip=1)
    failed = checkpoint_path(tmp_path, 200)
    with pytest.raises(RunWriteError, match=f"cannot write {failed}: {os.strerror(code)}"):
        train_cli.run(train_config(*RUN), tmp_path)
    (previous,) = list_checkpoints(tmp_path)
    assert previous == checkpoint_path(tmp_path, 150)
    assert load_state(previous)["counters"]["num_timesteps"] == 150
    assert not partial_files(tmp_path) and not (tmp_path / FINISHED).exists()


@CODES
def test_a_failed_finish_record_keeps_the_final_checkpoint(code, monkeypatch, tmp_path):
    fail_writes(monkeypatch, FINISHED, code)
    with pytest.raises(RunWriteError, match=f"cannot write {tmp_path / FINISHED}"):
        train_cli.run(train_config(*RUN), tmp_path)
    assert load_state(list_checkpoints(tmp_path)[-1])["counters"]["num_timesteps"] == 200
    assert not partial_files(tmp_path)


def test_the_command_line_says_which_file_failed_and_exits_non_zero(tmp_path):
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-c", FULL_AT_SECOND_CHECKPOINT, *RUN, f"hydra.run.dir={run_dir}"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert (
        f"mtrl-train: cannot write {checkpoint_path(run_dir, 200)}: No space left on device; "
        "the run's earlier files are intact"
    ) in result.stderr
    assert list_checkpoints(run_dir) == [checkpoint_path(run_dir, 150)]
