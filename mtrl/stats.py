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
        self._counts: dict[str, Tensor] = {}
        self._labels: dict[str, Sequence[str]] = {}

    def add(
        self,
        name: str,
        value: Tensor,
        labels: Sequence[str] | None = None,
        weight: Tensor | None = None,
    ) -> None:
        """Add a scalar, or a vector whose entries are logged as ``name/<label>``.

        ``weight`` (a 0/1 tensor) leaves a value out without a host check, e.g. the diagnostics
        of an update that was skipped for being non-finite.
        """
        value = value.detach().to(torch.float64)
        if labels is not None:
            if value.shape != (len(labels),):
                raise ValueError(f"{name}: {len(labels)} labels for a value of shape {value.shape}")
            self._labels[name] = labels
        if weight is None:
            weight = torch.ones((), dtype=torch.float64, device=value.device)
        weight = weight.to(torch.float64)
        value = torch.where(weight > 0, value, 0.0)  # a skipped NaN must not reach the sum
        if name in self._sums:
            self._sums[name] += value
            self._counts[name] += weight
        else:
            self._sums[name] = value.clone()
            self._counts[name] = weight.clone()

    def pop(self) -> dict[str, float]:
        """The mean of every entry since the last call, then start afresh; entries that only
        saw left-out values are not reported."""
        if not self._sums:
            return {}
        names = list(self._sums)
        flat = torch.cat(
            [self._sums[name].reshape(-1) for name in names]
            + [self._counts[name].reshape(1) for name in names]
        ).tolist()
        counts = dict(zip(names, flat[-len(names) :], strict=True))
        means: dict[str, float] = {}
        position = 0
        for name in names:
            keys = [f"{name}/{label}" for label in self._labels.get(name, [])] or [name]
            for key in keys:
                if counts[name] > 0:
                    means[key] = flat[position] / counts[name]
                position += 1
        self._sums.clear()
        self._counts.clear()
        return means
