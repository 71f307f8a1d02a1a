"""BRC's recipe through the real command line: its network and categorical critics train under
any method, beside the plain averaged update."""

import json
import math
import subprocess
import sys

import pytest

from mtrl.runs import list_checkpoints
from tests.cli.conftest import tensorboard_scalars

SMALL_BRC = [
    "experiment=smoke",
    "network=bronet",
    "network.critic_width=32",
    "network.critic_depth=1",
    "network.actor_width=16",
    "network.embedding_width=4",
    "agent.critic_loss=categorical",
    "agent.categorical.atoms=11",
    "optimizer=adamw",
    "agent.weight_decay=1e-4",
    "agent.temperature=shared",
    "agent.alpha_loss=alpha",
    "agent.initial_alpha=0.1",
    "total_steps=120",
    "eval.every=120",
    "checkpoint.every=120",
    "threads=1",
    "progress_bar=false",
]


@pytest.mark.parametrize("method", ["gradops", "mean"])
def test_a_smoke_run_of_bronet_with_categorical_critics(method, tmp_path):
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
    assert [p.name for p in list_checkpoints(run_dir)] == ["step_000000001200.pt"]  # named by env steps
    scalars = tensorboard_scalars(run_dir)
    assert set(scalars["eval/success_rate"]) == {1200}
    losses = scalars["train/critic_loss"].values()
    assert losses and all(math.isfinite(loss) and loss > 0 for loss in losses)
    alphas = [scalars[f"train/alpha/{task}"] for task in protocol["tasks"]]
    assert all(alpha == alphas[0] for alpha in alphas)  # one temperature for every task
    assert "grad/critic/cos_min" in scalars and "grad/actor/cos_min" in scalars
    if method == "gradops":  # its update conflicts with no task, through BroNet as anywhere
        assert set(scalars["grad/critic/update_conflicts"].values()) == {0.0}
