"""Update time of each architecture at its published size against the multi-head MLP (3 × 400),
measured in one run in alternating turns.

Each network takes one full MTSAC update (critic, actor, temperatures) with a Gram-based method
(``gradops`` by default) and with the plain update (``mean``, one backward pass); the settings
are those of ``configs/network/*.yaml`` and ``configs/network_benchmark/*`` for the benchmark.
Prints milliseconds, the ratio to the MLP's, and each network's Gram-based ÷ plain ratio.

    python scripts/bench_networks.py --tasks 10
    python scripts/bench_networks.py --tasks 50 --repeats 3
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import yaml
from bench_update import make_model, median_update_ms

from mtrl.allocator import retain_freed_memory

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
NETWORKS = ("multi-head", "moore", "soft-modules", "care", "paco", "film")


def published_options(network: str, tasks: int) -> dict:
    """The network's options from its config, with its MT50 settings on 50 tasks."""
    options = yaml.safe_load((CONFIGS / "network" / f"{network}.yaml").read_text())
    options = {k: v for k, v in options.items() if k not in ("defaults", "name")}
    larger = CONFIGS / "network_benchmark" / f"{network}_mt50.yaml"
    if tasks == 50 and larger.is_file():
        options.update(yaml.safe_load(larger.read_text()))
    return options


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10)
    parser.add_argument("--method", default="gradops")
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=NETWORKS)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    retain_freed_memory()
    models = {}
    for network in args.networks:
        policy = {"network": network, "network_options": published_options(network, args.tasks)}
        for method, mode in ((args.method, "auto"), ("mean", "none")):
            models[network, method] = make_model(
                args.tasks,
                method,
                mode,
                device=args.device,
                net=[400, 400, 400],
                batch_per_task=128,
                rows=256,
                policy_kwargs=policy,
            )
    times = median_update_ms(models, args.repeats, warmup=1)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, K = {args.tasks}, "
        f"{args.method} (auto) and mean (one backward pass), 128 transitions per task"
    )
    reference = times["multi-head", args.method]
    print(f"{'network':<14}{args.method:>10}{'÷ MLP':>8}{'mean':>10}{'÷ mean':>8}")
    for network in args.networks:
        ms, plain = times[network, args.method], times[network, "mean"]
        print(f"{network:<14}{ms:8.1f}ms{ms / reference:8.2f}{plain:8.1f}ms{ms / plain:8.2f}")


if __name__ == "__main__":
    main()
