"""``mtrl-train``: train multi-task SAC on a Meta-World benchmark with one aggregation method.

    mtrl-train benchmark=mt10 method=gradops seed=0
    mtrl-train experiment=smoke                      # a quick install check
    mtrl-train resume=runs/mt10/gradops/seed0-...    # continue a stopped run
    mtrl-train -m method=mean,gradops seed=0,1,2     # a sweep (Hydra multirun)

Each run writes its resolved config, its protocol, TensorBoard events and checkpoints to its
own directory.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import hydra
import torch
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from stable_baselines3.common.callbacks import CallbackList
from stable_baselines3.common.logger import configure

from mtrl.agents.mtsac import MTSAC
from mtrl.allocator import retain_freed_memory
from mtrl.callbacks import (
    CheckpointCallback,
    EvaluationCallback,
    GracefulStop,
    ProgressBarCallback,
)
from mtrl.checkpoint import CheckpointError, load_state
from mtrl.cli.settings import ConfigError, TrainSettings, train_settings
from mtrl.envs.benchmarks import make_vector_env
from mtrl.envs.evaluation import evaluate
from mtrl.envs.vec_env import MetaWorldVecEnv
from mtrl.runs import (
    CONFIG,
    FINISHED,
    PROTOCOL,
    describe_earlier,
    latest_checkpoint,
    list_checkpoints,
)

# Keys that may change when a run is resumed; everything else is the stopped run's own config.
RESUMABLE_OVERRIDES = ("total_steps", "device", "progress_bar", "verbose", "resume", "threads")
PACKAGES = ("mtrl", "torch", "metaworld", "mujoco", "gymnasium", "stable-baselines3", "numpy")

# `hydra.run.dir` is the stopped run's own directory when `resume` is given.
OmegaConf.register_new_resolver(
    "or_default", lambda value, default: default if value is None else value, replace=True
)


def protocol(settings: TrainSettings) -> dict[str, Any]:
    """What a result depends on, so that runs are only compared when these match."""
    return {
        **settings.benchmark.protocol(),
        "method": {"name": settings.method, **settings.method_kwargs},
        "agent": settings.agent_kwargs,
        "budget": {
            "vector_steps": settings.total_steps,
            "env_steps": settings.total_env_steps,
        },
        "seed": settings.seed,
        "evaluation": {
            "episodes_per_task": settings.eval_episodes,
            "every_vector_steps": settings.eval_every,
            "actions": "deterministic",
            "success": "success reached at any step of the episode",
        },
        "device": str(settings.device),
        "versions": {"python": platform.python_version()}
        | {name: metadata.version(name) for name in PACKAGES},
    }


def _as_text(data: dict[str, Any], title: str) -> str:
    """YAML as an indented Markdown code block, for TensorBoard's text tab."""
    body = yaml.safe_dump(data, sort_keys=False)
    return f"{title}\n\n" + "\n".join("    " + line for line in body.splitlines())


def resume_config(cfg: DictConfig, run_dir: Path, overrides: list[str]) -> DictConfig:
    """The stopped run's own config, with only the keys that may change taken from ``cfg``."""
    saved = run_dir / CONFIG
    if not saved.is_file():
        raise CheckpointError(f"{run_dir} is not a run directory: it has no {CONFIG}")
    changed = sorted(
        {o.split("=", 1)[0].lstrip("+~") for o in overrides} - set(RESUMABLE_OVERRIDES)
    )
    if changed:
        raise ConfigError(
            f"a resumed run keeps its own config, so {changed} cannot change; "
            f"only {', '.join(RESUMABLE_OVERRIDES)} can"
        )
    config = OmegaConf.load(saved)
    for key in RESUMABLE_OVERRIDES:
        config[key] = cfg[key]
    config.resume = str(run_dir)
    return config


def run(cfg: DictConfig, run_dir: Path) -> MTSAC:
    """Train (or resume) one run into ``run_dir`` and return the trained model."""
    resuming = cfg.resume is not None
    settings = train_settings(cfg)
    state = None
    if resuming:
        checkpoint = latest_checkpoint(run_dir)
        try:
            state = load_state(checkpoint)
        except CheckpointError as error:
            raise CheckpointError(f"{error}; {describe_earlier(checkpoint)}") from error
    # A resumed run may have been given a larger budget: its record says so.
    run_dir.mkdir(parents=True, exist_ok=True)
    record = OmegaConf.merge(cfg, {"resume": None})
    OmegaConf.save(record, run_dir / CONFIG, resolve=True)
    (run_dir / PROTOCOL).write_text(json.dumps(protocol(settings), indent=2) + "\n")

    spec = settings.benchmark
    env = MetaWorldVecEnv(make_vector_env(spec, settings.seed))
    eval_env = make_vector_env(spec, settings.seed)
    try:
        if state is not None:
            model = MTSAC.from_state(state, env, settings.device, source=str(checkpoint))
        else:
            model = MTSAC(
                "MlpPolicy",
                env,
                aggregator=settings.method,
                aggregator_kwargs=settings.method_kwargs,
                seed=settings.seed,
                device=settings.device,
                verbose=cfg.verbose,
                **settings.agent_kwargs,
            )
            model.run_state["benchmark"] = dataclasses.asdict(spec)
        # TensorBoard only: its event files add up across resumes, a CSV would be overwritten.
        formats = ["tensorboard"] + (["stdout"] if cfg.verbose else [])
        model.set_logger(configure(str(run_dir), formats))
        if not resuming:
            text = ("stdout", "log", "csv", "json")  # text goes to TensorBoard only
            model.logger.record(
                "run/config", _as_text(OmegaConf.to_container(cfg), "config"), exclude=text
            )
            model.logger.record(
                "run/protocol", _as_text(protocol(settings), "protocol"), exclude=text
            )
            model.logger.dump(0)

        def evaluate_policy(policy_fn):
            return evaluate(policy_fn, spec, settings.eval_episodes, settings.seed, env=eval_env)

        callbacks = [
            GracefulStop(),
            EvaluationCallback(evaluate_policy, settings.eval_every),
            CheckpointCallback(
                run_dir,
                settings.checkpoint_every,
                settings.checkpoint_keep,
                settings.checkpoint_replay_buffer,
            ),
        ]
        if cfg.progress_bar:
            callbacks.append(ProgressBarCallback(settings.total_env_steps))
        remaining = settings.total_env_steps - model.num_timesteps
        if remaining > 0:
            model.learn(
                remaining, callback=CallbackList(callbacks), reset_num_timesteps=not resuming
            )
        if not model.stop_requested:
            finished = {"total_steps": settings.total_steps, "env_steps": model.num_timesteps}
            (run_dir / FINISHED).write_text(json.dumps(finished) + "\n")
        if model.stop_requested:
            print(
                f"stopped at {model.num_timesteps} env steps; resume: mtrl-train resume={run_dir}"
            )
        return model
    finally:
        env.close()
        eval_env.close()


def restarted_job(cfg: DictConfig, run_dir: Path) -> DictConfig | None:
    """What to do with a job whose directory already holds its run (a restarted sweep).

    Returns ``None`` when that run finished its budget (skip it), else the config to run with:
    resumed from its newest checkpoint, or started afresh if it stopped before the first one.
    """
    saved = OmegaConf.load(run_dir / CONFIG)
    current = OmegaConf.to_container(OmegaConf.merge(cfg, {"resume": None}), resolve=True)
    differing = sorted(
        key
        for key in set(current) | set(saved)
        if key not in RESUMABLE_OVERRIDES and current.get(key) != saved.get(key)
    )
    if differing:
        raise ConfigError(
            f"{run_dir} already holds a run with another config (it differs in {differing}); "
            "give the sweep another name, or remove that directory"
        )
    finished = run_dir / FINISHED
    if finished.is_file() and json.loads(finished.read_text())["total_steps"] >= cfg.total_steps:
        print(f"{run_dir} finished its {cfg.total_steps} steps already: skipped")
        return None
    if not list_checkpoints(run_dir):
        return cfg
    print(f"{run_dir} stopped before the end: resuming it")
    return resume_config(cfg, run_dir, [])


def set_threads(cfg: DictConfig, hydra_config: Any) -> None:
    """Share the CPU between the jobs a launcher runs side by side on one machine.

    Every job using every core makes OpenMP threads fight for them, which slows all jobs
    down far more than splitting the cores does.
    """
    threads = cfg.threads
    jobs = hydra_config.launcher.get("n_jobs") if hydra_config.mode == RunMode.MULTIRUN else None
    if threads is None and jobs is not None:
        cores = os.cpu_count() or 1
        workers = jobs if jobs > 0 else cores + 1 + jobs  # joblib's count: -1 is every core
        threads = max(1, cores // max(workers, 1))
    if threads is not None:
        torch.set_num_threads(int(threads))


@hydra.main(version_base="1.3", config_path="pkg://mtrl.configs", config_name="train")
def main(cfg: DictConfig) -> None:
    hydra_config = HydraConfig.get()
    run_dir = Path(hydra_config.runtime.output_dir)
    try:
        if cfg.resume is not None:
            cfg = resume_config(cfg, Path(cfg.resume), list(hydra_config.overrides.task))
        elif (run_dir / CONFIG).is_file():
            cfg = restarted_job(cfg, run_dir)
            if cfg is None:
                return
        set_threads(cfg, hydra_config)
        retain_freed_memory()
        run(cfg, run_dir)
    except (ConfigError, CheckpointError) as error:
        print(f"mtrl-train: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
