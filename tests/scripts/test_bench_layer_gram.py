import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_layer_benchmark_times_every_way_against_the_plain_gradient():
    command = [sys.executable, str(ROOT / "scripts" / "bench_layer_gram.py")]
    command += ["--tasks", "3", "--widths", "48", "--batch-per-task", "8", "--repeats", "1"]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith("  3")]
    ways = [" ".join(row[2:-2]) for row in rows]
    assert ways == ["plain", "products", "tiles", "fresh blocks", "rows"]
    assert float(rows[0][-1]) == 1.0
    assert "tiles of" in result.stdout
