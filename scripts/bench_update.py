"""Time one full MTSAC gradient step (critic, actor and temperatures) three ways, in one run.

- floor: plain multi-task SAC, one backward pass of the mean loss (``mean``, no per-task
  gradients);
- vectorised: per-task gradients in one pass, then each aggregation method, with both of
  mtrl's ways: ``grouped`` (one backward pass, per-task weight gradients from each layer's
  inputs and output gradients; the default) and ``vmap`` (``torch.func.vmap`` over tasks);
- K-backward: per-task gradients from K backward passes through the whole graph, as the older
  code bases compute them.

The networks and the batch are the standard ones (3 × 400, 128 transitions per task), on
Meta-World's shapes (39 observation values and a one-hot of K, 4 actions). Prints the median
time of each path and the ratios vectorised / floor and K-backward / grouped; on CUDA also each
update's peak memory above the model's own.

With ``--compile-ratio`` it times each method eager and with ``compile=True`` instead (on CUDA
the whole update captured as a CUDA graph, on the CPU the methods' K×K computation compiled),
and prints compiled ÷ eager.

    python scripts/bench_update.py                       # K = 10 and 50 on cpu (and cuda)
    python scripts/bench_update.py --tasks 10 --repeats 20 --methods gradops pcgrad cagrad
    python scripts/bench_update.py --tasks 10 --methods cagrad nash-mtl --compile-ratio
    python scripts/bench_update.py --devices cuda --net 1024 1024 1024 --modes auto
"""

from __future__ import annotations

import argparse
import functools
import gc
import statistics
import time

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.vec_env import DummyVecEnv

from mtrl.agents import MTSAC
from mtrl.aggregators import available, make_aggregator
from mtrl.allocator import retain_freed_memory

OBS, ACTIONS = 39, 4


class ShapeOnly(gym.Env):
    """An environment with Meta-World's spaces that is never stepped: the replay is filled."""

    def __init__(self, tasks: int) -> None:
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (OBS + tasks,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (ACTIONS,), np.float32)


def make_model(tasks, method, mode, *, device, net, batch_per_task, rows=2000, **options) -> MTSAC:
    """An MTSAC on Meta-World's shapes with a replay buffer of random transitions; ``options``
    are further MTSAC arguments (``compile``, ``gram_update``, ``policy_kwargs``
    besides the hidden sizes, ...)."""
    env = DummyVecEnv([lambda: ShapeOnly(tasks)] * tasks)
    policy_kwargs = {"net_arch": net, **options.pop("policy_kwargs", {})}
    model = MTSAC(
        "MlpPolicy",
        env,
        aggregator=method,
        per_task_gradients=mode,
        batch_size=batch_per_task * tasks,
        buffer_size=rows * tasks,
        policy_kwargs=policy_kwargs,
        seed=0,
        device=device,
        **options,
    )
    return fill_replay(model, tasks, rows)


def fill_replay(model: MTSAC, tasks: int, rows: int) -> MTSAC:
    """``model`` with ``rows`` random transitions per task in its replay buffer."""
    generator = np.random.default_rng(0)
    onehot = np.eye(tasks, dtype=np.float32)
    for _ in range(rows):
        obs = np.concatenate([generator.normal(size=(tasks, OBS)), onehot], 1).astype(np.float32)
        model.replay_buffer.add(
            obs,
            obs,
            generator.uniform(-1, 1, (tasks, ACTIONS)).astype(np.float32),
            generator.normal(size=tasks).astype(np.float32),
            np.zeros(tasks),
            [{}] * tasks,
        )
    return model


def median_update_ms(models: dict[str, MTSAC], repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median time of one update for each model, timed in turns so that drift hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in models}
    for step in range(warmup + repeats):
        for name, model in models.items():
            batch = model.replay_buffer.sample_tasks(model.batch_size // model.policy.num_tasks)
            synchronize = torch.cuda.synchronize if model.device.type == "cuda" else lambda: None
            synchronize()
            start = time.perf_counter()
            model.update(batch)
            synchronize()
            if step >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(values) for name, values in times.items()}


def peak_update_mb(model: MTSAC) -> float:
    """CUDA memory one update needs above what the model holds already, in MB."""
    batch = model.replay_buffer.sample_tasks(model.batch_size // model.policy.num_tasks)
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    held = torch.cuda.memory_allocated()
    model.update(batch)
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - held) / 2**20


def compile_ratio(build, methods: list[str], repeats: int, device: str, tasks: int) -> None:
    """Each method's update eager and compiled, timed in turns, and their ratio."""
    models = {}
    for method in methods:
        models[method, False] = build(method, "auto", compile=False)
        models[method, True] = build(method, "auto", compile=True)
    times = median_update_ms(models, repeats, warmup=5)  # compiling and capturing come first
    print(f"\n{device}, K = {tasks}: compile=True against eager (auto per-task gradients)")
    print(f"{'method':<14}{'eager':>10}{'compiled':>10}{'÷ eager':>9}")
    for method in methods:
        eager, compiled = times[method, False], times[method, True]
        print(f"{method:<14}{eager:8.2f}ms{compiled:8.2f}ms{compiled / eager:9.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--devices", nargs="+", default=None, help="default: cpu, and cuda")
    parser.add_argument("--methods", nargs="+", default=None, help="default: every method")
    parser.add_argument(
        "--loop-methods",
        nargs="*",
        default=["gradops", "pcgrad", "cagrad"],
        help="methods also timed with K backward passes (slow for K = 50)",
    )
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--loop-repeats", type=int, default=3)
    parser.add_argument("--batch-per-task", type=int, default=128)
    parser.add_argument("--rows", type=int, default=2000, help="replay rows of random data")
    parser.add_argument("--net", type=int, nargs="+", default=[400, 400, 400])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the methods' K×K computation"
    )
    parser.add_argument(
        "--compile-ratio", action="store_true", help="time each method eager and compiled"
    )
    parser.add_argument(
        "--modes",
        nargs="+",
        default=["grouped", "vmap"],
        choices=["auto", "grouped", "gram", "vmap"],
        help="ways to have the per-task gradients (auto: Gram-first where layers are wide)",
    )
    parser.add_argument(
        "--default-allocator",
        action="store_true",
        help="leave malloc's defaults (mtrl-train keeps freed memory, see mtrl.allocator)",
    )
    args = parser.parse_args()
    retained = not args.default_allocator and retain_freed_memory()
    devices = args.devices or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    methods = args.methods or [m for m in available() if not make_aggregator(m).loss_based]
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
        f"net {args.net}, {args.batch_per_task} transitions per task"
        + (", methods compiled" if args.compile else "")
        + (", freed memory kept for reuse" if retained else ", malloc defaults")
    )
    for device in devices:
        for tasks in args.tasks:
            build = functools.partial(
                make_model,
                tasks,
                device=device,
                net=args.net,
                batch_per_task=args.batch_per_task,
                rows=args.rows,
            )
            if args.compile_ratio:
                compile_ratio(build, methods, args.repeats, device, tasks)
                continue
            build = functools.partial(build, compile=args.compile)
            models = {("mean", "none"): build("mean", "none")}
            for method in methods:
                for mode in args.modes:
                    models[method, mode] = build(method, mode)
            times = median_update_ms(models, args.repeats)
            looped = median_update_ms(
                {(m, "loop"): build(m, "loop") for m in methods if m in args.loop_methods},
                args.loop_repeats,
                warmup=1,
            )
            floor = times["mean", "none"]
            cuda = torch.device(device).type == "cuda"
            peaks = {name: peak_update_mb(model) for name, model in models.items()} if cuda else {}
            first = args.modes[0]
            print(
                f"\n{device}, K = {tasks}, net {args.net}: floor (plain MT-SAC, summed loss) "
                f"{floor:.2f} ms" + (f", peak {peaks['mean', 'none']:.0f} MB" if cuda else "")
            )
            print(
                f"{'method':<14}"
                + "".join(f"{mode:>10}{'÷ floor':>8}" for mode in args.modes)
                + (f"{'K-backward':>12}{'÷ ' + first:>10}" if looped else "")
                + (f"{'peak MB ' + first:>15}" if cuda else "")
            )
            for method in methods:
                line = f"{method:<14}" + "".join(
                    f"{times[method, mode]:8.2f}ms{times[method, mode] / floor:8.2f}"
                    for mode in args.modes
                )
                if (method, "loop") in looped:
                    loop = looped[method, "loop"]
                    line += f"{loop:10.1f}ms{loop / times[method, first]:10.2f}"
                if cuda:
                    line += f"{peaks[method, first]:15.0f}"
                print(line, flush=True)


if __name__ == "__main__":
    main()
