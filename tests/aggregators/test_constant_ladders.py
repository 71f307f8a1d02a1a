"""The methods' constant ladders (line-search steps, ridges) are exact, and made on the device
without data from the host."""

import torch

from mtrl._host_watch import watch_host
from mtrl.aggregators.tools import geometric


def test_ladders_are_exact_powers_made_without_host_data():
    for dtype in (torch.float32, torch.float64):
        like = torch.zeros((), dtype=dtype)
        with watch_host() as found:
            halvings, hundreds = geometric(16, 0.5, like), geometric(4, 100.0, like)
        assert found == []
        assert halvings.dtype == hundreds.dtype == dtype
        assert halvings.tolist() == [2.0**-i for i in range(16)]
        assert hundreds.tolist() == [1.0, 1e2, 1e4, 1e6]
