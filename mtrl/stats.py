"""Running means of training scalars, kept on the device until they are logged.

Reading a CUDA tensor with ``.item()`` waits for the GPU. Summing on the device and reading
every sum at once, when the logger dumps, keeps the update loop free of such waits.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


class DeviceMeans:
    """Accumulates named tensors and hands out their means as floats, all in one device read."""

    def __init__(self) -> None:
        self._sums: dict[str, Tensor] = {}
        self._counts: dict[str, int] = {}
        self._labels: dict[str, Sequence[str]] = {}

    def add(self, name: str, value: Tensor, labels: Sequence[str] | None = None) -> None:
        """Add a scalar, or a vector whose entries are logged as ``name/<label>``."""
        value = value.detach().to(torch.float64)
        if labels is not None:
            if value.shape != (len(labels),):
                raise ValueError(f"{name}: {len(labels)} labels for a value of shape {value.shape}")
            self._labels[name] = labels
        if name in self._sums:
            self._sums[name] += value
            self._counts[name] += 1
        else:
            self._sums[name] = value.clone()
            self._counts[name] = 1

    def pop(self) -> dict[str, float]:
        """The mean of every entry since the last call, then start afresh."""
        if not self._sums:
            return {}
        names = list(self._sums)
        flat = torch.cat([self._sums[name].reshape(-1) for name in names]).tolist()
        means: dict[str, float] = {}
        for name in names:
            count = self._counts[name]
            labels = self._labels.get(name)
            if labels is None:
                means[name] = flat.pop(0) / count
            else:
                for label in labels:
                    means[f"{name}/{label}"] = flat.pop(0) / count
        self._sums.clear()
        self._counts.clear()
        return means
