"""BroNet, BRC's critic and actor: the network the reference code builds, its task embedding owned
by the critic and read by the actor, and every task's gradient from one grouped pass, stored or
Gram-first, as K backward passes give it."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from gymnasium import spaces
from torch import Tensor
from torch.func import functional_call
from torch.nn import functional

from mtrl.agents.architectures.bronet import BroNet
from mtrl.agents.categorical import cross_entropy_task_loss
from mtrl.agents.mtsac import actor_task_loss, critic_task_loss
from mtrl.agents.networks import Actor, Critic, MultiTaskNetwork
from mtrl.agents.policies import MTSACPolicy
from mtrl.jacobian import per_task_gradients_grouped, per_task_gradients_loop
from tests.test_backward import (
    assert_close_in_scale,
    assert_every_way_gives_the_update_of_k_backward_passes,
)

TASKS, BATCH, OBS, ACTIONS, ATOMS = 3, 4, 5, 2, 7
SMALL = {
    "critic_width": 8,
    "critic_depth": 2,
    "actor_width": 6,
    "actor_depth": 1,
    "embedding_width": 4,
}


def disturbed(network: torch.nn.Module) -> None:
    """LayerNorm scales and shifts away from ones and zeros, dense biases away from zero, so that
    every parameter's gradient is exercised."""
    with torch.no_grad():
        for name, param in network.named_parameters():
            if name.endswith("bias") or "norm" in name:
                param.add_(0.3 * torch.randn_like(param))


def networks():
    torch.manual_seed(0)
    options = dict(network=BroNet, network_options=SMALL, init="he", num_tasks=TASKS)
    critic = Critic(OBS + TASKS, ACTIONS, [99], **options).double()
    actor = Actor(OBS + TASKS, ACTIONS, [99], log_std_bounds=(-10.0, 2.0), **options).double()
    actor.net.read_embedding(critic.net)
    disturbed(critic)
    disturbed(actor)
    return critic, actor


def batch():
    onehot = torch.eye(TASKS, dtype=torch.float64)[:, None].expand(-1, BATCH, -1)
    obs = torch.cat([torch.randn(TASKS, BATCH, OBS, dtype=torch.float64), onehot], -1)
    actions = torch.rand(TASKS, BATCH, ACTIONS, dtype=torch.float64) * 2 - 1
    return obs, actions


class CategoricalCritic(MultiTaskNetwork):
    """The critic's BroNet with ``ATOMS`` logits, as the categorical loss reads it."""

    def __init__(self) -> None:
        super().__init__()
        inputs = OBS + ACTIONS
        self.net = BroNet(
            inputs, ATOMS, members=2, num_tasks=TASKS, hidden=[], init="he", head_bound=0.0, **SMALL
        )

    def forward(self, obs: Tensor, action: Tensor, layout: str = "mixed") -> Tensor:
        state = torch.cat([obs[..., :-TASKS], action], dim=-1)
        return self.net(state, obs[..., -TASKS:], layout)

    def shared_layers(self) -> dict:
        return self.net.shared_layers()


def categorical_loss(params, obs, actions, target, critic, layout):
    logits = functional_call(critic, params, (obs, actions), {"layout": layout})
    losses = cross_entropy_task_loss(logits, target)
    return losses, losses


def case(kind: str):
    """A network, its per-task loss, task inputs and shared inputs."""
    critic, actor = networks()
    obs, actions = batch()
    if kind == "critic":
        return critic, critic_task_loss, (obs, actions, torch.randn_like(obs[..., 0])), (critic,)
    if kind == "categorical":
        torch.manual_seed(1)
        model = CategoricalCritic().double()
        disturbed(model)
        target = torch.softmax(torch.randn(TASKS, BATCH, ATOMS, dtype=torch.float64), dim=-1)
        return model, categorical_loss, (obs, actions, target), (model,)
    frozen = {name: p.detach() for name, p in critic.named_parameters()}
    noise = torch.randn(TASKS, BATCH, ACTIONS, dtype=torch.float64)
    alpha = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    return actor, actor_task_loss, (obs, noise, alpha), (actor, critic, frozen)


def reference_forward(net: BroNet, state: Tensor, task: Tensor, table: Tensor) -> Tensor:
    """The reference's forward written out from its equations, one member at a time."""
    embedding = table[0, task]
    embedding = embedding / embedding.norm(dim=-1, keepdim=True)
    x0 = torch.cat([state, embedding], dim=-1)
    outputs = []
    for m in range(net.members):

        def linear(layer, h, m=m):
            return h @ layer.weight[m, 0] + layer.bias[m, 0, 0]

        def norm(layer, h, m=m):
            width = h.shape[-1]
            weight, bias = layer.weight[m, 0], layer.bias[m, 0]
            return functional.layer_norm(h, (width,), weight, bias, eps=1e-6)

        h = torch.relu(norm(net.input_norm, linear(net.input, x0)))
        for first, first_norm, second, second_norm in net.blocks:
            inner = torch.relu(norm(first_norm, linear(first, h)))
            h = h + norm(second_norm, linear(second, inner))
        outputs.append(linear(net.output, h))
    return torch.stack(outputs)


@pytest.mark.parametrize("kind", ["critic", "actor"])
def test_forward_is_the_reference_network(kind):
    critic, actor = networks()
    net = critic.net if kind == "critic" else actor.net
    task = torch.tensor([0, 2, 1, 2, 0])
    onehot = torch.eye(TASKS, dtype=torch.float64)[task]
    state = torch.randn(5, OBS + (ACTIONS if kind == "critic" else 0), dtype=torch.float64)
    expected = reference_forward(net, state, task, critic.net.embedding.weight)
    torch.testing.assert_close(net(state, onehot, "mixed"), expected)


def test_defaults_are_the_reference_sizes():
    defaults = {
        name: p.default
        for name, p in inspect.signature(BroNet).parameters.items()
        if name in ("critic_width", "critic_depth", "actor_width", "actor_depth")
        or name in ("embedding_width", "role")
    }
    assert defaults == {
        "role": "critic",
        "critic_width": 4096,
        "critic_depth": 2,
        "actor_width": 256,
        "actor_depth": 1,
        "embedding_width": 32,
    }


def test_widths_depths_and_initialisation_follow_the_reference():
    torch.manual_seed(0)
    sizes = dict(critic_width=64, critic_depth=2, actor_width=48, actor_depth=1)
    common = dict(num_tasks=TASKS, hidden=[400], init="he", head_bound=0.0, **sizes)
    critic = BroNet(9, 21, members=2, **common)
    actor = BroNet(7, 2 * 4, members=1, role="actor", **common)
    assert critic.input.weight.shape == (2, 1, 9 + 32, 64) and len(critic.blocks) == 2
    assert critic.output.weight.shape == (2, 1, 64, 21)
    assert actor.input.weight.shape == (1, 1, 7 + 32, 48) and len(actor.blocks) == 1
    assert critic.embedding.weight.shape == (1, TASKS, 32)
    assert not any("embedding" in name for name, _ in actor.named_parameters())
    block = actor.blocks[0][0].weight[0, 0]
    torch.testing.assert_close(block.T @ block, 2 * torch.eye(48), atol=1e-5, rtol=0)
    head = actor.output.weight[0, 0]
    torch.testing.assert_close(head[:, :4].T @ head[:, :4], 2 * torch.eye(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(head[:, 4:].T @ head[:, 4:], torch.eye(4), atol=1e-5, rtol=0)
    out = critic.output.weight[1, 0]
    torch.testing.assert_close(out.T @ out, 2 * torch.eye(21), atol=1e-5, rtol=0)
    assert not torch.allclose(critic.input.weight[0], critic.input.weight[1])  # own draws
    for net in (critic, actor):
        for name, param in net.named_parameters():
            if name.endswith("bias"):
                assert torch.all(param == 0), name
            elif "norm" in name:
                assert torch.all(param == 1), name
    embedding = critic.task_embedding(torch.eye(TASKS))
    torch.testing.assert_close(embedding.norm(dim=-1), torch.ones(1, TASKS))


def test_a_bad_role_and_an_actor_without_a_critic_are_refused():
    with pytest.raises(ValueError, match="role"):
        BroNet(3, 2, members=1, num_tasks=2, hidden=[], init="he", head_bound=0.0, role="value")
    actor = BroNet(3, 2, members=1, num_tasks=2, hidden=[], init="he", head_bound=0.0, role="actor")
    with pytest.raises(RuntimeError, match="read_embedding"):
        actor(torch.zeros(1, 3), torch.eye(2)[:1], "mixed")


@pytest.mark.parametrize("kind", ["critic", "categorical", "actor"])
def test_one_grouped_pass_gives_every_task_its_own_gradient(kind):
    model, loss_fn, inputs, shared = case(kind)
    params = dict(model.named_parameters())
    reference, _ = per_task_gradients_loop(loss_fn, params, inputs, shared)
    stored, own, _ = per_task_gradients_grouped(loss_fn, model, params, inputs, shared)
    task_specific = model.task_specific_parameters()
    assert set(stored) | set(own) == set(params) and not set(stored) & set(task_specific)
    for name, expected in reference.items():
        assert expected.abs().max() > 0, name
        got = own[name] if name in task_specific else stored[name]
        assert_close_in_scale(got, expected.mean(0) if name in task_specific else expected, name)


@pytest.mark.parametrize("method", ["gradops", "pcgrad", "mean"])
@pytest.mark.parametrize("kind", ["critic", "categorical", "actor"])
def test_every_gradient_mode_gives_the_update_of_k_backward_passes(kind, method):
    model, loss_fn, inputs, shared = case(kind)
    assert_every_way_gives_the_update_of_k_backward_passes(model, loss_fn, inputs, shared, method)


@pytest.mark.parametrize("kind", ["critic", "categorical"])
def test_the_embedding_learns_from_its_own_task_only(kind):
    model, loss_fn, inputs, shared = case(kind)
    params = dict(model.named_parameters())
    per_task, _ = per_task_gradients_loop(loss_fn, params, inputs, shared)
    assert list(model.task_specific_parameters()) == ["net.embedding.weight"]
    grads = per_task["net.embedding.weight"]  # [K, 1, K (the tasks' rows), width]
    for task in range(TASKS):
        others = [t for t in range(TASKS) if t != task]
        assert torch.all(grads[task][:, others] == 0), task
        assert grads[task][:, task].abs().max() > 0, task


def test_the_actor_reads_the_critic_embedding_without_gradient():
    model, loss_fn, inputs, shared = case("actor")
    critic = shared[1]
    params = dict(model.named_parameters())
    losses, _ = loss_fn(params, *inputs, *shared, "grouped")
    losses.sum().backward()
    assert critic.net.embedding.weight.grad is None
    with torch.no_grad():  # the actor follows the critic's embedding as it learns
        before = model.deterministic(inputs[0])
        critic.net.embedding.weight.add_(torch.randn_like(critic.net.embedding.weight))
        assert not torch.allclose(model.deterministic(inputs[0]), before)


def test_the_policy_points_the_actor_at_the_online_critic_embedding():
    observations = spaces.Box(-np.inf, np.inf, (OBS + TASKS,), np.float32)
    actions = spaces.Box(-1.0, 1.0, (ACTIONS,), np.float32)
    policy = MTSACPolicy(
        observations,
        actions,
        lambda _: 3e-4,
        num_tasks=TASKS,
        network=BroNet,
        network_options=SMALL,
    )
    assert policy.actor.net._critic_embedding[0] is policy.critic.net.embedding
    actor_params = {id(p) for p in policy.actor.parameters()}
    assert id(policy.critic.net.embedding.weight) not in actor_params
    assert policy.critic_target.net.embedding is not policy.critic.net.embedding


@pytest.mark.parametrize("gradients", ["grouped", "gram"])
def test_a_categorical_agent_trains_through_bronet(gradients):
    from mtrl.agents.mtsac import MTSAC
    from tests.agents.point_tasks import point_tasks

    model = MTSAC(
        "MlpPolicy",
        point_tasks(TASKS),
        aggregator="gradops",
        critic_loss="categorical",
        categorical_atoms=ATOMS,
        per_task_gradients=gradients,
        learning_starts=30,
        batch_size=4 * TASKS,
        buffer_size=500,
        policy_kwargs={"network": BroNet, "network_options": SMALL},
        seed=0,
        device="cpu",
    )
    before = model.critic.net.embedding.weight.detach().clone()
    model.learn(50)
    assert model.actor.net._critic_embedding[0] is model.critic.net.embedding
    assert not torch.equal(model.critic.net.embedding.weight, before)
    assert not any(model.skipped_updates.values())
    assert set(model.critic_step.layer_names) == set(model.critic.shared_layers())
