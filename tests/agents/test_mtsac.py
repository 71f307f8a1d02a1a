"""MTSAC on a tiny multi-task environment: the update rule, its guards, saving and resuming."""

import copy

import numpy as np
import pytest
import torch

from mtrl.agents.mtsac import MTSAC, actor_task_loss, critic_task_loss
from mtrl.aggregators import available
from mtrl.checkpoint import CheckpointError
from mtrl.jacobian import per_task_gradients, per_task_gradients_loop
from tests.agents.point_tasks import point_tasks

TASKS = 3


def make_model(aggregator="gradops", multi_head=False, **kwargs):
    settings = dict(
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
    model = make_model(multi_head=multi_head)
    model.learn(150)
    batch = model.replay_buffer.sample_tasks(8)
    task_inputs, shared, alpha = critic_inputs(model, batch)
    params = dict(model.critic.named_parameters())
    fast, fast_loss = per_task_gradients(critic_task_loss, params, task_inputs, shared)
    slow, slow_loss = per_task_gradients_loop(critic_task_loss, params, task_inputs, shared)
    torch.testing.assert_close(fast_loss, slow_loss)
    for name in params:
        torch.testing.assert_close(fast[name], slow[name], rtol=1e-5, atol=1e-5)

    noise = torch.randn_like(batch.actions)
    frozen = {n: p.detach() for n, p in params.items()}
    actor_args = (
        actor_task_loss,
        dict(model.actor.named_parameters()),
        (batch.observations, noise, alpha),
        (model.actor, model.critic, frozen),
    )
    fast, (fast_loss, fast_logp) = per_task_gradients(*actor_args)
    slow, (slow_loss, slow_logp) = per_task_gradients_loop(*actor_args)
    torch.testing.assert_close(fast_loss, slow_loss)
    torch.testing.assert_close(fast_logp, slow_logp)
    for name in fast:
        torch.testing.assert_close(fast[name], slow[name], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("multi_head", [False, True])
def test_mean_is_plain_mtsac_on_the_summed_loss(multi_head, monkeypatch):
    model = make_model(aggregator="mean", multi_head=multi_head)
    model.learn(150)
    batch = model.replay_buffer.sample_tasks(8)
    task_inputs, shared, _ = critic_inputs(model, batch)
    params = dict(model.critic.named_parameters())
    gradients, losses = per_task_gradients(critic_task_loss, params, task_inputs, shared)
    monkeypatch.setattr(model.critic.optimizer, "step", lambda: None)
    model._apply(model.critic, gradients, losses, "critic")

    summed = sum(
        critic_task_loss(params, *(x[k] for x in task_inputs), *shared)[0] for k in range(TASKS)
    )
    reference = torch.autograd.grad(summed, list(params.values()))
    for (name, param), expected in zip(params.items(), reference, strict=True):
        torch.testing.assert_close(param.grad, expected / TASKS, rtol=1e-5, atol=1e-6, msg=name)


def test_task_heads_only_learn_from_their_own_task():
    model = make_model(multi_head=True)
    model.learn(150)
    batch = model.replay_buffer.sample_tasks(8)
    task_inputs, shared, _ = critic_inputs(model, batch)
    params = dict(model.critic.named_parameters())
    gradients, _ = per_task_gradients(critic_task_loss, params, task_inputs, shared)
    head = gradients["net.head_weight"]  # [tasks, critics, heads, hidden, 1]
    for task in range(TASKS):
        others = [h for h in range(TASKS) if h != task]
        assert head[task][:, task].abs().sum() > 0
        assert torch.all(head[task][:, others] == 0)


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
    np.testing.assert_array_equal(
        resumed.replay_buffer.observations, model.replay_buffer.observations
    )
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
        resumed.aggregators["critic"].visiting_orders(TASKS),
        model.aggregators["critic"].visiting_orders(TASKS),
    )
    resumed.learn(60, reset_num_timesteps=False)
    assert resumed.num_timesteps == 300


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
