"""Running means of training scalars, kept on the device until they are logged.

Reading a CUDA tensor with ``.item()`` waits for the GPU. Summing on the device and reading
every sum at once, when the logger dumps, keeps the update loop free of such waits.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

# Values of one name wait in a list until this many arrived, then are summed in one go: an
# update adds about twenty values, and casting and masking each one on arrival cost ~1% of a
# GradOPS update on two CPU cores, in per-operation overhead alone.
PENDING_LIMIT = 256


class DeviceMeans:
    """Accumulates named tensors and hands out their means as floats, all in one device read.

    Added values are kept as they are (no copy) until they are summed, so they should be small
    tensors of their own, not views into large ones.
    """

    def __init__(self) -> None:
        self._sums: dict[str, Tensor] = {}
        self._counts: dict[str, Tensor] = {}
        self._labels: dict[str, Sequence[str]] = {}
        self._pending: dict[str, list[tuple[Tensor, Tensor | None]]] = {}

    def add(
        self,
        name: str,
        value: Tensor,
        labels: Sequence[str] | None = None,
        weight: Tensor | None = None,
    ) -> None:
        """Add a scalar, or a vector whose entries are logged as ``name/<label>``.

        ``weight`` (a 0/1 or boolean tensor) leaves a value out without a host check, e.g. the
        diagnostics of an update that was skipped for being non-finite.
        """
        if labels is not None:
            if value.shape != (len(labels),):
                raise ValueError(f"{name}: {len(labels)} labels for a value of shape {value.shape}")
            self._labels[name] = labels
        pending = self._pending.setdefault(name, [])
        pending.append((value.detach(), weight))
        if len(pending) >= PENDING_LIMIT:
            self._fold(name)

    def add_batch(
        self,
        name: str,
        values: Tensor,
        labels: Sequence[str] | None = None,
        weights: Tensor | None = None,
    ) -> None:
        """Add ``values.shape[0]`` values at once, as :meth:`add` would one by one (``weights``
        has one entry per value)."""
        if labels is not None:
            if values.shape[1:] != (len(labels),):
                raise ValueError(
                    f"{name}: {len(labels)} labels for values of shape {values.shape[1:]}"
                )
            self._labels[name] = labels
        if weights is None:
            weights = torch.ones(values.shape[0], device=values.device)
        self._accumulate(name, values.detach().to(torch.float64), weights.to(torch.float64))

    def _fold(self, name: str) -> None:
        """Sum the pending values of ``name`` into its running sum and count."""
        pending = self._pending.pop(name, [])
        if not pending:
            return
        values = torch.stack([value for value, _ in pending]).to(torch.float64)
        always = torch.ones((), dtype=torch.float64, device=values.device)
        weights = torch.stack([always if weight is None else weight for _, weight in pending]).to(
            torch.float64
        )
        self._accumulate(name, values, weights)

    def _accumulate(self, name: str, values: Tensor, weights: Tensor) -> None:
        kept = (weights > 0).view(-1, *[1] * (values.dim() - 1))
        total = torch.where(kept, values, 0.0).sum(dim=0)  # a left-out NaN must not reach it
        count = weights.sum()
        if name in self._sums:
            self._sums[name] += total
            self._counts[name] += count
        else:
            self._sums[name], self._counts[name] = total, count

    def pop(self) -> dict[str, float]:
        """The mean of every entry since the last call, then start afresh; entries that only
        saw left-out values are not reported."""
        for name in list(self._pending):
            self._fold(name)
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
