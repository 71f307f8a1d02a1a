"""Optimisation trajectories of mean, PCGrad, CAGrad and GradOPS on small conflicting problems.

Each task i has a log-bowl loss ``s_i log(1 + ‖x − a_i‖² / 2)`` on the two parameters ``x``, with
unequal scales ``s_i``, so that the plain mean is pulled towards the loudest task. The top row
has two tasks; the bottom row has three, where every gradient lies in the span of the other two
(K > P), GradOPS's projections vanish and it stays where it starts. Run:

    python scripts/toy_conflict.py --out docs/toy_conflict.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from mtrl.aggregators import aggregate, make_aggregator

METHODS = ("mean", "pcgrad", "cagrad", "gradops")
PROBLEMS = {
    "two tasks": {"centres": [(-4.0, -1.0), (4.0, -1.0)], "scales": [1.0, 0.15]},
    "three tasks": {"centres": [(-4.0, -2.0), (4.0, -2.0), (0.0, 4.0)], "scales": [1.0, 0.15, 0.4]},
}
STARTS = [(-8.0, 8.0), (8.0, 8.0), (0.0, -8.5)]
LIMIT = 10.0


def task_losses(x: torch.Tensor, centres: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Per-task losses, shape ``[K, ...]`` for points ``x`` of shape ``[..., 2]``."""
    task_axis = (-1,) + (1,) * (x.ndim - 1)
    squared = (x.unsqueeze(0) - centres.view(*task_axis, 2)).square().sum(-1)
    return scales.view(task_axis) * torch.log1p(squared / 2)


def trajectory(method: str, start, centres, scales, steps: int, lr: float) -> torch.Tensor:
    aggregator = make_aggregator(method, **({"seed": 0} if method == "pcgrad" else {}))
    x = torch.tensor(start, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.SGD([x], lr=lr)
    path = [x.detach().clone()]
    per_task_gradients = torch.func.jacrev(lambda point: task_losses(point, centres, scales))
    for _ in range(steps):
        jacobian = per_task_gradients(x.detach())
        update, _, _ = aggregate(aggregator, jacobian)
        optimizer.zero_grad()
        x.grad = update
        optimizer.step()
        path.append(x.detach().clone())
    return torch.stack(path)


def draw(steps: int, lr: float, out: Path) -> None:
    figure, axes = plt.subplots(
        len(PROBLEMS), len(METHODS), figsize=(4 * len(METHODS), 4 * len(PROBLEMS)), squeeze=False
    )
    axis_points = torch.linspace(-LIMIT, LIMIT, 200, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(axis_points, axis_points, indexing="xy"), dim=-1)
    for row, (problem, spec) in zip(axes, PROBLEMS.items(), strict=True):
        centres = torch.tensor(spec["centres"], dtype=torch.float64)
        scales = torch.tensor(spec["scales"], dtype=torch.float64)
        average = task_losses(grid, centres, scales).mean(dim=0)
        for axis, method in zip(row, METHODS, strict=True):
            axis.contourf(grid[..., 0], grid[..., 1], average, levels=25, cmap="Greys", alpha=0.6)
            axis.scatter(
                *centres.T,
                marker="*",
                s=160,
                c="gold",
                edgecolors="k",
                zorder=3,
                label="task minima",
            )
            for start in STARTS:
                path = trajectory(method, start, centres, scales, steps, lr)
                axis.plot(path[:, 0], path[:, 1], lw=2)
                axis.scatter(*path[0], marker="o", c="k", s=20, zorder=3)
                axis.scatter(*path[-1], marker="X", c="crimson", s=60, zorder=4)
            axis.set_title(f"{method} ({problem})")
            axis.set_xlim(-LIMIT, LIMIT)
            axis.set_ylim(-LIMIT, LIMIT)
            axis.set_aspect("equal")
    axes[0, 0].legend(loc="lower left", fontsize=8)
    figure.suptitle(
        "Gradient descent from three starts (●) to where it ends (✖), over the average loss; "
        "the leftmost task is the loudest.\nGradOPS keeps only the part of each gradient that "
        "no other task spans: with two tasks it still descends for both, with three tasks in "
        "two parameters nothing is left and it stays put."
    )
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400, help="optimiser steps per trajectory")
    parser.add_argument("--lr", type=float, default=1.0, help="gradient-descent step size")
    parser.add_argument("--out", type=Path, default=Path("docs/toy_conflict.png"))
    args = parser.parse_args()
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    draw(args.steps, args.lr, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
