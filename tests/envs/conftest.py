"""Environments shared by the envs tests: MT10 takes seconds to build, so it is built once."""

from __future__ import annotations

import pytest

from mtrl.envs.benchmarks import BenchmarkSpec, make_vector_env

MT10_SHORT = BenchmarkSpec("mt10", episode_length=10)


@pytest.fixture(scope="session")
def mt10_env():
    """MT10 with 10-step episodes; tests must not rely on its state (reset it first)."""
    env = make_vector_env(MT10_SHORT, seed=0)
    yield env
    env.close()
