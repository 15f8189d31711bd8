"""Test-wide settings."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """The tests run tiny tensors, where a second intra-op thread only adds overhead (and, on a
    busy machine, long waits); the benchmarks measure threaded performance instead."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def seeded_torch():
    """Each test starts from the same global RNG state, so it passes or fails alike alone and in
    the suite, whatever ran before it."""
    torch.manual_seed(0)
