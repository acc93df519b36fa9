"""Sharded models in this process (a one-rank gloo group): errors, warnings, the DTensor path.

The numbers across ranks are checked on real processes in ``test_sharded.py``; here the
cheap checks: FSDP1 is refused with an error that names it, a Monitor made before
``fully_shard`` warns, and on one rank the DTensor path records what the plain path does.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

import gradwatch as gw
from gradwatch.errors import GradwatchValueError


@pytest.fixture
def one_rank():
    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield init_device_mesh("cpu", (1,))
    finally:
        dist.destroy_process_group()


def net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))


def train(model, manual=False, steps=3):
    """``manual``: no optimizer= (the Monitor reads the update at the next step() call)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gw.watch(model, optimizer=None if manual else opt, detail_every=1,
                  diagnose=False) as mon:
        for step in range(steps):
            x = torch.randn(4, 6, generator=torch.Generator().manual_seed(step))
            opt.zero_grad()
            loss = model(x).square().mean()
            loss.backward()
            if manual:
                mon.step(loss)
                opt.step()
            else:
                opt.step()
                mon.step(loss)
    return mon.run


@pytest.mark.parametrize("manual", [False, True], ids=["optimizer", "manual"])
def test_one_rank_fsdp2_records_what_the_plain_model_records(one_rank, manual):
    sharded = net()
    for layer in (sharded[0], sharded[2]):
        fully_shard(layer, mesh=one_rank)
    fully_shard(sharded, mesh=one_rank)
    a, b = train(sharded, manual), train(net(), manual)
    assert set(a.stats["stat"]) == set(b.stats["stat"])
    assert a.pivot("update_ratio").shape == b.pivot("update_ratio").shape
    for stat in ("grad_norm", "grad_rms", "grad_max_abs", "nonfinite", "weight_norm",
                 "update_ratio", "act_std"):
        np.testing.assert_allclose(a.pivot(stat).to_numpy(), b.pivot(stat).to_numpy(),
                                   rtol=1e-6, err_msg=stat)


def test_watching_before_fully_shard_warns(one_rank):
    model = net()
    mon = gw.watch(model, diagnose=False)  # too early: fully_shard replaces the parameters
    fully_shard(model, mesh=one_rank)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model(torch.randn(4, 6)).square().mean().backward()
        mon.step()
        opt.step()
        mon.close()
    assert mon.run.stats.query("stat == 'grad_norm'").empty
    said = [str(w.message) for w in caught if "replaced after gw.watch" in str(w.message)]
    assert len(said) == 1 and "call gw.watch after them" in said[0]


def test_fsdp1_is_refused_with_an_error_that_names_it(one_rank):
    from torch.distributed.fsdp import FullyShardedDataParallel

    try:
        model = FullyShardedDataParallel(net(), use_orig_params=True)
    except Exception as exc:  # noqa: BLE001 - FSDP1 may not build on this CPU
        pytest.skip(f"FSDP1 does not build here: {exc}")
    with pytest.raises(GradwatchValueError, match="FSDP1.*fully_shard"):
        gw.watch(model, diagnose=False)


def test_one_rank_dtensor_outputs_record_what_the_plain_model_records(one_rank):
    """Tensor parallel with a DTensor layer output (use_local_output=False): the activation
    after it and the back-propagated signal through it are read as local tensors, and every
    statistic, backprop_norm and the activation statistics included, equals the plain run."""
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        RowwiseParallel,
        parallelize_module,
    )

    sharded = net()
    parallelize_module(sharded, one_rank, {"0": ColwiseParallel(use_local_output=False),
                                           "2": RowwiseParallel()})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a = train(sharded)
    b = train(net())
    assert not [w for w in caught if "gradwatch" in str(w.message)]
    assert set(a.stats["stat"]) == set(b.stats["stat"])
    for stat in ("grad_norm", "backprop_norm", "act_mean", "act_std", "saturated_frac"):
        np.testing.assert_allclose(a.pivot(stat).to_numpy(), b.pivot(stat).to_numpy(),
                                   rtol=1e-6, err_msg=stat)
