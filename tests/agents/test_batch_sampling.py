"""Batches drawn uniformly over all transitions (``batch_sampling="uniform"``, BRC's): each task's
share follows the binomial law, the task losses average to the loss over the batch's
transitions, and every method and every way of having per-task gradients updates from such a
batch, one with a task that drew no transition included."""

import math

import pytest
import torch
from gymnasium import spaces

from mtrl.agents.categorical import support
from mtrl.agents.mtsac import critic_task_loss, weighted_by_rows
from mtrl.aggregators import available
from mtrl.replay import OVERFLOW, MultiTaskReplayBuffer, uniform_capacity
from tests.agents.test_mtsac import make_model
from tests.test_backward import (
    GRAM_BASED,
    assert_every_way_gives_the_update_of_k_backward_passes,
    network_case,
)


def binomial_tail(count: int, draws: int, p: float) -> float:
    """P(n > count) for n ~ Binomial(draws, p), summed term by term."""
    return sum(
        math.comb(draws, n) * p**n * (1 - p) ** (draws - n) for n in range(count + 1, draws + 1)
    )


@pytest.mark.parametrize(("batch", "tasks"), [(1020, 10), (640, 10), (1000, 50), (24, 3), (7, 1)])
def test_the_capacity_is_the_least_that_keeps_overflow_below_its_bound(batch, tasks):
    capacity = uniform_capacity(batch, tasks)
    assert tasks * binomial_tail(capacity, batch, 1 / tasks) <= OVERFLOW
    if tasks > 1:
        assert tasks * binomial_tail(capacity - 1, batch, 1 / tasks) > OVERFLOW
    else:
        assert capacity == batch


def filled_buffer(tasks: int, rows: int) -> MultiTaskReplayBuffer:
    """A buffer whose observations say the task and row they were stored in."""
    box = spaces.Box(-1e6, 1e6, (2,))
    buffer = MultiTaskReplayBuffer(rows * tasks, box, spaces.Box(-1, 1, (1,)), "cpu", tasks, seed=0)
    for row in range(rows):
        obs = [[k, row] for k in range(tasks)]
        buffer.add(obs, obs, [[0.0]] * tasks, [0.0] * tasks, [False] * tasks, [{}] * tasks)
    return buffer


def test_a_uniform_batch_gives_each_task_a_binomial_share_of_its_own_rows():
    tasks, batch_size, draws = 4, 40, 3000
    buffer = filled_buffer(tasks, rows=50)
    capacity = uniform_capacity(batch_size, tasks)
    counts = []
    for _ in range(draws):
        batch, overflow = buffer.sample_uniform(batch_size, capacity)
        assert batch.observations.shape == (tasks, capacity, 2)
        used = batch.weights > 0
        assert int(overflow) == 0 and int(used.sum()) == batch_size
        # the rows in use are each task's first n_k, each weighing K·C/B
        assert torch.equal(used, used.cumprod(dim=1).bool())
        assert torch.all(batch.weights[used] == tasks * capacity / batch_size)
        assert torch.equal(
            batch.observations[..., 0], torch.arange(tasks)[:, None].float().expand(-1, capacity)
        )
        counts.append(used.sum(dim=1))
    counts = torch.stack(counts).double()
    p = 1 / tasks
    mean, variance = batch_size * p, batch_size * p * (1 - p)
    # the mean of 3000 draws lies within 4 standard errors; the variance within 10 %
    assert torch.all((counts.mean(dim=0) - mean).abs() < 4 * math.sqrt(variance / draws))
    assert torch.all((counts.var(dim=0) / variance - 1).abs() < 0.1)
    # every stored row is drawn: the rows are uniform over each task's history
    assert batch.observations[..., 1].max() < 50


def test_transitions_past_the_capacity_are_counted_as_overflow():
    buffer = filled_buffer(tasks=3, rows=10)
    for _ in range(20):
        batch, overflow = buffer.sample_uniform(30, capacity=4)
        assert int((batch.weights > 0).sum()) + int(overflow) == 30
        assert int(overflow) > 0


def trained_uniform(**settings):
    model = make_model(batch_sampling="uniform", learning_starts=60, **settings)
    model.learn(80)
    return model


def per_row_losses(model, batch):
    """Each transition's critic and actor losses, written out for the MSE critics."""
    q = model.critic(batch.observations, batch.actions, "grouped")
    critic = 0.5 * (q - batch.rewards).square().sum(dim=0)
    noise = torch.zeros_like(batch.actions)
    actions, log_prob = model.actor(batch.observations, noise, "grouped")
    q_pi = model.critic(batch.observations, actions, "grouped").min(dim=0).values
    actor = model.alphas()[:, None] * log_prob - q_pi
    return critic, actor


def test_the_task_losses_average_to_the_loss_over_the_batchs_transitions():
    model = trained_uniform()
    batch = model.sample_batch(model.batch_size)
    used = batch.weights > 0
    assert int(used.sum()) == model.batch_size
    params = dict(model.critic.named_parameters())
    inputs = (batch.observations, batch.actions, batch.rewards, batch.weights)
    critic_losses, _ = model.critic_loss_fn(params, *inputs, model.critic, "grouped")
    noise = torch.zeros_like(batch.actions)
    actor_params = dict(model.actor.named_parameters())
    actor_losses, (_, log_probs) = model.actor_loss_fn(
        actor_params,
        batch.observations,
        noise,
        model.alphas(),
        batch.weights,
        model.actor,
        model.critic,
        params,
        "grouped",
    )
    critic_rows, actor_rows = per_row_losses(model, batch)
    torch.testing.assert_close(critic_losses.mean(), critic_rows[used].mean())
    torch.testing.assert_close(actor_losses.mean(), actor_rows[used].mean())
    # and so does their gradient: `mean` steps on BRC's loss
    grads = torch.autograd.grad(critic_losses.mean(), list(params.values()))
    flat = torch.autograd.grad(critic_rows[used].mean(), list(params.values()))
    for got, expected in zip(grads, flat, strict=True):
        torch.testing.assert_close(got, expected)
    # the temperatures' loss reads the entropy of the batch's transitions
    _, log_prob = model.actor(batch.observations, noise, "grouped")
    torch.testing.assert_close(log_probs.mean(), log_prob[used].mean())


def test_the_categorical_loss_weighs_the_rows_alike():
    model = trained_uniform(critic_loss="categorical", categorical_atoms=11)
    batch = model.sample_batch(model.batch_size)
    used = batch.weights > 0
    params = dict(model.critic.named_parameters())
    target = torch.softmax(torch.randn(*batch.rewards.shape, 11), dim=-1)
    inputs = (batch.observations, batch.actions, target, batch.weights)
    losses, _ = model.critic_loss_fn(params, *inputs, model.critic, "grouped")
    logits = model.critic(batch.observations, batch.actions, "grouped")
    rows = -(target * torch.log_softmax(logits, dim=-1)).sum(dim=-1).sum(dim=0)
    torch.testing.assert_close(losses.mean(), rows[used].mean())
    assert model.atoms is not None and torch.equal(model.atoms, support(11, 10.0))


def rows_with_an_empty_task(shape) -> torch.Tensor:
    """Row weights of a uniform batch where task 0 drew nothing and the others drew unequally."""
    tasks, capacity = shape
    counts = torch.tensor([0, capacity, 2][:tasks])
    used = torch.arange(capacity) < counts[:, None]
    return used.float() * tasks * capacity / int(counts.sum())


@pytest.mark.parametrize("kind", ["critic", "actor"])
@pytest.mark.parametrize("method", GRAM_BASED)
def test_every_way_agrees_on_a_uniform_batch_with_an_empty_task(method, kind):
    network, loss_fn, inputs, shared = network_case(kind, [2])
    rows = rows_with_an_empty_task(inputs[0].shape[:2])
    loss_fn = weighted_by_rows(loss_fn, len(inputs))
    assert_every_way_gives_the_update_of_k_backward_passes(
        network, loss_fn, (*inputs, rows), shared, method
    )


def test_a_task_with_no_transition_has_no_loss_and_no_gradient():
    network, _, inputs, shared = network_case("critic", [])
    rows = rows_with_an_empty_task(inputs[0].shape[:2])
    params = dict(network.named_parameters())
    losses, _ = weighted_by_rows(critic_task_loss, 3)(params, *inputs, rows, *shared, "grouped")
    assert losses[0] == 0 and torch.all(losses[1:] > 0)
    grads = torch.autograd.grad(losses[0], list(params.values()), allow_unused=True)
    assert all(grad is None or torch.all(grad == 0) for grad in grads)


@pytest.mark.parametrize("method", available())
def test_every_method_updates_finitely_when_a_task_drew_nothing(method):
    model = trained_uniform(aggregator=method)
    batch = model.sample_batch(model.batch_size)
    batch = batch._replace(weights=rows_with_an_empty_task(batch.weights.shape))
    before = [p.detach().clone() for p in model.policy.parameters()]
    model.update(batch)
    assert model.skipped_updates == {"critic": 0, "actor": 0, "alpha": 0}
    after = list(model.policy.parameters())
    assert all(torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))
    statistics = model.critic_conflicts.means() | model.actor_conflicts.means()
    assert all(math.isfinite(value) for value in statistics.values()), statistics


def test_uniform_sampling_needs_no_multiple_of_the_task_count_and_refuses_bad_values():
    model = make_model(batch_sampling="uniform", batch_size=25)
    assert model.batch_capacity == uniform_capacity(25, 3)
    with pytest.raises(ValueError, match="batch_size 25 must be a positive multiple of the 3"):
        make_model(batch_size=25)
    with pytest.raises(ValueError, match="batch_sampling='stratified'; valid: per_task, uniform"):
        make_model(batch_sampling="stratified")


def test_a_uniform_batch_is_logged_and_saved_with_the_model():
    model = trained_uniform()
    loaded = type(model).from_state(model.checkpoint_state(False))
    assert loaded.batch_sampling == "uniform"
    assert loaded.batch_capacity == model.batch_capacity
    assert model.stats.pop()["train/batch_overflow"] == 0
