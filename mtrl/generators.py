"""Random generators restored from a checkpoint onto the device a run continues on.

A CPU generator's state (a Mersenne Twister) means nothing to a CUDA one (a Philox counter) and
back, so a run that resumes on another device cannot continue the saved stream. The replay
buffer and the methods that draw random numbers then both start a stream seeded from the saved
state: the same stream every time that checkpoint is resumed on that kind of device.
"""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor


def seed_from_state(state: Tensor) -> int:
    """A seed in ``[0, 2**62)`` made of a generator's saved state, whichever device it is from."""
    digest = hashlib.blake2b(state.cpu().numpy().tobytes(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 2


def restore_generator(
    state: Tensor, saved_on: torch.device | str, device: torch.device | str
) -> torch.Generator:
    """A generator on ``device`` for a generator's ``state`` saved from one on ``saved_on``.

    On the same device it continues the saved stream exactly; on another it is seeded with
    :func:`seed_from_state`.
    """
    generator = torch.Generator(device=device)
    if generator.device == torch.device(saved_on):
        generator.set_state(state)
    else:
        generator.manual_seed(seed_from_state(state))
    return generator


def moved(generator: torch.Generator, device: torch.device | str) -> torch.Generator:
    """``generator`` itself if it is on ``device``, else one there seeded from its state, as a
    restore onto that device would be (:func:`restore_generator`)."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:  # a generator's device has its index
        device = torch.device("cuda", torch.cuda.current_device())
    if generator.device == device:
        return generator
    return restore_generator(generator.get_state(), generator.device, device)


def device_exists(device: torch.device | str) -> bool:
    """Whether a generator can be made on ``device`` in this process (a CUDA device may be
    missing where a run resumes)."""
    try:
        torch.Generator(device=device)
    except (RuntimeError, AssertionError):  # the kinds torch raises for a missing device
        return False
    return True
