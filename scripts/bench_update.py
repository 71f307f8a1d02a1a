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
time of each path and the ratios vectorised / floor and K-backward / grouped.

    python scripts/bench_update.py                       # K = 10 and 50 on cpu (and cuda)
    python scripts/bench_update.py --tasks 10 --repeats 20 --methods gradops pcgrad cagrad
"""

from __future__ import annotations

import argparse
import functools
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--devices", nargs="+", default=None, help="default: cpu, and cuda")
    parser.add_argument("--methods", nargs="+", default=None, help="default: every method")
    parser.add_argument(
        "--loop-methods",
        nargs="+",
        default=["gradops", "pcgrad", "cagrad"],
        help="methods also timed with K backward passes (slow for K = 50)",
    )
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--loop-repeats", type=int, default=3)
    parser.add_argument("--batch-per-task", type=int, default=128)
    parser.add_argument("--net", type=int, nargs="+", default=[400, 400, 400])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the methods' K×K computation"
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
                compile=args.compile,
            )
            models = {("mean", "none"): build("mean", "none")}
            for method in methods:
                for mode in ("grouped", "vmap"):
                    models[method, mode] = build(method, mode)
            times = median_update_ms(models, args.repeats)
            looped = median_update_ms(
                {(m, "loop"): build(m, "loop") for m in methods if m in args.loop_methods},
                args.loop_repeats,
                warmup=1,
            )
            floor = times["mean", "none"]
            print(f"\n{device}, K = {tasks}: floor (plain MT-SAC, summed loss) {floor:.1f} ms")
            print(
                f"{'method':<14}{'grouped':>10}{'÷ floor':>8}{'vmap':>10}{'÷ floor':>8}"
                f"{'K-backward':>12}{'÷ grouped':>10}"
            )
            for method in methods:
                line = f"{method:<14}" + "".join(
                    f"{times[method, mode]:8.1f}ms{times[method, mode] / floor:8.2f}"
                    for mode in ("grouped", "vmap")
                )
                if (method, "loop") in looped:
                    loop = looped[method, "loop"]
                    line += f"{loop:10.1f}ms{loop / times[method, 'grouped']:10.2f}"
                print(line, flush=True)


if __name__ == "__main__":
    main()
