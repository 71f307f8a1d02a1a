"""The multi-task backward step: a network's per-task losses in, one deconflicted update out.

Every Gram-based method needs only the K×K Gram matrix ``G = J Jᵀ`` of the per-task gradients
of the shared parameters, and its update ``Jᵀ w`` is the gradient of ``Σ_k w_k L_k``. One step:

1. one forward and one backward pass over the grouped ``[K, B]`` batch give each shared layer
   its inputs and output gradients with task k's rows together
   (:func:`mtrl.jacobian.grouped_pass`);
2. each shared layer adds its Gram matrix: from its stored per-task gradients ``[K, *shape]``
   where they are small, or a tile of the weight at a time where they are not, so that
   no ``[K, P]`` tensor is ever held (torchjd's autogram computes the Gramian without the
   Jacobian too);
3. the method turns ``G`` (and, for loss-based methods, the losses) into weights ``w``;
4. ``Jᵀ w`` goes into ``.grad``: combined from the stored gradients, or from ``w``-weighted
   output gradients in one product with the layer's inputs (or a second, weighted backward
   pass); task-specific parameters get their own task's gradient;
5. the optimizer steps unless anything was not finite, decided on the device.

``gradients`` picks how per-task gradients are had (:data:`GRADIENT_MODES`); ``auto`` stores a
layer's per-task gradients when they take at most :data:`STORE_RATIO` times the memory of the
layer's inputs and outputs, and forms the rest Gram-first. The result of a step
(:class:`StepResult`) is what a conflict recorder (:class:`mtrl.conflict.ConflictRecorder`)
consumes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from mtrl.aggregators import Aggregator
from mtrl.aggregators.base import solve_weights
from mtrl.jacobian import (
    combine,
    grouped_pass,
    per_task_gradients,
    per_task_gradients_loop,
    task_gram,
)
from mtrl.optim import AdaTask

# grouped: per-task gradients stored, from one grouped pass; gram: Gram-first from the same
# pass; auto: each layer the cheaper of the two within memory; vmap and loop: stored, from
# torch.func.vmap or from K backward passes (a reference); none: one backward pass of the
# weighted losses, for methods that need no Gram matrix.
GRADIENT_MODES = ("auto", "grouped", "gram", "vmap", "loop", "none")
# The modes that read each shared layer's inputs and output gradients: only models built from
# mtrl's layers (listed by their ``shared_layers()``) can form per-task gradients that way.
LAYER_MODES = ("auto", "grouped", "gram")
# How Gram-first steps form Jᵀw: one product per layer from the weighted output gradients, or
# a second backward pass of Σ_k w_k L_k.
UPDATE_MODES = ("products", "backward")
# Under "auto", a layer's per-task gradients are stored when they take at most this many times
# the memory of the layer's inputs and outputs (docs/benchmarks.md has the measurements).
STORE_RATIO = 2.0
# A Gram-first layer's Gram matrix comes from the products of its rows while that takes at most
# this many times the multiply-adds of its per-task gradients, which run in short products.
ROWS_RATIO = 2.0
# A Gram-first layer's per-task gradients are formed a tile of the weight at a time: this many
# output columns (products this wide run near full speed), and rows while the tile takes at most
# TILE_RATIO times the memory of the layer's inputs and output gradients, which keeps it in the
# cache and below glibc's mmap threshold at the sizes measured in docs/benchmarks.md.
TILE_COLUMNS = 512
TILE_RATIO = 0.5


def finite(*tensors: Tensor) -> Tensor:
    """A 0-d boolean tensor: no NaN or infinity in any of ``tensors`` (no host sync).

    A NaN or an infinity makes a tensor's sum non-finite, and one pass over each tensor is a
    third of what ``isfinite(t).all()`` reads and writes. (A sum can also overflow without
    either, from float32 values near 1e38: no usable gradient.)
    """
    return torch.stack([t.sum().isfinite() for t in tensors]).all()


def skips_on_found_inf(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer.step`` changes nothing when its ``found_inf`` flag is set: torch's
    fused optimizers (as under GradScaler) and AdaTask. (The flag GradScaler reads,
    ``_step_supports_amp_scaling``, does not survive a copy or a pickle; ``fused`` does.)"""
    return isinstance(optimizer, AdaTask) or bool(optimizer.defaults.get("fused"))


def step_if_finite(optimizer: torch.optim.Optimizer, ok: Tensor) -> None:
    """Step ``optimizer`` unless ``ok`` (a 0-d flag, see :func:`finite`) is false.

    The flag stays on the device: fused Adam (and AdaTask) skip a step whose ``found_inf`` is
    set, as they do under mixed precision, so the host never waits for the answer.
    """
    if skips_on_found_inf(optimizer):
        optimizer.found_inf = (~ok).to(torch.float32)
    else:
        # Any other optimizer cannot skip (torch's unfused Adam even refuses the flag): it
        # steps on zero gradients, so weights stay finite though its moments still move.
        for group in optimizer.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    param.grad = torch.where(ok, param.grad, 0.0)
    optimizer.step()


@dataclasses.dataclass
class StepResult:
    """What one step did: the per-task losses and ``loss_fn``'s other outputs, the task weights,
    whether the step was taken (``finite``), and for Gram-based steps the Gram matrix of the
    per-task gradients and its share from each shared layer (``[L, K, K]``)."""

    losses: Tensor
    aux: Any
    weights: Tensor
    finite: Tensor
    gram: Tensor | None = None
    layer_grams: Tensor | None = None


def layer_parameters(layer: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """A layer's own parameters, by name."""
    return list(layer.named_parameters(recurse=False))


def _task_specific_names(network: nn.Module, given: Iterable[nn.Parameter] | None) -> list[str]:
    """The names of the model's task-specific parameters: those it lists itself, or ``given``."""
    listed = getattr(network, "task_specific_parameters", None)
    if listed is not None:
        if given is not None:
            raise ValueError(
                f"{type(network).__name__} lists its own task-specific parameters "
                "(task_specific_parameters()): task_specific is for models that do not"
            )
        return list(listed())
    given_ids = {id(p) for p in given or ()}
    names = [name for name, p in network.named_parameters() if id(p) in given_ids]
    if len(names) != len(given_ids):
        raise ValueError("task_specific holds parameters that are not the model's own")
    return names


def _layer_groups(network: nn.Module, own: list[str]) -> dict[str, list[str]]:
    """The shared parameters' names, grouped by layer (the per-layer Gram matrices'): the
    model's ``shared_layers()``, or else the modules that hold them, by their names."""
    if hasattr(network, "shared_layers"):
        prefixes = {module: name for name, module in network.named_modules()}
        return {
            label: [f"{prefixes[layer]}.{name}" for name, _ in layer_parameters(layer)]
            for label, layer in network.shared_layers().items()
        }
    groups: dict[str, list[str]] = {}
    for name, _ in network.named_parameters():
        if name not in own:
            groups.setdefault(name.rpartition(".")[0] or "model", []).append(name)
    return groups


def _losses_in_aux(loss_fn: Callable[..., tuple[Tensor, Any]]) -> Callable[..., Any]:
    """``loss_fn`` whose auxiliary output leads with the losses: ``torch.func.grad`` hands back
    the auxiliary output alone, and the step needs the losses too."""

    def with_losses(*args: Any) -> tuple[Tensor, tuple[Tensor, Any]]:
        losses, aux = loss_fn(*args)
        return losses, (losses, aux)

    return with_losses


def stores(layer: nn.Module, layer_inputs: Tensor, output_grads: Tensor, tasks: int) -> bool:
    """Whether storing a layer's per-task gradients fits :data:`STORE_RATIO` (see above)."""
    members, rows, fan_in = layer_inputs.shape
    per_task = tasks * sum(p.numel() for _, p in layer_parameters(layer))
    return per_task <= STORE_RATIO * members * rows * (fan_in + output_grads.shape[-1])


def by_rows(layer_inputs: Tensor, output_grads: Tensor) -> bool:
    """Whether a Gram-first layer's Gram matrix is cheaper from the products of its rows (``N²
    (in + out)`` multiply-adds in a few long products) than from blocks of per-task gradients
    (``N · in · out`` in products only B long): up to :data:`ROWS_RATIO` times the work, it is
    (docs/benchmarks.md). Its ``N × N`` matrices are then no larger than the layer's inputs."""
    _, rows, fan_in = layer_inputs.shape
    fan_out = output_grads.shape[-1]
    return rows * (fan_in + fan_out) <= ROWS_RATIO * fan_in * fan_out


def tile_shape(layer_inputs: Tensor, output_grads: Tensor, tasks: int) -> tuple[int, int]:
    """The tile ``(rows, columns)`` of a Gram-first layer's weight whose per-task gradients are
    formed at once: :data:`TILE_COLUMNS` columns and as many rows as take at most
    :data:`TILE_RATIO` times the memory of the layer's inputs and output gradients (a member's).
    """
    _, count, fan_in = layer_inputs.shape
    fan_out = output_grads.shape[-1]
    columns = min(fan_out, TILE_COLUMNS)
    budget = TILE_RATIO * count * (fan_in + fan_out)
    return max(1, min(fan_in, int(budget // (tasks * columns)))), columns


class MultiTaskBackward:
    """The update of one model from its per-task losses (see the module's docstring), with any
    method.

    Which models, and which modes:

    - a model built from mtrl's layers, one that lists its shared layers in ``shared_layers()``
      (each forms per-task gradients from its inputs and output gradients, as
      :class:`~mtrl.agents.networks.EnsembleLinear` does) and its task-specific parameters in
      ``task_specific_parameters()``, such as a :class:`~mtrl.agents.networks.MultiTaskNetwork`,
      takes every mode of :data:`GRADIENT_MODES`;
    - any other ``nn.Module`` takes ``"vmap"`` and ``"loop"`` (and ``"none"``, for methods
      that need no Gram matrix); its per-task heads, if any, are named by ``task_specific``.

    Calling the step runs ``loss_fn(params, *task_inputs, *shared_inputs, layout)``, which
    returns the ``[K]`` task losses and anything else (see :mod:`mtrl.jacobian`): ``"vmap"``
    calls it on one task's slice of the ``[K, B, ...]`` batch at a time, the other modes on the
    whole batch.

    Args:
        network: the model whose parameters the step updates.
        optimizer: steps the model's parameters.
        aggregator: the method turning per-task gradients (or losses) into task weights.
        per_task_gradients: one of :data:`GRADIENT_MODES`.
        gram_update: one of :data:`UPDATE_MODES`, for the layers formed Gram-first.
        compile: ``torch.compile`` the method's K×K computation.
        max_grad_norm: clip the combined update to this global norm before the step (``None``:
            no clipping), as the parameter-scaling recipe does (1.0).
        task_specific: for a model without ``task_specific_parameters()``, the parameters each
            reached by one task's loss only (per-task heads). They stay out of the Gram matrix
            and get their own task's gradient of the mean loss; every other parameter is
            shared.
    """

    def __init__(
        self,
        network: nn.Module,
        optimizer: torch.optim.Optimizer,
        aggregator: Aggregator,
        per_task_gradients: str = "auto",
        gram_update: str = "products",
        compile: bool = False,
        max_grad_norm: float | None = None,
        task_specific: Iterable[nn.Parameter] | None = None,
    ) -> None:
        gradients, update = per_task_gradients, gram_update
        if max_grad_norm is not None and not max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be positive or None, got {max_grad_norm}")
        self.max_grad_norm = max_grad_norm
        self.check(aggregator, gradients, update)
        self.own = _task_specific_names(network, task_specific)
        if isinstance(optimizer, AdaTask):
            if gradients == "gram":
                raise ValueError("AdaTask keeps moments per task: it needs stored gradients")
            gradients = "grouped" if gradients == "auto" else gradients
        self.network, self.optimizer, self.aggregator = network, optimizer, aggregator
        self.gradients, self.update = gradients, update
        self.weights_of = aggregator.weights
        if compile:
            # inductor's own kernels: on CUDA the whole update is captured (mtrl.capture), so
            # the method's part must not make CUDA graphs of its own
            self.weights_of = torch.compile(aggregator.weights, dynamic=False)
        self.summed = gradients == "none" or aggregator.loss_based
        from_layers = hasattr(network, "shared_layers")
        if not self.summed and gradients in LAYER_MODES and not from_layers:
            raise ValueError(
                f"per_task_gradients={gradients!r} needs a model built from mtrl's layers (one "
                f"that lists them in shared_layers()); {type(network).__name__} has none: use "
                "per_task_gradients='vmap' or 'loop', which work on any nn.Module"
            )
        if not self.summed and gradients in LAYER_MODES:
            covered = {
                id(p) for layer in network.shared_layers().values() for p in layer.parameters()
            }
            outside = [n for n, p in network.shared_parameters().items() if id(p) not in covered]
            if outside:
                raise ValueError(
                    f"shared parameters {outside} lie outside the layers that form per-task "
                    "gradients from one pass; use per_task_gradients='vmap' or 'loop'"
                )
        self.layers = _layer_groups(network, self.own)
        self.layer_names = list(self.layers)
        self.skipped = torch.zeros((), dtype=torch.int64, device=next(network.parameters()).device)

    @staticmethod
    def check(aggregator: Aggregator, gradients: str, update: str) -> None:
        """Refuse a mode that does not exist or does not suit the method."""
        if gradients not in GRADIENT_MODES:
            valid = ", ".join(GRADIENT_MODES)
            raise ValueError(f"per_task_gradients={gradients!r}; valid: {valid}")
        if update not in UPDATE_MODES:
            raise ValueError(f"gram_update={update!r}; valid: {', '.join(UPDATE_MODES)}")
        if gradients == "none" and aggregator.needs_gram:
            raise ValueError(
                f"method {aggregator.name!r} combines per-task gradients, so "
                "per_task_gradients cannot be 'none' (only methods that weight losses, such as "
                "mean, can)"
            )

    def __call__(
        self,
        loss_fn: Callable[..., tuple[Tensor, Any]],
        task_inputs: tuple[Tensor, ...],
        shared_inputs: tuple[Any, ...] = (),
    ) -> StepResult:
        """Update the network on ``loss_fn``'s per-task losses (see :mod:`mtrl.jacobian` for
        its convention) and say what was done."""
        params = dict(self.network.named_parameters())
        if self.summed:
            return self._summed_step(loss_fn, params, task_inputs, shared_inputs)
        if self.gradients in ("vmap", "loop"):
            compute = per_task_gradients if self.gradients == "vmap" else per_task_gradients_loop
            gradients, (losses, aux) = compute(
                _losses_in_aux(loss_fn), params, task_inputs, shared_inputs
            )
            shared = {n: g for n, g in gradients.items() if n not in self.own}
            own_grads = {n: gradients[n].mean(dim=0) for n in self.own}
            return self._stored_step(shared, own_grads, losses, aux)
        return self._grouped_step(loss_fn, params, task_inputs, shared_inputs)

    # -- the three ways -----------------------------------------------------------------------

    def _summed_step(self, loss_fn, params, task_inputs, shared_inputs) -> StepResult:
        """One backward pass of the weighted losses: no per-task gradient at all."""
        losses, aux = loss_fn(params, *task_inputs, *shared_inputs, "grouped")
        weights = self.weights_of(None, losses.detach())
        self.optimizer.zero_grad()
        (weights * losses).sum().backward()
        ok = finite(losses, *[p.grad for p in params.values() if p.grad is not None])
        self._step(ok)
        if self.aggregator.loss_based:
            # Loss-based methods learn from how the step changed each task's loss.
            with torch.no_grad():
                after, _ = loss_fn(params, *task_inputs, *shared_inputs, "grouped")
            self.aggregator.observe(losses.detach(), after)
        return StepResult(losses.detach(), aux, weights, ok)

    def _stored_step(
        self, shared: dict[str, Tensor], own: dict[str, Tensor], losses: Tensor, aux
    ) -> StepResult:
        """Per-task gradients ``[K, *shape]`` of every shared parameter in hand."""
        layer_grams = torch.stack(
            [sum(task_gram(shared[name]) for name in names) for names in self.layers.values()]
        )
        weights, ok = self._weights(layer_grams, losses, *own.values())
        named = dict(self.network.named_parameters())
        for name, grad in shared.items():
            named[name].grad = combine(weights, grad)
        self._set(own)
        self._adatask({named[n]: grad for n, grad in shared.items()}, weights)
        self._step(ok)
        return StepResult(losses.detach(), aux, weights, ok, layer_grams.sum(dim=0), layer_grams)

    def _grouped_step(self, loss_fn, params, task_inputs, shared_inputs) -> StepResult:
        """One grouped pass; each shared layer stored or Gram-first (see the docstring).

        Stored layers form their per-task gradients as soon as the backward pass reaches them,
        and every layer's inputs and output gradients are let go once they have served (the
        previous gradients before the pass), so that the step holds little more than what an
        ordinary backward pass holds.
        """
        second_pass = self.gradients != "grouped" and self.update == "backward"
        tasks = task_inputs[0].shape[0]
        stored: dict[str, dict[str, Tensor]] = {}
        grams: dict[str, Tensor] = {}
        later: list[nn.Module] = []

        def consume(label: str, layer: nn.Module, inputs: Tensor, output_grads: Tensor) -> bool:
            if self.gradients == "grouped" or (
                self.gradients == "auto" and stores(layer, inputs, output_grads, tasks)
            ):
                stored[label] = layer.per_task_gradients(inputs, output_grads, tasks)
                grams[label] = sum(task_gram(g) for g in stored[label].values())
                return True
            if second_pass:  # the second pass forms the update: nothing more is needed
                grams[label] = self._gram_first(layer, inputs, output_grads, tasks)
                later.append(layer)
                return True
            return False  # kept for its Gram matrix and its update, after the pass

        self.optimizer.zero_grad(set_to_none=True)
        grouped = grouped_pass(
            loss_fn, self.network, params, task_inputs, shared_inputs, second_pass, consume
        )
        for label, (layer, inputs, output_grads) in grouped.layers.items():
            grams[label] = self._gram_first(layer, inputs, output_grads, tasks)
        layer_grams = torch.stack([grams[label] for label in self.layer_names if label in grams])
        weights, ok = self._weights(layer_grams, grouped.losses, *grouped.own.values())
        shared_layers = self.network.shared_layers()
        per_task = {}
        for label, grads in stored.items():
            for name, param in layer_parameters(shared_layers[label]):
                param.grad = combine(weights, grads[name])
                per_task[param] = grads[name]
        self._adatask(per_task, weights)
        stored.clear()  # let the per-task gradients go
        del per_task
        row_weights = weights.repeat_interleave(task_inputs[0].shape[1])
        layers = grouped.layers
        while layers:  # the Gram-first layers, in one product each
            layer, inputs, output_grads = layers.pop(next(iter(layers)))
            grads = layer.combined_gradients(inputs, output_grads, row_weights.to(inputs.dtype))
            for name, param in layer_parameters(layer):
                param.grad = grads[name]
            del inputs, output_grads, grads
        if later:
            shared = [p for layer in later for _, p in layer_parameters(layer)]
            weighted = (weights.detach().to(grouped.losses.dtype) * grouped.losses).sum()
            for param, grad in zip(shared, torch.autograd.grad(weighted, shared), strict=True):
                param.grad = grad
        self._set(grouped.own)
        self._step(ok)
        losses = grouped.losses.detach()
        return StepResult(losses, grouped.aux, weights, ok, layer_grams.sum(dim=0), layer_grams)

    @staticmethod
    def _gram_first(layer: nn.Module, inputs: Tensor, output_grads: Tensor, tasks: int) -> Tensor:
        if by_rows(inputs, output_grads):
            return layer.task_gram_by_rows(inputs, output_grads, tasks)
        return layer.task_gram(inputs, output_grads, tasks, tile_shape(inputs, output_grads, tasks))

    # -- shared pieces ------------------------------------------------------------------------

    def _weights(self, layer_grams: Tensor, losses: Tensor, *others: Tensor):
        """The method's weights from the Gram matrix, and whether everything is finite."""
        ok = finite(losses, layer_grams, *others)
        return solve_weights(self.weights_of, layer_grams.sum(dim=0), losses, ok), ok

    def _set(self, grads: dict[str, Tensor]) -> None:
        params = dict(self.network.named_parameters())
        for name, grad in grads.items():
            params[name].grad = grad

    def _adatask(self, per_task: dict[nn.Parameter, Tensor], weights: Tensor) -> None:
        """AdaTask keeps Adam moments per task: each task's share ``w_t g_t`` of the update."""
        if isinstance(self.optimizer, AdaTask):
            self.optimizer.set_task_gradients(
                {p: weights.view(-1, *[1] * (g.dim() - 1)) * g for p, g in per_task.items()}
            )

    def _step(self, ok: Tensor) -> None:
        if self.max_grad_norm is not None:
            # foreach norms and scaling on the device: no host sync
            grads = [p for p in self.network.parameters() if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(grads, self.max_grad_norm, foreach=True)
        step_if_finite(self.optimizer, ok)
        self.skipped += ~ok

    # -- checkpoints --------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "aggregator": self.aggregator.state_dict(),
            "skipped": int(self.skipped),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.aggregator.load_state_dict(state["aggregator"])
        self.skipped.fill_(state["skipped"])
