"""A watched model can be copied, pickled, saved, averaged and fixed.

EMA and SWA copies, best-model snapshots and ``torch.save(model)`` are everyday code. A copy
carries none of gradwatch's hooks and is not watched; the original stays watched, and its
record is the one it would have been without the copy (compared value for value with a run
that made none).
"""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

import gradwatch as gw

HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
              "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs",
              "_forward_hooks_always_called", "_state_dict_hooks", "_load_state_dict_pre_hooks")


def hooks(model: nn.Module) -> int:
    """Hooks of every kind held by ``model`` and its submodules."""
    return sum(len(getattr(m, d, {})) for m in model.modules() for d in HOOK_DICTS)


def make():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.ReLU(),
                          nn.Linear(8, 3))
    return model, torch.optim.SGD(model.parameters(), lr=0.05)


def batches(n):
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(16, 6, generator=gen), torch.randint(0, 3, (16,), generator=gen))
            for _ in range(n)]


def train(model, opt, mon, data):
    for x, y in data:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        mon.step(loss)


def torch_save(model):
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


COPIES = {
    "deepcopy": copy.deepcopy,
    "pickle": lambda m: pickle.loads(pickle.dumps(m)),
    "torch.save": torch_save,
    "AveragedModel": lambda m: AveragedModel(m),
}


def use(copied, data):
    """What a training loop does with a copy: forward and backward passes."""
    for x, y in data:
        nn.functional.cross_entropy(copied(x), y).backward()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The record of 6 steps with no copy made."""
    model, opt = make()
    run_dir = tmp_path_factory.mktemp("ref") / "run"
    with gw.watch(model, run_dir, optimizer=opt, detail_every=1) as mon:
        train(model, opt, mon, batches(6))
    return gw.load(run_dir).stats


def assert_same_record(run_dir, reference):
    stats = gw.load(run_dir).stats
    assert sorted(stats["step"].unique()) == list(range(6))
    key = ["step", "layer", "stat"]
    got = stats.set_index(key)["value"].sort_index()
    want = reference.set_index(key)["value"].sort_index()
    assert got.equals(want)  # every value, bit for bit (NaN where NaN)


@pytest.mark.parametrize("how", list(COPIES))
def test_a_copy_carries_no_hooks_and_is_not_watched(tmp_path, reference, how):
    model, opt = make()
    before = hooks(model)
    data = batches(6)
    with gw.watch(model, tmp_path / "run", optimizer=opt, detail_every=1) as mon:
        train(model, opt, mon, data[:3])
        assert hooks(model) > before  # watched
        copied = COPIES[how](model)
        assert hooks(copied) == before == 0
        for p, q in zip(copied.parameters(), model.parameters(), strict=True):
            assert torch.equal(p, q) and p is not q
        seen = mon.step_count
        use(copied, batches(2))  # the copy trains a little: nothing of it is recorded
        if isinstance(copied, AveragedModel):
            copied.update_parameters(model)
        assert mon.step_count == seen
        train(model, opt, mon, data[3:])  # the original is still watched
    assert hooks(model) == 0  # close removed every hook
    assert_same_record(tmp_path / "run", reference)


def test_the_optimizer_of_a_watched_model_can_be_copied_and_pickled(tmp_path):
    model, opt = make()
    with gw.watch(model, tmp_path / "run", optimizer=opt) as mon:
        train(model, opt, mon, batches(2))
        for twin in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
            assert not twin._optimizer_step_pre_hooks and not twin._optimizer_step_post_hooks
        assert opt._optimizer_step_pre_hooks  # the original keeps its hooks
        train(model, opt, mon, batches(2))
    assert gw.load(tmp_path / "run").steps == [0, 1, 2, 3]


def test_fix_on_a_watched_model(tmp_path, reference):
    """``gw.fix`` copies the model and checks it: the copy is unwatched, and the checks on
    the original leave the original's record as it would have been."""
    model, opt = make()
    data = batches(6)
    with gw.watch(model, tmp_path / "run", optimizer=opt, detail_every=1) as mon:
        train(model, opt, mon, data[:3])
        fixed, report = gw.fix(model, data[0][0], data[0][1])
        assert hooks(fixed) == 0 and report.before.verdict
        assert mon.step_count == 3
        train(model, opt, mon, data[3:])
    assert_same_record(tmp_path / "run", reference)
