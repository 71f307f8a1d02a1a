"""A watch, run on the CPU, for what makes a GPU update wait for the host or take data from it.

On a GPU every ``.item()``, ``bool(tensor)``, ``.tolist()`` or ``int(tensor)`` stalls the host
until the device has caught up, and so do the operators whose result size or error check
depends on the data (``nonzero``, ``linalg.eigh``, ``linalg.solve`` without ``_ex``, ...). A
tensor made from Python or numpy data inside an update (``torch.tensor([...], device=...)``)
is a copy from the host: it waits for the device's queue, and a captured CUDA graph cannot hold
it. On the CPU neither the waits nor the copies happen, but what causes them can be seen:
CPU tensors stand in for the device's.
"""

from __future__ import annotations

import contextlib
import os
import traceback
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# Python-level reads of a tensor's value.
READS = ("item", "__bool__", "tolist", "__int__", "__float__", "__index__", "numpy")
# Operators that make a CUDA device wait for the host: a value copied back, a result whose
# size depends on the data, or a LAPACK-style error check (``_linalg_check_errors`` follows
# every non-``_ex`` solve or factorisation; ``eigh`` and ``svd`` check internally).
WAITING_OPERATORS = {
    "aten::_local_scalar_dense",
    "aten::_linalg_check_errors",
    "aten::_linalg_eigh",
    "aten::_linalg_svd",
    "aten::nonzero",
    "aten::is_nonzero",
    "aten::equal",
    "aten::masked_select",
    "aten::_unique2",
    "aten::unique_consecutive",
}
# Operators that bring host data in: a tensor made from Python numbers, lists or numpy arrays
# (``torch.tensor``, ``as_tensor``, ``from_numpy``), or host memory pinned for a copy.
HOST_DATA_OPERATORS = {"aten::lift_fresh", "aten::_pin_memory"}


_TORCH = os.path.dirname(torch.__file__)


def _where() -> str:
    """The stack of the code that asked, without torch's frames or the watch's own."""
    frames = [
        frame
        for frame in traceback.extract_stack()
        if frame.filename != __file__ and not frame.filename.startswith(_TORCH)
    ]
    return "".join(traceback.format_list(frames))


class _Operators(TorchDispatchMode):
    """Records every dispatched operator that waits or brings host data in, with its stack."""

    def __init__(self, found: list[str]) -> None:
        super().__init__()
        self.found = found

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        if name in WAITING_OPERATORS or name in HOST_DATA_OPERATORS:
            self.found.append(f"{name} at\n{_where()}")
            if name == "aten::_pin_memory" and not torch.accelerator.is_available():
                # Pinning needs an accelerator: without one, carry on as if it had been pinned.
                return args[0]
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def watch_host() -> Iterator[list[str]]:
    """Within the block, every read of a tensor's value by the host, every operator that makes
    a device wait (:data:`WAITING_OPERATORS`) and every one that brings host data in
    (:data:`HOST_DATA_OPERATORS`): a list of lines, each the name and where it happened."""
    found: list[str] = []
    originals = {name: getattr(torch.Tensor, name) for name in READS}

    def watched(name: str):
        def read(self, *args: Any, **kwargs: Any) -> Any:
            found.append(f"Tensor.{name} at\n{_where()}")
            return originals[name](self, *args, **kwargs)

        return read

    for name in READS:
        setattr(torch.Tensor, name, watched(name))
    try:
        with _Operators(found):
            yield found
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


def kinds(found: list[str]) -> set[str]:
    """The names in :func:`watch_host`'s lines, without where they happened."""
    return {line.split(" at\n", 1)[0] for line in found}


def host_traffic(model: Any, batch: Any = None) -> list[str]:
    """What an MTSAC's batch sampling (unless ``batch`` is given) and one update read back from
    the device or take from the host (:func:`watch_host`), the conflict statistics that the
    update feeds included."""
    with watch_host() as found:
        if batch is None:
            batch = model.sample_batch(model.batch_size)
        model.update(batch)
        for recorder in (model.critic_conflicts, model.actor_conflicts):
            recorder.flush()  # the update's conflict statistics, computed in batches
    return found
