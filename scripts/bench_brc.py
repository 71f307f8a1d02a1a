"""Update time and peak memory of experiment=brc against the 3 × 400 MLP, with GradOPS against
mean on each, at BRC's width (a 4096-wide critic) and at one that fits a small machine, and
BRC's batches drawn uniformly over all transitions (the preset's) against equal shares.

Each configuration runs in its own process, so that no other's memory counts in its figures. It
builds the agent from mtrl-train's own config (``experiment=brc`` with the critic's width set,
or the default recipe's 3 × 400 MLP), on MT10's shapes, fills its replay with random transitions,
and times ``--repeats`` updates after one warm-up update. It reports the median update (all of
BRC's updates are single updates here: ``gradient_steps=2`` is two of them per vector step), the
memory the process held before the first update (the networks, their targets, the replay) and
its peak over the updates, which adds the optimizers' moments and an update's working memory: on
the CPU the resident memory sampled every millisecond, on CUDA the allocator's.

    python scripts/bench_brc.py                              # widths 4096 and 512, cpu
    python scripts/bench_brc.py --widths 512 --repeats 3
    python scripts/bench_brc.py --device cuda --widths 4096 1024
    python scripts/bench_brc.py --widths 512 --samplings per_task    # equal shares only
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_module
from stable_baselines3.common.vec_env import DummyVecEnv

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_update import ShapeOnly, fill_replay

from mtrl.agents import MTSAC
from mtrl.cli.train import train_settings  # importing it registers the config schemas

PAGE = os.sysconf("SC_PAGE_SIZE")
TASKS = 10


def resident_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE / 2**20


def overrides(
    network: str, width: int | None, sampling: str, method: str, device: str
) -> list[str]:
    base = [f"method={method}", f"device={device}", "benchmark=mt10"]
    if network == "brc":
        brc = ["experiment=brc", f"network.critic_width={width}"]
        return [*brc, f"agent.batch_sampling={sampling}", *base]
    return base  # the default recipe: the 3 × 400 MLP, 128 transitions per task


def measure(
    network: str, width: int | None, sampling: str, method: str, device: str, repeats: int
) -> dict:
    """One configuration, in this process."""
    with initialize_config_module("mtrl.configs", version_base="1.3"):
        cfg = compose("train", overrides=overrides(network, width, sampling, method, device))
    kwargs = train_settings(cfg).agent_kwargs
    kwargs.update(buffer_size=500 * TASKS, learning_starts=0, seed=0, device=device)
    env = DummyVecEnv([lambda: ShapeOnly(TASKS)] * TASKS)
    model = fill_replay(MTSAC("MlpPolicy", env, aggregator=method, **kwargs), TASKS, 500)
    cuda = model.device.type == "cuda"

    def batch():
        return model.sample_batch(model.batch_size)

    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    held = torch.cuda.memory_allocated() / 2**20 if cuda else resident_mb()
    peak, sampling = [held], True

    def sample() -> None:
        while sampling:
            peak.append(resident_mb())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    if not cuda:
        sampler.start()
    times = []
    for _ in range(1 + repeats):  # the first makes the moments and is not timed
        start = time.perf_counter()
        model.update(batch())
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    times = times[1:]
    sampling = False
    if cuda:
        peak.append(torch.cuda.max_memory_allocated() / 2**20)
    else:
        sampler.join()
    parameters = sum(p.numel() for p in model.policy.parameters()) // 2  # less the target's half
    return {
        "update_ms": 1e3 * statistics.median(times),
        "held_mb": held,
        "peak_mb": max(peak),
        "parameters_m": parameters / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[4096, 512])
    parser.add_argument("--methods", nargs="+", default=["mean", "gradops"])
    parser.add_argument("--samplings", nargs="+", default=["uniform", "per_task"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--one", nargs=4, metavar=("NETWORK", "WIDTH", "SAMPLING", "METHOD"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:
        network, width, sampling, method = args.one
        result = measure(network, int(width) or None, sampling, method, args.device, args.repeats)
        print(json.dumps(result))
        return
    configs = [("mlp", 0, "per_task")]
    configs += [("brc", width, sampling) for width in args.widths for sampling in args.samplings]
    results = {}
    for network, width, sampling in configs:
        for method in args.methods:
            command = [sys.executable, __file__, "--one", network, str(width), sampling, method]
            command += ["--device", args.device, "--repeats", str(args.repeats)]
            command += ["--threads", str(args.threads)] if args.threads else []
            output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            results[network, width, sampling, method] = json.loads(output.splitlines()[-1])
            print(
                f"measured {network} {width or ''} {sampling} {method}", file=sys.stderr, flush=True
            )
    print(
        f"MT10, {args.device}, {torch.get_num_threads()} threads; median of {args.repeats} updates"
    )
    header = f"{'network':<22}{'batch':<10}{'method':<9}{'params':>9}{'update':>11}"
    print(f"{header}{'before':>10}{'peak':>10}")
    for (network, width, sampling, method), r in results.items():
        name = "3 x 400 MLP" if network == "mlp" else f"BRC, critic {width} wide"
        print(
            f"{name:<22}{sampling:<10}{method:<9}{r['parameters_m']:8.1f}M{r['update_ms']:9.0f}ms"
            f"{r['held_mb']:8.0f}MB{r['peak_mb']:8.0f}MB"
        )

    def ratio(a: dict, b: dict) -> str:
        update, peak = a["update_ms"] / b["update_ms"], a["peak_mb"] / b["peak_mb"]
        return f"update {update:.2f}x, peak {peak:.2f}x"

    print("\nratios")
    for network, width, sampling in configs:
        if set(args.methods) >= {"mean", "gradops"}:
            mean, gradops = (results[network, width, sampling, m] for m in ("mean", "gradops"))
            name = "3 x 400 MLP" if network == "mlp" else f"BRC {width} {sampling}"
            print(f"{name}: gradops ÷ mean  {ratio(gradops, mean)}")
    for width in args.widths:
        for method in args.methods:
            if set(args.samplings) >= {"uniform", "per_task"}:
                uniform, equal = (results["brc", width, s, method] for s in ("uniform", "per_task"))
                print(f"BRC {width}, {method}: uniform ÷ per_task  {ratio(uniform, equal)}")
            for sampling in args.samplings:
                brc, mlp = (
                    results["brc", width, sampling, method],
                    results["mlp", 0, "per_task", method],
                )
                print(f"BRC {width} {sampling} ÷ MLP, {method}: {ratio(brc, mlp)}")


if __name__ == "__main__":
    main()
