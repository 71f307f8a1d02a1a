"""IMGrad: CAGrad whose dual weighs the norm term by the alignment of MGDA with the mean.

Zhou, Liu, Zhao & Gong, "Injecting Imbalance Sensitivity for Multi-Task Learning", IJCAI 2025
(arXiv 2503.08006).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from mtrl.aggregators.cagrad import CAGrad, conflict_averse_dual
from mtrl.aggregators.mgda import min_norm_weights
from mtrl.aggregators.tools import safe_divide, uniform


@dataclasses.dataclass
class IMGrad(CAGrad):
    """CAGrad with the dual ``F(w) = (1.5 − cm) g_wᵀg0 + cm c‖g0‖‖g_w‖``, where
    ``cm = cos(g0, g_MGDA)`` and ``g_MGDA`` is MGDA's min-norm point; the update is CAGrad's,
    ``d = (g0 + c‖g0‖ g_w*/‖g_w*‖) / r`` with the same ``c`` and rescale ``r``.

    Since ``g_i·g_MGDA ≥ ‖g_MGDA‖²`` for every i, ``cm ∈ [0, 1]`` and ``1.5 − cm > 0``, so
    ``F`` is a positive multiple of CAGrad's dual with radius ``c·cm/(1.5 − cm)`` (at most
    ``2c``): that is how it is solved. With ``cm = 1``, ``F(w) = ½ g_wᵀg0 + c‖g0‖‖g_w‖``:
    CAGrad's objective with its linear term halved, i.e. ``½ ×`` CAGrad's objective at radius
    ``2c``, with the same minimiser. When ``g_MGDA = 0`` (a Pareto-stationary point) ``cm`` is
    taken as 0.

    Args:
        c: CAGrad's radius, in [0, 1); the default is CAGrad's MT10 value (IMGrad's own
            Meta-World setting could not be checked).
        rescale: 0 leaves ``d`` as is, 1 divides it by ``1 + c²`` (the default), 2 by ``1 + c``.
        smoothing: as in CAGrad, the floor inside ``‖g_w‖`` relative to the mean gradient norm.
    """

    name = "imgrad"

    def alignment(self, gram: Tensor) -> Tensor:
        """``cm = cos(g0, g_MGDA)`` for the normalised float64 ``gram`` (0 if either vanishes)."""
        mean = uniform(gram.shape[0], gram)
        mgda = min_norm_weights(gram)
        product = mean @ gram @ mgda
        norms = ((mean @ gram @ mean) * (mgda @ gram @ mgda)).clamp_min(0).sqrt()
        return safe_divide(product, norms).clamp(0.0, 1.0)

    def _alignment_or(self, gram: Tensor, cm: Tensor | float | None) -> Tensor:
        if cm is None:
            return self.alignment(gram)
        return torch.as_tensor(cm, dtype=gram.dtype, device=gram.device)

    def radius(self, gram: Tensor, cm: Tensor | float | None = None) -> Tensor:
        cm = self._alignment_or(gram, cm)
        return super().radius(gram) * cm / (1.5 - cm)

    def dual_objective(self, gram: Tensor, w: Tensor, cm: Tensor | float | None = None) -> Tensor:
        """``F(w) = (1.5 − cm) g_wᵀg0 + cm c‖g0‖‖g_w‖`` for the normalised float64 ``gram``;
        ``cm`` defaults to ``cos(g0, g_MGDA)`` and may be forced (e.g. to 1). ``w`` may carry
        leading batch dimensions."""
        cm = self._alignment_or(gram, cm)
        mean = uniform(gram.shape[0], gram)
        gw = w @ gram
        norm_gw = (gw * w).sum(dim=-1).clamp_min(0).sqrt()
        return (1.5 - cm) * (gw @ mean) + cm * CAGrad.radius(self, gram) * norm_gw

    def solve_dual(self, gram: Tensor, cm: Tensor | float | None = None) -> Tensor:
        """``argmin_{w∈Δ} F(w)`` for the normalised float64 ``gram`` (``cm`` as above)."""
        mean = uniform(gram.shape[0], gram)
        return conflict_averse_dual(gram, mean, self.radius(gram, cm), self.smoothing)
