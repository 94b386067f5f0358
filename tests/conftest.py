"""Fixtures shared by the test modules (the plain helper functions they share are in helpers.py)."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one torch thread (and CI's two cores are shared with subprocesses)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
