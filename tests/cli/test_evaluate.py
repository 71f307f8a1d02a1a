"""mtrl-eval on a saved checkpoint: the per-task table, the JSON report, videos."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mtrl.agents.mtsac import MTSAC
from mtrl.checkpoint import load_state
from mtrl.envs.benchmarks import BenchmarkSpec
from tests.cli.conftest import read_events
from tests.envs.rollouts import count_episodes


def evaluate(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "mtrl.cli.evaluate", "progress_bar=false", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )


def test_evaluates_a_run_and_writes_the_report_and_videos(mt1_run, tmp_path):
    out = tmp_path / "report.json"
    result = evaluate(
        f"checkpoint={mt1_run}",
        "episodes=2",
        f"out={out}",
        "video=true",
        "video_width=64",
        "video_height=48",
        "device=cpu",  # as the episodes counted below: the same actions to the last bit
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "reach-v3" in result.stdout and "success" in result.stdout and "mean" in result.stdout
    report = json.loads(out.read_text())
    assert report["episodes"] == 2
    assert set(report["success"]) == set(report["returns"]) == {"reach-v3"}
    # the same policy's episodes, counted by hand on an environment built the same way
    state = load_state(Path(report["checkpoint"]))
    model = MTSAC.from_state(state, env=None, device="cpu")
    spec = BenchmarkSpec(**state["run_state"]["benchmark"])
    success, returns = count_episodes(
        lambda obs: model.predict(obs, deterministic=True)[0], spec, 2, report["seed"]
    )
    assert report["success"] == success and report["mean_success"] == success["reach-v3"]
    assert report["returns"] == pytest.approx(returns, rel=1e-5)
    assert report["protocol"]["benchmark"] == "mt1"
    assert report["env_steps"] >= 200
    video = (
        mt1_run
        / "videos"
        / report["checkpoint"].rsplit("/", 1)[1].removesuffix(".pt")
        / "reach-v3.mp4"
    )
    assert video.is_file() and video.stat().st_size > 1000
    assert "eval/video/reach-v3" in read_events(mt1_run).Tags()["images"]


def test_a_missing_checkpoint_is_a_clear_error(tmp_path):
    result = evaluate(f"checkpoint={tmp_path / 'nowhere'}", cwd=tmp_path)
    assert result.returncode == 2
    assert "no checkpoint or run directory at" in result.stderr
