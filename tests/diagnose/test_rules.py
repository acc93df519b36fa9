"""Each diagnosis rule on runs built from chosen numbers: thresholds, layers, steps, evidence."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gradwatch.diagnose import diagnose, verdict
from gradwatch.diagnose.dead import DEAD_FRAC, DEAD_FRAC_ERROR
from gradwatch.verdicts import EXPLODING_RATIO, VANISHING_RATIO
from tests.diagnose.synthetic import by_kind, const, geometric, make_run, one

NAN = float("nan")


# ----------------------------------------------------------------------------- vanishing
def test_vanishing_geometric_decay_is_an_error_with_exact_numbers():
    run = make_run(
        12,
        {"backprop_norm": geometric(0.5, 12), "grad_norm": const(1.0, 12)},
        checkup={"batch_size": 8},
    )
    f = one(diagnose(run), "vanishing")
    assert f.severity == "error" and f.steps is None
    assert f.evidence["backprop_ratio"] == pytest.approx(0.5**11, rel=1e-5)
    assert 0.5**11 < VANISHING_RATIO
    assert f.evidence["per_layer_factor"] == pytest.approx(0.5, rel=1e-5)
    assert f.layers == ("l0", "l1", "l2", "l3", "l4")  # ratio < 1e-2: 0.5^7 = 0.0078
    assert f.evidence["grad_norm_ratio"] == 1.0
    assert "'l11' to 'l0'" in f.message and "(0.5 per layer)" in f.message and "1/2048" in f.message
    assert "look healthy" in f.message  # weight gradients flat, backprop vanishing
    assert f.remedies[0] == "he_init"


@pytest.mark.parametrize(
    ("factor", "n", "expected"),
    [
        (0.8, 22, "warning"),  # 0.8^21 = 0.0092 < 1e-2 and factor < 0.85
        (0.9, 45, None),  # 0.9^44 = 0.0097 but a factor of 0.9 is not steep enough
        (0.9, 67, "error"),  # 0.9^66 = 9.5e-4 < 1e-3 whatever the factor
        (0.95, 20, None),
    ],
)
def test_vanishing_thresholds(factor, n, expected):
    found = by_kind(diagnose(make_run(n, {"backprop_norm": geometric(factor, n)})), "vanishing")
    assert [f.severity for f in found] == ([expected] if expected else [])


@pytest.mark.parametrize(
    ("families", "first"),
    [(("sigmoid",), "relu"), (("tanh",), "xavier_init"), (("rectifier",), "he_init")],
)
def test_vanishing_remedies_follow_the_activation(families, first):
    run = make_run(12, {"backprop_norm": geometric(0.5, 12)}, families=families)
    assert one(diagnose(run), "vanishing").remedies[0] == first


def vanishing_at(steps_vanishing, n_steps=10, n=12):
    bp = const(1.0, n, n_steps)
    for s in steps_vanishing:
        bp[s] = geometric(0.5, n)[0]
    return make_run(n, {"backprop_norm": bp})


def test_vanishing_at_one_step_of_ten_is_not_reported():
    assert by_kind(diagnose(vanishing_at([2])), "vanishing") == []


def test_vanishing_that_went_away_is_a_note_with_its_steps():
    # the run recovered: a note, not the run's verdict
    f = one(diagnose(vanishing_at([0, 1, 2, 3])), "vanishing")
    assert f.steps == (0, 3) and f.severity == "info"
    assert verdict(diagnose(vanishing_at([0, 1, 2, 3]))) == "healthy"
    assert f.evidence["persists"] is False and f.evidence["steps_held"] == 4
    assert "at steps 0-3" in f.message and "still" not in f.message


def test_vanishing_that_persists_is_an_error():
    f = one(diagnose(vanishing_at([8, 9])), "vanishing")
    assert f.steps == (8, 9) and f.severity == "error" and f.evidence["persists"] is True
    assert "at steps 8-9, still at the last recorded step" in f.message


# ----------------------------------------------------------------------------- exploding
def test_exploding_mild_growth_is_a_warning_unless_batchnorm():
    run = make_run(20, {"backprop_norm": geometric(1.2, 20)}, checkup={"batch_size": 8})
    f = one(diagnose(run), "exploding")
    assert f.severity == "warning" and f.evidence["axis"] == "depth"
    assert f.evidence["backprop_ratio"] == pytest.approx(1.2**19, rel=1e-5)
    assert f.evidence["per_layer_factor"] == pytest.approx(1.2, rel=1e-5)
    # ratio > 10: 1.2^(19-i) > 10 for i <= 6
    assert f.layers == tuple(f"l{i}" for i in range(7))
    assert f.remedies[:2] == ("clip_grad_norm", "lower_lr")
    # batch norm grows the signal by ~1.2 per layer at init (Yang et al. 2019): short of
    # 1e3 it trains with care (a BN plain-34 grows ~140x), so it is not judged
    bn = make_run(
        20, {"backprop_norm": geometric(1.2, 20)}, norm=("l3",), checkup={"batch_size": 8}
    )
    assert by_kind(diagnose(bn), "exploding") == []


def test_growth_across_depth_is_judged_on_every_path_by_what_it_means_there():
    # no exemption by architecture: the path the signal takes says what growth means
    assert 1.5**19 > EXPLODING_RATIO
    grow = {"backprop_norm": geometric(1.5, 20)}
    plain = make_run(20, grow, checkup={"batch_size": 8})
    assert one(diagnose(plain), "exploding").severity == "error"
    # batch norm without shortcuts: Yang et al. 2019's explosion, a warning with the figures
    bn = one(diagnose(make_run(20, grow, norm=("l3",), checkup={"batch_size": 8})), "exploding")
    assert bn.severity == "warning" and bn.evidence["path"] == "normalized"
    assert "Yang et al. 2019" in bn.message and "residual" == bn.remedies[0]
    # a residual stream grows at init in BN ResNets that train (ResNet-152: ~4e3) ...
    res = make_run(20, grow, structure={"residual": True}, checkup={"batch_size": 8})
    assert by_kind(diagnose(res), "exploding") == []
    # ... and explodes when the forward signal explodes with it (a loss 1e4 x chance)
    ce = {"kind": "cross_entropy", "classes": 10, "chance": math.log(10)}
    hot = make_run(20, grow, loss=[2.3e4], structure={"residual": True, "loss": ce},
                   checkup={"batch_size": 8})
    f = one(diagnose(hot), "exploding")
    assert f.severity == "error" and f.evidence["loss_over_chance"] == pytest.approx(
        2.3e4 / math.log(10), rel=1e-5
    )
    assert f.evidence["forward_exploding"] is True and "chance" in f.message
    assert "clip_grad_norm" not in f.remedies[:2]  # clipping hides the cause
    # the same loss without the backward growth is not an exploding gradient
    flat = make_run(20, {"backprop_norm": geometric(1.0, 20)}, loss=[2.3e4],
                    structure={"residual": True, "loss": ce}, checkup={"batch_size": 8})
    assert by_kind(diagnose(flat), "exploding") == []


def test_growth_across_depth_in_a_training_run_needs_the_error_threshold():
    # the demo's repaired ReLU net: 20x growth over 17 layers late in training trains fine
    mild = make_run(17, {"backprop_norm": geometric(20 ** (1 / 16), 17, n_steps=10)})
    assert by_kind(diagnose(mild), "exploding") == []
    strong = make_run(17, {"backprop_norm": geometric(1.7, 17, n_steps=10)})
    assert one(diagnose(strong), "exploding").severity == "error"


def test_shape_changes_are_not_read_as_decay():
    # a GAP step divides ‖δ‖ by sqrt(HW) = 64: a one-off step at a shape change, not decay
    bp = np.array([[1 / 64] * 9 + [1.0]])
    shapes = {f"l{i}": [8, 32, 64, 64] for i in range(9)} | {"l9": [8, 10]}
    run = make_run(10, {"backprop_norm": bp * 1e-2}, checkup={"batch_size": 8}, shapes=shapes)
    assert by_kind(diagnose(run), "vanishing") == []
    unknown = make_run(10, {"backprop_norm": geometric(0.5, 10)}, checkup={"batch_size": 8})
    assert one(diagnose(unknown), "vanishing").evidence["same_shape_steps"] == 9


def test_norm_inputs_are_read_at_the_norm_output():
    # l0 -> BN l1 -> l2 -> BN l3: the convs' own deltas carry 1/sigma of their input scale
    bp = np.array([[1e-6, 1.0, 1e-6, 1.0, 1.0]])
    run = make_run(5, {"backprop_norm": bp}, checkup={"batch_size": 8}, norm=("l1", "l3"))
    assert by_kind(diagnose(run), "vanishing") == []


def test_swamping_updates_are_exploding_and_zero_init_layers_are_not():
    ur = const(1e-3, 3, 10)
    ur[4:, 1] = 2.0
    wn = const(1.0, 3, 10)
    run = make_run(3, {"update_ratio": ur, "weight_norm": wn, "grad_norm": const(1, 3, 10)})
    f = one(diagnose(run), "exploding")
    assert f.evidence["axis"] == "updates" and f.layers == ("l1",) and f.steps == (4, 9)
    wn0 = wn.copy()
    wn0[:, 1] = 1e-6  # a zero-initialised norm scale: its ratio means nothing yet
    wn0[9, 1] = 1.0
    quiet = make_run(3, {"update_ratio": ur, "weight_norm": wn0, "grad_norm": const(1, 3, 10)})
    assert by_kind(diagnose(quiet), "exploding")[0].steps == (9, 9)


def test_diverging_loss_counts_as_exploding():
    loss = [2.3, 2.1, 1.9, 2.0, 2.6, 4.0, 9.0, 25.0, 70.0, 166.0]
    run = make_run(2, {"grad_norm": const(1, 2, 10)}, loss=loss)
    (f,) = [x for x in diagnose(run) if x.kind == "diverging"]
    assert f.evidence["loss_best"] == 1.9 and f.evidence["loss_end"] == pytest.approx(118.0)
    assert verdict(diagnose(run)) == "exploding" and "166" not in f.message
    assert "1.9" in f.message and "118" in f.message
    healthy = make_run(2, {"grad_norm": const(1, 2, 10)}, loss=[2.3 * 0.9**i for i in range(10)])
    assert not [x for x in diagnose(healthy) if x.kind == "diverging"]


def test_exploding_over_steps_names_the_leading_layer_and_steps():
    gn = const(1.0, 3, 10)
    gn[5:] = [1e4, 1e4, 1e5]
    run = make_run(3, {"grad_norm": gn, "backprop_norm": const(1.0, 3, 10)})
    f = one(diagnose(run), "exploding")
    assert f.evidence["axis"] == "steps" and f.steps == (5, 9) and f.severity == "error"
    assert f.layers[0] == "l2"
    growth = math.sqrt(2e8 + 1e10) / math.sqrt(3)
    assert f.evidence["growth"] == pytest.approx(growth, rel=1e-5)


def test_huge_gradient_norm_is_exploding_from_the_start():
    run = make_run(2, {"grad_norm": const(2e6, 2, 5)})
    f = one(diagnose(run), "exploding")
    assert f.steps == (0, 4)


# ----------------------------------------------------------------------------- nonfinite
def test_nonfinite_in_backward_starts_at_the_output_side_most_layer():
    gn = const(1.0, 4, 10)
    gn[5:, :3] = NAN  # left unrecorded here, added below as genuine NaN values
    extra = [(s, f"l{j}", "grad_norm", NAN) for s in range(5, 10) for j in range(3)]
    extra += [(s, f"l{j}", "nonfinite", 3.0) for s in range(5, 10) for j in range(3)]
    run = make_run(4, {"grad_norm": gn}, loss=[1.0] * 10, extra=extra)
    f = one(diagnose(run), "nonfinite")
    assert f.layers == ("l2",) and f.steps == (5, 9) and f.severity == "error"
    assert f.evidence["origin"] == "backward" and f.evidence["first_step"] == 5
    assert f.evidence["side"] == "output side"
    assert f.evidence["layers_nonfinite_grad"] == ["l0", "l1", "l2"]
    assert "at step 5" in f.message


def test_nonfinite_weights_and_loss_only():
    run = make_run(
        3,
        {"weight_norm": const(1.0, 3, 5)},
        loss=[1.0] * 5,
        extra=[(3, "l1", "weight_norm", float("inf"))],
    )
    f = one(diagnose(run), "nonfinite")
    assert f.evidence["origin"] == "weights" and f.layers == ("l1",) and f.steps == (3, 3)
    run = make_run(3, {"grad_norm": const(1.0, 3, 5)}, loss=[1.0, 1.0, NAN, 1.0, 1.0])
    f = one(diagnose(run), "nonfinite")
    assert f.evidence["origin"] == "loss" and f.layers == () and f.steps == (2, 2)


def test_nonfinite_origin_from_a_checkup_forward_pass():
    run = make_run(
        4,
        {"grad_norm": const(1.0, 4)},
        loss=[NAN],
        checkup={"batch_size": 8, "nonfinite_origin": "l1"},
    )
    f = one(diagnose(run), "nonfinite")
    assert f.evidence["origin"] == "forward" and f.layers == ("l1",) and f.steps is None
    assert f.evidence["side"] == "input side"


def test_finite_run_has_no_nonfinite_finding():
    run = make_run(3, {"grad_norm": const(1.0, 3, 4), "nonfinite": const(0, 3, 4)}, loss=[1.0] * 4)
    assert by_kind(diagnose(run), "nonfinite") == []


# --------------------------------------------------------------------- dead, saturated
@pytest.mark.parametrize(("frac", "expected"), [(0.95, "error"), (0.6, "warning"), (0.4, None)])
def test_dead_thresholds(frac, expected):
    dead = np.array([[0.0, frac, 0.1]])
    found = by_kind(diagnose(make_run(3, {"dead_frac": dead})), "dead")
    assert [f.severity for f in found] == ([expected] if expected else [])
    if expected:
        assert found[0].layers == ("l1",) and found[0].remedies[0] == "leaky_relu"
        assert found[0].evidence["dead_frac"] == {"l1": frac}
    assert DEAD_FRAC < 0.6 and 0.6 < DEAD_FRAC_ERROR < 0.95


def test_dead_units_need_a_batch_to_mean_anything():
    dead = np.array([[0.0, 0.7, 0.1]])
    assert (
        by_kind(diagnose(make_run(3, {"dead_frac": dead}, checkup={"batch_size": 2})), "dead") == []
    )
    assert by_kind(diagnose(make_run(3, {"dead_frac": dead}, checkup={"batch_size": 16})), "dead")


@pytest.mark.parametrize(("frac", "expected"), [(0.9, "error"), (0.5, "warning"), (0.2, None)])
def test_saturated_thresholds(frac, expected):
    sat = np.array([[frac, 0.0, NAN]])
    found = by_kind(diagnose(make_run(3, {"saturated_frac": sat}, families=("tanh",))), "saturated")
    assert [f.severity for f in found] == ([expected] if expected else [])


def test_top_sigmoid_layer_stuck_at_zero():
    # Glorot & Bengio 2010: the top hidden sigmoid layer driven to 0 early in training
    sat = const(0.1, 3, 6)
    sat[:, 2] = NAN
    mean = np.tile([0.5, 0.02, NAN], (6, 1))
    std = np.tile([0.2, 0.05, NAN], (6, 1))
    run = make_run(
        3, {"saturated_frac": sat, "act_mean": mean, "act_std": std}, families=("sigmoid",)
    )
    f = one(diagnose(run), "saturated")
    assert f.layers == ("l1",) and f.steps == (0, 5) and "top hidden sigmoid" in f.message
    assert f.evidence["act_mean"] == 0.02
    # a tanh layer saturated on both sides (mean ~0, std ~1) is not that
    std[:, 1] = 0.9
    run = make_run(
        3, {"saturated_frac": sat, "act_mean": mean, "act_std": std}, families=("sigmoid", "tanh")
    )
    assert by_kind(diagnose(run), "saturated") == []


# ------------------------------------------------------------------------------ stalled
def test_stalled_layer_over_many_steps():
    ur = const(1e-3, 4, 6)
    ur[:, 0] = 1e-8
    run = make_run(4, {"update_ratio": ur, "grad_norm": const(1.0, 4, 6)})
    f = one(diagnose(run), "stalled")
    assert f.layers == ("l0",) and f.steps == (0, 5) and f.severity == "warning"
    assert f.evidence["update_ratio"] == {"l0": 1e-8}
    assert f.evidence["median_update_ratio"] == 1e-3


def test_not_stalled_when_frozen_brief_or_a_checkup():
    ur = const(1e-3, 4, 6)
    ur[:, 0] = 1e-8
    gn = const(1.0, 4, 6)
    gn[:, 0] = NAN  # no gradient: frozen, not stalled
    assert by_kind(diagnose(make_run(4, {"update_ratio": ur, "grad_norm": gn})), "stalled") == []
    ur2 = const(1e-3, 4, 6)
    ur2[4:, 0] = 1e-8  # 2 of 6 steps
    assert (
        by_kind(
            diagnose(make_run(4, {"update_ratio": ur2, "grad_norm": const(1, 4, 6)})), "stalled"
        )
        == []
    )
    run = make_run(
        4, {"update_ratio": ur[:1], "grad_norm": const(1.0, 4, 1)}, checkup={"batch_size": 8}
    )
    assert by_kind(diagnose(run), "stalled") == []


def test_not_stalled_once_the_loss_has_converged():
    # a layer whose update falls to ~0 once the loss is ~0 has nothing left to learn (a solved
    # task under Adam: the gradient falls below ε); the same stall while the loss is still high
    # is a stall
    ur = const(1e-3, 4, 8)
    ur[4:, 0] = 1e-9
    gn = const(1.0, 4, 8)
    solved = [2.7, 2.6, 2.5, 1.0, 1e-4, 1e-5, 6e-6, 6e-6]
    run = make_run(4, {"update_ratio": ur, "grad_norm": gn}, loss=solved)
    assert by_kind(diagnose(run), "stalled") == []
    learning = [2.7, 2.6, 2.5, 2.4, 2.3, 2.2, 2.1, 2.0]
    f = one(diagnose(make_run(4, {"update_ratio": ur, "grad_norm": gn}, loss=learning)),
            "stalled")
    assert f.layers == ("l0",) and f.steps == (4, 7) and f.evidence["steps_converged"] == 0


# ------------------------------------------------------------------------- healthy_deep
def test_healthy_deep_note_for_a_deep_net_with_healthy_gradients():
    f = one(diagnose(make_run(25, {"backprop_norm": const(1.0, 25)})), "healthy_deep")
    assert f.severity == "info" and f.remedies == ("residual",) and f.evidence["depth"] == 25
    assert "He et al. 2016" in f.message and "not vanishing" in f.message
    assert by_kind(diagnose(make_run(10, {"backprop_norm": const(1.0, 10)})), "healthy_deep") == []


def test_healthy_deep_counts_weight_layers_and_skips_residual_nets():
    norm5 = tuple(f"l{i}" for i in range(1, 10, 2))  # 5 norm layers: depth 20
    norm6 = tuple(f"l{i}" for i in range(1, 12, 2))  # 6 norm layers: depth 19
    assert by_kind(
        diagnose(make_run(25, {"backprop_norm": const(1, 25)}, norm=norm5)), "healthy_deep"
    )
    assert not by_kind(
        diagnose(make_run(25, {"backprop_norm": const(1, 25)}, norm=norm6)), "healthy_deep"
    )
    # residual connections come from the recorded structure, never from class names
    named = make_run(25, {"backprop_norm": const(1, 25)}, repr_="Net((0): BasicBlock(...))")
    assert by_kind(diagnose(named), "healthy_deep")
    res = make_run(25, {"backprop_norm": const(1, 25)}, structure={"residual": True})
    assert not by_kind(diagnose(res), "healthy_deep")
    vanishing = make_run(25, {"backprop_norm": geometric(0.5, 25)})
    assert not by_kind(diagnose(vanishing), "healthy_deep")
