"""A run directory that cannot be written (read-only, or a full disk) stops the run with an error
naming the file, and leaves what was written before intact."""

from __future__ import annotations

import errno
import fnmatch
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.compat.tensorflow_stub.io import gfile

import mtrl.checkpoint
from mtrl.checkpoint import RunWriteError, load_state, save_atomic
from mtrl.cli import train as train_cli
from mtrl.runs import FINISHED, checkpoint_path, list_checkpoints, prune_checkpoints
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


# mtrl-train, with TensorBoard's writes failing for want of space once the first checkpoint is
# on disk (TensorBoard writes each event with an open and a write, in a thread of its own).
FULL_AFTER_FIRST_CHECKPOINT = """
import errno, os, sys
from pathlib import Path
from tensorboard.compat.tensorflow_stub.io import gfile
real_write = gfile.LocalFileSystem._write
run_dir = Path(sys.argv[-1].removeprefix("hydra.run.dir="))
def full(self, filename, content, mode):
    if "tfevents" in str(filename) and list(run_dir.glob("checkpoints/step_*.pt")):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return real_write(self, filename, content, mode)
gfile.LocalFileSystem._write = full
from mtrl.cli.train import main
sys.argv = ["mtrl-train", *sys.argv[1:]]
main()
"""


def fail_events(monkeypatch, code: int, when) -> None:
    """Make TensorBoard's writes of event files fail with ``code`` once ``when()`` holds."""
    real_write = gfile.LocalFileSystem._write

    def failing_write(self, filename, content, mode):
        if "tfevents" in str(filename) and when():
            raise OSError(code, os.strerror(code), filename)
        return real_write(self, filename, content, mode)

    monkeypatch.setattr(gfile.LocalFileSystem, "_write", failing_write)


def test_events_that_cannot_be_created_stop_the_run_before_training(monkeypatch, tmp_path):
    fail_events(monkeypatch, errno.EROFS, lambda: True)
    message = f"cannot write TensorBoard events in {tmp_path}: {os.strerror(errno.EROFS)}"
    with pytest.raises(RunWriteError, match=re.escape(message)):
        train_cli.run(train_config(*RUN), tmp_path)
    assert list_checkpoints(tmp_path) == []


def test_a_full_disk_under_the_events_stops_the_run_and_keeps_its_checkpoint(monkeypatch, tmp_path):
    fail_events(monkeypatch, errno.ENOSPC, lambda: bool(list_checkpoints(tmp_path)))
    events = re.escape(f"{tmp_path}/events.out.tfevents.")
    with pytest.raises(RunWriteError, match=rf"cannot write {events}\S+: No space left on device"):
        train_cli.run(train_config(*RUN), tmp_path)
    assert load_state(checkpoint_path(tmp_path, 150))["counters"]["num_timesteps"] == 150
    assert not (tmp_path / FINISHED).exists()


def test_the_command_line_names_the_events_file_without_a_traceback(tmp_path):
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-c", FULL_AFTER_FIRST_CHECKPOINT, *RUN, f"hydra.run.dir={run_dir}"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1, result.stderr[-3000:]
    events = re.escape(f"mtrl-train: cannot write {run_dir}/events.out.tfevents.")
    assert re.search(
        rf"{events}\S+: No space left on device; the run's earlier files are intact", result.stderr
    ), result.stderr[-3000:]
    assert "Traceback" not in result.stderr  # neither from the main thread nor the writer's
    assert checkpoint_path(run_dir, 150) in list_checkpoints(run_dir)


def refuse_deletes(monkeypatch) -> None:
    def unlink(self, missing_ok=False):
        raise PermissionError(errno.EPERM, os.strerror(errno.EPERM), str(self))

    monkeypatch.setattr(Path, "unlink", unlink)


def test_a_checkpoint_that_cannot_be_deleted_is_named_in_a_warning(monkeypatch, tmp_path):
    for step in (100, 200, 300):
        save_atomic({"step": step}, checkpoint_path(tmp_path, step))
    refuse_deletes(monkeypatch)
    with pytest.warns(UserWarning) as warned:
        prune_checkpoints(tmp_path, keep=1)
    assert [str(w.message).split(" (")[0] for w in warned] == [
        f"cannot delete the old checkpoint {checkpoint_path(tmp_path, step)}" for step in (100, 200)
    ]
    assert len(list_checkpoints(tmp_path)) == 3


# mtrl-train, where the file system refuses to delete checkpoints.
NO_DELETES = """
import errno, os, sys
from pathlib import Path
real_unlink = Path.unlink
def unlink(self, missing_ok=False):
    if self.suffix == ".pt":
        raise PermissionError(errno.EPERM, os.strerror(errno.EPERM), str(self))
    real_unlink(self, missing_ok)
Path.unlink = unlink
from mtrl.cli.train import main
sys.argv = ["mtrl-train", *sys.argv[1:]]
main()
"""


def test_a_run_whose_old_checkpoint_cannot_be_deleted_warns_and_finishes(tmp_path):
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-c", NO_DELETES, *RUN, "checkpoint.keep=1", f"hydra.run.dir={run_dir}"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"cannot delete the old checkpoint {checkpoint_path(run_dir, 150)}" in result.stderr
    assert list_checkpoints(run_dir) == [
        checkpoint_path(run_dir, 150),
        checkpoint_path(run_dir, 200),
    ]
    assert (run_dir / FINISHED).exists()


# mtrl-eval, with the disk full when the report is written.
FULL_AT_REPORT = """
import errno, os, sys
import mtrl.checkpoint
def full(path, mode="r", *args, **kwargs):
    if str(path).endswith(".json.partial"):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    return open(path, mode, *args, **kwargs)
mtrl.checkpoint.open = full
from mtrl.cli.evaluate import main
sys.argv = ["mtrl-eval", *sys.argv[1:]]
main()
"""


def test_an_evaluation_report_that_cannot_be_written_keeps_the_previous_one(mt1_run, tmp_path):
    out = tmp_path / "report.json"
    out.write_text('{"previous": true}\n')
    result = subprocess.run(
        [sys.executable, "-c", FULL_AT_REPORT, f"checkpoint={mt1_run}", "episodes=1", f"out={out}"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert f"mtrl-eval: cannot write {out}: No space left on device" in result.stderr
    assert "Traceback" not in result.stderr
    assert out.read_text() == '{"previous": true}\n' and not partial_files(tmp_path)


def test_an_unwritable_report_folder_is_refused_before_the_evaluation(mt1_run, tmp_path):
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mtrl.cli.evaluate",
            f"checkpoint={mt1_run}",
            f"out={blocked}/r.json",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert f"mtrl-eval: cannot write in {blocked}: it is a file, not a folder" in result.stderr
    assert "Traceback" not in result.stderr and "mean" not in result.stdout
