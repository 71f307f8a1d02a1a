"""Small helpers shared by several aggregators: seeding, the mean's weights, safe division."""

from __future__ import annotations

import torch
from torch import Tensor


def reseed(generator: torch.Generator, seed: int | None) -> None:
    """Seed a method's CPU generator; ``None`` draws the seed from torch's global generator, so
    that ``torch.manual_seed`` makes runs repeatable."""
    generator.manual_seed(seed if seed is not None else int(torch.randint(2**62, ()).item()))


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
