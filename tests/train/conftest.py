import pytest


@pytest.fixture(autouse=True)
def _quiet_single_thread(monkeypatch, one_torch_thread):
    """No progress bars, and one torch thread (tests/conftest.py, `one_torch_thread`)."""
    monkeypatch.setenv("UPDELTA_PROGRESS", "0")
