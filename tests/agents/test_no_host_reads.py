"""The update never reads a tensor back to the host, so on a GPU it never waits for one.

On a GPU every ``.item()``, ``bool(tensor)``, ``.tolist()`` or ``int(tensor)`` stalls the host
until the device has caught up, and so do the operators whose result size or error check
depends on the data (``nonzero``, ``linalg.eigh``, ``linalg.solve`` without ``_ex``, ...).
These tests run a whole update, batch sampling included, with both kinds watched; CPU tensors
stand in for the device's.
"""

import traceback

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mtrl.aggregators import available
from tests.agents.test_mtsac import make_model

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
# SDMGrad-OS draws its task sample with a CPU generator on the host, by design: those reads
# touch host tensors only, never the device's.
HOST_SIDE = ("sdmgrad.py", "in sample")


def _on_host_by_design(stack: str) -> bool:
    return all(marker in stack for marker in HOST_SIDE)


class WaitingOperators(TorchDispatchMode):
    """Records every dispatched operator of :data:`WAITING_OPERATORS`, with where it ran."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, str]] = []  # (operator, where it ran)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        if name in WAITING_OPERATORS:
            stack = "".join(traceback.format_stack())
            if not _on_host_by_design(stack):
                self.seen.append((name, stack))
        return func(*args, **(kwargs or {}))


def host_reads(model, batch=None):
    """What a sample (unless ``batch`` is given) and an update read back from the device."""
    reads = []
    originals = {name: getattr(torch.Tensor, name) for name in READS}

    def watched(name):
        def read(self, *args, **kwargs):
            stack = "".join(traceback.format_stack(limit=3)[:-1])
            if not _on_host_by_design(stack):
                reads.append(f"{name}: {stack}")
            return originals[name](self, *args, **kwargs)

        return read

    for name in READS:
        setattr(torch.Tensor, name, watched(name))
    try:
        with WaitingOperators() as operators:
            if batch is None:
                batch = model.replay_buffer.sample_tasks(8)
            model.update(batch)
            for recorder in (model.critic_conflicts, model.actor_conflicts):
                recorder.flush()  # the update's conflict statistics, computed in batches
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)
    return reads + [f"{name}: {stack}" for name, stack in operators.seen]


EIGENDECOMPOSED = pytest.mark.xfail(
    strict=True, reason="Aligned-MTL needs the eigenvalues of the Gram matrix: eigh checks them"
)


@pytest.mark.parametrize(
    "method",
    [pytest.param(m, marks=EIGENDECOMPOSED) if m == "aligned-mtl" else m for m in available()],
)
def test_update_reads_nothing_back(method):
    model = make_model(aggregator=method)
    model.learn(150)
    assert host_reads(model) == []


def test_the_watch_sees_an_eigendecomposition_and_a_checked_solve():
    with WaitingOperators() as operators:
        matrix = torch.eye(3, dtype=torch.float64)
        torch.linalg.eigh(matrix)
        torch.linalg.solve(matrix, matrix)
        torch.linalg.solve_ex(matrix, matrix)  # no check: no wait
    assert [name for name, _ in operators.seen] == [
        "aten::_linalg_eigh",
        "aten::_linalg_check_errors",
    ]


@pytest.mark.parametrize(
    "settings",
    [
        {"per_task_gradients": "vmap"},
        {"policy_kwargs": {"net_arch": [32, 32], "optimizer": "adatask", "multi_head": True}},
    ],
    ids=["vmap", "adatask-multi-head"],
)
def test_other_paths_read_nothing_back(settings):
    model = make_model(**settings)
    model.learn(150)
    batch = model.replay_buffer.sample_tasks(8)
    assert host_reads(model, batch) == []
    # a non-finite batch is skipped on the device too
    poisoned = batch._replace(rewards=torch.full_like(batch.rewards, torch.nan))
    assert host_reads(model, poisoned) == []
    assert int(model.skipped_updates["critic"]) == 1
