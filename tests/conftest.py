import os

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    # one intra-op thread: the tests' models are small, where more threads only add overhead
    # (and oversubscribe the CPU when a test starts subprocesses)
    torch.set_num_threads(1)
    yield
