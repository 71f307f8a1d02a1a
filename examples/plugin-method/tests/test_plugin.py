"""The package's method and network keep mtrl's promises (mtrl.testing), and do what they say."""

from importlib import metadata

import pytest
import torch
from mtrl_plugin_example import CosineSoftmax, TaskGatedMLP

from mtrl.testing import check_method, check_network


def test_the_method_passes_mtrls_checks():
    report = check_method(CosineSoftmax(temperature=0.25))
    assert "scale invariance" in report.checked


def test_the_network_passes_mtrls_checks():
    check_network(TaskGatedMLP, {"gate_std": 0.5})


def test_the_task_against_the_others_gets_the_largest_weight():
    gradients = torch.tensor([[1.0, 0.2], [0.9, -0.1], [-1.0, 0.3]])
    weights = CosineSoftmax(temperature=0.25).weights(gradients @ gradients.T)
    assert weights.argmax() == 2
    torch.testing.assert_close(weights.sum(), torch.tensor(1.0))


def test_a_high_temperature_gives_the_mean():
    gradients = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
    weights = CosineSoftmax(temperature=1e6).weights(gradients @ gradients.T)
    torch.testing.assert_close(weights, torch.full((4,), 0.25), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("inf")])
def test_a_temperature_that_is_not_positive_is_refused(temperature):
    with pytest.raises(ValueError, match="temperature must be a positive number"):
        CosineSoftmax(temperature=temperature)


def installed() -> bool:
    try:
        metadata.distribution("mtrl-plugin-example")
    except metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.skipif(not installed(), reason="the package is not installed")
def test_mtrl_finds_both_by_name_once_installed():
    from mtrl.agents.architectures import build
    from mtrl.aggregators import available, make_aggregator

    assert "cosine-softmax" in available()
    assert make_aggregator("cosine-softmax", temperature=2.0) == CosineSoftmax(temperature=2.0)
    network = build(
        "gated-mlp", 4, 2, members=1, num_tasks=3, hidden=[8], init="he", head_bound=1e-3
    )
    assert isinstance(network, TaskGatedMLP)
