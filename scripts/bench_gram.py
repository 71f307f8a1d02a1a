"""Wide networks: time and peak memory of an update with stored per-task gradients, Gram-first,
and the automatic choice, each against the plain update, measured in one run.

For every (K tasks, width) the script times, in alternating turns, one full MTSAC update
(critic, actor, temperatures) of:

- floor: plain multi-task SAC, one backward pass of the mean loss (``mean``, no per-task
  gradients);
- stored: each method with its per-task gradients ``[K, P]`` stored (``grouped``);
- gram: Gram-first, never holding them, the update from weighted output gradients
  (``gram``, ``products``) or from a second weighted backward pass (``gram``, ``backward``);
- auto: the default, each layer stored or Gram-first by its size.

Peak memory is taken in a separate process per configuration: on the CPU, the peak resident
memory during an update minus the resident memory just before it (with every block of 1 MB or
more mapped on its own and a ``malloc_trim`` first, so that freed memory is not counted); on
CUDA, ``max_memory_allocated`` minus the memory allocated before. Prints milliseconds and MB,
and each way's ratio to the floor.

    python scripts/bench_gram.py --tasks 10 --widths 400 1024 --methods gradops
    python scripts/bench_gram.py --tasks 10 50 --widths 1024 --methods gradops pcgrad cagrad
    python scripts/bench_gram.py --tasks 50 --widths 4096 --ways floor auto --repeats 1
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import subprocess
import sys

import torch
from bench_update import make_model, median_update_ms, peak_update_mb
from memory_long_run import resident_mb

from mtrl.allocator import M_MMAP_THRESHOLD, retain_freed_memory

# way → (per_task_gradients, gram_update); the floor is the plain update
WAYS = {
    "floor": ("none", "products"),
    "stored": ("grouped", "products"),
    "gram": ("gram", "products"),
    "gram-backward": ("gram", "backward"),
    "auto": ("auto", "products"),
}


def build(tasks, width, method, way, device, batch_per_task, depth=3):
    mode, update = WAYS[way]
    return make_model(
        tasks,
        "mean" if way == "floor" else method,
        mode,
        device=device,
        net=[width] * depth,
        batch_per_task=batch_per_task,
        rows=max(batch_per_task, 256),
        gram_update=update,
    )


def peak_resident_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def largest_update_mb(model, repeats: int = 3) -> float:
    """The largest peak memory of ``repeats`` updates above what was held before each, in MB;
    the first update, which allocates the optimizers' state, runs before them, not counted."""
    if model.device.type == "cuda":
        return max([peak_update_mb(model) for _ in range(repeats + 1)][1:])
    libc = ctypes.CDLL(None)
    peaks = []
    for _ in range(repeats + 1):
        batch = model.replay_buffer.sample_tasks(model.batch_size // model.policy.num_tasks)
        gc.collect()
        libc.malloc_trim(0)
        before = resident_mb()
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # the peak resident memory starts again from now
        model.update(batch)
        peaks.append(peak_resident_bytes() / 1e6 - before)
        del batch
    return max(peaks[1:])


def measure_memory(args) -> None:
    """The child process: one configuration's peak, printed as JSON.

    Blocks of 1 MB and more are mapped and unmapped one by one (a fixed mmap threshold), so that
    resident memory follows the tensors alive rather than how glibc's heap happens to fragment.
    """
    libc = ctypes.CDLL(None)
    libc.mallopt(M_MMAP_THRESHOLD, 1 << 20)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = build(
        args.tasks[0],
        args.widths[0],
        args.methods[0],
        args.ways[0],
        args.device,
        args.batch_per_task,
    )
    print(json.dumps({"mb": largest_update_mb(model)}))


def memory_in_own_process(args, tasks, width, method, way) -> float:
    command = [
        sys.executable,
        __file__,
        "--memory-child",
        "--tasks",
        str(tasks),
        "--widths",
        str(width),
        "--methods",
        method,
        "--ways",
        way,
        "--device",
        args.device,
        "--batch-per-task",
        str(args.batch_per_task),
    ] + (["--threads", str(args.threads)] if args.threads else [])
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])["mb"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--widths", type=int, nargs="+", default=[400, 1024, 2048])
    parser.add_argument("--methods", nargs="+", default=["gradops", "pcgrad", "cagrad"])
    parser.add_argument("--ways", nargs="+", default=list(WAYS), choices=list(WAYS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-per-task", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5, help="timed updates per way")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-memory", action="store_true", help="time only")
    parser.add_argument("--no-time", action="store_true", help="memory only")
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        measure_memory(args)
        return
    retain_freed_memory()  # as mtrl-train does, for the timings
    if args.threads:
        torch.set_num_threads(args.threads)
    ways = [w for w in args.ways if w != "floor"]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.device}, "
        f"{args.batch_per_task} transitions per task, 3 hidden layers"
    )
    for tasks in args.tasks:
        for width in args.widths:
            times, memory = {}, {}
            if not args.no_time:
                models = {
                    "floor": build(tasks, width, "mean", "floor", args.device, args.batch_per_task)
                }
                for method in args.methods:
                    for way in ways:
                        models[method, way] = build(
                            tasks, width, method, way, args.device, args.batch_per_task
                        )
                times = median_update_ms(models, args.repeats, warmup=1)
                del models
                gc.collect()
            if not args.no_memory:
                memory["floor"] = memory_in_own_process(args, tasks, width, "mean", "floor")
                for method in args.methods:
                    for way in ways:
                        memory[method, way] = memory_in_own_process(args, tasks, width, method, way)
            floor_ms, floor_mb = times.get("floor"), memory.get("floor")
            print(
                f"\nK = {tasks}, width {width}: floor "
                + (f"{floor_ms:.0f} ms" if floor_ms else "")
                + (f", peak {floor_mb:.0f} MB" if floor_mb else "")
            )
            print(f"{'method':<10}{'way':<15}{'ms':>9}{'÷ floor':>9}{'MB':>9}{'÷ floor':>9}")
            for method in args.methods:
                for way in ways:
                    ms, mb = times.get((method, way)), memory.get((method, way))
                    print(
                        f"{method:<10}{way:<15}"
                        + (f"{ms:9.0f}{ms / floor_ms:9.2f}" if ms else " " * 18)
                        + (f"{mb:9.0f}{mb / floor_mb:9.2f}" if mb else ""),
                        flush=True,
                    )


if __name__ == "__main__":
    main()
