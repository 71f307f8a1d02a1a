"""Stopped, killed and extended runs, through the real command line, end exactly where an
uninterrupted run ends: the same weights, optimizer moments, replay buffer and logged scalars."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from mtrl.checkpoint import load_state
from mtrl.cli.messages import SET_ASIDE
from mtrl.runs import FINISHED, checkpoint_path, list_checkpoints, read_finished
from tests.cli.conftest import tensorboard_scalars

TASKS = 10
HALF = 120  # vector steps; the uninterrupted run takes twice as many
RUN = [
    "experiment=smoke",
    "benchmark=mt10",
    "benchmark.episode_length=40",  # stops fall inside episodes as well as between them
    "method=pcgrad",  # random visiting orders: its generator must continue too
    # BRC's normaliser: its returns' extremes and the rewards of the episodes in progress
    "agent.reward_normalization=per_task",
    "agent.reset_every=50",  # resets near the stops: the networks drawn afresh must continue too
    "agent.batch_sampling=uniform",  # each task's share of a batch drawn too
    "agent.net_arch=[32,32]",
    "agent.batch_size_per_task=8",
    "agent.buffer_size_per_task=2000",
    "agent.warmup_steps=20",
    "eval.every=60",
    "eval.episodes=1",
    "checkpoint.every=30",
    "checkpoint.keep=2",
    "threads=1",
    "progress_bar=false",
    # in this process: envs whose episodes a checkpoint holds whole, whatever the machine
    "benchmark.vector_strategy=sync",
    "eval.background=false",
]
# Kills the process between writing its third checkpoint and renaming it into place.
CRASH_AT_THIRD_CHECKPOINT = """
import os, signal, sys
renames = 0
real_replace = os.replace
def replace(source, target):
    global renames
    if str(target).endswith(".pt"):
        renames += 1
        if renames == 3:
            os.kill(os.getpid(), signal.SIGKILL)
    real_replace(source, target)
os.replace = replace
from mtrl.cli.train import main
sys.argv = ["mtrl-train", *sys.argv[1:]]
main()
"""
# Kills the process at its third update, long before its first checkpoint.
KILL_BEFORE_THE_FIRST_CHECKPOINT = """
import os, signal, sys
from mtrl.agents.mtsac import MTSAC
real_train = MTSAC.train
def train(self, *args, **kwargs):
    if self._n_updates == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    real_train(self, *args, **kwargs)
MTSAC.train = train
from mtrl.cli.train import main
sys.argv = ["mtrl-train", *sys.argv[1:]]
main()
"""

# The ways of reaching the end that must end exactly as an uninterrupted run ends.
WAYS = ["stopped", "ctrl-c", "stopped-at-evaluation", "killed", "killed-early", "crashed"]
WAYS += ["extended"]
# Stops right after the updates of vector step 60, where an evaluation is due next.
STOP_BEFORE_AN_EVALUATION = """
import sys
from mtrl.agents.mtsac import MTSAC
real_train = MTSAC._train
def _train(self, *args, **kwargs):
    real_train(self, *args, **kwargs)
    if self.num_timesteps == 60 * 10:
        self.stop_requested = True
MTSAC._train = _train
from mtrl.cli.train import main
sys.argv = ["mtrl-train", *sys.argv[1:]]
main()
"""

pytestmark = pytest.mark.slow


def command(run_dir: Path, *args: str, script: str | None = None) -> list[str]:
    entry = ["-c", script] if script else ["-m", "mtrl.cli.train"]
    return [sys.executable, *entry, *args, f"hydra.run.dir={run_dir}"]


def train(run_dir: Path, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        command(run_dir, *args), capture_output=True, text=True, check=False, cwd=run_dir.parent
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def interrupt(run_dir: Path, after_checkpoints: int, how: signal.Signals) -> None:
    """Start a run of 2 × HALF steps and send it ``how`` at a random moment after its
    ``after_checkpoints``-th checkpoint is on disk."""
    process = subprocess.Popen(
        command(run_dir, *RUN, f"total_steps={2 * HALF}"),
        cwd=run_dir.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    while len(list_checkpoints(run_dir)) < after_checkpoints:
        assert process.poll() is None, process.communicate()[1][-3000:]
        time.sleep(0.05)
    time.sleep(random.uniform(0, 0.5))
    process.send_signal(how)
    stdout, stderr = process.communicate()
    if how in (signal.SIGTERM, signal.SIGINT):
        assert process.returncode == 0, stderr[-3000:]
        assert "stopped at vector step" in stdout
        assert f"resume:   mtrl-train resume={run_dir}" in stdout
    else:
        assert process.returncode == -signal.SIGKILL
    assert not (run_dir / FINISHED).exists(), "the signal came after the end of training"


def run_patched(run_dir: Path, script: str, returncode: int) -> None:
    """Run the whole budget under ``script`` (mtrl-train with a patch) and check how it ended."""
    ended = subprocess.run(
        command(run_dir, *RUN, f"total_steps={2 * HALF}", script=script),
        capture_output=True,
        text=True,
        check=False,
        cwd=run_dir.parent,
    )
    assert ended.returncode == returncode, ended.stderr[-3000:]


def uninterrupted(run_dir: Path) -> None:
    train(run_dir, *RUN, f"total_steps={2 * HALF}")


def stopped_by_sigterm(run_dir: Path) -> tuple[str, Path]:
    interrupt(run_dir, after_checkpoints=1, how=signal.SIGTERM)
    checkpoint = list_checkpoints(run_dir)[-1]
    return train(run_dir, f"resume={run_dir}").stdout, checkpoint


def stopped_by_ctrl_c(run_dir: Path) -> None:
    interrupt(run_dir, after_checkpoints=1, how=signal.SIGINT)
    train(run_dir, f"resume={run_dir}")


def stopped_where_an_evaluation_is_due(run_dir: Path) -> None:
    run_patched(run_dir, STOP_BEFORE_AN_EVALUATION, returncode=0)
    assert list_checkpoints(run_dir)[-1] == checkpoint_path(run_dir, 60 * TASKS)
    assert 60 * TASKS in tensorboard_scalars(run_dir)["eval/success_rate"]  # done before stopping
    train(run_dir, f"resume={run_dir}")


def killed_before_the_first_checkpoint(run_dir: Path) -> str:
    run_patched(run_dir, KILL_BEFORE_THE_FIRST_CHECKPOINT, returncode=-signal.SIGKILL)
    assert not list_checkpoints(run_dir)
    events = {p.name for p in run_dir.glob("events.out.tfevents.*")}
    assert len(events) == 1  # the attempt's partial curve
    resumed = train(run_dir, f"resume={run_dir}")
    aside = {p.name.replace("discarded", "tfevents") for p in (run_dir / SET_ASIDE).iterdir()}
    assert aside == events
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1  # drawn once: the new one
    return resumed.stdout


def killed(run_dir: Path) -> None:
    interrupt(run_dir, after_checkpoints=2, how=signal.SIGKILL)
    train(run_dir, f"resume={run_dir}")


def crashed_while_writing_a_checkpoint(run_dir: Path) -> None:
    run_patched(run_dir, CRASH_AT_THIRD_CHECKPOINT, returncode=-signal.SIGKILL)
    partial = checkpoint_path(run_dir, 90 * TASKS)
    assert partial.with_name(partial.name + ".partial").is_file()  # written, never renamed
    assert list_checkpoints(run_dir)[-1] == checkpoint_path(run_dir, 60 * TASKS)
    train(run_dir, f"resume={run_dir}")


def finished_then_extended(run_dir: Path) -> dict[str, str]:
    train(run_dir, *RUN, f"total_steps={HALF}", "checkpoint.keep=1")
    finished = read_finished(run_dir)
    final = run_dir / finished["checkpoint"]
    files = sorted(p.name for p in run_dir.rglob("*"))
    again = train(run_dir, f"resume={run_dir}")
    assert sorted(p.name for p in run_dir.rglob("*")) == files  # nothing trained, nothing written
    extended = train(run_dir, f"resume={run_dir}", f"total_steps={2 * HALF}")
    assert final.is_file()  # keep=1 pruned the others, never the finished policy
    return {"again": again.stdout, "extended": extended.stdout}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every way of reaching 2 × HALF steps, side by side (each process on one thread)."""
    scenarios = {
        "uninterrupted": uninterrupted,
        "stopped": stopped_by_sigterm,
        "ctrl-c": stopped_by_ctrl_c,
        "stopped-at-evaluation": stopped_where_an_evaluation_is_due,
        "killed": killed,
        "killed-early": killed_before_the_first_checkpoint,
        "crashed": crashed_while_writing_a_checkpoint,
        "extended": finished_then_extended,
    }
    root = tmp_path_factory.mktemp("resume")
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(run, root / name) for name, run in scenarios.items()}
        outputs = {name: future.result() for name, future in futures.items()}
    return {name: root / name for name in scenarios}, outputs


def assert_identical(expected, got, where="checkpoint"):
    assert type(expected) is type(got), where
    if isinstance(expected, dict):
        assert expected.keys() == got.keys(), where
        for key in expected:
            assert_identical(expected[key], got[key], f"{where}/{key}")
    elif isinstance(expected, list | tuple):
        assert len(expected) == len(got), where
        for index, (a, b) in enumerate(zip(expected, got, strict=True)):
            assert_identical(a, b, f"{where}/{index}")
    elif isinstance(expected, torch.Tensor):
        assert expected.dtype == got.dtype and torch.equal(expected, got), where
    else:
        assert expected == got, where


def final_state(run_dir: Path) -> dict:
    state = load_state(list_checkpoints(run_dir)[-1])
    assert state["counters"]["num_timesteps"] == 2 * HALF * TASKS
    del state["rollout"]["episode_infos"]  # SB3's episode records carry wall-clock times
    return state


@pytest.mark.parametrize("way", WAYS)
def test_a_resumed_run_ends_exactly_where_an_uninterrupted_one_ends(runs, way):
    dirs, _ = runs
    assert_identical(final_state(dirs["uninterrupted"]), final_state(dirs[way]))
    expected, got = tensorboard_scalars(dirs["uninterrupted"]), tensorboard_scalars(dirs[way])
    compared = [tag for tag in expected if tag.split("/")[0] in ("train", "grad", "eval", "recon")]
    assert {"eval/success_rate", "train/critic_loss", "grad/critic/cos_min"} <= set(compared)
    for tag in compared:
        assert got[tag] == expected[tag], tag  # every step, every value
    assert read_finished(dirs[way])["total_steps"] == 2 * HALF


def test_a_resume_says_where_it_starts_from(runs):
    dirs, outputs = runs
    stdout, checkpoint = outputs["stopped"]
    step = int(checkpoint.stem.removeprefix("step_")) // TASKS  # pruned since, by keep=2
    expected = (
        f"resuming {dirs['stopped']}\n  from {checkpoint}\n  at vector step {step} of {2 * HALF}"
    )
    assert expected in stdout


def test_a_run_killed_before_its_first_checkpoint_starts_again_and_says_so(runs):
    dirs, outputs = runs
    assert (
        f"{dirs['killed-early']} stopped before its first checkpoint: starting it again"
        in (outputs["killed-early"])
    )
    assert "resuming" not in outputs["killed-early"]


def test_resuming_a_finished_run_trains_nothing_until_given_a_larger_budget(runs):
    dirs, outputs = runs
    assert (
        f"finished at {HALF} vector steps; pass total_steps=N > {HALF}"
        in (outputs["extended"]["again"])
    )
    protocol = json.loads((dirs["extended"] / "protocol.json").read_text())
    assert protocol["budget"]["vector_steps"] == 2 * HALF
    assert protocol["history"] == [
        {"at_vector_step": HALF, "key": "total_steps", "from": HALF, "to": 2 * HALF}
    ]
    assert f"total_steps changed from {HALF} to {2 * HALF}" in outputs["extended"]["extended"]


def test_a_resumed_run_keeps_its_own_budget(runs):
    dirs, _ = runs
    for way in ("stopped", "killed"):
        protocol = json.loads((dirs[way] / "protocol.json").read_text())
        assert protocol["budget"]["vector_steps"] == 2 * HALF and protocol["history"] == []
        assert f"total_steps: {2 * HALF}" in (dirs[way] / "config.yaml").read_text()
