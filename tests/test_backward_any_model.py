"""The multi-task step on any nn.Module: "vmap" and "loop" give the method's weighted sum of K
backward passes, per-task heads get their own task's gradient, and the modes that need mtrl's
layers are refused with a message that names the ones that work."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

from mtrl.agents.networks import Critic
from mtrl.aggregators import make_aggregator
from mtrl.backward import MultiTaskBackward

TASKS, BATCH, FEATURES = 3, 6, 5


class PlainModel(nn.Module):
    """A torch trunk and a linear head per task; each sample picks its task's head with a
    one-hot, which works on a whole ``[K, B, ...]`` batch and on one task's slice alike."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(FEATURES, 16), nn.Tanh(), nn.Linear(16, 8), nn.Tanh())
        self.heads = nn.ModuleList(nn.Linear(8, 1) for _ in range(TASKS))

    def forward(self, x, onehot):
        features = self.trunk(x)
        every_head = torch.cat([head(features) for head in self.heads], dim=-1)
        return (every_head * onehot.unsqueeze(-2)).sum(dim=-1)


def task_losses(params, x, y, onehot, model, layout):
    losses = (functional_call(model, params, (x, onehot)) - y).square().mean(dim=-1)
    return losses, (losses, losses.sqrt())


def batch():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(TASKS, BATCH, FEATURES, generator=generator)
    y = torch.randn(TASKS, BATCH, generator=generator) * torch.tensor([[1.0], [3.0], [0.3]])
    return x, y, torch.eye(TASKS)


def one_step(model, method, mode, task_specific):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    step = MultiTaskBackward(
        model, optimizer, method, per_task_gradients=mode, task_specific=task_specific
    )
    result = step(task_losses, batch(), (model,))
    return result, {name: p.grad.clone() for name, p in model.named_parameters()}, step


@pytest.mark.parametrize("method", ["gradops", "pcgrad", "mean"])
@pytest.mark.parametrize("mode", ["vmap", "loop"])
def test_the_update_is_the_weighted_sum_of_k_backward_passes(method, mode):
    torch.manual_seed(0)
    model = PlainModel()
    seeded = {"seed": 0} if method == "pcgrad" else {}
    result, grads, step = one_step(
        model, make_aggregator(method, **seeded), mode, model.heads.parameters()
    )
    x, y, onehot = batch()
    losses, aux = task_losses(dict(model.named_parameters()), x, y, onehot, model, "grouped")
    torch.testing.assert_close(result.losses, losses.detach())
    # what the loss returned besides the losses comes back as it was
    assert isinstance(result.aux, tuple) and len(result.aux) == 2
    torch.testing.assert_close(result.aux[1], aux[1].detach())
    names = list(grads)
    per_task = [
        torch.autograd.grad(loss, list(model.parameters()), retain_graph=True) for loss in losses
    ]
    heads = {f"heads.{k}.{part}" for k in range(TASKS) for part in ("weight", "bias")}
    shared = [i for i, name in enumerate(names) if name not in heads]
    # the Gram matrix is that of the shared parameters' gradients alone
    jacobian = torch.stack([torch.cat([g[i].flatten() for i in shared]) for g in per_task])
    torch.testing.assert_close(result.gram, jacobian @ jacobian.T, rtol=1e-5, atol=1e-6)
    expected_weights = make_aggregator(method, **seeded).weights(result.gram)
    torch.testing.assert_close(result.weights, expected_weights)
    for index, name in enumerate(names):
        if name in heads:  # head k: task k's own gradient of the mean loss, whatever w
            task = int(name.split(".")[1])
            expected = per_task[task][index] / TASKS
        else:
            expected = sum(w * g[index] for w, g in zip(result.weights, per_task, strict=True))
        torch.testing.assert_close(grads[name], expected, rtol=1e-5, atol=1e-6, msg=name)
    # the per-layer Gram matrices are those of the modules holding the shared parameters
    assert step.layer_names == ["trunk.0", "trunk.2"]
    torch.testing.assert_close(result.layer_grams.sum(dim=0), result.gram)


def test_without_task_specific_every_parameter_is_shared():
    torch.manual_seed(0)
    model = PlainModel()
    result, _, step = one_step(model, make_aggregator("gradops"), "loop", None)
    assert step.layer_names == ["trunk.0", "trunk.2", *(f"heads.{k}" for k in range(TASKS))]
    # the heads' gradients, orthogonal between tasks, add to the Gram matrix's diagonal only
    headless, _, _ = one_step(model, make_aggregator("gradops"), "loop", model.heads.parameters())
    off_diagonal = ~torch.eye(TASKS, dtype=torch.bool)
    torch.testing.assert_close(result.gram[off_diagonal], headless.gram[off_diagonal])
    assert (result.gram.diagonal() > headless.gram.diagonal()).all()


@pytest.mark.parametrize("mode", ["auto", "grouped", "gram"])
def test_the_one_pass_modes_are_refused_for_a_plain_module(mode):
    model = PlainModel()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"mtrl's layers .*PlainModel.*'vmap' or 'loop'"):
        MultiTaskBackward(model, optimizer, make_aggregator("gradops"), per_task_gradients=mode)


def test_a_method_without_a_gram_matrix_takes_one_pass_on_a_plain_module():
    torch.manual_seed(0)
    model = PlainModel()
    result, grads, _ = one_step(model, make_aggregator("mean"), "none", model.heads.parameters())
    x, y, onehot = batch()
    losses, _ = task_losses(dict(model.named_parameters()), x, y, onehot, model, "grouped")
    expected = torch.autograd.grad(losses.mean(), list(model.parameters()))
    for (name, grad), reference in zip(grads.items(), expected, strict=True):
        torch.testing.assert_close(grad, reference, msg=name)
    assert result.gram is None


def test_task_specific_parameters_must_be_the_models_and_not_listed_twice():
    model = PlainModel()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    method = make_aggregator("gradops")
    with pytest.raises(ValueError, match="not the model's own"):
        MultiTaskBackward(
            model, optimizer, method, "vmap", task_specific=[nn.Parameter(torch.ones(1))]
        )
    critic = Critic(4, 2, (8,), num_tasks=TASKS, task_layers=[1])
    with pytest.raises(ValueError, match=r"lists its own task-specific parameters"):
        MultiTaskBackward(
            critic, optimizer, method, "vmap", task_specific=list(critic.parameters())[:1]
        )
