"""Every architecture of the field: per-task gradients from one grouped pass equal K backward
passes, task-specific parameters learn from their own task alone, and any method's update is
the same from stored gradients (one pass or vmap), Gram-first (either update) or K backward
passes."""

from __future__ import annotations

import pytest
import torch

from mtrl.agents.architectures import ARCHITECTURES
from mtrl.agents.mtsac import actor_task_loss, critic_task_loss
from mtrl.agents.networks import Actor, Critic, read_critic_embedding
from mtrl.jacobian import per_task_gradients_grouped, per_task_gradients_loop
from tests.test_backward import (
    assert_close_in_scale,
    assert_every_way_gives_the_update_of_k_backward_passes,
)

TASKS, BATCH, OBS, ACTIONS = 3, 4, 5, 2
SMALL = {  # each architecture's options, scaled down
    "moore": {"experts": 3},
    "soft-modules": {
        "modules": 2,
        "layers": 3,
        "module_width": 8,
        "embedding_width": 12,
        "width": 10,
        "trunk_width": 11,
    },
    "care": {"experts": 3, "encoder_width": 6, "embedding_width": 7},
    "paco": {"sets": 3},
    "film": {"encoder_width": 6, "embedding_width": 7},
    "bronet": {
        "critic_width": 8,
        "critic_depth": 2,
        "actor_width": 6,
        "actor_depth": 1,
        "embedding_width": 4,
    },
}
NETWORKS = [*ARCHITECTURES, "mlp", "multi-head"]


def case(network: str, kind: str):
    """A small network, its loss and a grouped batch, in float64: the methods' solves (GradOPS
    inverts the Gram matrix) would amplify float32 rounding past any tight tolerance."""
    torch.manual_seed(0)
    options = dict(network=network, network_options=SMALL.get(network, {}), init="he")
    critic = Critic(OBS + TASKS, ACTIONS, [8, 9], num_tasks=TASKS, **options).double()
    onehot = torch.eye(TASKS, dtype=torch.float64)[:, None].expand(-1, BATCH, -1)
    obs = torch.cat([torch.randn(TASKS, BATCH, OBS, dtype=torch.float64), onehot], -1)
    if kind == "critic":
        actions = torch.rand(TASKS, BATCH, ACTIONS, dtype=torch.float64) * 2 - 1
        return critic, critic_task_loss, (obs, actions, torch.randn_like(obs[..., 0])), (critic,)
    actor = Actor(OBS + TASKS, ACTIONS, [8, 9], num_tasks=TASKS, **options).double()
    read_critic_embedding(actor, critic)
    frozen = {name: p.detach() for name, p in critic.named_parameters()}
    noise = torch.randn(TASKS, BATCH, ACTIONS, dtype=torch.float64)
    alpha = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    return actor, actor_task_loss, (obs, noise, alpha), (actor, critic, frozen)


@pytest.mark.parametrize("kind", ["critic", "actor"])
@pytest.mark.parametrize("network", NETWORKS)
def test_one_grouped_pass_gives_every_task_its_own_gradient(network, kind):
    model, loss_fn, inputs, shared = case(network, kind)
    params = dict(model.named_parameters())
    reference, _ = per_task_gradients_loop(loss_fn, params, inputs, shared)
    stored, own, _ = per_task_gradients_grouped(loss_fn, model, params, inputs, shared)
    task_specific = model.task_specific_parameters()
    assert set(stored) | set(own) == set(params) and not set(stored) & set(task_specific)
    for name, expected in reference.items():
        got = own[name] if name in task_specific else stored[name]
        assert_close_in_scale(got, expected.mean(0) if name in task_specific else expected, name)


@pytest.mark.parametrize(
    ("network", "kind"),
    # BroNet's actor has none of its own: it reads the critic's task embedding
    [
        (n, kind)
        for n in ARCHITECTURES
        for kind in ("critic", "actor")
        if (n, kind) != ("bronet", "actor")
    ],
)
def test_task_specific_parameters_learn_from_their_own_task_only(network, kind):
    model, loss_fn, inputs, shared = case(network, kind)
    params = dict(model.named_parameters())
    per_task, _ = per_task_gradients_loop(loss_fn, params, inputs, shared)
    task_specific = model.task_specific_parameters()
    assert task_specific, f"{network} has no task-specific parameters"
    for name in task_specific:
        grads = per_task[name]  # [K, members, K (tasks' rows), ...] for a table or a head
        for task in range(TASKS):
            others = [t for t in range(TASKS) if t != task]
            assert torch.all(grads[task][:, others] == 0), (name, task)


@pytest.mark.parametrize("method", ["gradops", "pcgrad", "cagrad", "mean"])
@pytest.mark.parametrize("network", list(ARCHITECTURES))
def test_every_way_gives_the_same_update(network, method):
    model, loss_fn, inputs, shared = case(network, "critic")
    assert_every_way_gives_the_update_of_k_backward_passes(model, loss_fn, inputs, shared, method)
