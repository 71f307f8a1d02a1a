"""Comparing methods over seeds from the TensorBoard events of finished and running runs.

Runs are grouped by benchmark and method, and by network too where a benchmark's runs use more
than one, so that architectures are compared as methods are. A claim such as "GradOPS beats
CAGrad on MT10" needs runs under one protocol, so runs whose protocols differ are refused, never
averaged together.
Aggregates follow rliable (Agarwal et al., NeurIPS 2021): the interquartile mean over runs and
tasks, with stratified-bootstrap confidence intervals.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
from rliable import library as rly
from rliable import metrics

from mtrl.checkpoint import RunFileError
from mtrl.events import RunEvents
from mtrl.runs import PROTOCOL, read_protocol

# What a result depends on: runs that differ in one of these are not comparable.
PROTOCOL_KEYS = ("reward_version", "goal_mode", "episode_length", "budget")
SUCCESS = "eval/success_rate"
SPEED = "time/env_steps_per_s"
NETWORKS = ("critic", "actor")
# What a comparison reads from every run's protocol.
NEEDED = ("benchmark", "tasks", "method")


class ProtocolMismatch(ValueError):
    """Runs of one benchmark were trained or evaluated under different protocols."""


@dataclasses.dataclass
class Run:
    """What the report needs from one run's directory."""

    path: Path
    protocol: dict
    curve: list[tuple[int, float]]  # (env steps, mean evaluated success)
    task_success: dict[str, float]  # each task's success at the last evaluation
    task_curves: dict[str, list[tuple[int, float]]]  # each task's (env steps, success)
    steps_per_s: float | None
    wall_clock_s: float | None
    pair_cosines: dict[str, dict[tuple[str, str], float]]  # network → (task, task) → mean cosine

    @property
    def benchmark(self) -> str:
        return self.protocol["benchmark"]

    @property
    def method(self) -> str:
        return self.protocol["method"]["name"]

    @property
    def network(self) -> str | None:
        return self.protocol.get("agent", {}).get("policy_kwargs", {}).get("network")

    @property
    def method_package(self) -> str | None:
        """The package of a method that is not mtrl's own, as "name version" (runs from before
        the protocol recorded it are mtrl's)."""
        source = self.protocol.get("provided_by", {}).get("method")
        if not source or source["distribution"] == "mtrl":
            return None
        return f"{source['distribution']} {source['version']}"

    @property
    def preset(self) -> str | None:
        """The protocol preset the run was started with (``protocol=...``), if any."""
        return self.protocol.get("preset")

    @property
    def final(self) -> float:
        return self.curve[-1][1]

    @property
    def best(self) -> float:
        return max(value for _, value in self.curve)


def find_runs(paths: list[Path]) -> list[Path]:
    """Every run directory (one holding ``protocol.json``) at or below ``paths``."""
    found = []
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"no such directory: {path}")
        found += [p.parent for p in sorted(path.rglob(PROTOCOL))]
    if not found:
        folders = ", ".join(str(path) for path in paths)
        raise FileNotFoundError(f"no mtrl run (a directory with {PROTOCOL}) under {folders}")
    return sorted(set(found))


def load_run(path: Path) -> Run | None:
    """Read one run; ``None`` if it has not been evaluated yet."""
    remedy = "restore it, or move this run out of the folders compared"
    protocol = read_protocol(path, remedy)
    missing = [key for key in NEEDED if key not in protocol]
    if missing or not isinstance(protocol["method"], dict) or "name" not in protocol["method"]:
        raise RunFileError(
            f"{path / PROTOCOL} lacks the run's {', '.join(missing) or 'method name'}; {remedy}"
        )
    events = RunEvents(path)
    tags, series = events.tags, events.series
    if SUCCESS not in tags:
        return None

    curve = [(event.step, event.value) for event in series(SUCCESS)]
    task_curves = {
        task: [(event.step, event.value) for event in series(f"{SUCCESS}/{task}")]
        for task in protocol["tasks"]
        if f"{SUCCESS}/{task}" in tags
    }
    task_success = {task: curve[-1][1] for task, curve in task_curves.items()}
    speed = series(SPEED) if SPEED in tags else []
    pair_cosines: dict[str, dict[tuple[str, str], float]] = {}
    for network in NETWORKS:
        prefix = f"grad/{network}/cos/"
        pairs = {}
        for tag in tags:
            if tag.startswith(prefix):
                first, second = tag.removeprefix(prefix).split("/")
                pairs[first, second] = float(np.mean([event.value for event in series(tag)]))
        if pairs:
            pair_cosines[network] = pairs
    return Run(
        path=path,
        protocol=protocol,
        curve=curve,
        task_success=task_success,
        task_curves=task_curves,
        steps_per_s=harmonic_mean([e.value for e in speed]) if speed else None,
        wall_clock_s=speed[-1].wall_time - speed[0].wall_time if len(speed) > 1 else None,
        pair_cosines=pair_cosines,
    )


def harmonic_mean(rates: list[float]) -> float:
    """The rate over the whole run: each log's rate covers the same number of steps."""
    return float(len(rates) / np.sum(1 / np.asarray(rates)))


def check_protocols(runs: list[Run]) -> None:
    """Refuse to mix runs of one benchmark whose protocols differ, saying how they differ."""
    by_benchmark = defaultdict(list)
    for run in runs:
        by_benchmark[run.benchmark].append(run)
    for benchmark, group in by_benchmark.items():
        for key in PROTOCOL_KEYS:
            values = defaultdict(list)
            for run in group:
                values[json.dumps(run.protocol.get(key), sort_keys=True)].append(run.path)
            if len(values) > 1:
                listing = "; ".join(
                    f"{value}: {', '.join(str(p) for p in paths)}"
                    for value, paths in values.items()
                )
                raise ProtocolMismatch(
                    f"{benchmark} runs differ in their protocol's {key!r}, so they cannot be "
                    f"compared: {listing}"
                )


@contextlib.contextmanager
def seeded_bootstrap(seed: int):
    """rliable's bootstrap draws from numpy's global generator as well as the one it is given:
    seed both for reproducible intervals, and leave the global one as it was."""
    state = np.random.get_state()  # noqa: NPY002
    np.random.seed(seed)  # noqa: NPY002
    try:
        yield np.random.RandomState(seed)
    finally:
        np.random.set_state(state)  # noqa: NPY002


def interval_estimates(scores: dict, func, reps: int, seed: int) -> tuple[dict, dict]:
    """rliable's stratified-bootstrap estimates, reproducible from ``seed``."""
    with seeded_bootstrap(seed) as random_state, warnings.catch_warnings():
        # arch deprecates the random_state argument rliable passes; it still honours it
        warnings.filterwarnings(
            "ignore", message="random_state is deprecated", category=FutureWarning
        )
        return rly.get_interval_estimates(scores, func, reps=reps, random_state=random_state)


def mean_and_error(values: list[float]) -> tuple[float, float]:
    """Mean and standard error over seeds (NaN error for a single seed)."""
    array = np.asarray(values, dtype=np.float64)
    error = array.std(ddof=1) / math.sqrt(len(array)) if len(array) > 1 else math.nan
    return float(array.mean()), float(error)


@dataclasses.dataclass
class MethodSummary:
    benchmark: str
    method: str
    runs: int
    final: tuple[float, float]  # mean, standard error over seeds
    best: tuple[float, float]
    iqm: tuple[float, float, float]  # point estimate, CI low, CI high
    task_success: dict[str, float]
    steps_per_s: float | None
    wall_clock_h: float | None
    preset: str = "—"  # the protocol preset of the runs ("mixed" when they differ)
    package: str | None = None  # of a method not mtrl's own ("mixed" when the runs differ)


def _presets(group: list[Run]) -> str:
    names = {run.preset or "—" for run in group}
    return names.pop() if len(names) == 1 else "mixed"


def _packages(group: list[Run]) -> str | None:
    packages = {run.method_package for run in group}
    return packages.pop() if len(packages) == 1 else "mixed"


def arms(runs: list[Run]) -> list[str]:
    """What each run is compared as: its method, and its network as well where the runs of its
    benchmark use more than one network."""
    networks = defaultdict(set)
    for run in runs:
        networks[run.benchmark].add(run.network)
    return [
        run.method if len(networks[run.benchmark]) == 1 else f"{run.method} · {run.network}"
        for run in runs
    ]


def summarize(runs: list[Run], reps: int = 2000, seed: int = 0) -> list[MethodSummary]:
    """One summary per benchmark and arm (see `arms`), in the order benchmark then arm."""
    check_protocols(runs)
    groups = defaultdict(list)
    for run, arm in zip(runs, arms(runs), strict=True):
        groups[run.benchmark, arm].append(run)
    scores = {}
    for (benchmark, method), group in groups.items():
        tasks = group[0].protocol["tasks"]
        scores[benchmark, method] = np.array(
            [[run.task_success.get(task, np.nan) for task in tasks] for run in group]
        )
    points, intervals = interval_estimates(
        {f"{b}/{m}": s for (b, m), s in scores.items()},
        lambda x: np.array([metrics.aggregate_iqm(x)]),
        reps,
        seed,
    )
    summaries = []
    for (benchmark, method), group in sorted(groups.items()):
        key = f"{benchmark}/{method}"
        tasks = group[0].protocol["tasks"]
        speeds = [run.steps_per_s for run in group if run.steps_per_s is not None]
        clocks = [run.wall_clock_s for run in group if run.wall_clock_s is not None]
        summaries.append(
            MethodSummary(
                benchmark=benchmark,
                method=method,
                runs=len(group),
                final=mean_and_error([run.final for run in group]),
                best=mean_and_error([run.best for run in group]),
                iqm=(
                    float(points[key][0]),
                    float(intervals[key][0, 0]),
                    float(intervals[key][1, 0]),
                ),
                task_success=dict(
                    zip(tasks, np.nanmean(scores[benchmark, method], axis=0).tolist(), strict=True)
                ),
                steps_per_s=float(np.mean(speeds)) if speeds else None,
                wall_clock_h=float(np.mean(clocks)) / 3600 if clocks else None,
                preset=_presets(group),
                package=_packages(group),
            )
        )
    return summaries


def _pm(pair: tuple[float, float]) -> str:
    mean, error = pair
    return f"{mean:.3f}" if math.isnan(error) else f"{mean:.3f} ± {error:.3f}"


def format_table(summaries: list[MethodSummary], markdown: bool = False) -> str:
    """The comparison as a table: one row per benchmark and method."""
    header = [
        "benchmark",
        "preset",
        "method",
        "runs",
        "final success",
        "best success",
        "IQM [95% CI]",
        "env steps/s",
        "wall-clock h",
    ]
    rows = []
    for s in summaries:
        rows.append(
            [
                s.benchmark,
                s.preset,
                s.method if s.package is None else f"{s.method} ({s.package})",
                str(s.runs),
                _pm(s.final),
                _pm(s.best),
                f"{s.iqm[0]:.3f} [{s.iqm[1]:.3f}, {s.iqm[2]:.3f}]",
                "—" if s.steps_per_s is None else f"{s.steps_per_s:.0f}",
                "—" if s.wall_clock_h is None else f"{s.wall_clock_h:.2f}",
            ]
        )
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    )
