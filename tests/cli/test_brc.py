"""BRC's recipe (experiment=brc) through the real command line: its network, categorical critics,
reward normalisation, AdamW and shared temperature train under any method, and the preset holds
BRC's settings."""

import json
import math
import subprocess
import sys

import pytest

from mtrl.cli.settings import train_settings
from mtrl.runs import list_checkpoints
from tests.cli.conftest import tensorboard_scalars, train_config

# experiment=brc, shrunk to a smoke run: everything else is the preset's
SMALL_BRC = [
    "experiment=brc",
    "network.critic_width=32",
    "network.critic_depth=1",
    "network.actor_width=16",
    "network.embedding_width=4",
    "agent.categorical.atoms=11",
    "agent.batch_size_per_task=16",
    "agent.buffer_size_per_task=2000",
    "agent.warmup_steps=50",
    "benchmark.episode_length=100",
    "total_steps=120",
    "eval.every=120",
    "eval.episodes=1",
    "checkpoint.every=120",
    "threads=1",
    "progress_bar=false",
]


@pytest.mark.parametrize("method", ["gradops", "mean"])
def test_a_smoke_run_of_the_brc_preset(method, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mtrl.cli.train", *SMALL_BRC, f"method={method}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs" / "mt10" / method).iterdir()
    protocol = json.loads((run_dir / "protocol.json").read_text())
    assert protocol["agent"]["policy_kwargs"]["network"] == "bronet"
    assert protocol["agent"]["critic_loss"] == "categorical"
    # checkpoints are named by env steps: 120 vector steps of 10 tasks
    assert [p.name for p in list_checkpoints(run_dir)] == ["step_000000001200.pt"]
    scalars = tensorboard_scalars(run_dir)
    assert set(scalars["eval/success_rate"]) == {1200}
    losses = scalars["train/critic_loss"].values()
    assert losses and all(math.isfinite(loss) and loss > 0 for loss in losses)
    alphas = [scalars[f"train/alpha/{task}"] for task in protocol["tasks"]]
    assert all(alpha == alphas[0] for alpha in alphas)  # one temperature for every task
    assert "grad/critic/cos_min" in scalars and "grad/actor/cos_min" in scalars
    # batches drawn uniformly over all transitions, none of which overflowed its task's rows
    assert set(scalars["train/batch_overflow"].values()) == {0.0}
    if method == "gradops":  # its update conflicts with no task, through BroNet as anywhere
        assert set(scalars["grad/critic/update_conflicts"].values()) == {0.0}


@pytest.mark.parametrize(("benchmark", "batch"), [("mt10", 1020), ("mt50", 1000), ("mt1", 256)])
def test_the_preset_holds_brcs_settings(benchmark, batch):
    settings = train_settings(train_config("experiment=brc", f"benchmark={benchmark}"))
    agent = settings.agent_kwargs
    assert settings.method == "mean" and agent["batch_size"] == batch
    policy = agent["policy_kwargs"]
    assert policy["network"] == "bronet" and policy["optimizer"] == "adamw"
    assert policy["network_options"] == {
        "critic_width": 4096,
        "critic_depth": 2,
        "actor_width": 256,
        "actor_depth": 1,
        "embedding_width": 32,
    }
    assert (policy["weight_decay"], policy["adam_eps"]) == (1e-4, 1e-8)
    assert (policy["log_std_bounds"], policy["log_std_bounding"]) == ([-10.0, 2.0], "tanh")
    expected = {
        "critic_loss": "categorical",
        "categorical_atoms": 101,
        "categorical_v_max": 10.0,
        "reward_normalization": "per_task",
        "temperature": "shared",
        "initial_alpha": 0.1,
        "alpha_betas": [0.5, 0.999],
        "alpha_loss": "alpha",
        "target_entropy_scale": 0.5,
        "max_grad_norm": None,
        "gradient_steps": 2,
        "batch_sampling": "uniform",
        "reset_every": None,
        "max_q_value": None,
    }
    assert {key: agent[key] for key in expected} == expected
    assert train_settings(train_config("experiment=brc", "method=gradops")).method == "gradops"
