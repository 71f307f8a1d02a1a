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
from stable_baselines3.common.callbacks import BaseCallback, CallbackList

from mtrl.agents.mtsac import MTSAC
from mtrl.agents.saving import migrate
from mtrl.allocator import retain_freed_memory
from mtrl.callbacks import (
    CheckpointCallback,
    EvaluationCallback,
    GracefulStop,
    ProgressBarCallback,
)
from mtrl.checkpoint import CheckpointError, RunWriteError, load_state, write_text_atomic
from mtrl.cli import messages, schema
from mtrl.cli.settings import ConfigError, TrainSettings, train_settings
from mtrl.envs.benchmarks import choose_vector_strategy, make_vector_env
from mtrl.envs.evaluation import BackgroundEvaluation, InlineEvaluation
from mtrl.envs.vec_env import MetaWorldVecEnv
from mtrl.plugins import METHODS, network_source, plugin
from mtrl.runs import (
    CONFIG,
    PROTOCOL,
    describe_earlier,
    latest_checkpoint,
    list_checkpoints,
    read_config,
    read_finished,
    read_protocol,
    write_finished,
)
from mtrl.tensorboard import run_logger

# Keys that may change when a run is resumed; everything else is the stopped run's own config.
RESUMABLE_OVERRIDES = ("total_steps", "device", "progress_bar", "verbose", "resume", "threads")
PACKAGES = ("mtrl", "torch", "metaworld", "mujoco", "gymnasium", "stable-baselines3", "numpy")

# What kept another package's method or network out (mtrl-train refuses to start then).
PLUGIN_PROBLEMS = schema.register()
# `hydra.run.dir` is the stopped run's own directory when `resume` is given.
OmegaConf.register_new_resolver(
    "or_default", lambda value, default: default if value is None else value, replace=True
)


def protocol(settings: TrainSettings) -> dict[str, Any]:
    """What a result depends on, so that runs are only compared when these match."""
    return {
        **settings.benchmark.protocol(),
        "preset": settings.preset,
        "method": {"name": settings.method, **settings.method_kwargs},
        # the packages the method and the network come from: mtrl, or a plug-in's
        "provided_by": {
            "method": plugin(METHODS, settings.method).source(),
            "network": network_source(settings.agent_kwargs["policy_kwargs"]["network"]),
        },
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
        # Stepping the envs in worker processes overlaps each step with the updates asked for
        # after the step before, which the policy acting at that step has not had.
        "acting_policy_lag_updates": int(settings.benchmark.vector_strategy == "async"),
        "history": [],  # what each resume changed, see history()
        "versions": {"python": platform.python_version()}
        | {name: metadata.version(name) for name in PACKAGES},
    }


def _as_text(data: dict[str, Any], title: str) -> str:
    """YAML as an indented Markdown code block, for TensorBoard's text tab."""
    body = yaml.safe_dump(data, sort_keys=False)
    return f"{title}\n\n" + "\n".join("    " + line for line in body.splitlines())


def given_keys(overrides: list[str]) -> set[str]:
    """The config keys that command-line overrides set (``agent.gamma=0.9`` sets ``agent``)."""
    return {o.split("=", 1)[0].lstrip("+~").split(".")[0] for o in overrides}


def resume_config(cfg: DictConfig, run_dir: Path, given: set[str]) -> DictConfig:
    """The stopped run's own config; of the keys in ``given`` (set on the command line), only
    the resumable ones may change it, and they take their values from ``cfg``."""
    saved = run_dir / CONFIG
    if not saved.is_file():
        raise CheckpointError(f"{run_dir} is not a run directory: it has no {CONFIG}")
    changed = sorted(set(given) - {"resume"} - set(RESUMABLE_OVERRIDES))
    if changed:
        raise ConfigError(
            f"a resumed run keeps its own config, so {changed} cannot change; "
            f"only {', '.join(RESUMABLE_OVERRIDES)} can"
        )
    config = schema.upgrade(read_config(run_dir))
    for key in sorted(set(given) & set(RESUMABLE_OVERRIDES)):
        config[key] = cfg[key]
    config.resume = str(run_dir)
    return config


def finished_already(cfg: DictConfig, run_dir: Path) -> str | None:
    """Why there is nothing to train, if the run finished a budget of at least ``total_steps``."""
    finished = read_finished(run_dir)
    if finished is None or cfg.total_steps > finished["total_steps"]:
        return None
    steps = finished["total_steps"]
    return f"{run_dir} finished at {steps} vector steps; pass total_steps=N > {steps} to extend it"


def history(previous: dict[str, Any], current: dict[str, Any], vector_step: int) -> list:
    """The protocol's record of what each resume changed: the budget, the device."""
    changes = list(previous.get("history", []))
    for key, old, new in (
        ("total_steps", previous["budget"]["vector_steps"], current["budget"]["vector_steps"]),
        ("device", previous["device"], current["device"]),
    ):
        if old != new:
            changes.append({"at_vector_step": vector_step, "key": key, "from": old, "to": new})
            print(f"{key} changed from {old} to {new} at vector step {vector_step}")
    return changes


def with_machine_choices(cfg: DictConfig, jobs: int | None) -> DictConfig:
    """``cfg`` with its ``auto`` environment strategy decided for this machine and ``jobs``
    runs sharing it, so that the run records it and keeps it when resumed elsewhere."""
    if cfg.benchmark.vector_strategy != "auto":
        return cfg
    strategy = choose_vector_strategy(jobs or 1)
    return OmegaConf.merge(cfg, {"benchmark": {"vector_strategy": strategy}})


def run(
    cfg: DictConfig, run_dir: Path, callbacks: list[BaseCallback] = (), jobs: int | None = None
) -> MTSAC:
    """Train (or resume) one run into ``run_dir`` and return the trained model; ``callbacks``
    run after the run's own (evaluation, checkpoints), as SB3 callbacks; ``jobs`` runs share the
    machine (see :func:`set_threads`)."""
    cfg = with_machine_choices(cfg, jobs)
    resuming = cfg.resume is not None
    settings = train_settings(cfg)
    set_threads(cfg.threads, jobs)
    state, record = None, protocol(settings)
    if resuming and not list_checkpoints(run_dir):
        # Nothing was kept, so nothing is lost by starting the run again.
        print(messages.start_again(run_dir))
        cfg, resuming = OmegaConf.merge(cfg, {"resume": None}), False
    if resuming:
        checkpoint = latest_checkpoint(run_dir)
        try:
            state = migrate(load_state(checkpoint), str(checkpoint))  # refuses a stranger's
        except CheckpointError as error:
            raise CheckpointError(f"{error}; {describe_earlier(checkpoint)}") from error
        done = state["counters"]["num_timesteps"] // settings.benchmark.num_tasks
        if done > settings.total_steps:
            raise ConfigError(
                f"total_steps={settings.total_steps} is below the {done} vector steps this run "
                "has taken already"
            )
        if (run_dir / PROTOCOL).is_file():
            previous = read_protocol(run_dir)
            record["history"] = history(previous, record, done)
        print(messages.resuming(run_dir, checkpoint, done, settings.total_steps))
    # A resumed run may have been given a larger budget: config and protocol say so.
    resolved = OmegaConf.to_yaml(OmegaConf.merge(cfg, {"resume": None}), resolve=True)
    write_text_atomic(run_dir / CONFIG, resolved)
    write_text_atomic(run_dir / PROTOCOL, json.dumps(record, indent=2) + "\n")

    spec = settings.benchmark
    env = MetaWorldVecEnv(make_vector_env(spec, settings.seed))
    background = settings.eval_background
    if background is None:
        background = choose_vector_strategy(jobs or 1) == "async"
    evaluator = (BackgroundEvaluation if background else InlineEvaluation)(
        spec, settings.seed, settings.eval_episodes
    )
    stop = GracefulStop()
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
        model.set_logger(run_logger(run_dir, stdout=bool(cfg.verbose)))
        if not resuming:
            text = ("stdout", "log", "csv", "json")  # text goes to TensorBoard only
            model.logger.record(
                "run/config", _as_text(OmegaConf.to_container(cfg), "config"), exclude=text
            )
            model.logger.record("run/protocol", _as_text(record, "protocol"), exclude=text)
            model.logger.dump(0)

        evaluation = EvaluationCallback(evaluator, settings.eval_every)
        own = [
            stop,
            evaluation,
            CheckpointCallback(
                run_dir,
                settings.checkpoint_every,
                settings.checkpoint_keep,
                settings.checkpoint_replay_buffer,
                evaluation,
            ),
        ]
        if cfg.progress_bar:
            own.append(ProgressBarCallback(settings.total_env_steps))
        remaining = settings.total_env_steps - model.num_timesteps
        if remaining > 0:
            model.learn(
                remaining,
                callback=CallbackList([*own, *callbacks]),
                reset_num_timesteps=not resuming,
            )
        if not model.stop_requested:
            write_finished(run_dir, settings.total_steps, model.num_timesteps)
        steps = model.num_timesteps // spec.num_tasks
        summary = messages.summary(
            run_dir, model.run_state, steps, settings.total_steps, model.stop_requested
        )
        print(summary, flush=True)
        return model
    finally:
        stop.restore()  # the signals' own handlers again, also after a failure
        env.close()
        evaluator.close()


def restarted_job(cfg: DictConfig, run_dir: Path) -> DictConfig | None:
    """What to do with a job whose directory already holds its run (a restarted sweep).

    Returns ``None`` when that run finished its budget (skip it), else the config to run with:
    resumed from its newest checkpoint, or started afresh if it stopped before the first one.
    """
    saved = OmegaConf.to_container(schema.upgrade(read_config(run_dir)))
    current = OmegaConf.to_container(OmegaConf.merge(cfg, {"resume": None}), resolve=True)
    if current["benchmark"]["vector_strategy"] == "auto":  # the run decided it when it started
        strategy = saved["benchmark"]["vector_strategy"]
        current["benchmark"]["vector_strategy"] = strategy
        # also when it starts afresh: this machine's choice could differ from the saved one
        cfg = OmegaConf.merge(cfg, {"benchmark": {"vector_strategy": strategy}})
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
    if finished_already(cfg, run_dir):
        print(f"{run_dir} finished its {cfg.total_steps} steps already: skipped")
        return None
    if not list_checkpoints(run_dir):
        print(messages.start_again(run_dir))
        return cfg
    print(f"{run_dir} stopped before the end: resuming it")
    changed = {key for key in RESUMABLE_OVERRIDES if current.get(key) != saved.get(key)}
    return resume_config(cfg, run_dir, changed)


def parallel_jobs(hydra_config: Any) -> int | None:
    """How many jobs the launcher runs side by side on this machine (joblib's ``n_jobs``)."""
    if hydra_config.mode != RunMode.MULTIRUN:
        return None
    return hydra_config.launcher.get("n_jobs")


def set_threads(threads: int | None, jobs: int | None) -> None:
    """Share the CPU between the jobs a launcher runs side by side on one machine.

    Every job using every core makes OpenMP threads fight for them, which slows all jobs
    down far more than splitting the cores does.
    """
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
            if Path(cfg.resume).resolve() != run_dir.resolve():
                raise ConfigError(
                    f"resume={cfg.resume} continues in its own directory, but hydra.run.dir is "
                    f"{run_dir}: leave hydra.run.dir out, or give it the same directory"
                )
            given = given_keys(list(hydra_config.overrides.task))
            cfg = resume_config(cfg, Path(cfg.resume), given)
            reason = finished_already(cfg, run_dir)
            if reason:
                print(reason)
                return
        elif (run_dir / CONFIG).is_file():
            cfg = restarted_job(cfg, run_dir)
            if cfg is None:
                return
        retain_freed_memory()
        run(cfg, run_dir, jobs=parallel_jobs(hydra_config))
    except (ConfigError, CheckpointError) as error:
        print(f"mtrl-train: {error}", file=sys.stderr)
        sys.exit(2)
    except RunWriteError as error:
        print(f"mtrl-train: {error}; the run's earlier files are intact", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:  # a second Ctrl-C, or one before training started
        kept = list_checkpoints(run_dir)
        after = f"; resume from its last checkpoint: mtrl-train resume={run_dir}" if kept else ""
        print(f"\nmtrl-train: aborted{after}", file=sys.stderr)
        sys.exit(130)


# Keys that earlier versions took on the command line, and what takes their place. Old config
# files are upgraded (mtrl.cli.schema.upgrade); an old override would only hear from Hydra that
# the key is not in the schema.
REPLACED_KEYS = {
    "agent.multi_head": "network=multi-head (or network=mlp for false)",
    "agent.compile_aggregator": "agent.compile",
}


def cli() -> None:
    """``mtrl-train``: refuses replaced keys by name, and any method or network of another
    package that cannot be used, then hands the command line to Hydra."""
    for problem in PLUGIN_PROBLEMS:
        print(f"mtrl-train: {problem}", file=sys.stderr)
    if PLUGIN_PROBLEMS:
        sys.exit(2)
    for argument in sys.argv[1:]:
        key = argument.lstrip("+~").split("=", 1)[0]
        if key in REPLACED_KEYS:
            print(f"mtrl-train: {key} was replaced: use {REPLACED_KEYS[key]}", file=sys.stderr)
            sys.exit(2)
    main()


if __name__ == "__main__":
    cli()
