import os

import pytest
import torch
from hypothesis import settings

# CI draws the same examples every run (no flaky failures); local runs explore new ones.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

# Tests whose results depend on floating-point rounding: CI runs them a second time with another
# set of CPU kernels and one thread (`make test-numerics`), where reductions add up in another
# order, so that an exact comparison which holds on one machine only fails there too.
NUMERICAL = (
    "tests/aggregators/",
    "tests/agents/",
    "tests/test_backward.py",
    "tests/test_conflict.py",
    "tests/test_jacobian.py",
    "tests/test_optim.py",
    "tests/test_stats.py",
)


def pytest_report_header(config):
    return (
        f"torch {torch.__version__}: CPU kernels {torch.backends.cpu.get_cpu_capability()}, "
        f"{torch.get_num_threads()} threads"
    )


# Where the `cuda` tests run: MTRL_TEST_DEVICE=cpu runs them against the CPU, to check them.
TEST_DEVICE = os.environ.get("MTRL_TEST_DEVICE", "cuda")


def _device_available(device: str) -> bool:
    return torch.device(device).type != "cuda" or torch.cuda.is_available()


def pytest_collection_modifyitems(items):
    for item in items:
        # slow tests compare whole runs made in one process: the kernels cannot change that
        if item.nodeid.startswith(NUMERICAL) and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.numerical)
        if item.get_closest_marker("cuda") and not _device_available(TEST_DEVICE):
            item.add_marker(pytest.mark.skip(reason=f"needs {TEST_DEVICE}, not on this machine"))
