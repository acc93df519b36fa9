"""``gradwatch theory`` end to end: twice as a user runs it (a subprocess), else in-process.

Each subprocess pays for importing torch (seconds on a busy machine), so only the success
path and one bad input run that way; the other cases call ``gradwatch.cli.main`` directly.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from theory_oracles import quad_chi1, quad_q_star


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gradwatch.cli", "theory", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def tanh_json():
    proc = run_cli(
        "--activation", "tanh", "--sigma-w2", "1.5", "--sigma-b2", "0.05", "--depth", "50",
        "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_json_numbers_match_independent_quadrature(tanh_json):
    out = tanh_json
    q = quad_q_star("tanh", 1.5, 0.05)
    chi = quad_chi1("tanh", 1.5, q)
    assert out["q_star"] == pytest.approx(q, rel=1e-9)
    assert out["chi1"] == pytest.approx(chi, rel=1e-9)
    assert out["c_star"] == 1.0  # ordered
    assert out["phase"] == "ordered"
    assert out["xi_grad"] == pytest.approx(-1 / math.log(chi), rel=1e-8)
    assert out["xi_c"] == pytest.approx(out["xi_grad"], rel=1e-12)  # c* = 1: χ_c = χ1
    assert out["trainable_depth"] == pytest.approx(6 * out["xi_c"], rel=1e-12)
    assert 1.5 < out["critical_sigma_w2"] < 2.0
    assert out["gradient_ratio"] == pytest.approx(chi**50, rel=1e-7)
    assert out["trainable"] is True
    assert out["depth"] == 50


def test_unknown_activation_is_one_line_and_exit_code_two():
    proc = run_cli("--activation", "tahn", "--sigma-w2", "1.5", "--json")
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert lines[0].startswith("gradwatch theory: error: activation 'tahn'")
    assert "tanh" in lines[0]  # the known names are listed


def main(capsys, *args: str) -> tuple[int, str, str]:
    from gradwatch.cli import main as cli_main

    code = cli_main(["theory", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_infinities_are_written_as_strings_in_strict_json(capsys):
    code, stdout, err = main(capsys, "--activation", "relu", "--sigma-w2", "2.0", "--json")
    assert code == 0, err
    out = json.loads(stdout, parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    assert out["chi1"] == 1.0 and out["phase"] == "critical"
    assert out["xi_grad"] == "inf" and out["q_star"] == "inf"
    assert out["critical_sigma_w2"] == 2.0


def test_table_for_people(capsys):
    code, stdout, err = main(
        capsys, "--activation", "leaky_relu:0.2", "--sigma-w2", "3", "--sigma-b2", "0.1"
    )
    assert code == 0, err
    for label in ("q*", "χ1", "c*", "ξ_q", "ξ_c", "ξ_∇", "phase", "critical σw²", "chaotic"):
        assert label in stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--activation", "tanh", "--sigma-w2", "-1"], "sigma_w2"),
        (["--activation", "tanh", "--sigma-w2", "1", "--sigma-b2", "nan"], "sigma_b2"),
        (["--activation", "tanh", "--sigma-w2", "1", "--depth", "0"], "depth"),
    ],
)
def test_bad_numbers_are_one_line_and_exit_code_two(capsys, args, needle):
    code, stdout, err = main(capsys, *args)
    assert code == 2 and stdout == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0]


def test_a_residual_mlp_from_settings(capsys):
    code, stdout, err = main(
        capsys, "--activation", "relu", "--sigma-w2", "2", "--blocks", "6",
        "--residual-alpha", "0.4", "--width", "32", "--json",
    )  # fmt: skip
    assert code == 0, err
    out = json.loads(stdout)
    assert out["settings"]["kind"] == "residual_mlp" and out["settings"]["blocks"] == 6
    pred = out["prediction"]
    assert pred["method"] == "graph" and pred["verdict"] == "healthy"
    layers = pred["layers"]
    assert [r["layer"] for r in layers][:3] == ["inp", "blocks.0.0", "blocks.0.2"]
    assert layers[-1]["layer"] == "out" and layers[-1]["attenuation"] == 1.0
    # ReLU branch: each block multiplies ‖δ‖² by 1 + α² σ1² σ2²/2 toward the input
    w = [r["attenuation"] for r in layers if r["layer"].endswith(".2")]
    ratios = np.array(w[:-1]) / np.array(w[1:])
    s1 = [r["sigma_w2"] for r in layers if r["layer"].endswith(".0")]
    s2 = [r["sigma_w2"] for r in layers if r["layer"].endswith(".2")]
    expected = 1 + 0.16 * np.array(s1[1:]) * np.array(s2[1:]) / 2
    np.testing.assert_allclose(ratios, expected, rtol=1e-6)


def test_a_transformer_from_settings_for_people(capsys):
    code, stdout, err = main(
        capsys, "--attention", "--blocks", "2", "--norm", "post", "--width", "16", "--heads",
        "2", "--seq-len", "4",
    )  # fmt: skip
    assert code == 0, err
    for needle in ("transformer", "healthy", "body.layers.1.linear2", "attenuation", "‖δ_last‖²"):
        assert needle in stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--activation", "relu", "--sigma-w2", "2", "--blocks", "0"], "--blocks"),
        (["--activation", "relu", "--sigma-w2", "2", "--blocks", "3", "--residual-alpha", "-1"],
         "--residual-alpha"),
        (["--activation", "relu", "--sigma-w2", "2", "--residual-alpha", "0.5"], "--blocks"),
        (["--attention", "--blocks", "2", "--norm", "pre", "--deepnorm"], "post"),
        (["--attention", "--blocks", "2", "--activation", "tanh"], "relu or gelu"),
        (["--attention", "--blocks", "2", "--width", "10", "--heads", "4"], "--heads"),
        (["--attention", "--blocks", "2", "--sigma-w2", "2"], "--sigma-w2"),
        (["--blocks", "2"], "--activation"),
        (["--activation", "relu", "--sigma-w2", "2", "--blocks", "2", "--depth", "3"], "--depth"),
        (["--activation", "erf", "--sigma-w2", "1", "--blocks", "2"], "erf"),
    ],
)
def test_bad_residual_and_transformer_settings(capsys, args, needle):
    code, stdout, err = main(capsys, *args)
    assert code == 2 and stdout == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], err
