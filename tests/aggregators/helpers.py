"""Helpers shared by the aggregator tests."""

from __future__ import annotations

import io
import itertools

import torch


def simplex_grid(size: int, steps: int) -> torch.Tensor:
    """Every point of the probability simplex in ``size`` dimensions with coordinates in
    multiples of ``1/steps``, as rows."""
    points = [p for p in itertools.product(range(steps + 1), repeat=size - 1) if sum(p) <= steps]
    grid = torch.tensor(points, dtype=torch.float64) / steps
    return torch.cat([grid, 1 - grid.sum(dim=1, keepdim=True)], dim=1)


def grid_for(size: int) -> torch.Tensor:
    """A simplex grid fine enough for brute-force checks with K ≤ 3 (spacing 1/2000, 1/200)."""
    return simplex_grid(size, 2000 if size == 2 else 200)


def restore_through_a_checkpoint(method, fresh):
    """``fresh`` with ``method``'s state, saved and read back the way checkpoints are
    (``torch.load(weights_only=True)``); returns ``fresh``."""
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    buffer.seek(0)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    return fresh
