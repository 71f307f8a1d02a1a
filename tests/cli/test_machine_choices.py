"""``auto`` settings are decided by the machine when a run starts, and the run keeps them."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from mtrl.cli import train as train_cli
from mtrl.envs import benchmarks
from mtrl.runs import CONFIG, checkpoint_path
from tests.cli.conftest import train_config


@pytest.mark.parametrize(
    ("cores", "jobs", "strategy"),
    [(2, None, "sync"), (3, None, "async"), (16, None, "async"), (16, 4, "async"), (16, 8, "sync")],
)
def test_environments_step_in_workers_where_each_run_has_three_cores(
    cores, jobs, strategy, monkeypatch
):
    monkeypatch.setattr(benchmarks, "available_cores", lambda: cores)
    cfg = train_cli.with_machine_choices(train_config(), jobs)
    assert cfg.benchmark.vector_strategy == strategy


def test_a_given_strategy_is_kept(monkeypatch):
    monkeypatch.setattr(benchmarks, "available_cores", lambda: 16)
    cfg = train_cli.with_machine_choices(train_config("benchmark.vector_strategy=sync"), None)
    assert cfg.benchmark.vector_strategy == "sync"


def saved_sync_run(run_dir, checkpoint: bool):
    """A run directory whose run was started as ``sync``, with or without a checkpoint."""
    saved = OmegaConf.merge(train_config(), {"benchmark": {"vector_strategy": "sync"}})
    (run_dir / CONFIG).write_text(OmegaConf.to_yaml(saved, resolve=True))
    if checkpoint:
        path = checkpoint_path(run_dir, 100)
        path.parent.mkdir(parents=True)
        path.write_bytes(b"")  # only its name is read before the run loads it


@pytest.mark.parametrize("checkpoint", [False, True], ids=["afresh", "resumed"])
def test_a_restarted_sweep_job_keeps_the_strategy_its_run_started_with(
    checkpoint, monkeypatch, tmp_path
):
    monkeypatch.setattr(benchmarks, "available_cores", lambda: 16)
    fresh = train_cli.with_machine_choices(train_config(), None)
    assert fresh.benchmark.vector_strategy == "async"  # what this machine picks for a new run
    saved_sync_run(tmp_path, checkpoint)
    cfg = train_cli.restarted_job(train_config(), tmp_path)
    assert (cfg.resume is not None) == checkpoint
    assert cfg.benchmark.vector_strategy == "sync"
    # what run() then trains with
    assert train_cli.with_machine_choices(cfg, None).benchmark.vector_strategy == "sync"


def test_a_resumed_run_keeps_the_strategy_it_was_saved_with(monkeypatch, tmp_path):
    monkeypatch.setattr(benchmarks, "available_cores", lambda: 16)
    saved_sync_run(tmp_path, checkpoint=True)
    given = {"resume", "total_steps"}
    cfg = train_cli.resume_config(train_config(f"resume={tmp_path}"), tmp_path, given)
    assert train_cli.with_machine_choices(cfg, None).benchmark.vector_strategy == "sync"


def test_the_protocol_says_whether_the_acting_policy_lags(monkeypatch):
    from mtrl.cli.settings import train_settings

    for strategy, lag in (("sync", 0), ("async", 1)):
        cfg = train_config(f"benchmark.vector_strategy={strategy}")
        record = train_cli.protocol(train_settings(cfg))
        assert record["acting_policy_lag_updates"] == lag
