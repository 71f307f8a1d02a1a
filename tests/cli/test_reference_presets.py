"""One command per reference run: `experiment=reference-<network>` and `reference-scaling-<width>`
set every setting of the JAX Meta-World+ run with plain averaging, so that `method=` is the one
key left to change; `network=` changes the network and nothing else."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from mtrl.agents.mtsac import MTSAC
from mtrl.cli.schema import NETWORKS
from mtrl.cli.settings import train_settings
from mtrl.runs import list_checkpoints
from tests.cli.conftest import train_config

# The Meta-World+ multi-head SAC recipe, which every reference run shares unless it says so.
RECIPE = {
    "net_arch": [400, 400, 400],
    "init": "he",
    "n_critics": 2,
    "log_std_bounds": [-20, 2],
    "log_std_bounding": "clamp",
    "learning_rate": 3e-4,
    "alpha_learning_rate": None,
    "adam_eps": 1e-5,
    "max_grad_norm": 1.0,
    "max_q_value": None,
    "clip_q_predictions": False,
    "task_loss_weights": "none",
    "gamma": 0.99,
    "tau": 0.005,
    "initial_alpha": 1.0,
    "batch_size_per_task": 128,
    "buffer_size_per_task": 100_000,
    "warmup_steps": 4000,
    "gradient_steps": 1,
}
# preset: (network, its MT10 agent settings besides the recipe, its MT50 ones besides those)
REFERENCES = {
    "reference-multi-head": ("multi-head", {}, {}),
    "reference-moore": (
        "moore",
        {"log_std_bounds": [-10, 2], "alpha_learning_rate": 1e-4},
        {"log_std_bounds": [-20, 2]},
    ),
    "reference-soft-modules": ("soft-modules", {"task_loss_weights": "temperature"}, {}),
    "reference-paco": ("paco", {"max_q_value": 5000, "clip_q_predictions": True}, {}),
    "reference-care": ("care", {}, {}),
    "reference-film": ("film", {}, {}),
    **{
        f"reference-scaling-{width}": ("multi-head", {"net_arch": [width] * 3}, {})
        for width in (1024, 2048, 4096)
    },
}


def composed(*overrides: str) -> dict:
    return OmegaConf.to_container(train_config(*overrides), resolve=True)


def differing(first: dict, second: dict) -> set[str]:
    return {key for key in first.keys() | second.keys() if first.get(key) != second.get(key)}


@pytest.mark.parametrize("benchmark", ["mt10", "mt50"])
@pytest.mark.parametrize("preset", list(REFERENCES))
def test_a_reference_preset_sets_the_reference_run_with_plain_averaging(preset, benchmark):
    network, mt10, mt50 = REFERENCES[preset]
    config = composed(f"experiment={preset}", f"benchmark={benchmark}")
    assert config["method"]["name"] == "mean" and config["network"]["name"] == network
    expected = RECIPE | mt10 | (mt50 if benchmark == "mt50" else {})
    assert {key: config["agent"][key] for key in expected} == expected
    # the Meta-World+ protocol, recorded as such
    assert config["preset"] == "metaworld-plus"
    assert (config["total_steps"], config["eval"]["every"], config["eval"]["episodes"]) == (
        2_000_000,
        20_000,
        50,
    )
    benchmark_keys = ("reward_version", "goal_mode", "episode_length")
    assert [config["benchmark"][key] for key in benchmark_keys] == ["v2", "resample", 500]
    settings = train_settings(train_config(f"experiment={preset}", f"benchmark={benchmark}"))
    assert settings.method == "mean"


@pytest.mark.parametrize("preset", list(REFERENCES))
def test_changing_the_method_of_a_reference_preset_changes_only_the_method(preset):
    reference = composed(f"experiment={preset}")
    other = composed(f"experiment={preset}", "method=gradops")
    assert differing(reference, other) == {"method"}
    assert other["method"]["name"] == "gradops"


@pytest.mark.parametrize("benchmark", ["mt10", "mt50"])
@pytest.mark.parametrize("network", [name for name in NETWORKS if name != "mlp"])
def test_a_network_changes_only_the_network(network, benchmark):
    plain = composed(f"benchmark={benchmark}")
    other = composed(f"benchmark={benchmark}", f"network={network}")
    assert differing(plain, other) == {"network"}
    assert other["network"]["name"] == network


@pytest.mark.parametrize("width", [1024, 2048, 4096])
def test_the_scaling_presets_keep_their_recipe_with_any_method(width):
    recipe = composed(f"experiment=scaling-{width}", "method=pcgrad")
    reference = composed(f"experiment=reference-scaling-{width}", "method=pcgrad")
    # the same run; the reference preset also names its protocol
    assert differing(recipe, reference) == {"preset"}
    assert recipe["method"]["name"] == "pcgrad"


def train_command(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mtrl.cli.train", "progress_bar=false", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ["agent.clip_q_predictions=true"],
            "agent.clip_q_predictions=true clips the Q predictions to ±agent.max_q_value, "
            "which is null",
        ),
        (
            ["agent.task_loss_weights=softmax"],
            "agent.task_loss_weights='softmax' is not valid: it must be one of none, temperature",
        ),
        (
            ["agent.alpha_learning_rate=0"],
            "agent.alpha_learning_rate=0.0 is not valid: it must be null or a number in (0, 1]",
        ),
    ],
    ids=["clip-without-bound", "weights", "alpha-rate"],
)
def test_a_bad_reference_setting_is_refused_by_name(overrides, expected, tmp_path):
    result = train_command(*overrides, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert expected in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    # refused before anything was built: no run config, protocol or checkpoint
    assert not [*tmp_path.rglob("config.yaml"), *tmp_path.rglob("protocol.json")]


def test_a_reference_preset_trains_from_the_command_line_at_a_tiny_size(tmp_path):
    result = train_command(
        "experiment=reference-moore",
        "agent.net_arch=[16,16,16]",
        "agent.batch_size_per_task=4",
        "agent.buffer_size_per_task=200",
        "agent.warmup_steps=10",
        "benchmark.episode_length=20",
        "total_steps=30",
        "eval.every=30",
        "eval.episodes=1",
        "checkpoint.every=30",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs" / "mt10" / "mean").iterdir()
    protocol = json.loads((run_dir / "protocol.json").read_text())
    assert protocol["preset"] == "metaworld-plus" and protocol["method"]["name"] == "mean"
    assert protocol["agent"]["alpha_learning_rate"] == 1e-4
    assert protocol["agent"]["policy_kwargs"]["log_std_bounds"] == [-10, 2]
    assert protocol["agent"]["policy_kwargs"]["network"] == "moore"
    model = MTSAC.load(list_checkpoints(run_dir)[-1])
    assert model._n_updates > 0 and model.alpha_learning_rate == 1e-4
    assert model.alpha_optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)
    assert model.critic.optimizer.param_groups[0]["lr"] == pytest.approx(3e-4)
