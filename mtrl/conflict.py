"""Gradient-conflict diagnostics, all read off the Gram matrix the aggregator already has.

Everything stays a tensor on the device: callers convert to numbers only when they log.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mtrl.stats import DeviceMeans, PendingRows

# Cosines within this of zero count as orthogonal: float rounding, not conflict.
CONFLICT_TOLERANCE = 1e-6


@dataclass(frozen=True)
class ConflictStats:
    """Diagnostics of one aggregation step.

    Attributes:
        cosines: ``[K, K]`` pairwise cosines of the task gradients (0 where a gradient vanishes).
        conflicting_pairs: fraction of the K(K−1)/2 task pairs with a negative cosine.
        cos_min: the smallest pairwise cosine (1 when K = 1).
        task_products: ``[K]`` inner products ``g_i · update``.
        update_conflicts: number of tasks whose gradient has a negative cosine with the update.
        update_norm_ratio: ``‖update‖ / ‖mean gradient‖``.
        weights: ``[K]`` the task weights ``w`` of ``update = Jᵀ w``.
    """

    cosines: Tensor
    conflicting_pairs: Tensor
    cos_min: Tensor
    task_products: Tensor
    update_conflicts: Tensor
    update_norm_ratio: Tensor
    weights: Tensor


def _safe_div(numerator: Tensor, denominator: Tensor) -> Tensor:
    tiny = torch.finfo(denominator.dtype).tiny
    return torch.where(denominator > tiny, numerator / denominator.clamp_min(tiny), 0.0)


def _norms_and_cosines(gram: Tensor) -> tuple[Tensor, Tensor]:
    """Gradient norms ``[..., K]`` and pairwise cosines ``[..., K, K]`` of Gram matrices (a
    cosine is 0 where a gradient vanishes)."""
    norms = gram.diagonal(dim1=-2, dim2=-1).clamp_min(0).sqrt()
    return norms, _safe_div(gram, norms.unsqueeze(-1) * norms.unsqueeze(-2))


def _pair_cosines(cosines: Tensor) -> Tensor:
    """The ``K(K−1)/2`` cosines of distinct task pairs, ``[..., K(K−1)/2]``."""
    size = cosines.shape[-1]
    first, second = torch.triu_indices(size, size, offset=1, device=cosines.device)
    return cosines[..., first, second]


def conflict_stats(gram: Tensor, weights: Tensor) -> ConflictStats:
    """Diagnostics for the update ``Jᵀ weights`` given ``gram = J Jᵀ``.

    Leading dimensions are a batch: ``gram`` of shape ``[..., K, K]`` and ``weights`` of shape
    ``[..., K]`` give statistics of shape ``[...]`` (``[..., K]`` and ``[..., K, K]`` for the
    vectors and the cosines).
    """
    gram = gram.to(torch.float64)
    weights = weights.to(torch.float64)
    size = gram.shape[-1]
    norms, cosines = _norms_and_cosines(gram)
    pair_cosines = _pair_cosines(cosines)
    if size > 1:
        conflicting_pairs = (pair_cosines < -CONFLICT_TOLERANCE).to(gram.dtype).mean(dim=-1)
        cos_min = pair_cosines.amin(dim=-1)
    else:
        conflicting_pairs = gram.new_zeros(gram.shape[:-2])
        cos_min = gram.new_ones(gram.shape[:-2])
    task_products = (gram @ weights.unsqueeze(-1)).squeeze(-1)
    update_norm = (weights * task_products).sum(dim=-1).clamp_min(0).sqrt()
    update_cosines = _safe_div(task_products, norms * update_norm.unsqueeze(-1))
    # the mean gradient's squared norm: (1/K) 1ᵀ G 1 (1/K)
    mean_norm = (gram.sum(dim=(-2, -1)) / size**2).clamp_min(0).sqrt()
    return ConflictStats(
        cosines=cosines,
        conflicting_pairs=conflicting_pairs,
        cos_min=cos_min,
        task_products=task_products,
        update_conflicts=(update_cosines < -CONFLICT_TOLERANCE).sum(dim=-1),
        update_norm_ratio=_safe_div(update_norm, mean_norm),
        weights=weights,
    )


class LayerConflicts:
    """Recon's S-conflict scores: for each layer, how often task pairs conflict on it.

    A layer's gradient block gives its own Gram matrix, and the (update, task pair) entries
    whose cosine is below ``threshold`` (S) are counted. The counts stay on the device; the
    score of a layer is its count over all the pairs it has seen.
    """

    def __init__(self, layers: list[str], threshold: float = 0.0) -> None:
        if not -1 <= threshold <= 0:
            raise ValueError(f"the conflict threshold S must be in [-1, 0], got {threshold}")
        self.layers, self.threshold = list(layers), threshold
        self.counts: Tensor | None = None
        self.pairs: Tensor | float = 0.0

    def add(self, layer_grams: Tensor | list[Tensor], weight: Tensor | None = None) -> Tensor:
        """Count conflicting pairs per layer; returns the fraction of pairs that conflict.

        ``layer_grams`` is one update's list of ``[K, K]`` layer Gram matrices, or a batch of
        updates ``[..., L, K, K]``; ``weight`` (0/1, shaped like the batch) leaves updates out
        without a host check. The fractions are shaped ``[..., L]``.
        """
        grams = torch.stack(layer_grams) if isinstance(layer_grams, list) else layer_grams
        _, cosines = _norms_and_cosines(grams.to(torch.float64))
        pair_cosines = _pair_cosines(cosines)
        below = (pair_cosines < self.threshold).sum(dim=-1).to(torch.float64)
        fractions = below / max(pair_cosines.shape[-1], 1)
        pairs = float(pair_cosines.shape[-1])
        if weight is not None:
            weight = weight.to(torch.float64)
            below = below * weight.unsqueeze(-1)
            pairs = pairs * weight.sum()
        else:
            pairs = pairs * below[..., 0].numel()
        below = below.reshape(-1, below.shape[-1]).sum(dim=0)
        self.counts = below if self.counts is None else self.counts + below
        self.pairs = self.pairs + pairs
        return fractions

    def scores(self) -> dict[str, float]:
        """Layer name → fraction of all (update, pair) entries below the threshold."""
        pairs = float(self.pairs)
        if self.counts is None or pairs == 0:
            return dict.fromkeys(self.layers, 0.0)
        return dict(zip(self.layers, (self.counts / pairs).tolist(), strict=True))

    def state_dict(self) -> dict:
        return {
            "layers": self.layers,
            "threshold": self.threshold,
            "counts": self.counts,
            "pairs": float(self.pairs),
        }

    def load_state_dict(self, state: dict) -> None:
        if list(state["layers"]) != self.layers:
            raise ValueError(f"conflict counts for layers {state['layers']}, not {self.layers}")
        self.threshold, self.counts = state["threshold"], state["counts"]
        self.pairs = state["pairs"]


class ConflictRecorder:
    """Gradient-conflict statistics of one network's steps, for TensorBoard.

    It takes each step's result (:class:`mtrl.backward.StepResult`) and keeps the Gram
    matrices of recent steps in rows allocated once (:class:`mtrl.stats.PendingRows`), because
    their statistics cost some forty small operations per step and far less computed for
    ``batch`` steps at once. Everything stays on the device until :meth:`means` is read.

    Logged as ``grad/<name>/...`` (pairs in conflict, least cosine, tasks the update conflicts
    with, its norm against the mean gradient's, the task weights), ``grad/<name>/cos/<a>/<b>``
    for every task pair (:meth:`pairwise_means`, read less often) and ``recon/<name>/<layer>``,
    Recon's per-layer conflict scores.
    """

    def __init__(
        self,
        name: str,
        task_names: list[str],
        layer_names: list[str],
        threshold: float = 0.0,
        device: torch.device | str | None = None,
        batch: int = 256,
    ) -> None:
        self.name, self.task_names = name, list(task_names)
        self.layers = LayerConflicts(layer_names, threshold)
        self.stats, self.pairwise = DeviceMeans(device), DeviceMeans(device)
        self.pending = PendingRows(batch, device)
        size = len(task_names)
        first, second = torch.triu_indices(size, size, offset=1).tolist()
        self._pair_labels = [
            f"{task_names[i]}/{task_names[j]}" for i, j in zip(first, second, strict=True)
        ]
        # on the device once: lists as indices would be copied from the host at every flush
        self._pairs = torch.triu_indices(size, size, offset=1, device=device)

    def add(self, result: Any) -> None:
        """Count one step; a step that was skipped counts in no statistic."""
        if result.gram is None:  # no per-task gradients: the weights are all there is
            weights = result.weights.to(torch.float64)
            self.stats.add(f"grad/{self.name}/weight", weights, self.task_names, result.finite)
            return
        if self.pending.append(result.gram, result.weights, result.layer_grams, result.finite):
            self.flush()

    def flush(self) -> None:
        """Turn the pending steps' Gram matrices into statistics, all in one batch."""
        if not self.pending.filled:
            return
        grams, weights, layer_grams, ok = self.pending.take()
        stats = conflict_stats(grams, weights)
        prefix = f"grad/{self.name}"
        for key in ("conflicting_pairs", "cos_min", "update_conflicts", "update_norm_ratio"):
            self.stats.add_batch(f"{prefix}/{key}", getattr(stats, key), weights=ok)
        self.stats.add_batch(f"{prefix}/weight", stats.weights, self.task_names, weights=ok)
        first, second = self._pairs
        cosines = stats.cosines[:, first, second]
        self.pairwise.add_batch(f"{prefix}/cos", cosines, self._pair_labels, weights=ok)
        fractions = self.layers.add(layer_grams, weight=ok)
        self.stats.add_batch(f"recon/{self.name}", fractions, self.layers.layers, weights=ok)

    def means(self) -> dict[str, float]:
        """Every statistic's mean since the last call (one read from the device)."""
        self.flush()
        return self.stats.pop()

    def pairwise_means(self) -> dict[str, float]:
        """The mean cosine of every task pair since the last call: K(K−1)/2 numbers, too many
        to log at every dump on MT50, so callers read them less often."""
        self.flush()
        return self.pairwise.pop()

    def state_dict(self) -> dict[str, Any]:
        return {
            "layers": self.layers.state_dict(),
            "stats": self.stats.state_dict(),
            "pairwise": self.pairwise.state_dict(),
            "pending": self.pending.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.layers.load_state_dict(state["layers"])
        self.stats.load_state_dict(state["stats"])
        self.pairwise.load_state_dict(state["pairwise"])
        self.pending.load_state_dict(state["pending"])
