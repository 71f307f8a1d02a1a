"""Meta-World benchmarks, their SB3 adapter and their evaluation (installed as :mod:`mtrl.envs`)."""

from mtrl.envs.benchmarks import BENCHMARKS, BenchmarkSpec, make_vector_env, task_names
from mtrl.envs.evaluation import EvalResult, evaluate
from mtrl.envs.vec_env import MetaWorldVecEnv

__all__ = [
    "BENCHMARKS",
    "BenchmarkSpec",
    "EvalResult",
    "MetaWorldVecEnv",
    "evaluate",
    "make_vector_env",
    "task_names",
]
