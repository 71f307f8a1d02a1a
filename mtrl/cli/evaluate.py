"""``mtrl-eval``: evaluate a saved policy on its benchmark by Meta-World's protocol.

    mtrl-eval checkpoint=runs/mt10/gradops/seed0-...            # the run's newest checkpoint
    mtrl-eval checkpoint=path/to/step_000020000000.pt episodes=10 video=true

Prints a per-task table, writes a JSON report, and with ``video=true`` records one episode per
task as mp4 files and as animated images in the run's TensorBoard.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from mtrl.agents.mtsac import MTSAC
from mtrl.agents.saving import migrate
from mtrl.checkpoint import (
    CheckpointError,
    RunWriteError,
    check_writable,
    load_state,
    write_text_atomic,
)
from mtrl.cli.settings import ConfigError, integer, resolve_device
from mtrl.envs.benchmarks import BenchmarkSpec
from mtrl.envs.evaluation import EvalResult, evaluate
from mtrl.envs.video import gif_summary, record_videos
from mtrl.runs import CHECKPOINTS, latest_checkpoint
from mtrl.tensorboard import reported_writes


def find_checkpoint(path: Path) -> tuple[Path, Path]:
    """The checkpoint file and the run directory it belongs to (or the file's folder)."""
    if path.is_dir():
        checkpoint = latest_checkpoint(path)
        return checkpoint, path
    if not path.is_file():
        raise CheckpointError(f"no checkpoint or run directory at {path}")
    return path, path.parent.parent if path.parent.name == CHECKPOINTS else path.parent


def format_table(result: EvalResult) -> str:
    width = max(len(task) for task in result.success)
    lines = [f"{'task':<{width}}  success  return", f"{'-' * width}  -------  ------"]
    for task, rate in result.success.items():
        lines.append(f"{task:<{width}}  {rate:7.2f}  {result.returns[task]:6.1f}")
    lines.append(f"{'mean':<{width}}  {result.mean_success:7.2f}")
    return "\n".join(lines)


def check_options(cfg: DictConfig) -> None:
    """Refuse what cannot be run, before the checkpoint is read and the evaluation starts."""
    if OmegaConf.is_missing(cfg, "checkpoint") or cfg.checkpoint in (None, ""):
        raise ConfigError(
            "checkpoint is required: a checkpoint file, or a run directory for its newest one "
            "(mtrl-eval checkpoint=runs/mt10/gradops/seed0-...)"
        )
    integer("episodes", cfg.episodes, 1)
    if cfg.seed is not None:
        integer("seed", cfg.seed, 0)
    for key in ("progress_bar", "video"):
        if not isinstance(cfg[key], bool):
            raise ConfigError(f"{key} must be true or false, got {cfg[key]!r}")
    for key in ("video_width", "video_height"):
        if integer(key, cfg[key], 2) % 2:  # H.264 encodes even sizes only
            raise ConfigError(f"{key} must be even (H.264), got {cfg[key]!r}")
    if cfg.out == "":
        raise ConfigError("out must name a file, or be null for <run dir>/eval/<checkpoint>.json")


def run(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.checkpoint``; returns the report that is also written to JSON."""
    check_options(cfg)
    device = resolve_device(str(cfg.device))
    checkpoint, run_dir = find_checkpoint(Path(cfg.checkpoint))
    out = Path(cfg.out) if cfg.out else run_dir / "eval" / f"{checkpoint.stem}.json"
    # where the results go must take them before the evaluation, not after it
    check_writable(out.parent)
    if cfg.video:
        check_writable(run_dir / "videos" / checkpoint.stem)
    state = migrate(load_state(checkpoint), str(checkpoint))  # refuses a stranger's
    state.pop("replay_buffer", None)  # evaluation needs the policy only
    benchmark = state.get("run_state", {}).get("benchmark")
    if benchmark is None:
        raise CheckpointError(f"{checkpoint} does not say which benchmark it was trained on")
    spec = BenchmarkSpec(**benchmark)
    seed = cfg.seed if cfg.seed is not None else state["hyperparameters"]["seed"] or 0
    model = MTSAC.from_state(state, env=None, device=device, source=str(checkpoint))

    bar = tqdm(unit="step", unit_scale=True, desc="evaluating", disable=not cfg.progress_bar)

    def policy(obs):
        bar.update(len(obs))
        return model.predict(obs, deterministic=True)[0]

    with bar:
        result = evaluate(policy, spec, cfg.episodes, seed)
    print(format_table(result))
    report = {
        "checkpoint": str(checkpoint),
        "env_steps": model.num_timesteps,
        "seed": seed,
        "protocol": spec.protocol(),
        **result.to_dict(),
    }
    write_text_atomic(out, json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")

    if cfg.video:
        folder = run_dir / "videos" / checkpoint.stem
        try:
            videos = record_videos(
                lambda obs: model.predict(obs, deterministic=True)[0],
                spec,
                seed,
                folder,
                width=cfg.video_width,
                height=cfg.video_height,
                camera_name=cfg.camera,
            )
        except OSError as error:  # imageio writes the files
            raise RunWriteError(f"cannot write videos in {folder}: {error}") from error
        events = f"TensorBoard events in {run_dir}"
        with reported_writes(events), SummaryWriter(str(run_dir)) as writer:
            for task, video in videos.items():
                summary = gif_summary(video.frames, f"eval/video/{task}")
                writer.file_writer.add_summary(summary, model.num_timesteps)
        report["videos"] = {task: str(video.path) for task, video in videos.items()}
        write_text_atomic(out, json.dumps(report, indent=2) + "\n")
        print(f"wrote {len(videos)} videos to {folder}")
    return report


@hydra.main(version_base="1.3", config_path="pkg://mtrl.configs", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except (ConfigError, CheckpointError, ValueError) as error:
        print(f"mtrl-eval: {error}", file=sys.stderr)
        sys.exit(2)
    except RunWriteError as error:
        print(f"mtrl-eval: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
