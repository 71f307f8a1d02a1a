"""``auto`` settings are decided by the machine when a run starts, and the run keeps them."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from mtrl.cli import train as train_cli
from mtrl.envs import benchmarks
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


def test_a_restarted_sweep_job_keeps_the_strategy_its_run_started_with(monkeypatch, tmp_path):
    monkeypatch.setattr(benchmarks, "available_cores", lambda: 16)
    saved = OmegaConf.merge(train_config(), {"benchmark": {"vector_strategy": "sync"}})
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(saved, resolve=True))
    # no checkpoint yet: the job starts again, with the same config, and no error
    assert train_cli.restarted_job(train_config(), tmp_path) is not None


def test_the_protocol_says_whether_the_acting_policy_lags(monkeypatch):
    from mtrl.cli.settings import train_settings

    for strategy, lag in (("sync", 0), ("async", 1)):
        cfg = train_config(f"benchmark.vector_strategy={strategy}")
        record = train_cli.protocol(train_settings(cfg))
        assert record["acting_policy_lag_updates"] == lag
