"""Per-task gradients of shared parameters, all K of them at about the cost of one backward pass.

A multi-task batch has a leading task axis ``[K, B, ...]`` and task k's loss depends only on
task k's rows. Two ways exploit that:

- :func:`per_task_gradients` vmaps ``torch.func.grad`` over the task axis;
- :func:`per_task_gradients_grouped` runs one ordinary forward and backward pass over the whole
  batch and forms each layer's per-task weight gradients from the layer's inputs and output
  gradients grouped by task (the per-sample-gradient trick, summed per task).

:func:`per_task_gradients_loop` is the way older code bases do it, K backward passes through
the whole graph; it is kept as the reference that tests and benchmarks compare against.

Loss functions follow one convention: ``loss_fn(params, *task_inputs, *shared_inputs, layout)``
returns ``(losses, aux)``. With ``layout="single"`` the task inputs are one task's slice and
``losses`` a scalar; with ``layout="grouped"`` they are the whole ``[K, B, ...]`` batch and
``losses`` has shape ``[K]``. ``aux`` is a tensor or a tuple of tensors shaped like ``losses``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_map_only

TaskLoss = Callable[..., tuple[Tensor, Any]]


def per_task_gradients(
    loss_fn: TaskLoss,
    params: Mapping[str, Tensor],
    task_inputs: tuple[Tensor, ...],
    shared_inputs: tuple[Any, ...] = (),
) -> tuple[dict[str, Tensor], Any]:
    """Gradients of each task's loss with respect to ``params``, in one vmapped pass.

    Returns ``(gradients, aux)``: each gradient has shape ``[K, *param.shape]``, ``aux`` is
    stacked along a leading K axis. ``loss_fn`` must be pure (no ``.item()``, no Python branches
    on tensor values).
    """
    detached = {name: p.detach() for name, p in params.items()}
    in_dims = (None, *(0,) * len(task_inputs), *(None,) * (len(shared_inputs) + 1))
    per_task = torch.func.vmap(torch.func.grad(loss_fn, has_aux=True), in_dims=in_dims)
    return per_task(detached, *task_inputs, *shared_inputs, "single")


@dataclasses.dataclass
class GroupedPass:
    """One forward and backward pass over a grouped ``[K, B, ...]`` batch.

    ``layers`` holds, for each shared layer (by its label) not consumed during the pass, the
    layer, its inputs and the gradients of ``Σ_k L_k`` with respect to its outputs,
    ``[members, K·B, ...]`` with task k's rows together: task k's rows of the output gradients
    are those of its own loss, so each shared layer can form per-task gradients from them.
    ``own`` holds the gradients of the mean loss with respect to the task-specific parameters
    (each task reaches only its own copy).
    """

    losses: Tensor
    aux: Any
    layers: dict[str, tuple[nn.Module, Tensor, Tensor]]
    own: dict[str, Tensor]


def grouped_pass(
    loss_fn: TaskLoss,
    network: nn.Module,
    params: Mapping[str, Tensor],
    task_inputs: tuple[Tensor, ...],
    shared_inputs: tuple[Any, ...] = (),
    retain_graph: bool = False,
    consume: Callable[[str, nn.Module, Tensor, Tensor], bool] | None = None,
) -> GroupedPass:
    """Run ``loss_fn`` once on the grouped batch and backpropagate ``Σ_k L_k`` once, through
    the shared layers to the task-specific parameters.

    Each shared layer's output gradients are caught as the backward pass reaches them (a
    tensor hook), so that neither the layers' outputs nor the gradients that went through are
    kept for the pass's sake. ``consume(label, layer, inputs, output_grads)`` sees each layer as
    soon as its gradients arrive; where it returns True the layer has served and is not kept.

    ``network`` lists its shared layers (``shared_layers()``) and task-specific parameters
    (``task_specific_parameters()``), see :class:`mtrl.agents.networks.MultiTaskNetwork`.
    """
    watched = network.shared_layers()
    labels = {layer: label for label, layer in watched.items()}
    layers: dict[str, tuple[nn.Module, Tensor, Tensor | None]] = {}
    gradient_hooks = []  # removed after this pass: a second pass through the graph is not ours

    def arrived(label: str, output_grads: Tensor) -> None:
        layer, inputs, _ = layers[label]
        if consume is not None and consume(label, layer, inputs, output_grads):
            del layers[label]
        else:
            layers[label] = (layer, inputs, output_grads)

    def watch(module: nn.Module, args: tuple, output: Tensor) -> None:
        label = labels[module]
        if label in layers:
            raise RuntimeError("a layer ran twice in one loss: per-task gradients are ambiguous")
        # inputs are data from here on: keep no graph alive through them
        layers[label] = (module, args[0].detach(), None)
        gradient_hooks.append(output.register_hook(lambda grad: arrived(label, grad)))

    handles = [layer.register_forward_hook(watch) for layer in watched.values()]
    try:
        losses, aux = loss_fn(params, *task_inputs, *shared_inputs, "grouped")
    finally:
        for handle in handles:
            handle.remove()
    own_names = list(network.task_specific_parameters())
    targets = [params[n] for n in own_names]
    # The pass must reach every shared layer: each one's smallest parameter (its bias, whose
    # gradient is a sum of the output gradients) is a target too.
    targets += [min(layer.parameters(), key=lambda p: p.numel()) for layer, _, _ in layers.values()]
    try:
        grads = torch.autograd.grad(losses.sum(), targets, retain_graph=retain_graph)
    finally:
        for hook in gradient_hooks:
            hook.remove()
    tasks = losses.shape[0]
    own = {name: grad / tasks for name, grad in zip(own_names, grads, strict=False)}
    return GroupedPass(losses, aux, layers, own)


def per_task_gradients_grouped(
    loss_fn: TaskLoss,
    network: nn.Module,
    params: Mapping[str, Tensor],
    task_inputs: tuple[Tensor, ...],
    shared_inputs: tuple[Any, ...] = (),
) -> tuple[dict[str, Tensor], dict[str, Tensor], Any]:
    """Per-task gradients from one forward and one backward pass over the grouped batch.

    Returns ``(shared, own, aux)``: per-task gradients ``[K, *shape]`` of the shared
    parameters (formed by each shared layer from its inputs and output gradients), mean
    gradients of the task-specific ones, and ``loss_fn``'s auxiliary output.
    """
    grouped = grouped_pass(loss_fn, network, params, task_inputs, shared_inputs)
    prefixes = {module: name for name, module in network.named_modules()}
    tasks = grouped.losses.shape[0]
    shared = {
        f"{prefixes[layer]}.{name}": grad
        for layer, inputs, output_grads in grouped.layers.values()
        for name, grad in layer.per_task_gradients(inputs, output_grads, tasks).items()
    }
    return shared, grouped.own, grouped.aux


def per_task_gradients_loop(
    loss_fn: TaskLoss,
    params: Mapping[str, Tensor],
    task_inputs: tuple[Tensor, ...],
    shared_inputs: tuple[Any, ...] = (),
) -> tuple[dict[str, Tensor], Any]:
    """The same result the way older code bases compute it: per-task losses from one forward
    pass over the batch, then one backward pass through the whole graph per task.

    This is the reference that tests and benchmarks compare the fast paths against; training
    never uses it.
    """
    names = list(params)
    leaves = [params[name].detach().requires_grad_(True) for name in names]
    losses, aux = loss_fn(
        dict(zip(names, leaves, strict=True)), *task_inputs, *shared_inputs, "grouped"
    )
    per_task = [
        torch.autograd.grad(loss, leaves, retain_graph=True, allow_unused=True) for loss in losses
    ]
    stacked = {
        name: torch.stack(
            [g[i] if g[i] is not None else torch.zeros_like(leaves[i]) for g in per_task]
        )
        for i, name in enumerate(names)
    }
    return stacked, tree_map_only(Tensor, Tensor.detach, aux)


# Up to this many entries per task, one product over a whole parameter is cheapest; above it,
# BLAS runs that product (a long inner axis, K outputs) on one core, and row blocks use them all.
ROW_BLOCKS_FROM = 1 << 16


def _by_member(gradient: Tensor) -> Tensor:
    """``[A, K, n]``: a view of a ``[K, A, ...]`` gradient stored with A outermost (as the grouped
    pass stores ensemble members' gradients), else the whole gradient as ``[1, K, n]``."""
    if gradient.dim() > 2:
        moved = gradient.transpose(0, 1)
        if moved.is_contiguous():
            return moved.view(moved.shape[0], moved.shape[1], -1)
    return gradient.reshape(1, gradient.shape[0], -1)


def task_gram(gradient: Tensor) -> Tensor:
    """``J_p J_pᵀ`` for one parameter's per-task gradients ``[K, *shape]``, without copying them."""
    return member_grams(gradient).sum(dim=0)


def member_grams(gradient: Tensor) -> Tensor:
    """The Gram matrix of each ensemble member's share of per-task gradients ``[K, A, ...]``
    (stored members first, see :func:`_by_member`), ``[A, K, K]``."""
    members = _by_member(gradient)
    rows = gradient.shape[-2] if gradient.dim() > 2 else 1
    if members.shape[-1] < ROW_BLOCKS_FROM or rows == 1:
        return torch.bmm(members, members.transpose(1, 2))
    return torch.stack([_gram_by_rows(member, rows) for member in members.unbind(0)])


# The number of column blocks a long Gram product is split into, at most: enough for every
# core, few enough that each product stays large.
GRAM_GROUPS = 16


def _gram_by_rows(flat: Tensor, rows: int) -> Tensor:
    """``F Fᵀ`` for ``F = flat`` (``[K, n]``, ``rows`` rows of a parameter flattened) as the
    sum of the products of a few column blocks, each a whole number of rows: BLAS runs one K×K
    product over a long axis on a single core, a batch of them on all cores (4× faster for a
    400 × 400 layer on two cores)."""
    groups = max(g for g in range(1, min(rows, GRAM_GROUPS) + 1) if rows % g == 0)
    blocks = flat.view(flat.shape[0], groups, -1).transpose(0, 1)
    return torch.bmm(blocks, blocks.transpose(1, 2)).sum(dim=0)


def combine(weights: Tensor, gradient: Tensor) -> Tensor:
    """``Σ_k w_k g_k`` for one parameter's per-task gradients ``[K, *shape]``: its part of
    ``Jᵀw``, shaped like the parameter."""
    members = _by_member(gradient)
    combined = torch.bmm(weights.expand(members.shape[0], 1, -1), members)
    return combined.view(gradient.shape[1:])
