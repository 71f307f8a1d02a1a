"""The supervised example (examples/supervised_gradops.py): it runs, its Gram-first step holds no
K per-task gradients of a layer, each head gets its own task's gradient alone, and the update
is the method's weighted sum of K backward passes."""

from __future__ import annotations

import pytest
import torch

from examples import supervised_gradops as example
from mtrl.aggregators import make_aggregator


@pytest.fixture(autouse=True)
def one_thread():
    """Products this small gain nothing from intra-op threads on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def batch(seed: int = 0):
    return example.Tasks.make().sample(example.BATCH, torch.Generator().manual_seed(seed))


def gradients_after_one_step(model, method: str, x, y):
    """The gradients one step writes (a zero learning rate leaves the weights as they were),
    and its result."""
    step = example.make_step(model, method, lr=0.0)
    result = step(example.task_losses, (x, y), (model,))
    return {name: p.grad.clone() for name, p in model.named_parameters()}, result


def test_the_example_runs_and_says_what_it_shows(capsys):
    results = example.main(["--steps", "3"])
    out = capsys.readouterr().out
    assert "per_task_gradients='gram'" in out
    assert "allocated in a step: 0" in out
    assert set(results) == {"mean", "gradops"}
    for errors in results.values():
        assert errors.shape == (example.TASKS,) and torch.isfinite(errors).all()


def test_training_lowers_every_tasks_error():
    _, before = example.train("gradops", steps=0)
    _, after = example.train("gradops", steps=60)
    assert (after < before).all(), (before, after)


def test_the_step_is_gram_first_and_never_holds_k_gradients_of_a_layer():
    model = example.MultiHeadRegressor()
    assert example.make_step(model, "gradops").gradients == "gram"
    seen, limit = example.largest_allocation(model)
    assert seen == [], seen
    # the same watch sees the stored per-task gradients [K, *weight] of the grouped mode
    seen, _ = example.largest_allocation(model, mode="grouped")
    assert any(shape[0] * shape[-2] * shape[-1] >= limit for _, shape in seen), seen


def test_each_head_gets_its_own_tasks_gradient_only():
    model = example.MultiHeadRegressor()
    assert example.head_gradient_error(model) < 1e-5
    x, y = batch()
    grads, _ = gradients_after_one_step(model, "gradops", x, y)
    moved = y.clone()
    moved[0] += 1.0  # only task 0's targets change
    moved_grads, _ = gradients_after_one_step(model, "gradops", x, moved)
    for name in model.heads():
        assert not torch.allclose(moved_grads[name][:, 0], grads[name][:, 0])
        torch.testing.assert_close(moved_grads[name][:, 1:], grads[name][:, 1:])


@pytest.mark.parametrize("method", ["gradops", "mean", "mgda"])
def test_the_update_is_the_weighted_sum_of_k_backward_passes(method):
    model = example.MultiHeadRegressor()
    x, y = batch(1)
    grads, result = gradients_after_one_step(model, method, x, y)
    weights = result.weights
    if method == "mean":
        torch.testing.assert_close(weights, torch.full((example.TASKS,), 1 / example.TASKS))
    heads = model.heads()
    shared = {n: p for n, p in model.named_parameters() if n not in heads}
    losses, _ = example.task_losses(dict(model.named_parameters()), x, y, model, "grouped")
    per_task = [
        torch.autograd.grad(loss, list(shared.values()), retain_graph=True) for loss in losses
    ]
    for index, name in enumerate(shared):
        expected = sum(w * g[index] for w, g in zip(weights, per_task, strict=True))
        scale = float(expected.abs().max())
        torch.testing.assert_close(grads[name], expected, rtol=1e-4, atol=1e-5 * scale, msg=name)
    # the weights are the method's for the Gram matrix of those K gradients
    jacobian = torch.stack([torch.cat([g.flatten() for g in grads_k]) for grads_k in per_task])
    gram = (jacobian @ jacobian.T).double()
    torch.testing.assert_close(result.gram.double(), gram, rtol=1e-4, atol=1e-6 * float(gram.max()))
    expected_weights = make_aggregator(method).weights(gram)
    torch.testing.assert_close(weights.double(), expected_weights, rtol=1e-3, atol=1e-4)
