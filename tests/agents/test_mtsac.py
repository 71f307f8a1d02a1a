"""MTSAC on a tiny multi-task environment: the update rule, its guards, saving and resuming."""

import copy
import itertools
import types

import numpy as np
import pytest
import torch
from stable_baselines3.common.logger import KVWriter, Logger

from mtrl.agents import logs
from mtrl.agents.mtsac import MTSAC, actor_task_loss, critic_task_loss
from mtrl.aggregators import available
from mtrl.checkpoint import CheckpointError
from mtrl.jacobian import (
    per_task_gradients,
    per_task_gradients_grouped,
    per_task_gradients_loop,
)
from tests.agents.point_tasks import point_tasks

TASKS = 3


def make_model(aggregator="gradops", multi_head=False, **kwargs):
    """A small MTSAC on the point tasks; updates are not clipped unless asked for, so that
    tests can compare gradients with their definitions."""
    settings = dict(
        max_grad_norm=None,
        learning_starts=60,
        batch_size=8 * TASKS,
        buffer_size=3000,
        policy_kwargs={"net_arch": [32, 32], "multi_head": multi_head},
        seed=0,
        device="cpu",
    )
    settings.update(kwargs)
    return MTSAC("MlpPolicy", point_tasks(TASKS), aggregator=aggregator, **settings)


@pytest.fixture(scope="module")
def trained():
    model = make_model()
    model.learn(300)
    return model


def critic_inputs(model, batch):
    alpha = model.log_alpha.detach().exp()
    target = batch.rewards + 0.3 * torch.randn_like(batch.rewards)
    return (batch.observations, batch.actions, target), (model.critic,), alpha


@pytest.mark.parametrize("multi_head", [False, True])
def test_vectorised_gradients_equal_the_loop_reference(multi_head):
    """The grouped pass and vmap agree with K backward passes, for the critic and the actor."""
    model = make_model(multi_head=multi_head)
    model.learn(150)
    batch = model.replay_buffer.sample_tasks(8)
    task_inputs, shared, alpha = critic_inputs(model, batch)
    frozen = {n: p.detach() for n, p in model.critic.named_parameters()}
    cases = [
        (model.critic, critic_task_loss, task_inputs, shared),
        (
            model.actor,
            actor_task_loss,
            (batch.observations, torch.randn_like(batch.actions), alpha),
            (model.actor, model.critic, frozen),
        ),
    ]
    for network, loss_fn, inputs, constants in cases:
        params = dict(network.named_parameters())
        own = {f"net.{name}" for name in network.net.task_specific_parameters()}
        slow, slow_aux = per_task_gradients_loop(loss_fn, params, inputs, constants)
        vmapped, vmapped_aux = per_task_gradients(loss_fn, params, inputs, constants)
        grouped, grouped_own, grouped_aux = per_task_gradients_grouped(
            loss_fn, network, params, inputs, constants
        )
        as_tuple = lambda aux: aux if isinstance(aux, tuple) else (aux,)  # noqa: E731
        for aux in (vmapped_aux, grouped_aux):
            for fast, reference in zip(as_tuple(aux), as_tuple(slow_aux), strict=True):
                torch.testing.assert_close(fast.detach(), reference)
        for name in params:
            torch.testing.assert_close(vmapped[name], slow[name], rtol=1e-5, atol=1e-5)
            expected = slow[name].mean(0) if name in own else slow[name]
            got = grouped_own[name] if name in own else grouped[name]
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["grouped", "vmap"])
@pytest.mark.parametrize("multi_head", [False, True])
def test_mean_is_plain_mtsac_on_the_summed_loss(mode, multi_head, monkeypatch):
    model = make_model(aggregator="mean", multi_head=multi_head, per_task_gradients=mode)
    model.learn(150)
    batch = model.replay_buffer.sample_tasks(8)
    task_inputs, shared, _ = critic_inputs(model, batch)
    params = dict(model.critic.named_parameters())
    monkeypatch.setattr(model.critic.optimizer, "step", lambda: None)
    losses = model.critic_step(critic_task_loss, task_inputs, shared).aux

    summed = critic_task_loss(params, *task_inputs, model.critic, "grouped")[0]
    torch.testing.assert_close(summed, losses)  # the grouped losses are the per-task losses
    reference = torch.autograd.grad(summed.sum(), list(params.values()))
    for (name, param), expected in zip(params.items(), reference, strict=True):
        torch.testing.assert_close(param.grad, expected / TASKS, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("layers", [{"multi_head": True}, {"critic_task_layers": [0, 1]}])
def test_task_specific_layers_only_learn_from_their_own_task(layers):
    model = make_model(**{"policy_kwargs": {"net_arch": [32, 32], **layers}})
    model.learn(150)
    batch = model.replay_buffer.sample_tasks(8)
    task_inputs, shared, _ = critic_inputs(model, batch)
    params = dict(model.critic.named_parameters())
    gradients, _ = per_task_gradients(critic_task_loss, params, task_inputs, shared)
    own = model.critic.net.task_specific_parameters()
    assert own
    for name in own:
        grad = gradients[f"net.{name}"]  # [tasks, critics, copies, ...]
        assert grad.shape[2] == TASKS
        for task in range(TASKS):
            others = [copy for copy in range(TASKS) if copy != task]
            assert grad[task][:, task].abs().sum() > 0
            assert torch.all(grad[task][:, others] == 0)
    # the per-sample path (mixed tasks, as in predict) matches the per-task path
    obs, actions = batch.observations, batch.actions
    mixed = model.critic(obs.flatten(0, 1), actions.flatten(0, 1))
    per_task = torch.stack(
        [model.critic(o, a, "single") for o, a in zip(obs, actions, strict=True)]
    )
    torch.testing.assert_close(mixed, per_task.permute(1, 0, 2).flatten(1, 2))


def test_actor_update_leaves_the_critic_alone(trained):
    model = copy.deepcopy(trained)
    after_critic_step = {}
    original_step = model.critic.optimizer.step

    def step_and_remember():
        original_step()
        for name, param in model.critic.named_parameters():
            after_critic_step[name] = (param.detach().clone(), param.grad.clone())

    model.critic.optimizer.step = step_and_remember
    actor_before = [p.detach().clone() for p in model.actor.parameters()]
    model.update(model.replay_buffer.sample_tasks(8))
    for name, param in model.critic.named_parameters():
        value, grad = after_critic_step[name]
        assert torch.equal(param, value) and torch.equal(param.grad, grad), name
    assert any(
        not torch.equal(a, p) for a, p in zip(actor_before, model.actor.parameters(), strict=True)
    )


def test_non_finite_losses_skip_the_update_and_weights_stay_finite(trained):
    model = copy.deepcopy(trained)
    batch = model.replay_buffer.sample_tasks(8)
    poisoned = batch._replace(
        rewards=batch.rewards.clone().index_fill_(1, torch.tensor([0]), torch.nan)
    )
    critic_before = [p.detach().clone() for p in model.critic.parameters()]
    model.update(poisoned)
    assert model.skipped_updates["critic"] == 1
    assert all(
        torch.equal(a, p) for a, p in zip(critic_before, model.critic.parameters(), strict=True)
    )
    nan_obs = batch._replace(observations=torch.full_like(batch.observations, torch.nan))
    model.update(nan_obs)
    assert model.skipped_updates == {"critic": 2, "actor": 1, "alpha": 1}
    for param in model.policy.parameters():
        assert torch.isfinite(param).all()
    assert torch.isfinite(model.log_alpha).all()


@pytest.mark.parametrize(
    ("policy_kwargs", "skips"),
    [
        ({}, True),
        ({"optimizer": "adatask"}, True),
        ({"optimizer": "adamw", "weight_decay": 0.1}, True),
        ({"optimizer_kwargs": {"fused": False}}, False),
    ],
    ids=["fused-adam", "adatask", "fused-adamw", "plain-adam"],
)
def test_a_skipped_update_changes_nothing_where_the_optimizer_can_skip(policy_kwargs, skips):
    """Fused Adam and AdaTask leave weights and moments as they were (the target critic still
    follows the critic); an optimizer that cannot skip steps on zeros: its weights stay finite."""
    model = make_model(policy_kwargs={"net_arch": [32, 32], **policy_kwargs})
    model.learn(120)
    batch = model.replay_buffer.sample_tasks(8)
    nan_obs = batch._replace(observations=torch.full_like(batch.observations, torch.nan))
    weights_before = copy.deepcopy(model.policy.state_dict())
    moments_before = copy.deepcopy(model.critic.optimizer.state_dict())
    model.update(nan_obs)
    assert model.skipped_updates == {"critic": 1, "actor": 1, "alpha": 1}
    for name, value in model.policy.state_dict().items():
        assert torch.isfinite(value).all(), name
        if skips and not name.startswith("critic_target"):
            assert torch.equal(value, weights_before[name]), name
    if skips:
        for index, state in model.critic.optimizer.state_dict()["state"].items():
            for key, value in state.items():
                assert torch.equal(value, moments_before["state"][index][key]), (index, key)


@pytest.mark.parametrize("aggregator", available())
def test_every_method_trains(aggregator):
    model = make_model(aggregator=aggregator)
    before = [p.detach().clone() for p in model.policy.parameters()]
    model.learn(240)
    assert model._n_updates > 0
    assert all(torch.isfinite(p).all() for p in model.policy.parameters())
    assert any(
        not torch.equal(a, p) for a, p in zip(before, model.policy.parameters(), strict=True)
    )


def test_save_and_load_give_the_same_policy(trained, tmp_path):
    path = trained.save(tmp_path / "model.pt")
    torch.load(path, weights_only=True)  # plain data only: nothing to unpickle
    loaded = MTSAC.load(path)
    obs = np.asarray(point_tasks(TASKS).reset())
    expected, _ = trained.predict(obs, deterministic=True)
    actions, _ = loaded.predict(obs, deterministic=True)
    np.testing.assert_array_equal(actions, expected)
    assert loaded.task_names == trained.task_names
    assert loaded.aggregator_name == "gradops"


def test_resume_continues_where_training_stopped(tmp_path):
    model = make_model(aggregator="pcgrad")
    model.learn(240)
    path = model.save(tmp_path / "checkpoint.pt", include_replay_buffer=True)
    resumed = MTSAC.load(path, env=point_tasks(TASKS))
    assert resumed.num_timesteps == model.num_timesteps == 240
    assert resumed._n_updates == model._n_updates
    assert resumed.replay_buffer.pos == model.replay_buffer.pos
    filled = model.replay_buffer.size()
    assert resumed.replay_buffer.size() == filled == 240 // TASKS
    for name in ("observations", "next_observations", "actions", "rewards", "terminals"):
        stored = getattr(model.replay_buffer, name)[:filled]
        assert torch.equal(getattr(resumed.replay_buffer, name)[:filled], stored), name
    for name in ("actor", "critic"):
        saved = getattr(model, name).optimizer.state_dict()["state"]
        restored = getattr(resumed, name).optimizer.state_dict()["state"]
        assert saved.keys() == restored.keys()
        for key in saved:
            torch.testing.assert_close(restored[key]["exp_avg"], saved[key]["exp_avg"])
    # the next batch, the next PCGrad visiting order and the next noise draw all continue
    torch.testing.assert_close(
        resumed.replay_buffer.sample_tasks(8).observations,
        model.replay_buffer.sample_tasks(8).observations,
    )
    assert torch.equal(
        resumed.critic_step.aggregator.visiting_orders(TASKS),
        model.critic_step.aggregator.visiting_orders(TASKS),
    )
    resumed.learn(60, reset_num_timesteps=False)
    assert resumed.num_timesteps == 300


class Records(KVWriter):
    def __init__(self) -> None:
        self.rows: list[tuple[int, dict]] = []

    def write(self, key_values, key_excluded, step=0) -> None:
        self.rows.append((step, dict(key_values)))


def test_a_resumed_run_logs_the_rate_of_its_own_steps(tmp_path, monkeypatch):
    model = make_model()
    model.learn(240)
    resumed = MTSAC.load(
        model.save(tmp_path / "c.pt", include_replay_buffer=True), point_tasks(TASKS)
    )
    records = Records()
    resumed.set_logger(Logger(folder=None, output_formats=[records]))
    clock = itertools.count()  # one second between two readings
    monkeypatch.setattr(logs, "time", types.SimpleNamespace(perf_counter=lambda: next(clock)))
    resumed.learn(120, reset_num_timesteps=False)
    step, first = records.rows[0]
    # the steps since the resume, not since step 0, over the time since learn() began
    assert step > 240
    assert first["time/env_steps_per_s"] == step - 240


def test_truncated_checkpoint_is_refused_clearly(trained, tmp_path):
    path = trained.save(tmp_path / "model.pt")
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        MTSAC.load(path)


def test_batch_that_does_not_split_evenly_is_refused():
    with pytest.raises(ValueError, match="multiple of the 3 tasks"):
        make_model(batch_size=10)


def test_unknown_method_is_refused_before_anything_is_built():
    with pytest.raises(ValueError, match="valid methods"):
        make_model(aggregator="gradvacc")


def updated_parameters(model, batch, seed=0):
    model = copy.deepcopy(model)
    torch.manual_seed(seed)
    model.update(batch)
    return [p.detach() for p in model.policy.parameters()] + [model.log_alpha.detach()]


def assert_same_update(trained, *variants):
    """Models that differ only in ``variants`` (keyword arguments) take the same update step
    from the same weights on the same batch; random draws come from the same seed."""
    batch = trained.replay_buffer.sample_tasks(8)
    updates = []
    for variant in variants:
        model = make_model(**variant)
        model.policy.load_state_dict(trained.policy.state_dict())
        updates.append(updated_parameters(model, batch))
    for first, second in zip(*updates, strict=True):
        torch.testing.assert_close(first, second, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    ("method", "first", "second"),
    [
        ("gradops", "grouped", "loop"),
        ("gradops", "vmap", "loop"),
        ("pcgrad", "grouped", "vmap"),
        ("mean", "grouped", "none"),
    ],
)
def test_gradient_modes_give_the_same_update(method, first, second, trained):
    assert_same_update(
        trained,
        {"aggregator": method, "per_task_gradients": first},
        {"aggregator": method, "per_task_gradients": second},
    )


def test_methods_that_combine_gradients_need_them():
    with pytest.raises(ValueError, match="cannot be 'none'"):
        make_model(aggregator="gradops", per_task_gradients="none")
    with pytest.raises(ValueError, match="valid: auto, grouped, gram, vmap, loop, none"):
        make_model(per_task_gradients="backward")


def test_adamw_decays_every_parameter_apart_from_the_adam_step():
    """Decoupled: one AdamW update with decay λ = 1 moves each critic weight by −lr·w further
    than the same update without decay, whatever its gradient (the actor's gradient then
    differs, as it reads the updated critic)."""
    models, start = {}, None
    for decay in (0.0, 1.0):
        policy = {"net_arch": [32, 32], "optimizer": "adamw", "weight_decay": decay}
        models[decay] = make_model(policy_kwargs=policy)
        start = start or copy.deepcopy(models[decay].policy.state_dict())
        models[decay].learn(61)  # the first update comes after 60 steps of warm-up
        assert models[decay]._n_updates == 1
    lr = models[0.0].learning_rate
    decayed, plain = models[1.0].policy.state_dict(), models[0.0].policy.state_dict()
    for name, before in start.items():
        if not name.startswith("critic."):
            continue
        moved_apart = decayed[name] - plain[name]  # float32 weights: a few rounding steps apart
        torch.testing.assert_close(moved_apart, -lr * before, rtol=1e-3, atol=1e-7)
        if name.endswith("weight"):  # the biases start at zero
            assert moved_apart.abs().max() > 0.5 * lr * before.abs().max(), name
    with pytest.raises(ValueError, match=r"weight_decay=0.1: .* for optimizer='adamw' only"):
        make_model(policy_kwargs={"weight_decay": 0.1})
    loaded = MTSAC.from_state(models[1.0].checkpoint_state(False))
    assert loaded.critic.optimizer.param_groups[0]["weight_decay"] == 1.0


@pytest.mark.parametrize("temperature", ["per_task", "shared"])
@pytest.mark.parametrize("alpha_loss", ["log_alpha", "alpha"])
def test_the_temperatures_gradient_is_their_losss(temperature, alpha_loss, monkeypatch):
    """SAC's loss −log α · (log π + H̄) has the gradient −(log π_k + H̄) / K per task; BRC's
    α · (H − H̄) the same times α; one shared temperature takes the tasks' mean. The target
    entropy is −scale · |A|, the betas those given."""
    model = make_model(
        temperature=temperature,
        alpha_loss=alpha_loss,
        initial_alpha=0.1,
        target_entropy_scale=0.5,
        alpha_betas=(0.5, 0.999),
    )
    model.learn(70)
    assert model.log_alpha.shape == ((TASKS,) if temperature == "per_task" else (1,))
    assert model.target_entropy == -0.5 * 2  # |A| = 2
    assert model.alpha_optimizer.param_groups[0]["betas"] == (0.5, 0.999)
    seen = {}
    real_step = model.alpha_optimizer.step

    def step(*args, **kwargs):
        seen["log_alpha"] = model.log_alpha.detach().clone()
        seen["grad"] = model.log_alpha.grad.clone()
        return real_step(*args, **kwargs)

    monkeypatch.setattr(model.alpha_optimizer, "step", step)
    *_, log_probs = model.gradient_step(model.replay_buffer.sample_tasks(8))
    gap = log_probs + model.target_entropy  # per task
    # per task: the mean over tasks of −log α_k (…) gives each its 1/K share
    expected = -gap / TASKS if temperature == "per_task" else -gap.mean(dim=0, keepdim=True)
    if alpha_loss == "alpha":
        expected = expected * seen["log_alpha"].exp()
    torch.testing.assert_close(seen["grad"], expected)
    assert torch.equal(model.alphas(), model.log_alpha.detach().exp().expand(TASKS))
    loaded = MTSAC.from_state(model.checkpoint_state(False))
    assert torch.equal(loaded.log_alpha, model.log_alpha)
    assert (loaded.temperature, loaded.alpha_loss) == (temperature, alpha_loss)


def test_two_gradient_steps_are_two_single_updates():
    """gradient_steps=2 at a vector step does what two updates of one step each do: the same
    weights, moments and temperatures, and conflict statistics averaged over both updates."""
    models = {}
    for steps, calls in ((2, [2]), (1, [1, 1])):
        model = make_model(gradient_steps=steps)
        model.learn(60)  # the warm-up, no update yet
        assert model._n_updates == 0
        for gradient_steps in calls:
            model.train(gradient_steps, model.batch_size)
        models[steps] = model
    two, singles = models[2], models[1]
    assert two._n_updates == singles._n_updates == 2
    for name, value in two.policy.state_dict().items():
        assert torch.equal(value, singles.policy.state_dict()[name]), name
    for network in ("actor", "critic"):
        moments = getattr(two, network).optimizer.state_dict()["state"]
        expected = getattr(singles, network).optimizer.state_dict()["state"]
        for index, state in moments.items():
            for key, value in state.items():
                assert torch.equal(value, expected[index][key]), (network, index, key)
    assert torch.equal(two.log_alpha, singles.log_alpha)
    for network in ("critic_conflicts", "actor_conflicts"):
        logged = getattr(two, network).means()
        assert logged == getattr(singles, network).means()
        assert "grad/critic/cos_min" in logged or "grad/actor/cos_min" in logged
    assert two.stats.pop() == singles.stats.pop()


def test_adatask_trains_and_its_moments_are_checkpointed(tmp_path):
    model = make_model(policy_kwargs={"net_arch": [32, 32], "optimizer": "adatask"})
    model.learn(240)
    state = model.critic.optimizer.state_dict()["state"]
    assert state[0]["exp_avg"].shape[0] == TASKS  # one set of moments per task
    assert all(torch.isfinite(p).all() for p in model.policy.parameters())
    loaded = MTSAC.load(model.save(tmp_path / "adatask.pt"))
    restored = loaded.critic.optimizer.state_dict()["state"]
    torch.testing.assert_close(restored[0]["exp_avg_sq"], state[0]["exp_avg_sq"])


def test_famo_takes_one_backward_pass_and_learns_its_weights(monkeypatch):
    import mtrl.backward

    def no_jacobian(*args, **kwargs):
        raise AssertionError("FAMO must not compute per-task gradients")

    for way in ("grouped_pass", "per_task_gradients", "per_task_gradients_loop"):
        monkeypatch.setattr(mtrl.backward, way, no_jacobian)
    model = make_model(aggregator="famo")
    model.learn(240)
    assert model._n_updates > 0
    critic_famo = model.critic_step.aggregator
    assert critic_famo.name == "famo" and model.actor_step.aggregator.name == "mean"
    logits = critic_famo.state_dict()["logits"]
    assert logits.shape == (TASKS,) and not torch.all(logits == 0)
    assert all(torch.isfinite(p).all() for p in model.policy.parameters())


@pytest.mark.slow
@pytest.mark.parametrize("aggregator", ["cagrad", "pcgrad", "gradvac", "nash-mtl"])
def test_a_compiled_aggregator_gives_the_same_update(aggregator, trained):
    assert_same_update(
        trained,
        {"aggregator": aggregator},
        {"aggregator": aggregator, "compile": True},
    )
