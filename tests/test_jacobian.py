import torch
from torch import nn
from torch.func import functional_call

from mtrl.jacobian import per_task_gradients, per_task_gradients_loop


def regression_loss(params, inputs, targets, scale, model):
    predictions = functional_call(model, params, (inputs,)).squeeze(-1)
    loss = scale * (predictions - targets).square().mean()
    return loss, (loss, predictions.mean())


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
        regression_loss(params, inputs[1], targets[1], 2.0, model)[0], list(params.values())
    )
    torch.testing.assert_close(fast["0.weight"][1], single[0], rtol=1e-5, atol=1e-6)


def test_parameters_get_no_gradient_written():
    model = nn.Linear(3, 1)
    params = dict(model.named_parameters())
    per_task_gradients(
        regression_loss, params, (torch.randn(2, 4, 3), torch.randn(2, 4), torch.ones(2)), (model,)
    )
    assert all(p.grad is None for p in model.parameters())
