"""Environment steps per second: raw Meta-World MT10 against mtrl's vec env and SB3 adapter.

The raw loop steps ``gym.make_vec("Meta-World/MT10", ...)`` directly with random actions; the
other path steps the same benchmark built by ``mtrl.envs.make_vector_env`` through the SB3
``VecEnv`` adapter, as training does. Rounds alternate between the two so that a busy machine
slows both alike. Prints env steps/s and the ratio adapter / raw for sync and async.

    python scripts/bench_env.py --steps 1000 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import gymnasium as gym
import numpy as np

from mtrl.envs import BenchmarkSpec, MetaWorldVecEnv, make_vector_env

SEED = 0


def raw_env(strategy: str) -> gym.vector.VectorEnv:
    return gym.make_vec(
        "Meta-World/MT10",
        vector_strategy=strategy,
        seed=SEED,
        use_one_hot=True,
        reward_function_version="v2",
        max_episode_steps=500,
        num_goals=50,
        terminate_on_success=False,
    )


def steps_per_second(step, actions: np.ndarray) -> float:
    start = time.perf_counter()
    for action in actions:
        step(action)
    return actions.shape[0] * actions.shape[1] / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000, help="vector steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--strategies", nargs="+", default=["sync", "async"])
    args = parser.parse_args()
    actions = np.random.default_rng(SEED).uniform(-1, 1, (args.steps, 10, 4)).astype(np.float32)
    for strategy in args.strategies:
        raw = raw_env(strategy)
        ours = MetaWorldVecEnv(
            make_vector_env(BenchmarkSpec("mt10", vector_strategy=strategy), SEED)
        )
        raw.reset()
        ours.reset()
        rates = {"raw": [], "ours": []}
        for _ in range(args.rounds):
            rates["raw"].append(steps_per_second(raw.step, actions))
            rates["ours"].append(steps_per_second(ours.step, actions))
        raw.close()
        ours.close()
        raw_rate, our_rate = (statistics.median(rates[k]) for k in ("raw", "ours"))
        print(
            f"{strategy:>5}: raw Meta-World {raw_rate:7.0f} env steps/s, "
            f"mtrl vec env + SB3 adapter {our_rate:7.0f} env steps/s, "
            f"ratio {our_rate / raw_rate:.2f}"
        )


if __name__ == "__main__":
    main()
