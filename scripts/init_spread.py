"""How much each architecture's outputs vary with the state at initialisation, against the
multi-head MLP's: a network whose outputs barely move with the state starts blind to it.

MT10 shapes (39 state values and a one-hot of 10, 4 actions), hidden layers 3 × 400, ``init=he``,
each network with its options from ``configs/network/<name>.yaml``. For each of three seeds, 512
states per task are drawn as ``scale · N(0, 1)`` (actions for Q uniform in [-1, 1]); the spread is
the standard deviation over a task's states of the policy mean (averaged over the action
dimensions) and of Q (averaged over the two critics), averaged over tasks and seeds. Prints each
spread as a fraction of multi-head's.

    python scripts/init_spread.py
    python scripts/init_spread.py --scale 1.0
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import yaml

from mtrl.agents.networks import Actor, Critic

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
NETWORKS = ("multi-head", "mlp", "moore", "soft-modules", "care", "paco", "film")
STATE, ACTIONS, TASKS = 39, 4, 10


def options(network: str) -> dict:
    """The network's own options, as its config sets them (none for the plain MLPs)."""
    config = yaml.safe_load((CONFIGS / "network" / f"{network}.yaml").read_text())
    return {k: v for k, v in config.items() if k not in ("defaults", "name")}


def spreads(
    network: str, seed: int, *, states: int = 512, scale: float = 0.5, hidden=(400, 400, 400)
) -> tuple[float, float]:
    """The policy mean's and Q's spread over states, averaged over tasks, for one seed."""
    generator = torch.Generator().manual_seed(seed)
    state = scale * torch.randn(TASKS, states, STATE, generator=generator)
    onehot = torch.eye(TASKS)[:, None].expand(-1, states, -1)
    obs = torch.cat([state, onehot], dim=-1)
    actions = torch.rand(TASKS, states, ACTIONS, generator=generator) * 2 - 1
    torch.manual_seed(seed)
    settings = dict(network=network, network_options=options(network), init="he")
    actor = Actor(STATE + TASKS, ACTIONS, list(hidden), num_tasks=TASKS, **settings)
    critic = Critic(STATE + TASKS, ACTIONS, list(hidden), num_tasks=TASKS, **settings)
    with torch.no_grad():
        mean = actor.distribution(obs, "grouped")[0]  # [K, states, actions]
        q = critic(obs, actions, "grouped")  # [critics, K, states]
    return mean.std(dim=1).mean().item(), q.std(dim=2).mean().item()


def table(networks, seeds, **kwargs) -> dict[str, tuple[float, float]]:
    """Each network's (policy mean, Q) spreads, averaged over seeds."""
    result = {}
    for network in networks:
        measured = [spreads(network, seed, **kwargs) for seed in seeds]
        result[network] = tuple(sum(values) / len(seeds) for values in zip(*measured, strict=True))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=NETWORKS)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--states", type=int, default=512, help="per task")
    parser.add_argument("--scale", type=float, default=0.5, help="states are scale · N(0, 1)")
    args = parser.parse_args()
    networks = dict.fromkeys(["multi-head", *args.networks])  # the reference first, once
    result = table(networks, range(args.seeds), states=args.states, scale=args.scale)
    base_mean, base_q = result["multi-head"]
    print(
        f"MT10 shapes, 3 x 400, init=he, {args.states} states per task from "
        f"{args.scale} * N(0, 1), {args.seeds} seeds; spread / multi-head's"
    )
    print(
        f"{'network':<14}{'policy mean':>12}{'Q':>10}   (multi-head: {base_mean:.3g}, {base_q:.3g})"
    )
    for network, (mean, q) in result.items():
        print(f"{network:<14}{mean / base_mean:12.3g}{q / base_q:10.3g}")


if __name__ == "__main__":
    main()
