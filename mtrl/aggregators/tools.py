"""Small helpers shared by several aggregators: seeding, checks, the mean's weights, safe
division."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class Seeded:
    """For methods that draw random numbers: a CPU generator seeded from the ``seed`` field.

    ``seed=None`` draws the seed from torch's global generator, so that ``torch.manual_seed``
    makes runs repeatable. ``reset`` restarts the stream; the generator's state is part of the
    method's checkpointed state. Drawing on the host keeps the draws identical on every
    device; :func:`upload` sends them to the device without a host sync.
    """

    seed: int | None
    _generator: torch.Generator

    def _start_generator(self) -> None:
        seed = self.seed
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ValueError(f"{self.name}: seed must be null or an integer >= 0, got {seed!r}")
        self._generator = torch.Generator()
        Seeded.reset(self)

    def reset(self) -> None:
        seed = self.seed if self.seed is not None else int(torch.randint(2**62, ()).item())
        self._generator.manual_seed(seed)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self._generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._generator.set_state(state["generator"])


def check_count(method: str, field: str, value: Any) -> None:
    """Refuse a hyperparameter that must be an integer ``>= 1`` (a bool is not one)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{method}: {field} must be an integer >= 1, got {value!r}")


def visiting_orders(generator: torch.Generator, size: int) -> Tensor:
    """One random permutation of the other tasks per task: row i lists the j ≠ i."""
    keys = torch.rand(size, size, generator=generator, dtype=torch.float64)
    keys.fill_diagonal_(2.0)  # sorts each task itself last, where it is dropped
    return keys.argsort(dim=1)[:, : size - 1]


def uniform(size: int, like: Tensor) -> Tensor:
    """The mean's weights ``(1/K, ..., 1/K)`` in the dtype and on the device of ``like``."""
    return torch.full((size,), 1.0 / size, dtype=like.dtype, device=like.device)


def safe_divide(numerator: Tensor, denominator: Tensor) -> Tensor:
    """``numerator / denominator``, and 0 where the denominator is 0 (no NaN, no host sync)."""
    nonzero = denominator != 0
    return torch.where(nonzero, numerator, 0.0) / torch.where(nonzero, denominator, 1.0)


def upload(tensor: Tensor, device: torch.device) -> Tensor:
    """``tensor`` (made on the host, e.g. random draws from a CPU generator) on ``device``.

    A copy from ordinary host memory to a GPU waits for the GPU's queue first; from pinned
    memory it joins the queue like any kernel, so the host never waits.
    """
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)
