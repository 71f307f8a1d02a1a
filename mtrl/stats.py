"""Running means of training scalars, kept on the device until they are logged.

Reading a CUDA tensor with ``.item()`` waits for the GPU. Summing on the device and reading
every sum at once, when the logger dumps, keeps the update loop free of such waits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor


class DeviceMeans:
    """Accumulates named tensors and hands out their means as floats, all in one device read."""

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.device = device  # where a loaded state goes
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

        ``weight`` (a 0/1 or boolean tensor) leaves a value out without a host check, e.g. the
        diagnostics of an update that was skipped for being non-finite.
        """
        self._set_labels(name, labels, value.shape)
        value = value.detach().to(torch.float64)
        if weight is None:
            weight = torch.ones((), dtype=torch.float64, device=value.device)
        self._accumulate(name, torch.where(weight > 0, value, 0.0), weight.to(torch.float64))

    def add_batch(
        self,
        name: str,
        values: Tensor,
        labels: Sequence[str] | None = None,
        weights: Tensor | None = None,
    ) -> None:
        """Add ``values.shape[0]`` values at once, as :meth:`add` would one by one (``weights``
        has one entry per value)."""
        self._set_labels(name, labels, values.shape[1:])
        if weights is None:
            weights = torch.ones(values.shape[0], device=values.device)
        kept = (weights > 0).view(-1, *[1] * (values.dim() - 1))
        total = torch.where(kept, values.detach().to(torch.float64), 0.0).sum(dim=0)
        self._accumulate(name, total, weights.to(torch.float64).sum())

    def _set_labels(self, name: str, labels: Sequence[str] | None, shape: torch.Size) -> None:
        """Remember the labels of a vector entry, after checking that they fit one value."""
        if labels is None:
            return
        if shape != (len(labels),):
            raise ValueError(f"{name}: {len(labels)} labels for a value of shape {shape}")
        self._labels[name] = labels

    def _accumulate(self, name: str, total: Tensor, count: Tensor) -> None:
        """Add to the running sum and count of ``name``; a left-out value is already zero in
        ``total``, so a NaN it held never reaches the sum."""
        if name in self._sums:
            self._sums[name] += total
            self._counts[name] += count
        else:
            # copies: a caller's tensor must not be changed by the next +=
            self._sums[name], self._counts[name] = total.clone(), count.clone()

    def state_dict(self) -> dict[str, Any]:
        """The sums and counts since the last :meth:`pop`, so that a resumed run logs the
        means it would have logged."""
        return {
            "sums": dict(self._sums),
            "counts": dict(self._counts),
            "labels": {name: list(labels) for name, labels in self._labels.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._sums = {name: value.to(self.device) for name, value in state["sums"].items()}
        self._counts = {name: value.to(self.device) for name, value in state["counts"].items()}
        self._labels = {name: list(labels) for name, labels in state["labels"].items()}

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


class PendingRows:
    """Tensors of recent updates, one row each, in buffers allocated once.

    Statistics that take some forty small operations per update cost far less computed for a
    few hundred updates at once. Keeping each update's tensors in a list until then would leave
    hundreds of small long-lived allocations among the update's large short-lived ones; the
    heap then fragments and keeps growing, and the page faults of its new memory slowed one
    update in ten by a sixth. Copying into rows allocated once avoids that.
    """

    def __init__(self, rows: int, device: torch.device | str | None = None) -> None:
        if rows < 1:
            raise ValueError(f"rows must be at least 1, got {rows}")
        self.rows, self.device = rows, device
        self.filled = 0
        self._buffers: list[Tensor] = []

    def append(self, *tensors: Tensor) -> bool:
        """Copy one update's tensors into the next row; returns whether the buffers are full."""
        if not self._buffers:
            self._buffers = [t.new_empty((self.rows, *t.shape)) for t in tensors]
        for buffer, tensor in zip(self._buffers, tensors, strict=True):
            buffer[self.filled].copy_(tensor)
        self.filled += 1
        return self.filled == self.rows

    def state_dict(self) -> dict[str, Any]:
        return {"rows": [buffer[: self.filled].clone() for buffer in self._buffers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._buffers, self.filled = [], 0
        rows = state["rows"]
        if rows and len(rows[0]):
            device = self.device or rows[0].device
            self._buffers = [
                torch.empty((self.rows, *r.shape[1:]), dtype=r.dtype, device=device) for r in rows
            ]
            self.filled = len(rows[0])
            for buffer, saved in zip(self._buffers, rows, strict=True):
                buffer[: self.filled].copy_(saved)

    def take(self) -> tuple[Tensor, ...]:
        """The filled rows of each buffer (views, valid until the next :meth:`append`); the
        buffers then start afresh."""
        filled, self.filled = self.filled, 0
        return tuple(buffer[:filled] for buffer in self._buffers)
