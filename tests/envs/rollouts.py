"""Episodes counted by hand: a plain loop over each task's own environment, reading the
success flag and the reward of every step, for comparison with what the evaluation reports."""

from __future__ import annotations

import numpy as np

from mtrl.envs.benchmarks import BenchmarkSpec, env_task_names, make_vector_env


def count_episodes(policy, spec: BenchmarkSpec, episodes: int, seed: int):
    """Per task: the fraction of ``episodes`` in which ``info["success"]`` became 1 at any step,
    and the mean summed reward, from an environment built as the evaluation builds its own.
    Meta-World's protocol ends an episode at its first success; each task's episodes run one
    after another, each from a plain ``reset()``, as a vector env's autoreset does."""
    env = make_vector_env(spec, seed)
    try:
        success, returns = {}, {}
        for task, sub_env in zip(env_task_names(env), env.envs, strict=True):
            sub_env.get_wrapper_attr("toggle_terminate_on_success")(True)
            succeeded, summed = [], []
            for _ in range(episodes):
                obs, _ = sub_env.reset()
                done, reached, total = False, False, 0.0
                while not done:
                    action = policy(np.asarray(obs, dtype=np.float32)[None])[0]
                    obs, reward, terminated, truncated, info = sub_env.step(action)
                    reached = reached or info["success"] == 1.0
                    total += float(reward)
                    done = terminated or truncated
                succeeded.append(reached)
                summed.append(total)
            success[task] = float(np.mean(succeeded))
            returns[task] = float(np.mean(summed))
        return success, returns
    finally:
        env.close()
