"""Sweeps through Hydra's multirun: real two-job sweeps with each launcher, and a restart."""

import json
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from mtrl.agents import MTSAC
from mtrl.cli.settings import ConfigError
from mtrl.cli.train import restarted_job
from mtrl.runs import CONFIG, FINISHED, list_checkpoints
from tests.cli.conftest import train_config

SMOKE = ["experiment=smoke", "benchmark=mt1", "progress_bar=false", "seed=0,1"]


def sweep(tmp_path, *args):
    result = subprocess.run(
        [sys.executable, "-m", "mtrl.cli.train", "-m", *SMOKE, *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def finished_runs(tmp_path, name):
    runs = sorted((tmp_path / "runs" / "sweeps" / name).glob("mt1-gradops-seed*"))
    assert [run.name for run in runs] == ["mt1-gradops-seed0", "mt1-gradops-seed1"]
    for run in runs:
        assert (run / FINISHED).is_file() and (run / "config.yaml").is_file()
        assert list_checkpoints(run)
    return runs


@pytest.mark.parametrize(
    "launcher",
    [
        ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
        pytest.param(["hydra/launcher=submitit_local"], marks=pytest.mark.slow),
        pytest.param(
            ["hydra/launcher=ray", "+hydra.launcher.ray.init.num_cpus=2"], marks=pytest.mark.slow
        ),
    ],
    ids=["local", "submitit-local", "ray-local"],
)
def test_two_job_sweep_with_each_launcher(launcher, tmp_path):
    sweep(tmp_path, "total_steps=60", "sweep=two", *launcher)
    runs = finished_runs(tmp_path, "two")
    assert [OmegaConf.load(run / "config.yaml").seed for run in runs] == [0, 1]


def test_a_restarted_sweep_skips_finished_runs_and_resumes_stopped_ones(tmp_path):
    sweep(tmp_path, "total_steps=60", "sweep=again")
    first, second = finished_runs(tmp_path, "again")
    # seed 1 stopped after its last checkpoint, before it could write that it finished
    (second / FINISHED).unlink()
    result = sweep(tmp_path, "total_steps=60", "sweep=again")
    assert f"{first} finished its 60 steps already: skipped" in result.stdout
    assert f"{second} stopped before the end: resuming it" in result.stdout
    # a larger budget continues both runs from their checkpoints instead of starting over
    sweep(tmp_path, "total_steps=90", "sweep=again")
    for run in (first, second):
        model = MTSAC.load(list_checkpoints(run)[-1])
        assert model.num_timesteps == 90
        assert model._n_updates == 90 - 50  # one update per step after the warm-up, once
        assert json.loads((run / FINISHED).read_text())["total_steps"] == 90


def test_a_sweep_name_reused_with_another_config_is_refused(tmp_path):
    run_dir = tmp_path / "mt1-gradops-seed0"
    run_dir.mkdir()
    OmegaConf.save(train_config("experiment=smoke", "benchmark=mt1"), run_dir / CONFIG)
    changed = train_config("experiment=smoke", "benchmark=mt1", "agent.gamma=0.9")
    with pytest.raises(ConfigError, match=r"another config \(it differs in \['agent'\]\)"):
        restarted_job(changed, run_dir)
    # a larger budget is not another config: with no checkpoint yet the run starts afresh
    longer = train_config("experiment=smoke", "benchmark=mt1", "total_steps=1000")
    started = restarted_job(longer, run_dir)
    assert started.total_steps == 1000 and started.resume is None
