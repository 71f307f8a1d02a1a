"""mtrl-train end to end: real Meta-World training, TensorBoard output, resume, bad input."""

import shutil
import subprocess
import sys

import pytest
import torch

from mtrl.agents.mtsac import MTSAC
from mtrl.aggregators import available
from mtrl.checkpoint import CheckpointError
from mtrl.cli import train as train_cli
from mtrl.cli.settings import ConfigError
from mtrl.envs.benchmarks import BenchmarkSpec, make_vector_env
from mtrl.envs.vec_env import MetaWorldVecEnv
from mtrl.runs import list_checkpoints
from tests.cli.conftest import read_events, train_config


@pytest.fixture(scope="module")
def mt10_env():
    env = MetaWorldVecEnv(make_vector_env(BenchmarkSpec("mt10", episode_length=100), seed=0))
    yield env
    env.close()


@pytest.mark.parametrize("method", available())
def test_a_thousand_steps_of_mt10_with_each_method(method, mt10_env, tmp_path):
    from stable_baselines3.common.logger import configure

    model = MTSAC(
        "MlpPolicy",
        mt10_env,
        aggregator=method,
        # 30 updates, 20 of them before the logs are written as the first episodes end
        learning_starts=80 * 10,
        batch_size=16 * 10,
        buffer_size=10_000,
        policy_kwargs={"net_arch": [64, 64]},
        seed=0,
        device="cpu",
    )
    model.set_logger(configure(str(tmp_path), ["tensorboard"]))
    before = [p.detach().clone() for p in model.policy.parameters()]
    model.learn(110 * 10)
    assert model._n_updates == 30
    assert all(torch.isfinite(p).all() for p in model.policy.parameters())
    changed = [
        not torch.equal(a, p) for a, p in zip(before, model.policy.parameters(), strict=True)
    ]
    assert all(changed)
    scalars = set(read_events(tmp_path).Tags()["scalars"])
    expected = {
        "train/critic_loss",
        "train/actor_loss",
        "train/alpha/reach-v3",
        "grad/critic/weight/window-close-v3",
        "grad/actor/weight/push-v3",
        "time/env_steps_per_s",
        "time/updates_per_s",
        "rollout/success_rate",
    }
    conflicts = {
        "grad/critic/conflicting_pairs",
        "grad/critic/cos_min",
        "grad/actor/update_conflicts",
        "grad/actor/update_norm_ratio",
        "recon/critic/layer0",
        "recon/actor/layer2",
    }
    assert expected <= scalars
    # loss-based methods never compute per-task gradients, so they have no conflicts to log
    assert (conflicts <= scalars) != model.critic_step.aggregator.loss_based


def test_smoke_experiment_from_the_command_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mtrl.cli.train", "experiment=smoke", "progress_bar=false"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs" / "mt10" / "gradops").iterdir()
    assert (run_dir / "config.yaml").is_file() and (run_dir / "protocol.json").is_file()
    assert [p.name for p in list_checkpoints(run_dir)] == [
        "step_000000001500.pt",
        "step_000000003000.pt",
    ]
    events = read_events(run_dir)
    scalars = set(events.Tags()["scalars"])
    assert {"eval/success_rate", "eval/best_success_rate", "eval/success_rate/push-v3"} <= scalars
    assert "eval/return/push-v3" in scalars and "train/critic_loss" in scalars
    # pairwise task conflicts, logged at each evaluation
    assert {
        "grad/critic/cos/reach-v3/push-v3",
        "grad/actor/cos/window-open-v3/window-close-v3",
    } <= scalars
    assert {"run/config/text_summary", "run/protocol/text_summary"} <= set(events.Tags()["tensors"])
    protocol = (run_dir / "protocol.json").read_text()
    for field in (
        '"reward_version": "v2"',
        '"goal_mode": "resample"',
        '"episode_length": 100',
        '"env_steps": 3000',
        '"seed": 0',
        '"metaworld": ',
    ):
        assert field in protocol


def test_resume_continues_at_the_same_step_with_the_same_buffer(mt1_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(mt1_run, run_dir)
    stopped = MTSAC.load(list_checkpoints(run_dir)[-1])
    assert stopped.num_timesteps == 200
    cfg = train_config("experiment=smoke", "benchmark=mt1", "total_steps=300", f"resume={run_dir}")
    cfg = train_cli.resume_config(cfg, run_dir, {"total_steps", "resume"})
    resumed = train_cli.run(cfg, run_dir)
    assert resumed.num_timesteps == 300
    assert resumed.replay_buffer.pos == 300  # the 200 stored transitions, then 100 new ones
    assert resumed._n_updates == 300 - 50  # updates started after the warm-up, once
    steps = [event.step for event in read_events(run_dir).Scalars("train/critic_loss")]
    assert steps == sorted(steps) and steps[-1] == 300
    assert "total_steps: 300" in (run_dir / "config.yaml").read_text()


def test_a_resumed_run_keeps_its_config(mt1_run):
    cfg = train_config(f"resume={mt1_run}", "method=cagrad")
    with pytest.raises(ConfigError, match=r"\['method'\] cannot change"):
        train_cli.resume_config(cfg, mt1_run, {"method", "resume"})


def test_corrupt_checkpoint_names_the_previous_good_one(mt1_run, tmp_path):
    run_dir = tmp_path / "copy"
    shutil.copytree(mt1_run, run_dir)
    *earlier, newest = list_checkpoints(run_dir)
    newest.write_bytes(newest.read_bytes()[:5000])
    cfg = train_config("experiment=smoke", "benchmark=mt1", f"resume={run_dir}")
    with pytest.raises(CheckpointError, match="truncated or corrupt") as error:
        train_cli.run(train_cli.resume_config(cfg, run_dir, set()), run_dir)
    assert str(earlier[-1]) in str(error.value)
    assert earlier[-1].is_file()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["benchmark=mt1", "benchmark.task=reach-v9"],
            "unknown task 'reach-v9'; valid tasks: .*'reach-v3'",
        ),
        (["method=cagrad", "method.c=-0.1"], r"cagrad: c must be in \[0, 1\)"),
        (["method=gradops", "+method.c=0.5"], "valid: alpha, eps, ridge"),
        (
            ["agent.batch_size_per_task=0"],
            "agent.batch_size_per_task=0 is not valid: it must be an integer >= 1",
        ),
        (["benchmark.episode_length=600"], "episode_length"),
        (["benchmark.goal_mode=random"], "it must be one of resample, fixed"),
        (["total_steps=-5"], "total_steps=-5 is not valid: it must be an integer >= 1"),
        (["device=cuda:7" if not torch.cuda.is_available() else "device=tpu"], "device"),
        (["agent.per_task_gradients=none"], "'gradops' combines per-task gradients"),
        (["optimizer=sgd"], "optimizer='sgd' is not valid: it must be one of adam, adamw, adatask"),
        (
            ["agent.weight_decay=1e-4"],
            "agent.weight_decay=0.0001 is AdamW's .* needs optimizer=adamw",
        ),
        (["agent.critic_task_layers=[5]"], "layer indices from 0 to 3"),
    ],
)
def test_bad_values_are_refused_before_any_env_is_built(overrides, message, monkeypatch, tmp_path):
    def no_envs(*args, **kwargs):
        raise AssertionError("an environment was built before the config was checked")

    monkeypatch.setattr(train_cli, "make_vector_env", no_envs)
    with pytest.raises(ConfigError, match=message):
        train_cli.run(train_config(*overrides), tmp_path)


@pytest.mark.parametrize(
    ("override", "message"),
    [("method=gradopz", "Could not find 'method/gradopz'"), ("benchmark=mt20", "mt10")],
)
def test_unknown_groups_list_the_valid_choices(override, message, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mtrl.cli.train", override],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert message in result.stderr
    assert "Available options" in result.stderr


@pytest.mark.parametrize("method", ["gradops", "mean"])
@pytest.mark.parametrize(
    "network", ["multi-head", "moore", "soft-modules", "care", "paco", "film", "bronet"]
)
def test_each_architecture_trains_on_mt10(network, method, mt10_env):
    from tests.agents.test_architectures import SMALL

    options = {"net_arch": [32, 32], "network": network, "network_options": SMALL.get(network, {})}
    model = MTSAC(
        "MlpPolicy",
        mt10_env,
        aggregator=method,
        learning_starts=30 * 10,
        batch_size=8 * 10,
        buffer_size=5_000,
        policy_kwargs=options,
        seed=0,
        device="cpu",
    )
    model.learn(60 * 10)
    assert model._n_updates == 30
    assert all(torch.isfinite(p).all() for p in model.policy.parameters())
    trained = {
        name: p
        for name, p in model.policy.named_parameters()
        if not name.startswith("critic_target.")
    }
    # Gradients deep in routed or gated networks start very small, so small that Adam with
    # eps=1e-5 moves those weights by less than a float32 rounding step: whether a weight moved
    # says little. What must hold for every parameter is that the gradient reaches it and that
    # its network's optimizer steps it at every update, on a first moment that is not zero.
    optimizers = {"actor": model.actor.optimizer, "critic": model.critic.optimizer}
    no_gradient = [name for name, p in trained.items() if p.grad is None or not p.grad.any()]
    assert not no_gradient
    for name, p in trained.items():
        state = optimizers[name.split(".", 1)[0]].state[p]
        assert int(state["step"]) == model._n_updates and state["exp_avg"].any(), name


def test_the_network_group_picks_an_architecture_from_the_command_line(tmp_path):
    cfg = train_config("experiment=smoke", "network=care", "network.experts=3", "total_steps=60")
    model = train_cli.run(cfg, tmp_path)
    assert model.policy.network == "care" and model.actor.net.experts == 3
    assert '"network": "care"' in (tmp_path / "protocol.json").read_text()


@pytest.mark.slow
def test_mt25_trains_evaluates_and_compares_through_the_command_line(tmp_path):
    from mtrl.cli import compare

    run_dir = tmp_path / "runs" / "mt25-run"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mtrl.cli.train",
            "experiment=smoke",
            "benchmark=mt25",
            "benchmark.episode_length=20",
            "total_steps=40",
            "agent.warmup_steps=20",
            "eval.every=40",
            "checkpoint.every=40",
            "progress_bar=false",
            f"hydra.run.dir={run_dir}",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    scalars = set(read_events(run_dir).Tags()["scalars"])
    assert {"eval/success_rate/dial-turn-v3", "grad/critic/cos_min"} <= scalars
    compare.main([str(tmp_path / "runs"), "--out", str(tmp_path / "report"), "--reps", "100"])
    assert "mt25" in (tmp_path / "report" / "report.md").read_text()
