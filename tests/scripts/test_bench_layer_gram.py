import importlib.util
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "bench_layer_gram.py"
WAYS = ["plain", "products", "tiles", "fresh blocks", "rows"]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_layer_gram", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def table(printed: str) -> list[list[str]]:
    return [line.split() for line in printed.splitlines() if line.startswith("  3")]


def test_the_layer_benchmark_times_every_way_against_the_plain_gradient():
    command = [sys.executable, str(SCRIPT)]
    command += ["--tasks", "3", "--widths", "48", "--batch-per-task", "8", "--repeats", "1"]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert [" ".join(row[2:-2]) for row in table(result.stdout)] == WAYS
    assert "tiles of" in result.stdout


def test_each_ratio_is_the_ways_median_time_over_the_plain_ones(bench, monkeypatch, capsys):
    # a clock that each way moves on by its own times, one per timed call (the first call of
    # each way is the warm-up): the medians are 2, 3, 5, 8 and 1 ms, the means would not be
    taken = {
        "plain": [9, 2, 30, 1],
        "products": [9, 3, 3, 40],
        "tiles": [9, 5, 1, 7],
        "fresh blocks": [9, 8, 8, 8],
        "rows": [9, 1, 2, 0.5],
    }
    clock = types.SimpleNamespace(now=0.0)
    real_ways = bench.ways

    def timed_ways(*args):
        timed, sizes = real_ways(*args)

        def advancing(name, way):
            def run():
                way()
                clock.now += taken[name].pop(0) / 1e3

            return run

        return {name: advancing(name, way) for name, way in timed.items()}, sizes

    monkeypatch.setattr(bench, "ways", timed_ways)
    monkeypatch.setattr(bench, "time", types.SimpleNamespace(perf_counter=lambda: clock.now))
    monkeypatch.setattr(sys, "argv", ["bench", "--tasks", "3", "--widths", "16", "--repeats", "3"])
    bench.main()
    rows = table(capsys.readouterr().out)
    assert [" ".join(row[2:-2]) for row in rows] == WAYS
    medians = {"plain": 2.0, "products": 3.0, "tiles": 5.0, "fresh blocks": 8.0, "rows": 1.0}
    for row, (name, median) in zip(rows, medians.items(), strict=True):
        assert float(row[-2]) == pytest.approx(median), name
        assert float(row[-1]) == pytest.approx(median / medians["plain"], abs=0.005), name


def test_the_ways_form_the_gram_matrix_of_the_per_task_gradients(bench):
    tasks, width, per_task = 3, 20, 8
    torch.manual_seed(0)
    timed, _ = bench.ways(tasks, width, per_task)
    torch.manual_seed(0)  # the same draws again: the layer's inputs, then its output gradients
    inputs = torch.randn(tasks * per_task, width).double()
    output_grads = torch.randn(tasks * per_task, width).double()
    weights = torch.stack(
        [
            inputs[k * per_task : (k + 1) * per_task].T
            @ output_grads[k * per_task : (k + 1) * per_task]
            for k in range(tasks)
        ]
    ).flatten(1)
    biases = output_grads.view(tasks, per_task, width).sum(dim=1)
    with_bias = torch.cat([weights, biases], dim=1)

    def close(got, expected):
        torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-3)

    close(timed["plain"](), weights.sum(dim=0).view(width, width))
    close(timed["tiles"]()[0], with_bias @ with_bias.T)
    close(timed["rows"]()[0], with_bias @ with_bias.T)
    close(timed["fresh blocks"](), weights @ weights.T)  # the weights' share, as first formed
