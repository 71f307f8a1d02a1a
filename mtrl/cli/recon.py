"""``mtrl-recon``: turn a run's highest-conflict layers into task-specific layers (Recon).

    mtrl-recon runs/mt10/gradops/seed0-20261122-101500 top_k=2

Every run records, per shared layer of the actor and the critic, how often task pairs conflict
on it (the S-conflict score of Shi et al., ICLR 2023; ``recon/...`` in TensorBoard). This
command ranks the layers by that score, keeps the ``top_k``, and writes a Hydra experiment
that trains the same network with one copy of those layers per task, with any method::

    mtrl-train --config-dir <run dir>/recon experiment=recon method=pcgrad
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf

from mtrl.agents.mtsac import MTSAC
from mtrl.checkpoint import CheckpointError, RunWriteError, load_state, write_text_atomic
from mtrl.runs import latest_checkpoint, read_config

NETWORKS = ("actor", "critic")


def layer_scores(run_dir: Path) -> dict[tuple[str, int], float]:
    """(network, layer index) → S-conflict score, from the run's newest checkpoint."""
    path = latest_checkpoint(run_dir)
    model = MTSAC.from_state(load_state(path), device="cpu", source=str(path))
    scores = {}
    for network in NETWORKS:
        recorder = getattr(model, f"{network}_conflicts")
        recorder.flush()  # the updates still waiting to be counted, in a batch
        conflicts = recorder.layers
        if not float(conflicts.pairs):
            raise CheckpointError(f"{run_dir} has not recorded any update yet")
        for layer, value in conflicts.scores().items():
            scores[network, int(layer.removeprefix("layer"))] = value
    return scores


def write_experiment(run_dir: Path, chosen: list[tuple[str, int]], config: DictConfig) -> Path:
    """A Hydra experiment with the benchmark and agent of the run's ``config``, and the chosen
    layers per task."""
    agent = OmegaConf.to_container(config.agent)
    for network in NETWORKS:
        layers = {*agent[f"{network}_task_layers"], *(i for n, i in chosen if n == network)}
        agent[f"{network}_task_layers"] = sorted(layers)
    experiment = {"benchmark": OmegaConf.to_container(config.benchmark), "agent": agent}
    path = run_dir / "recon" / "experiment" / "recon.yaml"
    layers = ", ".join(f"{network} layer {index}" for network, index in chosen)
    header = (
        "# @package _global_\n"
        f"# Recon: {layers} made task-specific, from the conflict scores of {run_dir}.\n"
        f"# Train with any method: mtrl-train --config-dir {path.parent.parent} experiment=recon"
        " method=<name>\n"
    )
    return write_text_atomic(path, header + yaml.safe_dump(experiment, sort_keys=False))


def parse_options(options: list[str]) -> dict[str, int]:
    parsed = {}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or key != "top_k":
            raise ValueError(f"unknown option {option!r}; valid: top_k=<number of layers>")
        try:
            parsed[key] = int(value)
        except ValueError:
            raise ValueError(f"top_k must be a whole number of layers, got {value!r}") from None
    return parsed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mtrl-recon", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a run directory with a checkpoint")
    parser.add_argument("options", nargs="*", help="top_k=<layers to make task-specific>")
    args = parser.parse_args(argv)
    try:
        top_k = parse_options(args.options).get("top_k", 1)
        config = read_config(args.run_dir)
        scores = layer_scores(args.run_dir)
        if not 1 <= top_k <= len(scores):
            raise ValueError(f"top_k must be between 1 and the {len(scores)} shared layers")
        ranked = sorted(scores, key=scores.get, reverse=True)
        chosen = ranked[:top_k]
        path = write_experiment(args.run_dir, chosen, config)
    except (ValueError, CheckpointError) as error:
        print(f"mtrl-recon: {error}", file=sys.stderr)
        sys.exit(2)
    except RunWriteError as error:
        print(f"mtrl-recon: {error}", file=sys.stderr)
        sys.exit(1)
    print("network  layer  S-conflict score")
    for key in ranked:
        mark = "  <- task-specific" if key in chosen else ""
        print(f"{key[0]:<8} {key[1]:>5}  {scores[key]:16.3f}{mark}")
    print(f"wrote {path}")
    print(f"train it: mtrl-train --config-dir {path.parent.parent} experiment=recon method=<name>")


if __name__ == "__main__":
    main()
