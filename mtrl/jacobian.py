"""Per-task gradients of shared parameters, all K of them in one vectorised pass.

A multi-task batch has a leading task axis ``[K, B, ...]`` and task k's loss depends only on
task k's rows, so ``torch.func.vmap(grad(loss))`` over that axis yields every task's gradient at
close to the cost of one ordinary backward pass: each layer's weight gradient becomes one batched
matrix product instead of K separate backward passes through the whole graph.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

# loss_fn(params, *task_inputs, *shared_inputs) -> (scalar loss of one task, a tensor or a tuple
# of tensors carried along, such as the loss itself for logging)
TaskLoss = Callable[..., tuple[Tensor, Any]]


def per_task_gradients(
    loss_fn: TaskLoss,
    params: Mapping[str, Tensor],
    task_inputs: tuple[Tensor, ...],
    shared_inputs: tuple[Any, ...] = (),
) -> tuple[dict[str, Tensor], Any]:
    """Gradients of each task's loss with respect to ``params``, in one vmapped pass.

    Args:
        loss_fn: a pure function of one task's slice of the inputs (no ``.item()``, no
            data-dependent Python branches), returning ``(loss, aux)``.
        params: the parameters to differentiate, e.g. ``dict(module.named_parameters())``.
        task_inputs: tensors with a leading task axis K; ``loss_fn`` sees one slice of each.
        shared_inputs: anything passed unchanged to every task (frozen networks, constants).

    Returns:
        ``(gradients, aux)``: each gradient has shape ``[K, *param.shape]``, ``aux`` is stacked
        along a leading K axis.
    """
    detached = {name: p.detach() for name, p in params.items()}
    in_dims = (None, *(0,) * len(task_inputs), *(None,) * len(shared_inputs))
    per_task = torch.func.vmap(torch.func.grad(loss_fn, has_aux=True), in_dims=in_dims)
    return per_task(detached, *task_inputs, *shared_inputs)


def per_task_gradients_loop(
    loss_fn: TaskLoss,
    params: Mapping[str, Tensor],
    task_inputs: tuple[Tensor, ...],
    shared_inputs: tuple[Any, ...] = (),
) -> tuple[dict[str, Tensor], Any]:
    """The same result from K separate backward passes, the way older code bases compute it.

    This is the reference that tests and benchmarks compare :func:`per_task_gradients` against;
    training never uses it.
    """
    names = list(params)
    leaves = [params[name].detach().requires_grad_(True) for name in names]
    gradients, auxes = [], []
    for task in range(task_inputs[0].shape[0]):
        inputs = tuple(x[task] for x in task_inputs)
        loss, aux = loss_fn(dict(zip(names, leaves, strict=True)), *inputs, *shared_inputs)
        gradients.append(torch.autograd.grad(loss, leaves))
        auxes.append(aux)
    stacked = {name: torch.stack([g[i] for g in gradients]) for i, name in enumerate(names)}
    if isinstance(auxes[0], Tensor):
        return stacked, torch.stack(auxes)
    return stacked, type(auxes[0])(torch.stack(parts) for parts in zip(*auxes, strict=True))
