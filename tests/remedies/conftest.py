import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def snapshot():
    """snapshot(model) -> check(): check() asserts every parameter and buffer is unchanged."""

    def take(model):
        saved = {k: v.detach().clone() for k, v in model.state_dict().items()}

        def check():
            now = model.state_dict()
            assert now.keys() == saved.keys()
            for key, value in saved.items():
                assert torch.equal(now[key], value), f"{key} changed"

        return check

    return take
