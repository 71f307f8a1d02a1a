"""The categorical critic's target and loss: the projection onto the support, the per-task
cross-entropy and the value the actor reads."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional

from mtrl.agents.categorical import (
    cross_entropy_task_loss,
    expectation,
    mean_probabilities,
    project,
    support,
)


def projection_by_loops(probs, rewards, dones, discount, entropy, atoms):
    """Each atom's mass moved and split one at a time, in float64."""
    probs, atoms = np.asarray(probs, np.float64), np.asarray(atoms, np.float64)
    v_min, v_max = atoms[0], atoms[-1]
    spacing = (v_max - v_min) / (len(atoms) - 1)
    target = np.zeros_like(probs)
    for row in range(probs.shape[0]):
        for j, value in enumerate(atoms):
            moved = rewards[row] + discount * (1 - dones[row]) * (value - entropy[row])
            position = (min(max(moved, v_min), v_max) - v_min) / spacing
            low, high = int(np.floor(position)), int(np.ceil(position))
            if low == high:
                target[row, low] += probs[row, j]
            else:
                target[row, low] += probs[row, j] * (high - position)
                target[row, high] += probs[row, j] * (position - low)
    return target


def test_support_is_evenly_spaced_on_both_sides_of_zero():
    atoms = support(5, 1.0)
    torch.testing.assert_close(atoms, torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0]))


@pytest.mark.parametrize(("atoms", "v_max"), [(1, 10.0), (101, 0.0), (101, -1.0)])
def test_a_support_without_two_atoms_or_a_positive_bound_is_refused(atoms, v_max):
    with pytest.raises(ValueError, match=r"atoms|v_max"):
        support(atoms, v_max)


def test_projection_matches_a_hand_computed_example():
    atoms = support(5, 1.0)  # -1, -0.5, 0, 0.5, 1
    probs = torch.tensor([[0.1, 0.2, 0.3, 0.15, 0.25]]).repeat(3, 1)
    # Discount 1.5, so that one row reaches past both ends of the support.
    # Row 0: 0.25 + 1.5 z = -1.25, -0.5, 0.25, 1.0, 1.75: the first clipped onto -1, the second
    # exactly on an atom, the third halfway between 0 and 0.5, the fourth on the top atom and
    # the last clipped onto it.
    # Row 1: done, so every atom moves to r = 0.1, a fifth of the way from 0 to 0.5.
    # Row 2: 1.5 (z − 0.5) = -2.25, -1.5, -0.75, 0, 0.75: two clipped onto -1, one halfway
    # between -1 and -0.5, one on 0 and one halfway between 0.5 and 1.
    target = project(
        probs,
        rewards=torch.tensor([0.25, 0.1, 0.0]),
        dones=torch.tensor([0.0, 1.0, 0.0]),
        discount=1.5,
        entropy=torch.tensor([0.0, 0.0, 0.5]),
        atoms=atoms,
    )
    expected = torch.tensor(
        [
            [0.1, 0.2, 0.15, 0.15, 0.15 + 0.25],
            [0.0, 0.0, 0.8, 0.2, 0.0],
            [0.1 + 0.2 + 0.15, 0.15, 0.15, 0.125, 0.125],
        ]
    )
    torch.testing.assert_close(target, expected, atol=1e-6, rtol=0)


def test_projection_with_discount_one_and_an_entropy_term():
    atoms = support(5, 1.0)
    probs = torch.tensor([[0.1, 0.2, 0.3, 0.15, 0.25]])
    # z − 0.5: -1.5 clipped onto -1, then -1, -0.5, 0 and 0.5, each exactly on an atom
    target = project(probs, torch.zeros(1), torch.zeros(1), 1.0, torch.tensor([0.5]), atoms=atoms)
    expected = torch.tensor([[0.1 + 0.2, 0.3, 0.15, 0.25, 0.0]])
    torch.testing.assert_close(target, expected, atol=1e-6, rtol=0)


def test_a_point_mass_with_no_reward_discount_one_and_no_entropy_stays_on_its_atom():
    atoms = support(101, 10.0)
    probs = torch.eye(101)  # row j: all the mass on atom j
    zeros = torch.zeros(101)
    target = project(probs, zeros, zeros, 1.0, zeros, atoms)
    torch.testing.assert_close(target, probs, atol=1e-5, rtol=0)


def test_the_target_is_a_distribution():
    generator = torch.Generator().manual_seed(0)
    atoms = support(51, 10.0)
    probs = torch.softmax(torch.randn(4, 64, 51, generator=generator), dim=-1)
    rewards = 8 * torch.randn(4, 64, generator=generator)  # many beyond the support
    dones = (torch.rand(4, 64, generator=generator) < 0.2).float()
    entropy = torch.randn(4, 64, generator=generator)
    target = project(probs, rewards, dones, 0.99, entropy, atoms)
    assert target.shape == probs.shape
    assert (target >= 0).all()
    torch.testing.assert_close(target.sum(dim=-1), torch.ones(4, 64))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_projection_equals_an_independent_loop_on_random_inputs(seed):
    generator = torch.Generator().manual_seed(seed)
    count, rows = 21, 40
    atoms = support(count, 5.0, dtype=torch.float64)
    probs = torch.softmax(torch.randn(rows, count, generator=generator, dtype=torch.float64), -1)
    rewards = 3 * torch.randn(rows, generator=generator, dtype=torch.float64)
    dones = (torch.rand(rows, generator=generator) < 0.3).double()
    entropy = torch.randn(rows, generator=generator, dtype=torch.float64)
    target = project(probs, rewards, dones, 0.9, entropy, atoms)
    expected = projection_by_loops(
        probs.numpy(), rewards.numpy(), dones.numpy(), 0.9, entropy.numpy(), atoms.numpy()
    )
    np.testing.assert_allclose(target.numpy(), expected, atol=1e-12)


def test_loss_is_the_cross_entropy_averaged_over_the_batch_and_summed_over_critics():
    generator = torch.Generator().manual_seed(3)
    critics, tasks, batch, count = 2, 3, 5, 7
    logits = torch.randn(critics, tasks, batch, count, generator=generator)
    target = torch.softmax(torch.randn(tasks, batch, count, generator=generator), dim=-1)
    losses = cross_entropy_task_loss(logits, target)
    expected = torch.stack(
        [
            sum(functional.cross_entropy(logits[i, k], target[k]) for i in range(critics))
            for k in range(tasks)
        ]
    )
    assert losses.shape == (tasks,)
    torch.testing.assert_close(losses, expected)
    # one task's slice (the vmapped layout) gives that task's loss
    torch.testing.assert_close(cross_entropy_task_loss(logits[:, 1], target[1]), expected[1])


def test_loss_is_smallest_where_the_prediction_is_the_target():
    target = torch.softmax(torch.randn(1, 4, 9), dim=-1)
    logits = target.log().expand(2, -1, -1, -1).clone().requires_grad_(True)
    loss = cross_entropy_task_loss(logits, target)
    (gradient,) = torch.autograd.grad(loss.sum(), logits)
    torch.testing.assert_close(gradient, torch.zeros_like(gradient), atol=1e-6, rtol=0)


def test_actor_value_is_the_expectation_of_the_ensemble_mean_distribution():
    atoms = support(5, 1.0)
    logits = torch.full((2, 1, 5), -1e4)
    logits[0, 0, 4] = 0.0  # critic 0: all mass on 1.0
    logits[1, 0, 1] = 0.0  # critic 1: all mass on -0.5
    torch.testing.assert_close(expectation(logits, atoms), torch.tensor([0.25]))
    torch.testing.assert_close(
        mean_probabilities(logits), torch.tensor([[0.0, 0.5, 0.0, 0.0, 0.5]])
    )


# -- the agent ------------------------------------------------------------------------------

TASKS = 3


def categorical_model(aggregator="gradops", **kwargs):
    from mtrl.agents.mtsac import MTSAC
    from tests.agents.point_tasks import point_tasks

    settings = dict(
        critic_loss="categorical",
        categorical_atoms=11,
        categorical_v_max=5.0,
        max_grad_norm=None,
        learning_starts=30,
        batch_size=8 * TASKS,
        buffer_size=1000,
        policy_kwargs={"net_arch": [32, 32]},
        seed=0,
        device="cpu",
    )
    settings.update(kwargs)
    return MTSAC("MlpPolicy", point_tasks(TASKS), aggregator=aggregator, **settings)


@pytest.mark.parametrize("aggregator", ["gradops", "mean"])
def test_a_categorical_agent_learns_with_per_task_critic_losses(aggregator):
    model = categorical_model(aggregator)
    model.learn(60)
    batch = model.replay_buffer.sample_tasks(8)
    logits = model.critic(batch.observations, batch.actions, "grouped")
    assert logits.shape == (2, TASKS, 8, 11)
    critic, actor, _ = model.gradient_step(batch)
    assert critic.losses.shape == (TASKS,) and actor.losses.shape == (TASKS,)
    assert torch.isfinite(critic.losses).all() and (critic.losses > 0).all()
    assert not any(model.skipped_updates.values())


def test_the_categorical_critic_step_forms_the_tasks_gradients_of_k_backward_passes():
    from mtrl.agents.mtsac import categorical_critic_task_loss
    from mtrl.jacobian import per_task_gradients_grouped, per_task_gradients_loop

    model = categorical_model()
    model.learn(40)
    batch = model.replay_buffer.sample_tasks(6)
    logits = model.critic_target(batch.observations, batch.actions, "grouped")
    target = project(
        mean_probabilities(logits).detach(),
        batch.rewards,
        batch.dones,
        model.gamma,
        torch.zeros_like(batch.rewards),
        model.atoms,
    )
    inputs = (batch.observations, batch.actions, target)
    params = dict(model.critic.named_parameters())
    loss_fn = categorical_critic_task_loss
    reference, _ = per_task_gradients_loop(loss_fn, params, inputs, (model.critic,))
    stored, _, _ = per_task_gradients_grouped(
        loss_fn, model.critic, params, inputs, (model.critic,)
    )
    for name, expected in reference.items():
        scale = float(expected.abs().max())
        torch.testing.assert_close(stored[name], expected, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"max_q_value": 100.0}, "max_q_value"),
        ({"categorical_atoms": 1}, "atoms"),
        ({"categorical_v_max": 0.0}, "v_max"),
        ({"critic_loss": "quantile"}, "critic_loss='quantile'; valid: mse, categorical"),
    ],
)
def test_bad_categorical_settings_are_refused_by_name(settings, message):
    with pytest.raises(ValueError, match=message):
        categorical_model(**settings)


def test_a_saved_categorical_agent_loads_as_one(tmp_path):
    from mtrl.agents.mtsac import MTSAC

    model = categorical_model()
    model.learn(40)
    path = model.save(tmp_path / "model")
    loaded = MTSAC.load(path, env=None)
    assert loaded.critic_loss == "categorical" and loaded.categorical_atoms == 11
    obs = torch.as_tensor(model.replay_buffer.sample_tasks(4).observations)
    actions = torch.zeros(*obs.shape[:-1], 2)
    torch.testing.assert_close(
        loaded.critic(obs, actions, "grouped"), model.critic(obs, actions, "grouped")
    )
