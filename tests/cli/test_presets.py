"""Presets through the real config: the parameter-scaling recipe trains; old run configs mean what
they meant."""

from __future__ import annotations

import torch
from omegaconf import OmegaConf

from mtrl.cli import train as train_cli
from mtrl.cli.schema import EARLIER_AGENT_VALUES
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
