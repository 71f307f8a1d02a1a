"""mtrl-eval on a saved checkpoint: the per-task table, the JSON report, videos."""

import json
import subprocess
import sys

from tests.cli.conftest import read_events


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
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "reach-v3" in result.stdout and "success" in result.stdout and "mean" in result.stdout
    report = json.loads(out.read_text())
    assert report["episodes"] == 2
    assert set(report["success"]) == set(report["returns"]) == {"reach-v3"}
    assert 0.0 <= report["mean_success"] <= 1.0
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
