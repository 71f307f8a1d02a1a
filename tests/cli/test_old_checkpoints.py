"""mtrl-eval on checkpoints written before the architectures followed their reference code
(checkpoint format 3): a network whose weights changed shape is refused, saying which and what
changed; any other still loads and runs."""

import subprocess
import sys

from mtrl.checkpoint import load_state, save_atomic
from mtrl.runs import latest_checkpoint


def evaluate(checkpoint, cwd):
    command = [sys.executable, "-m", "mtrl.cli.evaluate", "progress_bar=false", "episodes=1"]
    return subprocess.run(
        [*command, f"checkpoint={checkpoint}"],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )


def older(mt1_run, tmp_path, **policy):
    """The smoke run's checkpoint as format 3 wrote it, its policy settings changed by
    ``policy`` (the refusal reads the settings, before any weight)."""
    state = load_state(latest_checkpoint(mt1_run))
    state["format_version"] = 3
    state["hyperparameters"]["policy_kwargs"].update(policy)
    return save_atomic(state, tmp_path / "older.pt")


def test_an_older_soft_modules_checkpoint_is_refused_saying_what_changed(mt1_run, tmp_path):
    result = evaluate(older(mt1_run, tmp_path, network="soft-modules"), tmp_path)
    assert result.returncode == 2
    assert "holds a soft-modules network in checkpoint format 3" in result.stderr
    assert "routing gates multiply" in result.stderr and "retrain it" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_older_paco_checkpoint_is_refused_saying_what_changed(mt1_run, tmp_path):
    result = evaluate(older(mt1_run, tmp_path, network="paco"), tmp_path)
    assert result.returncode == 2
    assert "holds a paco network in checkpoint format 3" in result.stderr
    assert "compositions now have a shared bias" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_older_mlp_checkpoint_still_evaluates(mt1_run, tmp_path):
    result = evaluate(older(mt1_run, tmp_path), tmp_path)
    assert result.returncode == 0, result.stderr
    assert "reach-v3" in result.stdout and "mean" in result.stdout
