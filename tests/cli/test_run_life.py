"""What mtrl-train says about a run's life, through the real command line: the summary at its
end, a second Ctrl-C, a sweep job that stopped before its first checkpoint."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from mtrl.checkpoint import load_state
from mtrl.cli.messages import SET_ASIDE
from mtrl.cli.train import restarted_job
from mtrl.runs import CONFIG, list_checkpoints
from tests.cli.conftest import tensorboard_scalars, train_config

RUN = ["experiment=smoke", "benchmark=mt10", "agent.net_arch=[16,16]", "threads=1"]
RUN += ["benchmark.vector_strategy=sync", "eval.background=false", "eval.every=50"]
# mtrl-train with two Ctrl-C in a row once its first checkpoint is in place.
CTRL_C_TWICE_AT_FIRST_CHECKPOINT = """
import os, signal, sys
real_replace = os.replace
def replace(source, target):
    real_replace(source, target)
    if str(target).endswith(".pt"):
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
os.replace = replace
from mtrl.cli.train import main
sys.argv = ["mtrl-train", *sys.argv[1:]]
main()
"""
# mtrl-train with a Ctrl-C while it builds the environments, before training starts. Python's
# own Ctrl-C handler first: a shell that ran the tests in the background left SIGINT ignored,
# and a child inherits that.
CTRL_C_WHILE_STARTING = """
import os, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)
import mtrl.cli.train
real_make = mtrl.cli.train.make_vector_env
def make(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGINT)
    return real_make(*args, **kwargs)
mtrl.cli.train.make_vector_env = make
sys.argv = ["mtrl-train", *sys.argv[1:]]
mtrl.cli.train.main()
"""

pytestmark = pytest.mark.slow


def train(run_dir: Path, *args: str, script: str | None = None) -> subprocess.CompletedProcess:
    entry = ["-c", script] if script else ["-m", "mtrl.cli.train"]
    return subprocess.run(
        [sys.executable, *entry, "progress_bar=false", *args, f"hydra.run.dir={run_dir}"],
        capture_output=True,
        text=True,
        check=False,
        cwd=run_dir.parent,
    )


def test_a_finished_run_prints_its_last_evaluation_per_task_and_where_to_look(tmp_path):
    run_dir = tmp_path / "run"
    result = train(run_dir, *RUN, "total_steps=150")
    assert result.returncode == 0, result.stderr[-3000:]
    scalars = tensorboard_scalars(run_dir)
    last_step = max(scalars["eval/success_rate"])
    assert last_step == 150 * 10
    summary = result.stdout[result.stdout.index(f"finished 150 vector steps: {run_dir}") :]
    mean = scalars["eval/success_rate"][last_step]
    assert f"last evaluation, at vector step 150: mean success {mean:.2f}" in summary
    tasks = [tag.split("/")[-1] for tag in scalars if tag.startswith("eval/success_rate/")]
    assert len(tasks) == 10
    for task in tasks:
        rate = scalars[f"eval/success_rate/{task}"][last_step]
        assert re.search(rf"^  {re.escape(task)} +{rate:.2f}$", summary, re.MULTILINE), task
    best = max(scalars["eval/success_rate"].values())
    assert f"best mean success so far: {best:.2f}" in summary
    assert f"tensorboard --logdir {run_dir}" in summary
    assert f"mtrl-eval checkpoint={run_dir}" in summary
    assert "resume:" not in summary


def test_a_second_ctrl_c_aborts_at_once_with_status_130(tmp_path):
    run_dir = tmp_path / "run"
    result = train(run_dir, *RUN, "total_steps=300", script=CTRL_C_TWICE_AT_FIRST_CHECKPOINT)
    assert result.returncode == 130, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert f"aborted; resume from its last checkpoint: mtrl-train resume={run_dir}" in (
        result.stderr
    )
    assert "stopping after this step" in result.stdout  # the first Ctrl-C
    assert "finished" not in result.stdout
    (checkpoint,) = list_checkpoints(run_dir)
    assert load_state(checkpoint)["counters"]["num_timesteps"] == 150 * 10


def test_a_ctrl_c_before_training_starts_aborts_without_a_traceback(tmp_path):
    run_dir = tmp_path / "run"
    result = train(run_dir, *RUN, script=CTRL_C_WHILE_STARTING)
    assert result.returncode == 130, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert "mtrl-train: aborted" in result.stderr


def test_a_sweep_job_that_stopped_before_its_first_checkpoint_starts_again_and_says_so(
    tmp_path, capsys
):
    run_dir = tmp_path / "mt1-gradops-seed0"
    run_dir.mkdir()
    cfg = train_config("experiment=smoke", "benchmark=mt1")
    OmegaConf.save(cfg, run_dir / CONFIG)
    partial = run_dir / "events.out.tfevents.1.host.1.0"
    partial.write_bytes(b"partial curve")
    started = restarted_job(cfg, run_dir)
    assert started is not None and started.resume is None  # afresh, not resumed
    said = capsys.readouterr().out
    assert f"{run_dir} stopped before its first checkpoint: starting it again" in said
    assert not partial.exists()
    (aside,) = (run_dir / SET_ASIDE).iterdir()
    assert "tfevents" not in aside.name and aside.read_bytes() == b"partial curve"


def test_a_resume_into_another_directory_is_refused_by_name(tmp_path):
    stopped, elsewhere = tmp_path / "stopped", tmp_path / "elsewhere"
    stopped.mkdir()
    OmegaConf.save(train_config("experiment=smoke", "benchmark=mt1"), stopped / CONFIG)
    result = train(elsewhere, f"resume={stopped}")
    assert result.returncode == 2, result.stderr[-3000:]
    assert f"resume={stopped} continues in its own directory" in result.stderr
    assert "Traceback" not in result.stderr
    assert not elsewhere.exists() or not any(elsewhere.glob("events.out.tfevents.*"))
