"""Print and plot the evaluated success rate against environment steps for one or more runs.

    python scripts/success_curve.py runs/learn_mt1/<time>/mean runs/learn_mt1/<time>/gradops

Each run is labelled by its directory name. The plot goes next to the first run
(``success_curve.png`` in its parent folder) unless ``--out`` says otherwise.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from mtrl.events import read_scalars

TAG = "eval/success_rate"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories")
    parser.add_argument("--out", type=Path, help="where to save the plot")
    args = parser.parse_args()
    curves = {}
    for run in args.runs:
        if not run.is_dir():
            parser.error(f"no run directory at {run}")
        curves[run.name] = dict(read_scalars(run, TAG))
        if not curves[run.name]:
            parser.error(f"{run} has no {TAG} yet")
    steps = sorted({step for curve in curves.values() for step in curve})
    header = f"{'env steps':>10}" + "".join(f"{name:>12}" for name in curves)
    print(header)
    for step in steps:
        cells = "".join(
            f"{curve[step]:12.2f}" if step in curve else f"{'':>12}" for curve in curves.values()
        )
        print(f"{step:>10}{cells}")

    figure, axis = plt.subplots(figsize=(6, 4))
    for name, curve in curves.items():
        axis.plot(list(curve), list(curve.values()), marker="o", label=name)
    axis.set_xlabel("environment steps")
    axis.set_ylabel("success rate (evaluation)")
    axis.set_ylim(-0.02, 1.02)
    axis.grid(alpha=0.3)
    axis.legend()
    out = args.out or args.runs[0].parent / "success_curve.png"
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
