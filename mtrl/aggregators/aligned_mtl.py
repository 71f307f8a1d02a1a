"""Aligned-MTL: make the task gradients orthogonal and equally long, then add them.

Senushkin et al., "Independent Component Alignment for Multi-Task Learning", CVPR 2023 (code:
github.com/SamsungLabs/MTL, ``code/optim/aligned``; also LibMTL's ``Aligned_MTL``).
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from mtrl.aggregators.base import Aggregator, normalized_gram

SCALES = ("min", "median", "rmse")


@dataclasses.dataclass
class AlignedMTL(Aggregator):
    """With ``G = V Λ Vᵀ`` (so ``J = V Λ^½ Uᵀ``), the aligned gradients ``Ĵ = σ V Uᵀ = B J``,
    ``B = σ V Λ^-½ Vᵀ``, keep J's singular vectors but make every singular value ``σ`` (the
    smallest one by default): ``Ĵ Ĵᵀ = σ² I``, condition number 1. The update is their sum,
    ``Ĵᵀ 1 = Jᵀ (B 1)``, i.e. unit task weights, as in the reference code.

    As in the reference, eigenvalues at most ``rank_tol · K · λ_max`` count as zero: their
    directions are dropped (``Λ^-½`` is taken on the rest) and ``σ`` is taken over the rest,
    so a rank-deficient G aligns the gradients within their span (``Ĵ Ĵᵀ = σ² V_r V_rᵀ``)
    and a zero gradient gets weight 0 without disturbing the others.

    Args:
        scale: the common singular value ``σ``: ``"min"`` (the paper's and the default), the
            ``"median"`` (lower median) or ``"rmse"`` (root mean square) of the kept ones.
        rank_tol: relative eigenvalue cut-off; the reference uses float32's epsilon.
    """

    name = "aligned-mtl"

    scale_invariant = True
    reads_host = True

    scale: str = "min"
    rank_tol: float = float(torch.finfo(torch.float32).eps)

    def __post_init__(self) -> None:
        if self.scale not in SCALES:
            raise ValueError(f"{self.name}: scale must be one of {SCALES}, got {self.scale!r}")
        if not (math.isfinite(self.rank_tol) and 0 < self.rank_tol < 1):
            raise ValueError(f"{self.name}: rank_tol must be in (0, 1), got {self.rank_tol}")

    def alignment_matrix(self, gram: Tensor) -> Tensor:
        """``B`` (float64, ``[K, K]``) such that the aligned gradients are ``B J``; it does not
        depend on the scale of ``gram``."""
        g = normalized_gram(gram)
        eigenvalues, eigenvectors = torch.linalg.eigh(g)
        kept = eigenvalues > self.rank_tol * g.shape[0] * eigenvalues.max()
        inverse_roots = torch.where(kept, eigenvalues.clamp_min(torch.finfo(g.dtype).tiny), 1.0)
        inverse_roots = torch.where(kept, inverse_roots.rsqrt(), 0.0)
        if self.scale == "min":
            squared = torch.where(kept, eigenvalues, torch.inf).min()
        elif self.scale == "median":
            squared = torch.where(kept, eigenvalues, torch.nan).nanmedian()
        else:
            count = kept.sum().clamp_min(1)
            squared = torch.where(kept, eigenvalues, 0.0).sum() / count
        # no eigenvalue kept (all gradients zero): no direction to align, σ = 0
        sigma = torch.where(torch.isfinite(squared), squared, 0.0).clamp_min(0).sqrt()
        return sigma * (eigenvectors * inverse_roots) @ eigenvectors.T

    def weights(self, gram: Tensor, losses: Tensor | None = None) -> Tensor:
        return self.alignment_matrix(gram).sum(dim=1).to(gram.dtype)
