"""Hypothesis strategies for per-task gradient matrices.

Matrices are built from a drawn seed and a drawn structure rather than element by element, so
that K = 50 stays fast while hypothesis still explores (and shrinks) sizes, shapes and scales.
"""

from __future__ import annotations

import torch
from hypothesis import strategies as st

STRUCTURES = ("gaussian", "shared_conflict", "uneven_norms")


def build_jacobian(
    tasks: int, params: int, seed: int, structure: str, dtype=torch.float64
) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    jacobian = torch.randn(tasks, params, generator=generator, dtype=torch.float64)
    if structure == "shared_conflict":
        # a strong common direction that half of the tasks pull against
        common = torch.randn(1, params, generator=generator, dtype=torch.float64)
        signs = torch.randint(0, 2, (tasks, 1), generator=generator).to(torch.float64) * 2 - 1
        jacobian = jacobian + 3 * signs * common
    elif structure == "uneven_norms":
        jacobian = jacobian * torch.exp(3 * torch.randn(tasks, 1, generator=generator))
    return jacobian.to(dtype)


@st.composite
def jacobians(draw, sizes=(2, 3, 10, 50), dtype=torch.float64, structures=STRUCTURES):
    """A ``[K, P]`` matrix of task gradients with P > K (generic full row rank)."""
    tasks = draw(st.sampled_from(sizes))
    params = tasks + draw(st.sampled_from([5, 2 * tasks, 200]))
    seed = draw(st.integers(0, 2**31 - 1))
    structure = draw(st.sampled_from(structures))
    return build_jacobian(tasks, params, seed, structure, dtype)


def cosines_with(jacobian: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
    """cos(g_i, update) for every task i."""
    return (jacobian @ update) / (jacobian.norm(dim=1) * update.norm())
