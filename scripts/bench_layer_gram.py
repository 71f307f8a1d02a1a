"""One shared layer's Gram matrix of per-task gradients, timed against the layer's plain weight
gradient, in one run: where the Gram-first step's extra time goes.

For a square layer of the given width on a grouped batch of K tasks × B transitions, in
alternating turns:

- plain: the weight gradient ``hᵀδ`` of the summed loss, one product over all N = K·B rows
  (what the plain update forms, and what Gram-first forms again, weighted, for the update);
- products: the K per-task gradients ``h_kᵀδ_k`` a tile at a time
  (:func:`mtrl.agents.networks.per_task_tiles`), no Gram (as many multiply-adds as plain, in
  products only B long);
- tiles: the products and each tile's Gram matrix, as training forms them
  (:func:`mtrl.agents.networks.linear_grams` with :func:`mtrl.backward.tile_shape`);
- fresh blocks: the same from blocks of whole output columns, each a new tensor, as the first
  Gram-first version formed them;
- rows: the Gram from the products of rows (:func:`mtrl.agents.networks.linear_grams_by_rows`).

Prints the median milliseconds and each way's ratio to plain.

    python scripts/bench_layer_gram.py --tasks 10 50 --widths 1024 2048
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import Tensor

from mtrl.agents.networks import linear_grams, linear_grams_by_rows, per_task_tiles
from mtrl.allocator import retain_freed_memory
from mtrl.backward import tile_shape
from mtrl.jacobian import task_gram


def products_only(h: Tensor, delta: Tensor, tile: tuple[int, int]) -> None:
    for _ in per_task_tiles(h, delta, tile):
        pass


def fresh_blocks(h: Tensor, delta: Tensor, columns: int) -> Tensor:
    gram = h.new_zeros(h.shape[0], h.shape[0])
    for left in range(0, delta.shape[2], columns):
        gram += task_gram(torch.bmm(h, delta[:, :, left : left + columns]))
    return gram


def ways(tasks: int, width: int, batch_per_task: int) -> tuple[dict, str]:
    """The ways to time, on one random layer, and a line saying their sizes."""
    rows = tasks * batch_per_task
    inputs, output_grads = torch.randn(1, rows, width), torch.randn(1, rows, width)
    h = inputs.view(tasks, -1, width).transpose(1, 2)  # [K, in, B]
    delta = output_grads.view(tasks, -1, width)  # [K, B, out]
    tile = tile_shape(inputs, output_grads, tasks)
    # the first version's blocks: whole columns, as many as the layer's inputs and output
    # gradients take (about 2 B)
    columns = max(1, int(rows * 2 * width // (tasks * (width + 1))))
    timed = {
        "plain": lambda: inputs[0].T @ output_grads[0],
        "products": lambda: products_only(h, delta, tile),
        "tiles": lambda: linear_grams(inputs, output_grads, tasks, tile),
        "fresh blocks": lambda: fresh_blocks(h, delta, columns),
        "rows": lambda: linear_grams_by_rows(inputs, output_grads, tasks),
    }
    return timed, f"tiles of {tile[0]} × {tile[1]}, blocks of {columns} columns"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--widths", type=int, nargs="+", default=[1024, 2048])
    parser.add_argument("--batch-per-task", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    retain_freed_memory()  # as mtrl-train does
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} threads, {args.batch_per_task} per task")
    print(f"{'K':>3}{'width':>7}  {'way':<14}{'ms':>8}{'÷ plain':>9}")
    for tasks in args.tasks:
        for width in args.widths:
            timed, sizes = ways(tasks, width, args.batch_per_task)
            times: dict[str, list[float]] = {name: [] for name in timed}
            for way in timed.values():
                way()  # warm-up
            for _ in range(args.repeats):
                for name, way in timed.items():
                    start = time.perf_counter()
                    way()
                    times[name].append(time.perf_counter() - start)
            plain = statistics.median(times["plain"])
            for name, taken in times.items():
                ms = statistics.median(taken)
                print(f"{tasks:>3}{width:>7}  {name:<14}{ms * 1e3:8.1f}{ms / plain:9.2f}")
            print(f"{'':>12}({sizes})")


if __name__ == "__main__":
    main()
