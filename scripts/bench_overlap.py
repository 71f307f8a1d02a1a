"""End-to-end MT10 training rate with the environments stepped in this process (sync) against
in worker processes while the update runs (async, ``overlap_updates``), in alternating rounds.

The choice ``benchmark.vector_strategy=auto`` makes from the core count rests on this: on 2
cores the workers contend with the update for the cores; with many cores they step for free.
Prints env steps per second (updates included) of each, the ratio async / sync of each round
and their median.

    python scripts/bench_overlap.py --steps 100 --rounds 5
    python scripts/bench_overlap.py --device cuda --net 400 400 400
"""

from __future__ import annotations

import os
import statistics

from bench_train import TASKS, alternating_rates, training_arguments

from mtrl.agents import MTSAC
from mtrl.allocator import retain_freed_memory
from mtrl.envs import BenchmarkSpec, MetaWorldVecEnv, make_vector_env


def main() -> None:
    parser = training_arguments(__doc__, steps=100, rounds=5, warmup=150)
    args = parser.parse_args()
    retain_freed_memory()
    print(f"{os.cpu_count()} cores, {args.method}, net {args.net}, device {args.device}")
    models = {}
    for strategy in ("sync", "async"):
        spec = BenchmarkSpec("mt10", vector_strategy=strategy)
        env = MetaWorldVecEnv(make_vector_env(spec, seed=0))
        models[strategy] = MTSAC(
            "MlpPolicy",
            env,
            aggregator=args.method,
            batch_size=args.batch_per_task * TASKS,
            buffer_size=100_000,
            learning_starts=args.warmup * TASKS // 2,
            policy_kwargs={"net_arch": args.net},
            seed=0,
            device=args.device,
        )
        assert models[strategy].overlap_updates == (strategy == "async")
    rates = alternating_rates(models, args.warmup, args.steps, args.rounds)
    for name, values in rates.items():
        print(f"{name:>6}: {statistics.median(values):6.1f} env steps/s (updates included)")
    ratios = [a / s for s, a in zip(rates["sync"], rates["async"], strict=True)]
    print("ratio async / sync per round: " + " ".join(f"{r:.3f}" for r in ratios))
    print(f"ratio async / sync: {statistics.median(ratios):.3f} (median over rounds)")
    for model in models.values():
        model.env.close()


if __name__ == "__main__":
    main()
