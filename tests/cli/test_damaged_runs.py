"""Damaged run directories and bad command lines, through the real commands: each is refused
with a message that names the file or the key and says what to do, never with a traceback."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from mtrl.agents import MTSAC
from mtrl.cli import compare as compare_cli
from mtrl.cli import recon
from mtrl.runs import CONFIG, FINISHED, PROTOCOL, checkpoint_path, list_checkpoints, read_finished
from tests.agents.point_tasks import point_tasks
from tests.cli.conftest import train_config


def command(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``mtrl-<name>`` (train, eval) as a user runs it."""
    module = {"train": "mtrl.cli.train", "eval": "mtrl.cli.evaluate"}[name]
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True, check=False
    )


def assert_refused(result: subprocess.CompletedProcess, status: int, *phrases: str) -> None:
    """Exit ``status``, every phrase in the error, and no traceback anywhere."""
    assert result.returncode == status, result.stderr[-3000:]
    for phrase in phrases:
        assert phrase in result.stderr, result.stderr[-3000:]
    assert "Traceback" not in result.stderr + result.stdout


@pytest.fixture
def stopped_run(mt1_run, tmp_path) -> Path:
    """A copy of a run stopped at its last checkpoint (vector step 200), to damage."""
    run_dir = tmp_path / "run"
    shutil.copytree(mt1_run, run_dir)
    (run_dir / FINISHED).unlink()
    return run_dir


def test_a_file_that_is_not_an_mtrl_checkpoint_is_refused_by_name(stopped_run):
    stranger = checkpoint_path(stopped_run, 300)
    torch.save({"weights": torch.zeros(3)}, stranger)  # loads, but is someone else's
    events = set(stopped_run.glob("events.out.tfevents.*"))
    result = command("train", f"resume={stopped_run}", "total_steps=400", cwd=stopped_run.parent)
    assert_refused(
        result,
        2,
        f"{stranger} is not an MTSAC checkpoint",
        f"the earlier checkpoint {checkpoint_path(stopped_run, 200)} is still there",
    )
    assert set(stopped_run.glob("events.out.tfevents.*")) == events  # refused before training

    result = command("eval", f"checkpoint={stranger}", cwd=stopped_run.parent)
    assert_refused(result, 2, f"{stranger} is not an MTSAC checkpoint")


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


# (file, how it is damaged, what the error says besides the file's name)
DAMAGES = {
    "finished-truncated": (FINISHED, truncate, "delete it, and resuming the run"),
    "finished-not-a-record": (FINISHED, lambda p: p.write_text("[]"), "not hold a JSON object"),
    "finished-binary": (FINISHED, lambda p: p.write_bytes(b"\x80\x81\x00"), "delete it"),
    "protocol-truncated": (PROTOCOL, truncate, "delete it to resume the run with a new one"),
    "config-not-yaml": (CONFIG, lambda p: p.write_text("agent: [1, 2\nseed: 0\n"), "restore it"),
    "config-cut-short": (
        CONFIG,
        lambda p: p.write_text("\n".join(p.read_text().splitlines()[:20])),
        "is damaged: it lacks",
    ),
    "config-not-a-mapping": (CONFIG, lambda p: p.write_text("- 1\n- 2\n"), "restore it"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_run_file_is_named_with_what_to_do(stopped_run, damage):
    name, spoil, advice = DAMAGES[damage]
    if name == FINISHED:
        (stopped_run / FINISHED).write_text(json.dumps({"total_steps": 200, "env_steps": 200}))
    path = stopped_run / name
    spoil(path)
    damaged = path.read_bytes()
    result = command("train", f"resume={stopped_run}", "total_steps=400", cwd=stopped_run.parent)
    assert_refused(result, 2, f"mtrl-train: {path}", advice)
    assert path.read_bytes() == damaged  # refused before the run's files were rewritten
    assert list_checkpoints(stopped_run)[-1] == checkpoint_path(stopped_run, 200)


def test_deleting_a_damaged_finish_record_as_advised_lets_the_run_finish_again(stopped_run):
    (stopped_run / FINISHED).write_text('{"total_steps": 2')
    refused = command("train", f"resume={stopped_run}", cwd=stopped_run.parent)
    assert_refused(refused, 2, f"{stopped_run / FINISHED}", "delete it")
    (stopped_run / FINISHED).unlink()
    result = command("train", f"resume={stopped_run}", cwd=stopped_run.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    assert read_finished(stopped_run)["total_steps"] == 200


def test_a_restarted_job_with_a_damaged_config_is_refused(stopped_run):
    # a job started again into its own directory (a restarted sweep) reads the saved config
    (stopped_run / CONFIG).write_text("benchmark: {name: mt1\n")
    result = command(
        "train",
        "experiment=smoke",
        "benchmark=mt1",
        "total_steps=200",
        f"hydra.run.dir={stopped_run}",
        cwd=stopped_run.parent,
    )
    assert_refused(result, 2, f"mtrl-train: {stopped_run / CONFIG} cannot be read", "restore it")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "checkpoint is required"),
        (["checkpoint=null"], "checkpoint is required"),
        (["checkpoint=RUN", "video_width=abc"], "video_width must be an integer >= 2, got 'abc'"),
        (["checkpoint=RUN", "video_height=75"], "video_height must be even"),
        (["checkpoint=RUN", "video=maybe"], "video must be true or false, got 'maybe'"),
        (["checkpoint=RUN", "seed=abc"], "seed must be an integer >= 0, got 'abc'"),
        (["checkpoint=EMPTY"], "run directory EMPTY has no checkpoints in checkpoints/"),
    ],
)
def test_bad_evaluation_options_are_refused_before_the_evaluation(mt1_run, tmp_path, args, message):
    (tmp_path / "empty").mkdir()

    def fill(text: str) -> str:
        return text.replace("RUN", str(mt1_run)).replace("EMPTY", str(tmp_path / "empty"))

    result = command("eval", "progress_bar=false", *map(fill, args), cwd=tmp_path)
    assert_refused(result, 2, f"mtrl-eval: {fill(message)}")
    assert "mean" not in result.stdout  # no evaluation ran


@pytest.fixture(scope="module")
def recon_run(tmp_path_factory) -> Path:
    """A run directory whose checkpoint has counted conflicts of three tasks' updates."""
    run_dir = tmp_path_factory.mktemp("recon-run")
    OmegaConf.save(train_config(), run_dir / CONFIG, resolve=True)
    model = MTSAC(
        "MlpPolicy",
        point_tasks(3),
        learning_starts=60,
        batch_size=24,
        policy_kwargs={"net_arch": [16, 16]},
        seed=0,
        device="cpu",
    )
    model.learn(150)
    model.save(checkpoint_path(run_dir, model.num_timesteps))
    return run_dir


def test_recon_names_a_missing_config_before_any_ranking(recon_run, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(recon_run, run_dir)
    (run_dir / CONFIG).unlink()
    with pytest.raises(SystemExit) as exit_:
        recon.main([str(run_dir)])
    out, err = capsys.readouterr()
    assert exit_.value.code == 2
    assert f"mtrl-recon: {run_dir} is not a run directory: it has no {CONFIG}" in err
    assert out == ""


def test_recon_reports_an_unwritable_experiment_before_any_ranking(recon_run, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(recon_run, run_dir)
    (run_dir / "recon").write_text("a file where the experiment's folder would go")
    with pytest.raises(SystemExit) as exit_:
        recon.main([str(run_dir), "top_k=1"])
    out, err = capsys.readouterr()
    assert exit_.value.code == 1
    assert f"mtrl-recon: cannot write {run_dir / 'recon' / 'experiment' / 'recon.yaml'}" in err
    assert out == ""

    (run_dir / "recon").unlink()
    recon.main([str(run_dir), "top_k=1"])  # the same command, once it can write
    assert "<- task-specific" in capsys.readouterr().out


def test_recon_refuses_a_top_k_that_is_not_a_number(recon_run, capsys):
    with pytest.raises(SystemExit) as exit_:
        recon.main([str(recon_run), "top_k=two"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "mtrl-recon: top_k must be a whole number of layers, got 'two'" in err


@pytest.fixture
def two_runs(mt1_run, tmp_path) -> Path:
    for name in ("a", "b"):
        shutil.copytree(mt1_run, tmp_path / "sweep" / name)
    return tmp_path / "sweep"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"benchmark": "mt1", ', "cannot be read"),
        ('{"benchmark": "mt1"}', "lacks the run's tasks, method"),
    ],
)
def test_compare_names_a_damaged_protocol(two_runs, tmp_path, capsys, content, message):
    (two_runs / "b" / PROTOCOL).write_text(content)
    with pytest.raises(SystemExit) as exit_:
        compare_cli.main([str(two_runs), "--out", str(tmp_path / "report"), "--reps", "100"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"mtrl-compare: {two_runs / 'b' / PROTOCOL} {message}" in err
    assert "move this run out of the folders compared" in err
    assert not (tmp_path / "report").exists()


def test_compare_names_the_folder_it_found_no_run_in(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        compare_cli.main([str(tmp_path)])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip() == (
        f"mtrl-compare: no mtrl run (a directory with {PROTOCOL}) under {tmp_path}"
    )


def test_compare_refuses_an_unwritable_report_folder_before_the_table(two_runs, tmp_path, capsys):
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    with pytest.raises(SystemExit) as exit_:
        compare_cli.main([str(two_runs), "--out", str(blocked / "report"), "--reps", "100"])
    out, err = capsys.readouterr()
    assert exit_.value.code == 1
    assert f"mtrl-compare: cannot write in {blocked / 'report'}" in err
    assert out == ""


def test_compare_names_the_report_file_a_full_disk_refused(two_runs, tmp_path, monkeypatch, capsys):
    write_text = Path.write_text

    def full(self, *args, **kwargs):
        if self.name == "report.md":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return write_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    out = tmp_path / "report"
    with pytest.raises(SystemExit) as exit_:
        compare_cli.main([str(two_runs), "--out", str(out), "--reps", "100"])
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert err.strip() == f"mtrl-compare: cannot write {out / 'report.md'}: No space left on device"
