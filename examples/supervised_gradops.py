"""Multi-task regression with mtrl's multi-task step, outside reinforcement learning.

Three synthetic regression tasks share a ReLU trunk and each has its own linear head. The same
model is trained twice, with GradOPS and with the plain mean of the task gradients, by
:class:`mtrl.backward.MultiTaskBackward`::

    python examples/supervised_gradops.py --steps 400

The trunk and the heads are mtrl's layers, so the step forms the K×K Gram matrix of the
per-task gradients Gram-first (``per_task_gradients="gram"``): from one ordinary backward pass,
without ever holding the K per-task gradients of a layer. The script prints the mode, the
largest tensor one step allocates next to what K per-task gradients of the largest layer would
take, how far each head's gradient is from its own task's alone, and each method's test error.
"""

from __future__ import annotations

import argparse
import math
from typing import NamedTuple

import torch
from torch import Tensor
from torch.func import functional_call

from mtrl.agents.networks import EnsembleMLP, MultiTaskNetwork
from mtrl.aggregators import make_aggregator
from mtrl.backward import MultiTaskBackward
from mtrl.testing import LargeTensors

# The trunk ends in fewer units than there are tasks, so that the tasks compete for it; its
# wide layers are where a Gram-first step saves memory.
TASKS, FEATURES, HIDDEN, BATCH = 3, 8, (128, 128, 2), 32
# The targets' scales differ, as multi-task losses often do.
TARGET_SCALES = (1.0, 4.0, 0.25)


class MultiHeadRegressor(MultiTaskNetwork):
    """A shared ReLU trunk and one linear head per task: ``[K, B, features]`` → ``[K, B]``, task
    k's rows through head k."""

    def __init__(self, features: int = FEATURES, hidden=HIDDEN, tasks: int = TASKS) -> None:
        super().__init__()
        # the output layer has one copy per task: the heads, each reached by its own task only;
        # "he" draws them near zero, so that no task starts from a large error
        self.body = EnsembleMLP(
            features, hidden, 1, num_tasks=tasks, task_layers=[len(hidden)], init="he"
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x, None, "grouped")[0, ..., 0]

    def shared_layers(self) -> dict:
        return self.body.shared_layers()

    def heads(self) -> dict[str, Tensor]:
        """The heads' parameters, task k's copy at index k of dimension 1."""
        return self.task_specific_parameters()


def task_losses(params, x: Tensor, y: Tensor, model: MultiHeadRegressor, layout: str):
    """Each task's mean squared error ``[K]``, in the loss convention of :mod:`mtrl.jacobian`
    (``params`` first; the whole ``[K, B, ...]`` batch in the Gram-first modes)."""
    predictions = functional_call(model, params, (x,))
    losses = (predictions - y).square().mean(dim=-1)
    return losses, losses


class Tasks(NamedTuple):
    """Targets ``y_k = scale_k · ⟨r_k, tanh(P x)⟩``: one shared feature map P read out by every
    task, task 1's read-out pulling against task 0's."""

    projection: Tensor
    readouts: Tensor

    @classmethod
    def make(cls, seed: int = 0) -> Tasks:
        generator = torch.Generator().manual_seed(seed)
        projection = torch.randn(FEATURES, 16, generator=generator) / math.sqrt(FEATURES)
        readouts = torch.randn(TASKS, 16, generator=generator) / 4
        readouts[1] = 0.6 * readouts[1] - 0.8 * readouts[0]
        scales = torch.tensor(TARGET_SCALES)[:, None]
        return cls(projection, scales * readouts)

    def sample(self, batch: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """A grouped batch: ``x`` ``[K, batch, features]`` and ``y`` ``[K, batch]``."""
        x = torch.randn(TASKS, batch, FEATURES, generator=generator)
        y = torch.einsum("kbh,kh->kb", torch.tanh(x @ self.projection), self.readouts)
        return x, y


def make_step(model, method: str, lr: float = 3e-3, mode: str = "gram") -> MultiTaskBackward:
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    return MultiTaskBackward(model, optimizer, make_aggregator(method), per_task_gradients=mode)


def train(method: str, steps: int, seed: int = 0) -> tuple[MultiHeadRegressor, Tensor]:
    """A model trained on fresh batches with ``method``; returns it and its test error per task
    (mean squared error over the targets' variance)."""
    tasks = Tasks.make(seed)
    torch.manual_seed(seed)
    model = MultiHeadRegressor()
    step = make_step(model, method)
    data = torch.Generator().manual_seed(seed + 1)
    for _ in range(steps):
        x, y = tasks.sample(BATCH, data)
        step(task_losses, (x, y), (model,))
    x, y = tasks.sample(1000, torch.Generator().manual_seed(seed + 2))
    with torch.no_grad():
        errors = (model(x) - y).square().mean(dim=1) / y.var(dim=1)
    return model, errors


def largest_allocation(model: MultiHeadRegressor, mode: str = "gram") -> tuple:
    """The tensors of at least K times the largest shared layer's weight that one GradOPS step
    allocates (none, Gram-first), and that size."""
    limit = TASKS * max(layer.weight.numel() for layer in model.shared_layers().values())
    step = make_step(model, "gradops", lr=0.0, mode=mode)
    x, y = Tasks.make().sample(BATCH, torch.Generator().manual_seed(0))
    with LargeTensors(limit) as watch:
        step(task_losses, (x, y), (model,))
    return watch.seen, limit


def head_gradient_error(model: MultiHeadRegressor, method: str = "gradops") -> float:
    """The largest difference, relative to the gradient's size, between the heads' gradients
    after one step and each task's own: head k's is that of ``L_k / K`` alone, whatever the
    method's weights."""
    x, y = Tasks.make().sample(BATCH, torch.Generator().manual_seed(0))
    make_step(model, method, lr=0.0)(task_losses, (x, y), (model,))
    heads = model.heads()
    losses, _ = task_losses(dict(model.named_parameters()), x, y, model, "grouped")
    error, size = 0.0, 0.0
    for task in range(TASKS):
        own = torch.autograd.grad(losses[task] / TASKS, list(heads.values()), retain_graph=True)
        for param, expected in zip(heads.values(), own, strict=True):
            # task k's loss reaches copy k of each head and nothing else
            error = max(error, float((param.grad[:, task] - expected[:, task]).abs().max()))
            size = max(size, float(expected.abs().max()))
    return error / size


def main(argv: list[str] | None = None) -> dict[str, Tensor]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    model = MultiHeadRegressor()
    print(f"mode: per_task_gradients={make_step(model, 'gradops').gradients!r} (Gram-first)")
    seen, limit = largest_allocation(model)
    print(f"tensors of K x the largest layer ({limit} values) allocated in a step: {len(seen)}")
    print(
        f"heads: largest relative difference from their own task's gradient: "
        f"{head_gradient_error(model):.1e}"
    )

    results = {}
    print(f"test error (MSE / variance) after {args.steps} steps:")
    for method in ("mean", "gradops"):
        _, errors = train(method, args.steps, args.seed)
        results[method] = errors
        per_task = "  ".join(f"task {k}: {e:.3f}" for k, e in enumerate(errors.tolist()))
        print(f"  {method:8s} {per_task}  mean: {errors.mean():.3f}")
    return results


if __name__ == "__main__":
    main()
