"""The built-in data sets: shapes, ranges, labels that match the content, determinism."""

import numpy as np
import pytest
import torch

from gradwatch.errors import GradwatchValueError
from gradwatch.experiments import data


def test_digits_split_and_standardised():
    x, y = data.digits("train", seed=0)
    xt, yt = data.digits("test", seed=0)
    assert x.shape[1] == 64 and x.dtype == torch.float32 and y.dtype == torch.int64
    assert len(x) + len(xt) == 1797
    assert len(xt) == pytest.approx(0.25 * 1797, abs=10)
    assert set(y.tolist()) == set(range(10)) == set(yt.tolist())
    used = x.std(0) > 0
    assert torch.allclose(x.mean(0), torch.zeros(64), atol=1e-5)
    assert torch.allclose(x.std(0, unbiased=False)[used], torch.ones(int(used.sum())), atol=1e-4)
    x2, _ = data.digits("train", seed=0)
    assert torch.equal(x, x2)
    assert not torch.equal(x, data.digits("train", seed=1)[0])
    with pytest.raises(GradwatchValueError, match="split"):
        data.digits("valid")


def test_shapeset_classes_and_pixels():
    x, y = data.shapeset(900, seed=0)
    assert x.shape == (900, 1, 32, 32) and x.dtype == torch.float32
    assert len(data.SHAPESET_CLASSES) == 9 and y.min() >= 0 and y.max() <= 8
    counts = torch.bincount(y, minlength=9)
    assert counts.min() > 60  # classes drawn uniformly: ~100 each
    assert x.min() >= 0 and x.max() <= 1
    area = (x > 0).flatten(1).sum(1).float()
    assert area.min() > 8  # every image shows something
    one = torch.tensor([len(data.SHAPESET_CLASSES[c]) == 1 for c in y.tolist()])
    assert area[~one].mean() > 1.3 * area[one].mean()  # two shapes cover more than one
    assert torch.equal(x, data.shapeset(900, seed=0)[0])
    assert not torch.equal(x, data.shapeset(900, seed=1)[0])


def test_shapeset_shapes_are_told_apart_by_their_pixels():
    # a single ellipse is rounder than a single triangle: its area fills more of its bounding box
    x, y = data.shapeset(3000, seed=2)
    fill = {}
    for k, name in enumerate(data.SHAPES):
        imgs = x[y == k, 0] > 0  # class k holds shape k alone
        rows, cols = imgs.any(2), imgs.any(1)
        box = rows.sum(1) * cols.sum(1)
        fill[name] = float((imgs.flatten(1).sum(1) / box).mean())
    assert fill["triangle"] < fill["parallelogram"] < fill["ellipse"] or fill["triangle"] < 0.6
    assert fill["triangle"] < fill["ellipse"]


def test_adding_problem_target_is_sum_of_marked():
    x, y = data.adding_problem(50, 30, seed=0)
    assert x.shape == (50, 30, 2) and y.shape == (50, 1)
    marks = x[..., 1]
    assert torch.all(marks.sum(1) == 2)
    assert torch.all(marks[:, :15].sum(1) == 1)  # one marker in each half
    assert torch.allclose((x[..., 0] * marks).sum(1, keepdim=True), y)


def test_temporal_order_labels():
    x, y = data.temporal_order(40, 100, seed=0)
    assert x.shape == (40, 100, 8) and torch.all(x.sum(-1) == 1)
    sym = x.argmax(-1).numpy()
    for row, label in zip(sym, y.tolist(), strict=True):
        relevant = [s for s in row if s in (4, 5)]  # X or Y
        assert len(relevant) == 2
        assert label == 2 * (relevant[0] == 5) + (relevant[1] == 5)
        assert row[0] == 6 and row[-1] == 7
        first = np.flatnonzero(np.isin(row, (4, 5)))[0]
        assert 10 <= first <= 20
