"""Presets through the real config: the parameter-scaling recipe trains; old run configs mean what
they meant."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf

import mtrl.configs
from mtrl.cli import train as train_cli
from mtrl.cli.schema import EARLIER_AGENT_VALUES
from mtrl.compare import find_runs, format_table, load_run, summarize
from mtrl.runs import CONFIG
from tests.cli.conftest import train_config

SMALL = [
    "agent.net_arch=[32,32,32]",
    "agent.batch_size_per_task=8",
    "agent.buffer_size_per_task=500",
    "agent.warmup_steps=20",
    "benchmark.episode_length=30",
    "total_steps=50",
    "eval.every=50",
    "eval.episodes=1",
    "checkpoint.every=50",
]


def test_the_wide_preset_trains_a_gram_based_method_at_a_small_width(tmp_path):
    cfg = train_config("experiment=scaling-4096", "method=gradops", *SMALL)
    model = train_cli.run(cfg, tmp_path)
    assert model._n_updates == 30 and model.policy.multi_head
    assert model.critic_step.max_grad_norm == 1.0
    assert model.critic.optimizer.defaults["eps"] == 1e-5
    assert model.actor.log_std_bounding == "clamp" and model.policy.init == "he"
    assert model.replay_buffer.buffer_size == 500  # rows per task
    assert all(torch.isfinite(p).all() for p in model.policy.parameters())
    protocol = (tmp_path / "protocol.json").read_text()
    assert '"network": "multi-head"' in protocol and '"max_grad_norm": 1.0' in protocol


def test_a_run_config_from_before_the_per_task_keys_resumes_as_it_was(tmp_path):
    cfg = OmegaConf.to_container(train_config("experiment=smoke"), resolve=True)
    agent = cfg["agent"]
    for key in [*EARLIER_AGENT_VALUES, "buffer_size_per_task"]:
        del agent[key]
    agent["buffer_size"] = 20_000  # over all ten tasks, as configs said then
    cfg["resume"] = None
    OmegaConf.save(OmegaConf.create(cfg), tmp_path / CONFIG)
    resumed = train_cli.resume_config(train_config(), tmp_path, {"resume"})
    assert resumed.agent.buffer_size_per_task == 2_000 and "buffer_size" not in resumed.agent
    for key, value in EARLIER_AGENT_VALUES.items():
        assert resumed.agent[key] == value
    assert train_cli.train_settings(resumed).agent_kwargs["buffer_size"] == 20_000


PRESETS = sorted((Path(mtrl.configs.__file__).parent / "protocol").glob("*.yaml"))


@pytest.mark.parametrize("path", PRESETS, ids=[p.stem for p in PRESETS])
def test_a_protocol_preset_sets_benchmark_and_evaluation_keys_only(path):
    keys = set(yaml.safe_load(path.read_text()))
    assert keys <= {"preset", "benchmark", "eval", "total_steps"}, keys
    assert yaml.safe_load(path.read_text())["preset"] == path.stem


def test_a_preset_is_recorded_and_named_by_the_comparison(tmp_path):
    run_dir = tmp_path / "runs" / "preset-run"
    cfg = train_config(
        "protocol=mtrl-2021",
        "experiment=smoke",
        "benchmark=mt1",
        "total_steps=60",
        "eval.every=60",
        "agent.warmup_steps=20",
        "checkpoint.every=60",
    )
    train_cli.run(cfg, run_dir)
    protocol = json.loads((run_dir / "protocol.json").read_text())
    assert protocol["preset"] == "mtrl-2021"
    assert (protocol["reward_version"], protocol["goal_mode"]) == ("v1", "fixed")
    runs = [load_run(path) for path in find_runs([tmp_path / "runs"])]
    (summary,) = summarize(runs, reps=100)
    assert summary.preset == "mtrl-2021" and "mtrl-2021" in format_table([summary])
