"""The update never reads a tensor back to the host nor takes data from it, so on a GPU it never
waits for either, and it can be captured.

These tests run a whole update, batch sampling included, under :func:`mtrl._host_watch.watch_host`:
the host's reads of tensor values, the operators that make a device wait, and the tensors made
from host data. CPU tensors stand in for the device's.
"""

import pytest
import torch

from mtrl._host_watch import host_traffic, kinds, watch_host
from mtrl.aggregators import Mean, available
from tests.agents.test_architectures import NETWORKS, SMALL
from tests.agents.test_mtsac import make_model

# Aligned-MTL needs the eigenvalues of the Gram matrix: eigh checks them, once per network.
BY_DESIGN = {"aligned-mtl": {"aten::_linalg_eigh"}}


def trained(**settings):
    """A model past its warm-up, so that lazily made state (optimizer moments, the methods'
    own) exists before the watched update."""
    model = make_model(**settings)
    model.learn(66)  # two updates after the warm-up of 60 steps
    return model


@pytest.mark.parametrize("method", available())
def test_update_reads_nothing_back_and_takes_nothing_from_the_host(method):
    found = host_traffic(trained(aggregator=method))
    if method in BY_DESIGN:
        assert kinds(found) == BY_DESIGN[method], found
    else:
        assert found == []


@pytest.mark.parametrize("network", NETWORKS)
def test_every_network_updates_without_the_host(network):
    policy = {"net_arch": [16, 16], "network": network, "network_options": SMALL.get(network, {})}
    model = trained(aggregator="gradops", policy_kwargs=policy)
    assert model.policy.network == network
    assert host_traffic(model) == []


# BRC's recipe on the small model: uniform batches, categorical critics, normalised rewards.
BRC_SETTINGS = {
    "batch_sampling": "uniform",
    "critic_loss": "categorical",
    "categorical_atoms": 11,
    "reward_normalization": "per_task",
    "temperature": "shared",
}


@pytest.mark.parametrize("method", ["gradops", "mean"])
def test_a_uniform_batch_is_drawn_and_trained_on_without_the_host(method):
    """The counts of each task drawn, the row weights and the normalised rewards all stay on
    the device."""
    assert host_traffic(trained(aggregator=method, **BRC_SETTINGS)) == []


@pytest.mark.parametrize(
    "settings",
    [
        {"per_task_gradients": "vmap"},
        {"per_task_gradients": "gram", "gram_update": "backward"},
        {"policy_kwargs": {"net_arch": [32, 32], "optimizer": "adatask", "multi_head": True}},
    ],
    ids=["vmap", "gram-first-backward", "adatask-multi-head"],
)
def test_other_paths_read_nothing_back(settings):
    model = trained(**settings)
    batch = model.replay_buffer.sample_tasks(8)
    assert host_traffic(model, batch) == []
    # a non-finite batch is skipped on the device too
    poisoned = batch._replace(rewards=torch.full_like(batch.rewards, torch.nan))
    assert host_traffic(model, poisoned) == []
    assert int(model.skipped_updates["critic"]) == 1


def test_the_watch_sees_each_kind_of_wait_and_of_host_data():
    matrix = torch.eye(3, dtype=torch.float64)
    with watch_host() as found:
        torch.linalg.eigh(matrix)
        torch.linalg.solve(matrix, matrix)
        torch.linalg.solve_ex(matrix, matrix)  # no check: no wait
        matrix.sum() * 2.0  # a Python number is an argument of the kernel, not host data
        torch.full((3,), 0.5).cumprod(0)  # made on the device: no host data either
    assert kinds(found) == {"aten::_linalg_eigh", "aten::_linalg_check_errors"}
    cases = {
        "Tensor.item": lambda: matrix.sum().item(),
        "Tensor.__bool__": lambda: bool(matrix.sum() > 0),
        "aten::nonzero": lambda: matrix.nonzero(),
        "aten::lift_fresh": lambda: torch.tensor([1.0, 0.5], device=matrix.device),
        "aten::_pin_memory": lambda: torch.ones(3).pin_memory(),
    }
    for kind, action in cases.items():
        with watch_host() as found:
            action()
        assert kind in kinds(found), kind
        assert "test_no_host_reads.py" in found[0]  # says where it happened


def test_a_method_that_builds_its_weights_from_a_list_is_caught(monkeypatch):
    def from_a_list(self, gram, losses=None):  # the mean's weights, copied from the host
        size = gram.shape[0]
        return torch.tensor([1.0 / size] * size, dtype=gram.dtype, device=gram.device)

    monkeypatch.setattr(Mean, "weights", from_a_list)
    model = trained(aggregator="mean")
    found = host_traffic(model)
    assert kinds(found) == {"aten::lift_fresh"}
    assert len(found) == 2  # once per network
    assert all("in from_a_list" in line for line in found)
