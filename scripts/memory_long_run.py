"""Resident memory over a long MT10 run, read after every evaluation.

Trains MT10 through ``mtrl-train``'s own code (small networks, a replay buffer that fills in the
first minutes, an evaluation every few thousand steps) and prints the process's resident memory
after each evaluation. The replay buffer's pages are touched as it fills, so memory grows until
it is full; after that, a leak shows as growth from one evaluation to the next. Users of the JAX
Meta-World framework see memory grow at every evaluation until MT50 runs are killed.

    python scripts/memory_long_run.py --minutes 25          # at least 20 for the record
    python scripts/memory_long_run.py --minutes 1 --eval-every 200 --buffer 400  # a quick look

It prints one line per evaluation and, at the end, the growth from the first evaluation after the
buffer filled to the last one (the goal: under 5 %).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_module
from stable_baselines3.common.callbacks import BaseCallback

from mtrl.allocator import retain_freed_memory
from mtrl.cli.train import run

PAGE = os.sysconf("SC_PAGE_SIZE")


def resident_mb() -> float:
    """The process's resident set size now (not its peak), in MB."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE / 1e6


class MemoryAfterEvaluations(BaseCallback):
    """Reads resident memory at every evaluation's step, right after it (placed after the
    evaluation callback, which fires first at the same step), and stops after ``minutes``."""

    def __init__(self, every: int, minutes: float) -> None:
        super().__init__()
        self.every, self.deadline = every, time.monotonic() + 60 * minutes
        self.start = time.monotonic()
        self.readings: list[tuple[int, bool, float]] = []

    def _on_rollout_start(self) -> None:
        steps = self.model.num_timesteps // self.training_env.num_envs
        if steps and steps % self.every == 0:
            full = self.model.replay_buffer.full
            self.readings.append((steps, full, resident_mb()))
            minutes = (time.monotonic() - self.start) / 60
            print(
                f"{minutes:6.1f} min  vector step {steps:7d}  buffer "
                f"{'full' if full else 'filling'}  resident {self.readings[-1][2]:8.1f} MB",
                flush=True,
            )
            if time.monotonic() > self.deadline:
                self.model.stop_requested = True

    def _on_step(self) -> bool:
        return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=25.0, help="train at least this long")
    parser.add_argument("--eval-every", type=int, default=2000, help="vector steps")
    parser.add_argument("--eval-episodes", type=int, default=2, help="per task")
    parser.add_argument(
        "--buffer", type=int, default=5_000, help="replay capacity per task (fills early)"
    )
    parser.add_argument("--method", default="gradops")
    args = parser.parse_args()
    retain_freed_memory()
    overrides = [
        "benchmark=mt10",
        f"method={args.method}",
        "agent.net_arch=[64,64]",
        "agent.batch_size_per_task=32",
        f"agent.buffer_size_per_task={args.buffer}",
        f"eval.every={args.eval_every}",
        f"eval.episodes={args.eval_episodes}",
        "checkpoint.every=1000000",
        "checkpoint.replay_buffer=false",
        "total_steps=10000000",  # the callback stops the run after --minutes
        "progress_bar=false",
    ]
    with initialize_config_module("mtrl.configs", version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    probe = MemoryAfterEvaluations(args.eval_every, args.minutes)
    with tempfile.TemporaryDirectory() as run_dir:
        run(cfg, Path(run_dir), callbacks=[probe])
    after_full = [mb for _, full, mb in probe.readings if full]
    if len(after_full) < 2:
        print("the buffer filled too late for a comparison: train longer or use a smaller one")
        return
    growth = after_full[-1] / after_full[0] - 1
    print(
        f"after the buffer filled: {after_full[0]:.1f} MB → {after_full[-1]:.1f} MB over "
        f"{len(after_full)} evaluations, growth {100 * growth:+.2f} % (goal: under 5 %)"
    )


if __name__ == "__main__":
    main()
