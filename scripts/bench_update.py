"""Time one full MTSAC gradient step (critic, actor and temperatures) three ways, in one run.

- floor: plain multi-task SAC, one backward pass of the mean loss (``mean``, no per-task
  gradients);
- vectorised: per-task gradients from one vmapped pass, then each aggregation method;
- K-backward: per-task gradients from K backward passes, as the older code bases compute them.

The networks and the batch are the standard ones (3 × 400, 128 transitions per task), on
Meta-World's shapes (39 observation values and a one-hot of K, 4 actions). Prints the median
time of each path and the ratios vectorised / floor and K-backward / vectorised.

    python scripts/bench_update.py                       # K = 10 and 50 on cpu (and cuda)
    python scripts/bench_update.py --tasks 10 --repeats 20 --methods gradops pcgrad cagrad
"""

from __future__ import annotations

import argparse
import statistics
import time

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.vec_env import DummyVecEnv

from mtrl.agents import MTSAC
from mtrl.aggregators import available, make_aggregator

OBS, ACTIONS = 39, 4


class ShapeOnly(gym.Env):
    """An environment with Meta-World's spaces that is never stepped: the replay is filled."""

    def __init__(self, tasks: int) -> None:
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (OBS + tasks,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (ACTIONS,), np.float32)


def make_model(tasks, method, mode, device, net, batch_per_task, rows=2000) -> MTSAC:
    env = DummyVecEnv([lambda: ShapeOnly(tasks)] * tasks)
    model = MTSAC(
        "MlpPolicy",
        env,
        aggregator=method,
        per_task_gradients=mode,
        batch_size=batch_per_task * tasks,
        buffer_size=rows * tasks,
        policy_kwargs={"net_arch": net},
        seed=0,
        device=device,
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


def median_update_ms(model: MTSAC, repeats: int, warmup: int = 2) -> float:
    batch_per_task = model.batch_size // model.policy.num_tasks
    synchronize = torch.cuda.synchronize if model.device.type == "cuda" else lambda: None
    times = []
    for step in range(warmup + repeats):
        batch = model.replay_buffer.sample_tasks(batch_per_task)
        synchronize()
        start = time.perf_counter()
        model.update(batch)
        synchronize()
        if step >= warmup:
            times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


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
    args = parser.parse_args()
    devices = args.devices or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    methods = args.methods or [m for m in available() if not make_aggregator(m).loss_based]
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
        f"net {args.net}, {args.batch_per_task} transitions per task"
    )
    for device in devices:
        for tasks in args.tasks:
            floor = median_update_ms(
                make_model(tasks, "mean", "none", device, args.net, args.batch_per_task),
                args.repeats,
            )
            print(f"\n{device}, K = {tasks}: floor (plain MT-SAC, summed loss) {floor:.1f} ms")
            print(f"{'method':<14}{'vectorised':>12}{'÷ floor':>9}{'K-backward':>13}{'÷ vect.':>9}")
            for method in methods:
                model = make_model(tasks, method, "vmap", device, args.net, args.batch_per_task)
                vectorised = median_update_ms(model, args.repeats)
                line = f"{method:<14}{vectorised:10.1f}ms{vectorised / floor:9.2f}"
                if method in args.loop_methods:
                    model = make_model(tasks, method, "loop", device, args.net, args.batch_per_task)
                    looped = median_update_ms(model, args.loop_repeats, warmup=1)
                    line += f"{looped:11.1f}ms{looped / vectorised:9.2f}"
                print(line, flush=True)


if __name__ == "__main__":
    main()
