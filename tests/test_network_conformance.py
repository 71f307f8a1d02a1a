"""mtrl.testing.check_network, the network contract: every architecture of mtrl passes it, and a
network that breaks one promise fails it, naming that promise."""

from __future__ import annotations

import random

import pytest
import torch
from torch import Tensor, nn

from mtrl.agents.architectures import ARCHITECTURES, TaskTable
from mtrl.agents.networks import EnsembleLinear
from mtrl.testing import (
    CONSTRUCTOR,
    EVERY_MODE,
    GROUPED,
    LAYOUTS,
    NETWORK_DEVICES,
    NETWORK_HOST,
    NETWORK_SEED,
    OWN_TASK,
    SHARED_LAYERS,
    NetworkReport,
    check_network,
)
from tests.agents.test_architectures import SMALL
from tests.conftest import TEST_DEVICE


@pytest.mark.parametrize("network", list(ARCHITECTURES))
def test_every_architecture_keeps_the_network_contract(network):
    report = check_network(ARCHITECTURES[network], SMALL.get(network, {}))
    assert isinstance(report, NetworkReport) and len(report.checked) >= 9


@pytest.mark.cuda
@pytest.mark.parametrize("network", list(ARCHITECTURES))
def test_every_architecture_gives_the_same_output_on_the_device(network):
    report = check_network(ARCHITECTURES[network], SMALL.get(network, {}), devices=[TEST_DEVICE])
    assert NETWORK_DEVICES in report.checked


class Small(nn.Module):
    """A network that keeps the contract: a shared layer, a task table added to its output,
    and a shared head."""

    def __init__(self, state_dim, out_dim, *, members, num_tasks, hidden, init, head_bound):
        super().__init__()
        self.members = members
        self.first = EnsembleLinear(members, 1, state_dim, hidden[0])
        self.table = TaskTable(members, num_tasks, hidden[0], std=0.1)
        self.head = EnsembleLinear(members, 1, hidden[0], out_dim)

    def hidden(self, state: Tensor, task_onehot: Tensor, layout: str) -> Tensor:
        h = state.reshape(1, -1, state.shape[-1]).expand(self.members, -1, -1)
        return torch.relu(self.first(h, task_onehot, layout, 1)) + self.table(task_onehot)

    def forward(self, state: Tensor, task_onehot: Tensor, layout: str = "mixed") -> Tensor:
        out = self.head(self.hidden(state, task_onehot, layout), task_onehot, layout, 1)
        return out.view(self.members, *state.shape[:-1], out.shape[-1])

    def shared_layers(self) -> dict[str, nn.Module]:
        return {"first": self.first, "head": self.head}


class Unlisted(Small):
    def shared_layers(self) -> dict[str, nn.Module]:
        return {"head": self.head}


class DoubledLinear(EnsembleLinear):
    def per_task_gradients(self, inputs, output_grads, tasks):
        return {
            name: 2 * g
            for name, g in super().per_task_gradients(inputs, output_grads, tasks).items()
        }


class WrongPerTaskGradients(Small):
    def __init__(self, state_dim, out_dim, **kwargs):
        super().__init__(state_dim, out_dim, **kwargs)
        self.first = DoubledLinear(kwargs["members"], 1, state_dim, kwargs["hidden"][0])


class HalvedCombination(EnsembleLinear):
    def combined_gradients(self, inputs, output_grads, row_weights):
        return {
            name: g / 2
            for name, g in super().combined_gradients(inputs, output_grads, row_weights).items()
        }


class WrongCombinedGradients(Small):
    def __init__(self, state_dim, out_dim, **kwargs):
        super().__init__(state_dim, out_dim, **kwargs)
        self.first = HalvedCombination(kwargs["members"], 1, state_dim, kwargs["hidden"][0])


class TableOfAllTasks(Small):
    """Every row reads every task's row of the table."""

    def hidden(self, state, task_onehot, layout):
        h = state.reshape(1, -1, state.shape[-1]).expand(self.members, -1, -1)
        return torch.relu(self.first(h, task_onehot, layout, 1)) + self.table.weight.sum(1, True)


class MixedDiffers(Small):
    def forward(self, state, task_onehot, layout="mixed"):
        return super().forward(state, task_onehot, layout) + (layout == "mixed")


class ReadsTheHost(Small):
    def forward(self, state, task_onehot, layout="mixed"):
        out = super().forward(state, task_onehot, layout)
        return out * float(out.abs().max() > 0)


class Unseeded(Small):
    def __init__(self, state_dim, out_dim, **kwargs):
        super().__init__(state_dim, out_dim, **kwargs)
        with torch.no_grad():
            self.head.bias.fill_(random.random())


class NoArguments(nn.Module):
    def __init__(self, state_dim, out_dim, *, members, width: int = 3):
        super().__init__()


def test_a_network_that_keeps_the_contract_passes():
    report = check_network(Small)
    assert EVERY_MODE in report.checked


@pytest.mark.parametrize(
    ("network", "failure"),
    [
        (NoArguments, f"{CONSTRUCTOR} fails: (state_dim, out_dim, *, members"),
        (MixedDiffers, f"{LAYOUTS} fails: the mixed layout"),
        (Unlisted, f"{SHARED_LAYERS} fails: ['first.weight', 'first.bias']"),
        (WrongPerTaskGradients, f"{GROUPED} fails: critic: net.first.weight differs"),
        (TableOfAllTasks, f"{OWN_TASK} fails: critic: entries of net.table.weight"),
        (ReadsTheHost, f"{NETWORK_HOST} fails"),
        (WrongCombinedGradients, f"{EVERY_MODE} fails: critic, gram: "),
        (Unseeded, f"{NETWORK_SEED} fails: head.bias differs"),
    ],
)
def test_a_network_that_breaks_a_promise_fails_naming_it(network, failure):
    with pytest.raises(AssertionError) as error:
        check_network(network)
    assert str(error.value).startswith(f"{network.__name__}: {failure}"), str(error.value)


def test_the_check_leaves_torchs_generator_as_it_was():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    check_network(Small)
    assert torch.equal(torch.rand(3), expected)
