"""mtrl-compare on synthetic event files whose every number is known."""

import json
import math

import numpy as np
import pytest
from scipy import stats
from torch.utils.tensorboard import SummaryWriter

from mtrl.cli import compare as compare_cli
from mtrl.compare import ProtocolMismatch, find_runs, load_run, summarize

TASKS = ["reach-v3", "push-v3", "pick-place-v3"]
STEPS = [100, 200, 300]
# per method and seed: mean success at each evaluation, and each task's final success
RUNS = {
    ("gradops", 0): ([0.1, 0.5, 0.6], [0.9, 0.6, 0.3]),
    ("gradops", 1): ([0.2, 0.7, 0.4], [0.5, 0.4, 0.3]),
    ("gradops", 2): ([0.0, 0.3, 0.8], [1.0, 0.8, 0.6]),
    ("mean", 0): ([0.1, 0.2, 0.3], [0.4, 0.3, 0.2]),
    ("mean", 1): ([0.0, 0.4, 0.1], [0.2, 0.1, 0.0]),
}


def protocol(method, seed, **changes):
    base = {
        "benchmark": "mt10",
        "tasks": TASKS,
        "reward_version": "v2",
        "goal_mode": "resample",
        "episode_length": 500,
        "method": {"name": method},
        "budget": {"vector_steps": 100, "env_steps": 300},
        "seed": seed,
        "evaluation": {"episodes_per_task": 50},
    }
    return base | changes


def write_run(root, method, seed, curve, finals, **changes):
    run = root / f"{method}-seed{seed}"
    run.mkdir(parents=True)
    (run / "protocol.json").write_text(json.dumps(protocol(method, seed, **changes)))
    with SummaryWriter(str(run)) as writer:
        for step, value in zip(STEPS, curve, strict=True):
            writer.add_scalar("eval/success_rate", value, step, walltime=1000.0 + step)
        for task, value in zip(TASKS, finals, strict=True):
            writer.add_scalar(f"eval/success_rate/{task}", value, STEPS[-1])
        # steps/s: 40 then 60 over equal numbers of steps (48 over both); two hours apart
        writer.add_scalar("time/env_steps_per_s", 40.0, 100, walltime=1000.0)
        writer.add_scalar("time/env_steps_per_s", 60.0, 300, walltime=1000.0 + 7200)
        if method == "gradops":
            writer.add_scalar("grad/critic/cos/reach-v3/push-v3", -0.2 - 0.1 * seed, 100)
            writer.add_scalar("grad/critic/cos/reach-v3/push-v3", 0.2 - 0.1 * seed, 200)
    return run


@pytest.fixture
def runs_dir(tmp_path):
    for (method, seed), (curve, finals) in RUNS.items():
        write_run(tmp_path / "sweep", method, seed, curve, finals)
    return tmp_path / "sweep"


def stratified_bootstrap_iqms(scores: np.ndarray, reps: int) -> np.ndarray:
    """IQMs of ``reps`` resamples of a ``[runs, tasks]`` score matrix, each task's runs drawn
    with replacement on their own (rliable's stratified bootstrap)."""
    runs, tasks = scores.shape
    draws = np.random.default_rng(1).integers(0, runs, size=(reps, runs, tasks))
    resampled = scores[draws, np.arange(tasks)]
    return stats.trim_mean(resampled.reshape(reps, -1), 0.25, axis=1)


def assert_is_the_bootstrap_interval(scores: np.ndarray, interval) -> None:
    """``interval`` is the 95% percentile interval of the IQM's stratified bootstrap: its ends
    are the 2.5% and 97.5% quantiles of an independent bootstrap, to within 1% of probability
    (the IQMs of a few scores take few distinct values, so a quantile is a step). The scores
    went through TensorBoard's float32, hence the 1e-6."""
    iqms = stratified_bootstrap_iqms(scores, 100_000)
    for end, quantile in zip(interval, (0.025, 0.975), strict=True):
        assert (iqms < end - 1e-6).mean() <= quantile + 0.01, (end, quantile)
        assert (iqms <= end + 1e-6).mean() >= quantile - 0.01, (end, quantile)


def test_every_number_of_the_summary(runs_dir):
    runs = [load_run(path) for path in find_runs([runs_dir])]
    gradops, mean = summarize(runs, reps=2000, seed=0)
    assert (gradops.method, gradops.runs, mean.method, mean.runs) == ("gradops", 3, "mean", 2)
    # final success 0.6, 0.4, 0.8: mean 0.6, standard error 0.2 / √3
    assert gradops.final == pytest.approx((0.6, 0.2 / math.sqrt(3)))
    # best over training 0.6, 0.7, 0.8: mean 0.7, standard error 0.1 / √3
    assert gradops.best == pytest.approx((0.7, 0.1 / math.sqrt(3)))
    assert mean.final == pytest.approx((0.2, math.sqrt(0.02) / math.sqrt(2)))
    # IQM: the nine per-task finals sorted, two cut at each end, the middle five averaged
    finals = np.array([finals for (m, _), (_, finals) in RUNS.items() if m == "gradops"])
    assert sorted(finals.flat)[2:7] == [0.4, 0.5, 0.6, 0.6, 0.8]
    assert gradops.iqm[0] == pytest.approx(stats.trim_mean(finals.flat, 0.25))
    assert gradops.iqm[0] == pytest.approx(np.mean([0.4, 0.5, 0.6, 0.6, 0.8]))
    assert_is_the_bootstrap_interval(finals, gradops.iqm[1:])
    assert summarize(runs, reps=2000, seed=0)[0].iqm == gradops.iqm  # seeded: reproducible
    assert gradops.task_success == pytest.approx(
        {"reach-v3": 0.8, "push-v3": 0.6, "pick-place-v3": 0.4}
    )
    assert gradops.steps_per_s == pytest.approx(48.0)
    assert gradops.wall_clock_h == pytest.approx(2.0)


def test_the_iqm_interval_resamples_each_tasks_runs_on_their_own(tmp_path):
    # every seed scored each task alike: each task's resamples are that same score, so the
    # interval has no width, though the tasks' scores spread from 0 to 1 (pooling all scores
    # before resampling would give an interval about 0.5 wide)
    for seed in range(3):
        write_run(tmp_path, "gradops", seed, [0.1, 0.2, 0.3], [0.0, 0.5, 1.0])
    (summary,) = summarize([load_run(path) for path in find_runs([tmp_path])], reps=500)
    assert summary.iqm == pytest.approx((0.5, 0.5, 0.5))
    # one seed apart on one task: the interval follows the independent bootstrap again
    write_run(tmp_path, "gradops", 3, [0.1, 0.2, 0.3], [1.0, 0.5, 1.0])
    (summary,) = summarize([load_run(path) for path in find_runs([tmp_path])])
    scores = np.array([[0.0, 0.5, 1.0]] * 3 + [[1.0, 0.5, 1.0]])
    assert summary.iqm[0] == pytest.approx(stats.trim_mean(scores.flat, 0.25))
    assert_is_the_bootstrap_interval(scores, summary.iqm[1:])


def test_pairwise_conflicts_are_averaged_over_time(runs_dir):
    run = load_run(runs_dir / "gradops-seed1")
    assert run.pair_cosines == {"critic": {("reach-v3", "push-v3"): pytest.approx(-0.1)}}
    assert load_run(runs_dir / "mean-seed0").pair_cosines == {}


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("goal_mode", "fixed"),
        ("reward_version", "v1"),
        ("episode_length", 150),
        ("budget", {"vector_steps": 200, "env_steps": 600}),
    ],
)
def test_runs_with_different_protocols_are_not_mixed(runs_dir, key, value):
    odd = write_run(runs_dir, "mean", 9, [0.1, 0.1, 0.1], [0.1, 0.1, 0.1], **{key: value})
    runs = [load_run(path) for path in find_runs([runs_dir])]
    with pytest.raises(ProtocolMismatch, match=f"differ in their protocol's '{key}'") as error:
        summarize(runs)
    assert str(odd) in str(error.value) and str(runs_dir / "gradops-seed0") in str(error.value)


def test_other_benchmarks_are_reported_apart(runs_dir):
    write_run(
        runs_dir, "mean", 7, [0.5, 0.5, 0.5], [0.5, 0.5, 0.5], benchmark="mt50", goal_mode="fixed"
    )
    summaries = summarize([load_run(path) for path in find_runs([runs_dir])])
    assert [(s.benchmark, s.method, s.runs) for s in summaries] == [
        ("mt10", "gradops", 3),
        ("mt10", "mean", 2),
        ("mt50", "mean", 1),
    ]


def test_runs_of_different_networks_are_compared_apart(tmp_path, capsys):
    for seed, network, finals in [
        (0, "mlp", [0.2, 0.4, 0.6]),
        (1, "mlp", [0.4, 0.6, 0.8]),
        (2, "moore", [1.0, 0.0, 0.5]),
    ]:
        network_of = {"policy_kwargs": {"network": network}}
        write_run(tmp_path / "sweep", "mean", seed, [0.1, 0.2, 0.3], finals, agent=network_of)
    summaries = summarize([load_run(path) for path in find_runs([tmp_path / "sweep"])])
    assert [(s.method, s.runs) for s in summaries] == [("mean · mlp", 2), ("mean · moore", 1)]
    assert list(summaries[0].task_success.values()) == pytest.approx([0.3, 0.5, 0.7])
    assert list(summaries[1].task_success.values()) == pytest.approx([1.0, 0.0, 0.5])
    compare_cli.main([str(tmp_path / "sweep"), "--out", str(tmp_path / "report"), "--reps", "200"])
    report = (tmp_path / "report" / "report.md").read_text()
    assert "| mt10 | — | mean · moore | 1 |" in report and "| mt10 | — | mean · mlp | 2 |" in report


def test_command_line_prints_the_table_and_writes_the_report(runs_dir, tmp_path, capsys):
    (runs_dir / "not-evaluated-yet").mkdir()
    (runs_dir / "not-evaluated-yet" / "protocol.json").write_text(json.dumps(protocol("mean", 5)))
    out = tmp_path / "report"
    compare_cli.main([str(runs_dir), "--out", str(out), "--reps", "500"])
    printed = capsys.readouterr().out
    assert "0.600 ± 0.115" in printed and "0.700 ± 0.058" in printed
    assert "1 run(s) not evaluated yet are left out" in printed
    report = (out / "report.md").read_text()
    assert "| mt10 | — | gradops | 3 | 0.600 ± 0.115 | 0.700 ± 0.058 |" in report
    assert "| reach-v3 | 0.80 | 0.30 |" in report
    for figure in ("curves", "aggregates", "tasks", "task-curves", "conflicts"):
        assert (out / f"mt10-{figure}.png").stat().st_size > 10_000
        assert f"mt10-{figure}.png" in report


def test_command_line_refuses_mixed_protocols(runs_dir, capsys):
    write_run(runs_dir, "mean", 9, [0.1, 0.1, 0.1], [0.1, 0.1, 0.1], goal_mode="fixed")
    with pytest.raises(SystemExit) as exit_info:
        compare_cli.main([str(runs_dir)])
    assert exit_info.value.code == 2
    assert "differ in their protocol's 'goal_mode'" in capsys.readouterr().err
