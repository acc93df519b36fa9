import sys
from pathlib import Path

import pytest
import torch

# The oracles module sits next to the tests; make it importable under any import mode.
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Run each theory test on one torch thread, then restore the setting.

    The tensors here are small; on a busy machine torch's thread pool spends more time
    waking threads than computing (tanh on 14k numbers: 20 ms instead of 0.1 ms).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
