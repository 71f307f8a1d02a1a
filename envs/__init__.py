"""Benchmarks and their evaluation (installed as :mod:`mtrl.envs`)."""
