import pytest
import torch
from torch import nn
from torch.func import functional_call

from mtrl import jacobian
from mtrl.agents.networks import Critic
from mtrl.jacobian import (
    combine,
    per_task_gradients,
    per_task_gradients_grouped,
    per_task_gradients_loop,
    task_gram,
)


def regression_loss(params, inputs, targets, scale, model, layout):
    """One task's loss (layout "single") or every task's (layout "grouped", a leading K axis)."""
    predictions = functional_call(model, params, (inputs,)).squeeze(-1)
    loss = scale * (predictions - targets).square().mean(dim=-1)
    return loss, (loss, predictions.mean(dim=-1))


def test_vectorised_gradients_equal_one_backward_pass_per_task():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 1))
    inputs, targets = torch.randn(4, 32, 5), torch.randn(4, 32)
    scale = torch.tensor([1.0, 2.0, 0.5, 3.0])
    params = dict(model.named_parameters())
    args = (regression_loss, params, (inputs, targets, scale), (model,))
    fast, (fast_losses, fast_means) = per_task_gradients(*args)
    slow, (slow_losses, slow_means) = per_task_gradients_loop(*args)
    for name in params:
        assert fast[name].shape == (4, *params[name].shape)
        torch.testing.assert_close(fast[name], slow[name], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast_losses, slow_losses)
    torch.testing.assert_close(fast_means, slow_means)
    # and each task's gradient is that task's own: task 1 is task 0's loss with another scale
    single = torch.autograd.grad(
        regression_loss(params, inputs[1], targets[1], torch.tensor(2.0), model, "single")[0],
        list(params.values()),
    )
    torch.testing.assert_close(fast["0.weight"][1], single[0], rtol=1e-5, atol=1e-6)


def test_parameters_get_no_gradient_written():
    model = nn.Linear(3, 1)
    params = dict(model.named_parameters())
    per_task_gradients(
        regression_loss, params, (torch.randn(2, 4, 3), torch.randn(2, 4), torch.ones(2)), (model,)
    )
    assert all(p.grad is None for p in model.parameters())


def q_loss(params, obs, actions, targets, critic, layout):
    q_values = functional_call(critic, params, (obs, actions), {"layout": layout})
    loss = (q_values - targets).square().mean(dim=-1).sum(dim=0)
    return loss, loss


@pytest.mark.parametrize("task_layers", [(), (1,), (0, 3)])
def test_grouped_pass_vmap_and_loop_agree(task_layers):
    torch.manual_seed(0)
    tasks, batch = 4, 16
    critic = Critic(6 + tasks, 2, [32, 32, 32], num_tasks=tasks, task_layers=task_layers)
    obs = torch.cat(
        [torch.randn(tasks, batch, 6), torch.eye(tasks)[:, None].expand(-1, batch, -1)], -1
    )
    inputs = (obs, torch.rand(tasks, batch, 2) * 2 - 1, torch.randn(tasks, batch))
    params = dict(critic.named_parameters())
    vmapped, vmapped_losses = per_task_gradients(q_loss, params, inputs, (critic,))
    looped, looped_losses = per_task_gradients_loop(q_loss, params, inputs, (critic,))
    shared, own, grouped_losses = per_task_gradients_grouped(
        q_loss, critic, params, inputs, (critic,)
    )
    torch.testing.assert_close(vmapped_losses, looped_losses)
    torch.testing.assert_close(grouped_losses.detach(), looped_losses)
    own_names = {f"net.{name}" for name in critic.net.task_specific_parameters()}
    assert set(shared) | set(own) == set(params) and not set(shared) & own_names
    for name in params:
        torch.testing.assert_close(vmapped[name], looped[name], rtol=1e-5, atol=1e-6)
        if name in own_names:
            torch.testing.assert_close(own[name], looped[name].mean(0), rtol=1e-5, atol=1e-6)
        else:
            torch.testing.assert_close(shared[name], looped[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("row_blocks_from", [0, jacobian.ROW_BLOCKS_FROM])
def test_gram_and_combination_read_member_major_gradients_without_copies(
    row_blocks_from, monkeypatch
):
    """Both ways of forming the Gram matrix (whole parameters, row blocks) give J Jᵀ."""
    monkeypatch.setattr(jacobian, "ROW_BLOCKS_FROM", row_blocks_from)
    torch.manual_seed(0)
    stored = torch.randn(2, 5, 3, 4)  # [members, K, ...]: how the grouped pass writes them
    gradient = stored.transpose(0, 1)  # the [K, members, ...] view every caller sees
    flat = gradient.reshape(5, -1)
    weights = torch.randn(5)
    torch.testing.assert_close(task_gram(gradient), flat @ flat.T)
    torch.testing.assert_close(combine(weights, gradient), (weights @ flat).view(2, 3, 4))
    contiguous = gradient.contiguous()  # the vmap and loop paths give ordinary tensors
    torch.testing.assert_close(task_gram(contiguous), flat @ flat.T)
    torch.testing.assert_close(combine(weights, contiguous), (weights @ flat).view(2, 3, 4))
