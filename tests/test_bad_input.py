"""Hand-written bad inputs, each with the exact error class it must raise.

The generated catalogue (every public parameter and CLI option against a table of bad values)
is in ``tests/bad_input/``; these cases pin the error class (value or type error) of common
mistakes. CLI cases assert exit code 2, one line on stderr, and no traceback; one of them runs
the real ``python -m gradwatch.cli`` in a subprocess, the others run ``main`` in-process.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

import gradwatch as gw
from gradwatch import remedies, theory
from gradwatch.errors import (
    GradwatchError,
    GradwatchTypeError,
    GradwatchValueError,
    RunDirectoryError,
)
from tests.bad_input.cli_table import run_cli

E_VAL, E_TYPE, E_RUN = GradwatchValueError, GradwatchTypeError, RunDirectoryError


def mlp():
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def no_params():
    return nn.Sequential(nn.ReLU(), nn.Tanh())


X = torch.randn(3, 4)


def cases():
    """(id, callable, expected error, word the message must contain)."""
    yield "watch/not-a-module", lambda: gw.watch("model"), E_TYPE, "model"
    yield "watch/state-dict", lambda: gw.watch(mlp().state_dict()), E_TYPE, "model"
    yield "watch/no-parameters", lambda: gw.watch(no_params()), E_VAL, "model"
    yield "watch/every-0", lambda: gw.watch(mlp(), every=0), E_VAL, "every"
    yield "watch/every-negative", lambda: gw.watch(mlp(), every=-3), E_VAL, "every"
    yield "watch/every-float", lambda: gw.watch(mlp(), every=1.5), E_TYPE, "every"
    yield "watch/every-word", lambda: gw.watch(mlp(), every="often"), E_VAL, "every"
    yield "watch/optimizer-str", lambda: gw.watch(mlp(), optimizer="adam"), E_TYPE, "optimizer"
    yield "watch/stats-typo", lambda: gw.watch(mlp(), stats=["grad_nrm"]), E_VAL, "stats"
    yield "watch/detail-0", lambda: gw.watch(mlp(), detail_every=0), E_VAL, "detail_every"
    yield "watch/flush-0", lambda: gw.watch(mlp(), flush_every=0), E_VAL, "flush_every"
    yield "watch/scaler-no-opt", lambda: gw.watch(
        mlp(), scaler=torch.amp.GradScaler("cpu")), E_VAL, "scaler"
    yield "monitor/loss-vector", lambda: gw.watch(mlp()).step(torch.ones(3)), E_VAL, "loss"
    yield "monitor/loss-str", lambda: gw.watch(mlp()).step("0.5"), E_TYPE, "loss"
    yield "monitor/close-status", lambda: gw.watch(mlp()).close("done"), E_VAL, "status"
    yield "load/int", lambda: gw.load(3), E_TYPE, "run_dir"
    yield "load/missing", lambda: gw.load("/nonexistent/run"), E_RUN, "run_dir"
    yield "run/pivot-typo", lambda: gw.watch(mlp()).run.pivot("grad"), E_VAL, "stat"
    yield "check/not-a-module", lambda: gw.check("model", X), E_TYPE, "model"
    yield "check/no-parameters", lambda: gw.check(no_params(), X), E_VAL, "model"
    yield "check/inputs-list", lambda: gw.check(mlp(), [[1.0, 2.0]]), E_TYPE, "inputs"
    yield "check/wrong-shape", lambda: gw.check(mlp(), torch.randn(3, 5)), E_VAL, "inputs"
    yield "diagnose/int", lambda: gw.diagnose(42), E_TYPE, "run"
    yield "diagnose/missing", lambda: gw.diagnose("/nonexistent/run"), E_RUN, "run_dir"
    yield "fix/allow-typo", lambda: gw.fix(mlp(), X, allow=("inits",)), E_VAL, "allow"
    yield "fix/not-a-module", lambda: gw.fix(None, X), E_TYPE, "model"
    yield "fix/wrong-shape", lambda: gw.fix(mlp(), torch.randn(3, 5)), E_VAL, "inputs"
    yield "theory/unknown-activation", lambda: theory.chi1("relux", 2.0, 0.0), E_VAL, "activation"
    yield "theory/sigma_w2-zero", lambda: theory.q_star("tanh", 0.0, 0.1), E_VAL, "sigma_w2"
    yield "theory/sigma_w2-negative", lambda: theory.chi1("tanh", -1.0, 0.1), E_VAL, "sigma_w2"
    yield "theory/sigma_b2-negative", lambda: theory.c_star("tanh", 1.0, -0.1), E_VAL, "sigma_b2"
    yield "theory/sigma_w2-nan", lambda: theory.depth_scales(
        "tanh", float("nan"), 0.1), E_VAL, "sigma_w2"
    yield "theory/critical-b2", lambda: theory.critical_sigma_w2("tanh", -1.0), E_VAL, "sigma_b2"
    yield "theory/depth-0", lambda: theory.gradient_ratio("tanh", 1.0, 0.0, 0), E_VAL, "depth"
    yield "theory/predict-no-layers", lambda: theory.predict(nn.Sequential(nn.ReLU())), \
        GradwatchError, "model"
    yield "remedies/unknown-scheme", lambda: remedies.init_(mlp(), "kaiming_magic"), E_VAL, \
        "scheme"
    yield "remedies/lsuv-no-inputs", lambda: remedies.init_(mlp(), "lsuv"), E_VAL, "inputs"
    yield "remedies/init-not-module", lambda: remedies.init_("model", "he"), E_TYPE, "model"
    yield "remedies/swap-unknown", lambda: remedies.swap_activation(
        mlp(), "relu", "relux"), GradwatchError, "new"
    yield "remedies/insert-norm-kind", lambda: remedies.insert_norm(mlp(), kind="group"), \
        E_VAL, "kind"
    yield "remedies/clip-negative", lambda: remedies.clip_grad_norm_(mlp(), -1.0), E_VAL, \
        "max_norm"
    yield "remedies/clip-value-negative", lambda: remedies.clip_grad_value_(mlp(), -1.0), \
        E_VAL, "clip_value"
    yield "remedies/agc-negative", lambda: remedies.adaptive_clip_grad_(mlp(), -0.1), E_VAL, \
        "clipping"
    yield "store_findings/missing", lambda: gw.store_findings("/nonexistent/run", []), \
        GradwatchError, "run_dir"


CASES = list(cases())


@pytest.mark.parametrize("func,error,word", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_public_function_bad_input(func, error, word):
    with pytest.raises(error) as info:
        func()
    assert isinstance(info.value, GradwatchError)
    assert word in str(info.value), str(info.value)


def test_insert_norm_on_an_unfollowable_model_leaves_it_unchanged():
    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)) + x)

    model = Custom()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(GradwatchValueError, match="model"):
        remedies.insert_norm(model)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "gradwatch.cli", *args], capture_output=True,
                          text=True, timeout=300, cwd=cwd)


@pytest.fixture(scope="module")
def foreign(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    (root / "empty").mkdir()
    (root / "foreign").mkdir()
    (root / "foreign" / "meta.json").write_text(json.dumps({"hello": 1}))
    (root / "factory.py").write_text(
        "import torch.nn as nn\ndef make():\n    return nn.Sequential(nn.Linear(4, 2))\n")
    return root


CLI_CASES = [
    ("report/missing", ["report", "{root}/nope"], "RUN_DIR"),
    ("report/empty", ["report", "{root}/empty"], "not a gradwatch run"),
    ("report/foreign", ["report", "{root}/foreign"], "format_version"),
    ("runs/missing", ["runs", "{root}/nope"], "DIR"),
    ("check/no-colon", ["check", "{root}/factory.py"], "FILE.py:FACTORY"),
    ("check/missing-file", ["check", "{root}/nofile.py:make"], "nofile.py"),
    ("check/missing-factory", ["check", "{root}/factory.py:nothing", "--input-shape", "2,4"],
     "nothing"),
    ("check/bad-shape", ["check", "{root}/factory.py:make", "--input-shape", "2,x"],
     "input-shape"),
    ("check/wrong-shape", ["check", "{root}/factory.py:make", "--input-shape", "2,5"],
     "inputs"),
    ("fix/allow", ["fix", "{root}/factory.py:make", "--input-shape", "2,4", "--allow", "magic"],
     "allow"),
    ("theory/activation", ["theory", "--activation", "relux", "--sigma-w2", "2"], "activation"),
    ("theory/sigma", ["theory", "--activation", "tanh", "--sigma-w2", "-1"], "sigma"),
    ("experiment/unknown", ["experiment", "nosuch"], "nosuch"),
    ("demo/steps", ["demo", "--steps", "0"], "--steps"),
]


@pytest.mark.parametrize("args,word", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input_exits_2_with_one_line(foreign, args, word):
    code, _, err = run_cli(args, {"root": foreign})
    err = err.strip()
    assert "Traceback" not in err
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert word.lower() in err.lower(), err


def test_the_installed_entry_point_gives_one_line_for_a_usage_error(foreign):
    proc = _cli("theory", "--activation", "tanh", "--sigma-w2", "x")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "gradwatch theory: error: argument --sigma-w2: invalid float value: 'x' "
        "(see gradwatch theory --help)"
    ]
