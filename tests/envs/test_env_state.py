"""An environment restored from its saved state steps exactly as the original goes on stepping."""

import io

import numpy as np
import torch

from mtrl.envs.benchmarks import BenchmarkSpec, make_vector_env
from mtrl.envs.vec_env import MetaWorldVecEnv

EPISODE = 25
SPEC = BenchmarkSpec("mt10", episode_length=EPISODE)


def random_actions(rng, steps, envs=10):
    return rng.uniform(-1, 1, (steps, envs, 4)).astype(np.float32)


def through_a_file(state):
    """``state`` after a weights-only save and load, as a checkpoint holds it."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_a_restored_env_continues_the_episode_in_progress_exactly():
    rng = np.random.default_rng(0)
    original = MetaWorldVecEnv(make_vector_env(SPEC, seed=0))
    restored = MetaWorldVecEnv(make_vector_env(SPEC, seed=0))
    try:
        original.reset()
        for action in random_actions(rng, 2 * EPISODE + 7):  # mid-episode, goals drawn twice
            original.step(action)
        restored.reset()
        for action in random_actions(rng, 3):  # somewhere else entirely
            restored.step(action)
        assert restored.load_state_dict(through_a_file(original.state_dict()))
        # two more episode ends, with new goals drawn from the restored generators
        for action in random_actions(rng, 2 * EPISODE):
            expected, got = original.step(action), restored.step(action)
            for part, (a, b) in enumerate(zip(expected[:3], got[:3], strict=True)):
                np.testing.assert_array_equal(a, b, err_msg=f"part {part} of the step")
            for a, b in zip(expected[3], got[3], strict=True):
                assert a["success"] == b["success"]
                assert ("episode" in a) == ("episode" in b)
                if "episode" in a:
                    assert (a["episode"]["r"], a["is_success"]) == (
                        b["episode"]["r"],
                        b["is_success"],
                    )
                    np.testing.assert_array_equal(
                        a["terminal_observation"], b["terminal_observation"]
                    )
    finally:
        original.close()
        restored.close()


def test_an_async_env_restores_goals_and_generators_and_starts_new_episodes():
    spec = BenchmarkSpec("mt1", "reach-v3", episode_length=EPISODE, vector_strategy="async")
    original = MetaWorldVecEnv(make_vector_env(spec, seed=0))
    restored = MetaWorldVecEnv(make_vector_env(spec, seed=3))
    try:
        assert not original.restores_episodes
        original.reset()
        assert not restored.load_state_dict(through_a_file(original.state_dict()))
        # the goals of the next episodes are those the original draws
        goals = [env.reset()[0, 36:39] for env in (original, restored) for _ in range(3)]
        np.testing.assert_array_equal(np.stack(goals[:3]), np.stack(goals[3:]))
    finally:
        original.close()
        restored.close()
