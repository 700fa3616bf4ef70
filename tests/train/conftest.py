import pytest
import torch


@pytest.fixture(autouse=True)
def _quiet_single_thread(monkeypatch):
    """No progress bars, and one torch thread: the suite runs as 2 pytest workers on 2 cores, and oversubscribed
    OpenMP threads are many times slower than one thread each."""
    monkeypatch.setenv("UPDELTA_PROGRESS", "0")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
