import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_toy_script_draws_the_trajectories(tmp_path):
    out = tmp_path / "toy.png"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "toy_conflict.py"),
            "--steps",
            "3",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 20_000  # eight panels of contours, not an empty canvas


def test_toy_script_refuses_a_bad_step_count(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "toy_conflict.py"), "--steps", "0"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "--steps must be at least 1" in result.stderr
