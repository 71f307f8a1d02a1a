"""End-to-end training throughput on MT10: MTSAC with GradOPS against SB3's own SAC.

Both train on the same MT10 vec env with the same networks (3 × 400 for the actor and each
critic), the same batch (1280 = 128 per task) and one gradient step per vector step, after the
same warm-up. Measurement rounds alternate between the two. Prints env steps per second
(updates included), the ratio MTSAC / SAC of each round and their median.

    python scripts/bench_train.py --steps 200 --rounds 3
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

from stable_baselines3 import SAC

from mtrl.agents import MTSAC
from mtrl.allocator import retain_freed_memory
from mtrl.envs import BenchmarkSpec, MetaWorldVecEnv, make_vector_env

TASKS = 10


def throughput(model, vector_steps: int) -> float:
    start = time.perf_counter()
    model.learn(vector_steps * TASKS, reset_num_timesteps=False)
    return vector_steps * TASKS / (time.perf_counter() - start)


def alternating_rates(models: dict, warmup: int, steps: int, rounds: int) -> dict[str, list]:
    """Each model's env steps/s in rounds that alternate between them, after a warm-up each."""
    for model in models.values():
        model.learn(warmup * TASKS)
    rates = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            rates[name].append(throughput(model, steps))
    return rates


def training_arguments(description: str, steps: int, rounds: int, warmup: int):
    """The options of the end-to-end scripts: rounds of training, the network and the batch."""
    parser = argparse.ArgumentParser(description=description.splitlines()[0])
    parser.add_argument("--steps", type=int, default=steps, help="vector steps per round")
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--warmup", type=int, default=warmup, help="vector steps before timing")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--method", default="gradops")
    parser.add_argument("--net", type=int, nargs="+", default=[400, 400, 400])
    parser.add_argument("--batch-per-task", type=int, default=128)
    return parser


def main() -> None:
    parser = training_arguments(__doc__, steps=200, rounds=3, warmup=200)
    parser.add_argument(
        "--default-allocator",
        action="store_true",
        help="leave malloc's defaults (mtrl-train keeps freed memory, see mtrl.allocator)",
    )
    args = parser.parse_args()
    retained = not args.default_allocator and retain_freed_memory()
    print("freed memory kept for reuse" if retained else "malloc defaults")
    common = dict(
        batch_size=args.batch_per_task * TASKS,
        buffer_size=100_000,
        learning_starts=100 * TASKS,
        train_freq=1,
        gradient_steps=1,
        policy_kwargs={"net_arch": args.net},
        seed=0,
        device=args.device,
    )
    envs = [MetaWorldVecEnv(make_vector_env(BenchmarkSpec("mt10"), seed=0)) for _ in range(2)]
    # each model gets its own copy: SB3 writes into policy_kwargs
    models = {
        "SB3 SAC": SAC("MlpPolicy", envs[0], **copy.deepcopy(common)),
        f"MTSAC + {args.method}": MTSAC(
            "MlpPolicy", envs[1], aggregator=args.method, **copy.deepcopy(common)
        ),
    }
    rates = alternating_rates(models, args.warmup, args.steps, args.rounds)
    medians = {name: statistics.median(values) for name, values in rates.items()}
    for name, rate in medians.items():
        print(f"{name:>18}: {rate:6.1f} env steps/s (updates included)")
    # The machine's speed drifts over minutes; a ratio within each round cancels the drift.
    sac, ours = rates.values()
    ratios = [b / a for a, b in zip(sac, ours, strict=True)]
    print("ratio MTSAC / SAC per round: " + " ".join(f"{r:.3f}" for r in ratios))
    print(f"ratio MTSAC / SAC: {statistics.median(ratios):.3f} (median over rounds)")
    for env in envs:
        env.close()


if __name__ == "__main__":
    main()
