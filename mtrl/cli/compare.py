"""``mtrl-compare``: compare methods over seeds, from finished and running runs.

    mtrl-compare runs/sweeps/mt10-comparison
    mtrl-compare runs/mt10/gradops runs/mt10/cagrad --out reports/mt10

Reads every run directory below the given folders, groups runs by benchmark and method, refuses
to mix runs whose protocols differ, prints the comparison table and writes a Markdown report
with learning curves, aggregate intervals, per-task success and pairwise gradient conflicts.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mtrl.checkpoint import RunFileError, RunWriteError, check_writable
from mtrl.compare import ProtocolMismatch, find_runs, format_table, load_run, summarize
from mtrl.report import write_report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mtrl-compare", description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="run directories, or folders of them")
    parser.add_argument("--out", type=Path, default=Path("report"), help="report folder")
    parser.add_argument("--reps", type=int, default=2000, help="bootstrap resamples")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    args = parser.parse_args(argv)
    if args.reps < 100:
        parser.error("--reps must be at least 100")
    try:
        found = find_runs(args.dirs)
        runs = [run for run in map(load_run, found) if run is not None]
        if not runs:
            raise FileNotFoundError(f"none of the {len(found)} runs has been evaluated yet")
        summaries = summarize(runs, reps=args.reps, seed=args.seed)
        check_writable(args.out)  # before the table, which would otherwise promise a report
    except (FileNotFoundError, ProtocolMismatch, RunFileError) as error:
        print(f"mtrl-compare: {error}", file=sys.stderr)
        sys.exit(2)
    except RunWriteError as error:
        print(f"mtrl-compare: {error}", file=sys.stderr)
        sys.exit(1)
    waiting = len(found) - len(runs)
    print(format_table(summaries))
    if waiting:
        print(f"({waiting} run(s) not evaluated yet are left out)")
    try:
        report = write_report(runs, summaries, args.out, reps=args.reps, seed=args.seed)
    except OSError as error:  # a full disk while the figures are written
        print(
            f"mtrl-compare: cannot write {error.filename or args.out}: {error.strerror or error}",
            file=sys.stderr,
        )
        sys.exit(1)
    print(f"wrote {report}")


if __name__ == "__main__":
    main()
