"""Small pieces shared by several aggregators: seeding, checks, the mean's weights, safe
division, constant ladders."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mtrl.generators import device_exists, moved, restore_generator


class Seeded:
    """For methods that draw random numbers: a generator seeded from the ``seed`` field, on the
    device of the Gram matrices the method is given (:meth:`generator`).

    ``seed=None`` draws the seed from torch's global generator, so that ``torch.manual_seed``
    makes runs repeatable. ``reset`` restarts the stream; the generator's state is part of the
    method's checkpointed state. The draws stay on the device: nothing waits for the host, and a
    captured CUDA graph replays them from the generator registered with it
    (:meth:`Aggregator.generators`).
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

    def generator(self, device: torch.device) -> torch.Generator:
        """The method's generator on ``device``: the first call on another device starts one
        there, seeded from the current one's state (so the stream is fixed per device)."""
        self._generator = moved(self._generator, device)
        return self._generator

    def generators(self) -> list[torch.Generator]:
        return [self._generator]

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self._generator.get_state(), "device": str(self._generator.device)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # The device the method runs on is known at its first call: until then the generator
        # stays on the device it was saved from, or on the CPU where that one is missing here.
        # Either way, a run continued on another device gets the stream that
        # mtrl.generators.restore_generator gives the replay buffer.
        saved_on = state.get("device", "cpu")
        device = saved_on if device_exists(saved_on) else "cpu"
        self._generator = restore_generator(state["generator"], saved_on, device)


def check_count(method: str, field: str, value: Any) -> None:
    """Refuse a hyperparameter that must be an integer ``>= 1`` (a bool is not one)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{method}: {field} must be an integer >= 1, got {value!r}")


def visiting_orders(generator: torch.Generator, size: int) -> Tensor:
    """One random permutation of the other tasks per task, on the generator's device: row i
    lists the j ≠ i."""
    keys = torch.rand(size, size, generator=generator, dtype=torch.float64, device=generator.device)
    keys.fill_diagonal_(2.0)  # sorts each task itself last, where it is dropped
    return keys.argsort(dim=1)[:, : size - 1]


def uniform(size: int, like: Tensor) -> Tensor:
    """The mean's weights ``(1/K, ..., 1/K)`` in the dtype and on the device of ``like``."""
    return torch.full((size,), 1.0 / size, dtype=like.dtype, device=like.device)


def safe_divide(numerator: Tensor, denominator: Tensor) -> Tensor:
    """``numerator / denominator``, and 0 where the denominator is 0 (no NaN, no host sync)."""
    nonzero = denominator != 0
    return torch.where(nonzero, numerator, 0.0) / torch.where(nonzero, denominator, 1.0)


def geometric(count: int, ratio: float, like: Tensor) -> Tensor:
    """``(1, r, r², ..., r^(count − 1))`` in the dtype and on the device of ``like``.

    Made on the device from a fill and a running product, not copied from a Python list: inside
    an update, a copy from the host makes a CUDA device wait, and a CUDA graph cannot capture
    it. For powers of two (and of 100 in float64) every entry is exact.
    """
    powers = torch.full((count,), ratio, dtype=like.dtype, device=like.device).cumprod(0)
    return powers / ratio
