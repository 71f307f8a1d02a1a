"""The field's recipe details as options: initialisation, log-std bounding, Adam's ε."""

import math

import pytest
import torch

from mtrl.agents.networks import Actor, Critic
from tests.agents.test_mtsac import TASKS, make_model


def test_he_initialisation_draws_hidden_layers_he_uniform_and_small_heads():
    actor = Actor(20, 4, [256, 256], num_tasks=3, init="he")
    critic = Critic(20, 4, [256, 256], num_tasks=3, init="he")
    for network, head in ((actor, 1e-3), (critic, 3e-3)):
        *hidden, output = network.net.layers
        for layer in hidden:
            fan_in = layer.weight.shape[-2]
            bound = math.sqrt(6 / fan_in)
            assert layer.weight.abs().max() <= bound
            assert layer.weight.abs().max() > 0.9 * bound  # drawn over the whole range
            assert torch.all(layer.bias == 0)
        assert output.weight.abs().max() <= head and output.bias.abs().max() <= head


@pytest.mark.parametrize(("bounding", "sigma"), [("tanh", math.exp(-9)), ("clamp", 1.0)])
def test_the_initial_standard_deviation_follows_the_bounding(bounding, sigma):
    """tanh onto [−20, 2] starts σ near e^(−9); clamping starts it near 1 (the JAX recipes)."""
    torch.manual_seed(0)
    actor = Actor(20, 4, [64, 64], num_tasks=3, init="he", log_std_bounding=bounding)
    obs = torch.cat([torch.randn(100, 17), torch.eye(3)[torch.arange(100) % 3]], -1)
    _, log_std = actor.distribution(obs)
    assert log_std.exp().mean().item() == pytest.approx(sigma, rel=0.05)
    wide = Actor(20, 4, [64], num_tasks=3, log_std_bounding="clamp", log_std_bounds=(-1, 0.5))
    with torch.no_grad():
        wide.net.layers[-1].bias.fill_(100.0)
    assert torch.all(wide.distribution(obs)[1] == 0.5)  # clipped to the upper bound


def test_adam_epsilon_reaches_both_optimizers_and_checkpoints(tmp_path):
    model = make_model(policy_kwargs={"net_arch": [16], "adam_eps": 1e-5}, max_grad_norm=1.0)
    for network in (model.actor, model.critic):
        assert network.optimizer.defaults["eps"] == 1e-5
    model.learn(90)
    from mtrl.agents.mtsac import MTSAC

    loaded = MTSAC.load(model.save(tmp_path / "m.pt"))
    assert loaded.critic.optimizer.defaults["eps"] == 1e-5
    assert loaded.critic_step.max_grad_norm == 1.0 and loaded.policy.num_tasks == TASKS


def test_bad_recipe_values_are_refused():
    with pytest.raises(ValueError, match="init='xavier'; valid: torch, he"):
        Critic(20, 4, [8], num_tasks=3, init="xavier")
    with pytest.raises(ValueError, match="log_std_bounding='sigmoid'; valid: tanh, clamp"):
        Actor(20, 4, [8], num_tasks=3, log_std_bounding="sigmoid")
    with pytest.raises(ValueError, match="max_grad_norm must be positive"):
        make_model(max_grad_norm=0.0)
