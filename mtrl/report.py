"""The comparison report: a Markdown file and the figures it shows."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from rliable import metrics, plot_utils

from mtrl.compare import NETWORKS, MethodSummary, Run, arms, format_table, interval_estimates

AGGREGATES = ("IQM", "Mean", "Median", "Optimality gap")


def _by_benchmark(runs: list[Run]) -> dict[str, dict[str, list[Run]]]:
    groups: dict[str, dict[str, list[Run]]] = defaultdict(lambda: defaultdict(list))
    for run, arm in zip(runs, arms(runs), strict=True):
        groups[run.benchmark][arm].append(run)
    return {b: dict(sorted(m.items())) for b, m in sorted(groups.items())}


def learning_curves(runs: list[Run], path: Path, reps: int, seed: int) -> None:
    """Mean success against env steps per method, with 95% bootstrap bands over seeds."""
    generator = np.random.default_rng(seed)
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for method, group in _by_benchmark(runs)[runs[0].benchmark].items():
        steps = sorted({step for run in group for step, _ in run.curve})
        means, lows, highs = [], [], []
        for step in steps:
            values = np.array([v for run in group for s, v in run.curve if s == step])
            resampled = generator.choice(values, (reps, len(values))).mean(axis=1)
            means.append(values.mean())
            lows.append(np.percentile(resampled, 2.5))
            highs.append(np.percentile(resampled, 97.5))
        line = axis.plot(steps, means, label=f"{method} ({len(group)} runs)")[0]
        axis.fill_between(steps, lows, highs, color=line.get_color(), alpha=0.2)
    axis.set_xlabel("environment steps (all tasks)")
    axis.set_ylabel("evaluated success rate")
    axis.set_ylim(-0.02, 1.02)
    axis.grid(alpha=0.3)
    axis.legend()
    axis.set_title(f"{runs[0].benchmark}: mean over seeds, 95% bootstrap band")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def aggregate_intervals(runs: list[Run], path: Path, reps: int, seed: int) -> None:
    """rliable's interval plot of IQM, mean, median and optimality gap of final success."""
    scores = {
        method: np.array([[run.task_success[t] for t in run.protocol["tasks"]] for run in group])
        for method, group in _by_benchmark(runs)[runs[0].benchmark].items()
    }

    def aggregates(x: np.ndarray) -> np.ndarray:
        return np.array(
            [
                metrics.aggregate_iqm(x),
                metrics.aggregate_mean(x),
                metrics.aggregate_median(x),
                metrics.aggregate_optimality_gap(x, 1.0),
            ]
        )

    points, intervals = interval_estimates(scores, aggregates, reps, seed)
    figure, _ = plot_utils.plot_interval_estimates(
        points,
        intervals,
        metric_names=AGGREGATES,
        algorithms=list(scores),
        xlabel="final success rate",
        xlabel_y_coordinate=-0.25 - 0.5 / len(scores),
        row_height=0.45,
    )
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)


def task_heatmap(summaries: list[MethodSummary], path: Path) -> None:
    """Final success of every task (columns) for every method (rows), mean over seeds."""
    tasks = list(summaries[0].task_success)
    values = np.array([[s.task_success[t] for t in tasks] for s in summaries])
    figure, axis = plt.subplots(figsize=(max(6, 0.45 * len(tasks) + 2), 0.5 * len(summaries) + 2))
    image = axis.imshow(values, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    axis.set_xticks(range(len(tasks)), [t.removesuffix("-v3") for t in tasks], rotation=90)
    axis.set_yticks(range(len(summaries)), [s.method for s in summaries])
    if len(tasks) <= 12:
        for (row, column), value in np.ndenumerate(values):
            axis.text(column, row, f"{value:.2f}", ha="center", va="center", color="w", fontsize=8)
    figure.colorbar(image, ax=axis, label="final success rate")
    axis.set_title(f"{summaries[0].benchmark}: success per task")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def task_curves(runs: list[Run], path: Path) -> None:
    """Each task's evaluated success against env steps, one panel per task, one line per
    method (the mean over its seeds)."""
    tasks = runs[0].protocol["tasks"]
    columns = min(5, len(tasks))
    rows = -(-len(tasks) // columns)
    figure, axes = plt.subplots(
        rows, columns, figsize=(2.6 * columns, 2.1 * rows), sharex=True, sharey=True, squeeze=False
    )
    for method, group in _by_benchmark(runs)[runs[0].benchmark].items():
        color = None
        for axis, task in zip(axes.flat, tasks, strict=False):
            by_step = defaultdict(list)
            for run in group:
                for step, value in run.task_curves.get(task, []):
                    by_step[step].append(value)
            steps = sorted(by_step)
            line = axis.plot(
                steps, [np.mean(by_step[s]) for s in steps], color=color, label=method
            )[0]
            color = line.get_color()
            axis.set_title(task.removesuffix("-v3"), fontsize=8)
            axis.set_ylim(-0.05, 1.05)
            axis.grid(alpha=0.3)
    for axis in axes.flat[len(tasks) :]:
        axis.set_visible(False)
    axes.flat[0].legend(fontsize=7)
    figure.supxlabel("environment steps (all tasks)")
    figure.supylabel("evaluated success rate")
    figure.suptitle(f"{runs[0].benchmark}: success per task, mean over seeds")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def conflict_heatmaps(runs: list[Run], path: Path) -> bool:
    """Mean cosine of every task pair's gradients, per method and network; False if no run
    logged any (FAMO computes no per-task gradients)."""
    methods = {
        method: group
        for method, group in _by_benchmark(runs)[runs[0].benchmark].items()
        if any(run.pair_cosines for run in group)
    }
    if not methods:
        return False
    tasks = runs[0].protocol["tasks"]
    index = {task: i for i, task in enumerate(tasks)}
    figure, axes = plt.subplots(
        len(NETWORKS), len(methods), figsize=(3.6 * len(methods), 7), squeeze=False
    )
    for column, (method, group) in enumerate(methods.items()):
        for row, network in enumerate(NETWORKS):
            matrix = np.full((len(tasks), len(tasks)), np.nan)  # grey: never logged
            np.fill_diagonal(matrix, 1.0)
            pairs = defaultdict(list)
            for run in group:
                for pair, value in run.pair_cosines.get(network, {}).items():
                    pairs[pair].append(value)
            for (first, second), values in pairs.items():
                matrix[index[first], index[second]] = matrix[index[second], index[first]] = np.mean(
                    values
                )
            axis = axes[row, column]
            colors = plt.get_cmap("RdBu").with_extremes(bad="lightgrey")
            image = axis.imshow(matrix, vmin=-1, vmax=1, cmap=colors)
            axis.set_title(f"{method}: {network}", fontsize=9)
            ticks = [t.removesuffix("-v3") for t in tasks] if len(tasks) <= 12 else []
            axis.set_xticks(range(len(ticks)), ticks, rotation=90, fontsize=6)
            axis.set_yticks(range(len(ticks)), ticks, fontsize=6)
    figure.colorbar(image, ax=axes, label="mean cosine of the task gradients (red: conflict)")
    figure.suptitle(f"{runs[0].benchmark}: pairwise gradient conflicts")
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)
    return True


def write_report(
    runs: list[Run], summaries: list[MethodSummary], out: Path, reps: int = 2000, seed: int = 0
) -> Path:
    """Write ``report.md`` and its figures into ``out``; returns the Markdown file."""
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# Method comparison", "", format_table(summaries, markdown=True), ""]
    lines += [
        "Final and best success: mean ± standard error over seeds of the mean success over "
        "tasks. IQM: interquartile mean of the final per-task success over runs and tasks, with "
        f"a 95% stratified-bootstrap interval ({reps} resamples, rliable).",
        "",
    ]
    for benchmark, methods in _by_benchmark(runs).items():
        group = [run for run in runs if run.benchmark == benchmark]
        benchmark_summaries = [s for s in summaries if s.benchmark == benchmark]
        protocol = group[0].protocol
        lines += [f"## {benchmark}", ""]
        lines += [
            "Protocol: "
            + (f"preset {protocol['preset']}, " if protocol.get("preset") else "")
            + ", ".join(
                f"{key} {protocol.get(key)}"
                for key in ("reward_version", "goal_mode", "episode_length")
            )
            + f", budget {protocol['budget']['env_steps']} env steps, "
            + f"{protocol['evaluation']['episodes_per_task']} evaluation episodes per task.",
            "",
        ]
        figures = {
            "learning curves": f"{benchmark}-curves.png",
            "aggregate metrics": f"{benchmark}-aggregates.png",
            "success per task": f"{benchmark}-tasks.png",
            "learning curves per task": f"{benchmark}-task-curves.png",
        }
        learning_curves(group, out / figures["learning curves"], reps, seed)
        aggregate_intervals(group, out / figures["aggregate metrics"], reps, seed)
        task_heatmap(benchmark_summaries, out / figures["success per task"])
        task_curves(group, out / figures["learning curves per task"])
        if conflict_heatmaps(group, out / f"{benchmark}-conflicts.png"):
            figures["pairwise gradient conflicts"] = f"{benchmark}-conflicts.png"
        for title, name in figures.items():
            lines += [f"![{title}]({name})", ""]
        tasks = protocol["tasks"]
        lines += ["| task | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
        for task in tasks:
            cells = [f"{s.task_success[task]:.2f}" for s in benchmark_summaries]
            lines.append(f"| {task} | " + " | ".join(cells) + " |")
        lines += ["", "Runs: " + ", ".join(f"`{run.path}`" for run in group), ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
