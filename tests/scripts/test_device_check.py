"""scripts/device_check.sh, the GPU check, run here on the CPU at its tiny sizes."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def device_check(out: Path, python: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "scripts/device_check.sh", str(out), "--device", "cpu"],
        cwd=ROOT,
        env=os.environ | {"PYTHON": python} | env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_a_short_training_stops_on_sigterm_and_reports_its_rate_and_evaluation(tmp_path):
    result = device_check(
        tmp_path, sys.executable, ONLY="00-machine 04-wide-update 06-train", TRAIN_SECONDS="45"
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = (tmp_path / "summary.txt").read_text().splitlines()
    assert [line.split(":")[0] for line in summary] == ["00-machine", "04-wide-update", "06-train"]
    assert all("passed" in line for line in summary)
    assert "auto ÷ floor" in (tmp_path / "04-wide-update.txt").read_text()
    train = (tmp_path / "06-train.txt").read_text()
    assert "stopped at vector step" in train  # SIGTERM wrote a checkpoint
    rate = next(line for line in train.splitlines() if line.startswith("training_vector_steps"))
    assert float(rate.split()[1]) > 0
    assert "mean" in train.split("training_vector_steps")[1]  # the evaluation's table
    assert (tmp_path / "protocol.json").is_file()


def test_a_failing_stage_is_marked_and_fails_the_check(tmp_path):
    result = device_check(tmp_path, "/bin/false", ONLY="00-machine")
    assert result.returncode != 0
    assert "00-machine: FAILED (exit 1)" in (tmp_path / "summary.txt").read_text()


def test_the_rate_script_says_when_a_run_has_no_events(tmp_path):
    result = subprocess.run(
        [sys.executable, "scripts/device_rate.py", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "no TensorBoard events" in result.stderr
