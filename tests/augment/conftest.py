"""Augmentation tests run with one intra-op thread: the tensors are small, and on a busy 2-core
machine extra threads only spin (the timings of a DataLoader worker, which has one thread)."""

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
