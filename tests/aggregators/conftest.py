import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """K×K problems gain nothing from intra-op threads, and on a busy machine the threads'
    synchronisation dominates (the suite ran 3× slower with two threads next to another job)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
