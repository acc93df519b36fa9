"""`gradwatch fix FILE.py:FACTORY` end to end, run as a user would.

Subprocesses are few (each imports torch: seconds on a busy machine); the other error paths
go through ``gradwatch.cli.main`` in-process, which is what the console script calls.
"""

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from gradwatch import remedies
from gradwatch.cli import main

FACTORY = textwrap.dedent(
    """
    import torch
    from torch import nn
    from gradwatch.remedies import standard_init_, xavier_init_


    def make():
        torch.manual_seed(0)
        layers = []
        for _ in range(15):
            layers += [nn.Linear(32, 32), nn.Sigmoid()]
        model = nn.Sequential(*layers, nn.Linear(32, 4))
        standard_init_(model)
        return model


    def make_relu():  # He et al. 2015: 30 ReLU layers under Xavier init stall
        torch.manual_seed(0)
        layers = []
        for _ in range(29):
            layers += [nn.Linear(32, 32), nn.ReLU()]
        model = nn.Sequential(*layers, nn.Linear(32, 4))
        xavier_init_(model)
        return model


    def make_with_data():
        model = make()
        x = torch.randn(24, 32, generator=torch.Generator().manual_seed(1))
        return model, x, torch.arange(24) % 4
    """
)


def gradwatch(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "gradwatch.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},  # tiny models: one thread is fastest
    )


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def factory(tmp_path):
    path = tmp_path / "nets.py"
    path.write_text(FACTORY)
    sys.path.insert(0, str(tmp_path))
    import nets

    yield path, nets
    sys.path.remove(str(tmp_path))
    sys.modules.pop("nets", None)


def rebuild(model, applied):
    """The fixed architecture, rebuilt from the report's details (weights come from --save)."""
    for step in applied:
        if step["kind"] == "activation":
            for old, new in step["swaps"].items():
                remedies.swap_activation(model, old.lower(), new, reinit=False)
        elif step["kind"] == "normalization":
            model = remedies.insert_norm(model, kind=step["norm"], after=step["after"])
        elif step["kind"] == "residual":
            model = remedies.add_residual(model, block_size=step["block_size"])
    return model


def test_fix_init_only_prints_before_after_and_saves_a_state_dict(factory, tmp_path):
    path, nets = factory
    out = tmp_path / "fixed.pt"
    proc = gradwatch(
        *("fix", f"{path}:make_relu", "--input-shape", "16,32", "--allow", "init"),
        *("--save", str(out)),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "verdict before: vanishing" in proc.stdout
    assert "verdict after: healthy" in proc.stdout
    assert "remedies applied" in proc.stdout
    assert "Same architecture" in proc.stdout
    assert "Traceback" not in proc.stderr
    state = torch.load(out, weights_only=True)  # a plain state dict, no pickled module
    assert isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())
    model = nets.make_relu()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(state)  # --allow init keeps the architecture: a strict load works
    assert any(not torch.equal(original[k], v) for k, v in state.items())


def test_fix_json_with_the_factorys_data_and_a_new_architecture(factory, tmp_path):
    path, nets = factory
    out = tmp_path / "fixed.pt"
    proc = gradwatch("fix", f"{path}:make_with_data", "--json", "--save", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert (report["verdict_before"], report["verdict_after"]) == ("vanishing", "healthy")
    assert report["loss_before"] == pytest.approx(math.log(4), abs=0.2)  # CE on 4 classes
    assert report["saved"] == str(out)
    assert report["changed_architecture"] is True  # a 15-layer sigmoid net needs more than init
    fixed = rebuild(nets.make(), report["applied"])
    assert repr(fixed) == report["new_architecture"]
    fixed.load_state_dict(torch.load(out, weights_only=True))  # strict: keys and shapes match


def test_fix_bad_allow_is_one_line_and_exit_2(factory, tmp_path):
    path, _ = factory
    proc = gradwatch(
        "fix", f"{path}:make", "--input-shape", "16,32", "--allow", "init,dropout", cwd=tmp_path
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("gradwatch fix: error: --allow")
    assert "dropout" in lines[0] and "normalization" in lines[0]
    assert proc.stdout == ""


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--input-shape", "16,x"], "--input-shape '16,x' must be positive integers"),
        (["--input-shape", "16,7"], "inputs do not fit the model"),
        (["--allow", ""], "allow is empty"),
        (["--input-shape", "16,32", "--max-rounds", "0"], "max_rounds"),
        (["--input-shape", "16,32", "--targets", "classes:1"], "--targets"),
        ([], "pass --input-shape"),
    ],
)
def test_fix_errors_in_process(factory, capsys, args, expected):
    path, _ = factory
    assert main(["fix", f"{path}:make", *args]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gradwatch fix: error:")
    assert expected in lines[0]


def test_fix_missing_factory_names_what_the_file_has(factory, capsys):
    path, _ = factory
    assert main(["fix", f"{path}:nope", "--input-shape", "16,32"]) == 2
    err = capsys.readouterr().err
    assert "defines no 'nope'" in err and "make" in err


def test_fix_unwritable_save_path(factory, tmp_path, capsys):
    path, _ = factory
    target = tmp_path / "missing_dir" / "w.pt"
    argv = ["fix", f"{path}:make", "--input-shape", "8,32", "--allow", "init"]
    assert main([*argv, "--save", str(target)]) == 2
    assert "--save" in capsys.readouterr().err
