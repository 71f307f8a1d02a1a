"""The shared layer normalisation: it normalises as torch's does, and its scale and shift get
each task's gradient from one grouped pass, stored or Gram-first, as K backward passes give it."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor
from torch.func import functional_call
from torch.nn import functional

from mtrl.agents.layer_norm import EnsembleLayerNorm
from mtrl.agents.networks import EnsembleLinear, MultiTaskNetwork
from mtrl.jacobian import per_task_gradients_grouped, per_task_gradients_loop
from tests.test_backward import (
    assert_close_in_scale,
    assert_every_way_gives_the_update_of_k_backward_passes,
)

TASKS, BATCH, FEATURES, WIDTH, MEMBERS = 3, 4, 5, 8, 2


class NormalisedRegressor(MultiTaskNetwork):
    """Dense → LayerNorm → ReLU → Dense, an ensemble of two, every parameter shared."""

    def __init__(self) -> None:
        super().__init__()
        self.first = EnsembleLinear(MEMBERS, 1, FEATURES, WIDTH)
        self.norm = EnsembleLayerNorm(MEMBERS, WIDTH)
        self.head = EnsembleLinear(MEMBERS, 1, WIDTH, 1)
        with torch.no_grad():  # away from ones and zeros, so that both enter the gradients
            self.norm.weight.normal_(1.0, 0.5)
            self.norm.bias.normal_(0.0, 0.5)

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        h = x.reshape(1, -1, FEATURES).expand(MEMBERS, -1, -1)
        h = torch.relu(self.norm(self.first(h, None, "mixed", 1)))
        return self.head(h, None, "mixed", 1).view(MEMBERS, *lead)

    def shared_layers(self) -> dict:
        return {"first": self.first, "norm": self.norm, "head": self.head}


def squared_errors(params, x: Tensor, y: Tensor, model: NormalisedRegressor, layout: str):
    losses = (functional_call(model, params, (x,)) - y).square().mean(dim=-1).sum(dim=0)
    return losses, losses


def case():
    torch.manual_seed(0)
    model = NormalisedRegressor().double()
    x = torch.randn(TASKS, BATCH, FEATURES, dtype=torch.float64)
    y = torch.randn(TASKS, BATCH, dtype=torch.float64)
    return model, (x, y), (model,)


def test_it_normalises_as_torch_layer_norm():
    norm = EnsembleLayerNorm(MEMBERS, WIDTH).double()
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    h = 3 + 2 * torch.randn(MEMBERS, 6, WIDTH, dtype=torch.float64)
    for member in range(MEMBERS):
        expected = functional.layer_norm(
            h[member], (WIDTH,), norm.weight[member, 0], norm.bias[member, 0], eps=1e-6
        )
        torch.testing.assert_close(norm(h)[member], expected)


def test_one_grouped_pass_gives_each_task_its_gradient():
    model, inputs, shared = case()
    params = dict(model.named_parameters())
    reference, _ = per_task_gradients_loop(squared_errors, params, inputs, shared)
    stored, own, _ = per_task_gradients_grouped(squared_errors, model, params, inputs, shared)
    assert set(stored) == set(params) and not own
    for name in ("norm.weight", "norm.bias"):
        assert reference[name].abs().max() > 0, name
    for name, expected in reference.items():
        assert_close_in_scale(stored[name], expected, name)


@pytest.mark.parametrize("method", ["gradops", "pcgrad", "mean"])
def test_every_gradient_mode_gives_the_update_of_k_backward_passes(method):
    model, inputs, shared = case()
    assert_every_way_gives_the_update_of_k_backward_passes(
        model, squared_errors, inputs, shared, method, gram=True
    )


def test_gram_first_pieces_equal_the_stored_gradients():
    """The layer's own Gram matrices and weighted update, from its inputs and output gradients,
    against those of its stored per-task gradients."""
    torch.manual_seed(1)
    norm = EnsembleLayerNorm(MEMBERS, WIDTH).double()
    with torch.no_grad():
        norm.weight.normal_()
    inputs = torch.randn(MEMBERS, TASKS * BATCH, WIDTH, dtype=torch.float64)
    output_grads = torch.randn(MEMBERS, TASKS * BATCH, WIDTH, dtype=torch.float64)
    stored = norm.per_task_gradients(inputs, output_grads, TASKS)
    flat = torch.cat([g.reshape(TASKS, -1) for g in stored.values()], dim=1)
    torch.testing.assert_close(norm.task_gram(inputs, output_grads, TASKS, (1, 1)), flat @ flat.T)
    torch.testing.assert_close(norm.task_gram_by_rows(inputs, output_grads, TASKS), flat @ flat.T)
    weights = torch.tensor([0.2, -1.0, 3.0], dtype=torch.float64)
    combined = norm.combined_gradients(inputs, output_grads, weights.repeat_interleave(BATCH))
    for name, grads in stored.items():
        expected = (weights.view(-1, 1, 1, 1) * grads).sum(dim=0)
        torch.testing.assert_close(combined[name], expected)
