"""Rules judged over a run: the verdict's precedence, the residual trunk, and how findings
change when the run learns (notes instead of warnings) or units die later."""

from __future__ import annotations

import numpy as np

from gradwatch.diagnose import VERDICT_PRECEDENCE, diagnose, verdict
from gradwatch.findings import Finding
from tests.diagnose.synthetic import const, geometric, make_run, one

NAN = float("nan")


# ------------------------------------------------------------------------------ verdict
def test_verdict_precedence():
    def f(kind, severity="error"):
        return Finding(kind, (), None, severity, "")

    assert verdict([]) == "healthy"
    assert verdict([f("healthy_deep", "info")]) == "healthy"
    assert verdict([f("stalled", "warning")]) == "healthy"
    assert verdict([f("saturated"), f("dead", "warning")]) == "dead"
    assert verdict([f("dead"), f("vanishing", "warning")]) == "vanishing"
    assert verdict([f("vanishing"), f("exploding", "warning")]) == "exploding"
    assert verdict([f("exploding"), f("nonfinite")]) == "nonfinite"
    assert VERDICT_PRECEDENCE == (
        "nonfinite", "exploding", "vanishing", "dead", "saturated", "uncertain"
    )
    assert verdict([f("uncertain", "warning"), f("dead", "warning")]) == "dead"
    assert verdict([f("uncertain", "warning")]) == "uncertain"
    assert verdict([f("diverging")]) == "exploding"


def test_residual_nets_are_followed_along_the_trunk():
    from gradwatch.diagnose import view_of
    from gradwatch.diagnose._flow import flow_steps

    # l1, l2 are a residual branch whose last norm starts at zero (Goyal et al. 2017): no
    # gradient reaches l1 by design; the trunk (l0, l2, l3) is flat
    bp = np.array([[1.0, 0.0, 1.0, 1.0]])
    branch = {"residual": True, "residual_branches": [["l1", "l2"]]}
    run = make_run(4, {"backprop_norm": bp}, checkup={"batch_size": 8}, structure=branch)
    (fs,) = flow_steps(view_of(run))
    assert fs.layers == ("l0", "l2", "l3") and fs.total == 1.0
    assert [f.kind for f in diagnose(run)] == []
    plain = make_run(4, {"backprop_norm": bp}, checkup={"batch_size": 8})
    (fs,) = flow_steps(view_of(plain))
    assert fs.layers == ("l0", "l1", "l2", "l3")


def test_dead_units_that_revived_are_a_note():
    dead = const(0.0, 3, 10)
    dead[2:5, 1] = 0.6  # half the units of l1 dead for a while, then alive again
    f = one(diagnose(make_run(3, {"dead_frac": dead})), "dead")
    assert f.severity == "info" and f.steps == (2, 4)


def test_vanishing_in_a_run_that_learns_is_a_note():
    # He et al. 2015: a 22-layer ReLU net under Xavier init loses 2^-11 in ‖δ‖ yet converges;
    # its input-side layers keep pace in update size and the loss falls
    n, steps = 12, 10
    stats = {"backprop_norm": geometric(0.5, n, steps), "update_ratio": const(1e-3, n, steps)}
    learns = make_run(n, stats, loss=[2.3 * 0.8**i for i in range(steps)])
    f = one(diagnose(learns), "vanishing")
    assert f.severity == "info" and f.evidence["still_learning"]["pace"] == 1.0
    assert "but the run learns: the loss fell from 1.8 to 0.35" in f.message
    assert "update at 1× the median layer's rate" in f.message
    assert verdict(diagnose(learns)) == "healthy"
    stalls = make_run(n, stats, loss=[2.3] * steps)
    assert one(diagnose(stalls), "vanishing").severity == "error"
    slow = dict(stats, update_ratio=const(1e-3, n, steps))
    slow["update_ratio"][:, :5] = 1e-6  # the input side does not keep pace
    lagging = make_run(n, slow, loss=[2.3 * 0.8**i for i in range(steps)])
    assert one(diagnose(lagging), "vanishing").severity == "error"


def test_a_signal_cut_by_dead_units_is_the_dead_finding():
    dead = np.full((1, 6), 0.0)
    dead[0, 3] = 0.97
    cut = np.array([[0.0, 0.0, 0.0, 0.0, 1.0, 1.0]])  # exactly 0 below the dead layer
    run = make_run(6, {"backprop_norm": cut, "dead_frac": dead}, checkup={"batch_size": 8})
    assert [f.kind for f in diagnose(run)] == ["dead"] and verdict(diagnose(run)) == "dead"
    small = make_run(
        6, {"backprop_norm": geometric(0.1, 6), "dead_frac": dead}, checkup={"batch_size": 8}
    )
    assert verdict(diagnose(small)) == "vanishing"  # small but not zero: vanishing


def test_some_dead_units_in_a_run_that_learns_are_a_note():
    dead = const(0.0, 3, 10)
    dead[:, 1] = 0.6
    learns = make_run(3, {"dead_frac": dead}, loss=[2.3 * 0.8**i for i in range(10)])
    f = one(diagnose(learns), "dead")
    assert f.severity == "info" and "the live ones carry the signal" in f.message
    stalls = make_run(3, {"dead_frac": dead}, loss=[2.3] * 10)
    assert one(diagnose(stalls), "dead").severity == "warning"
    dead[:, 1] = 0.95  # a wall for the gradient, learning or not
    walled = make_run(3, {"dead_frac": dead}, loss=[2.3 * 0.8**i for i in range(10)])
    assert one(diagnose(walled), "dead").severity == "error"


def test_a_loss_that_does_not_fall_without_a_cause_is_uncertain():
    n = 30
    stuck = make_run(3, {"backprop_norm": const(1.0, 3, n)}, loss=[2.77] * n)
    (f,) = diagnose(stuck)
    assert (f.kind, f.severity, verdict([f])) == ("uncertain", "warning", "uncertain")
    assert "has not fallen in 30 recorded steps (2.8 at the start, 2.8 at the end)" in f.message
    falling = [2.77 * 0.9**i for i in range(n)]
    learns = make_run(3, {"backprop_norm": const(1.0, 3, n)}, loss=falling)
    assert diagnose(learns) == []
    # a cause found by another rule speaks alone
    vanishing = make_run(12, {"backprop_norm": geometric(0.5, 12, n)}, loss=[2.77] * n)
    assert [f.kind for f in diagnose(vanishing)] == ["vanishing"]
    # a recurrent run: the flow through time recorded at the detail steps is read, and said
    nan = np.full((n, 2), np.nan)
    first, last, steps_t = nan.copy(), nan.copy(), nan.copy()
    first[:, 0], last[:, 0], steps_t[:, 0] = 0.5, 1.0, 50
    rnn = make_run(2, {"backprop_norm": const(1.0, 2, n), "time_grad_first": first,
                       "time_grad_last": last, "time_steps": steps_t}, loss=[0.17] * n,
                   structure={"recurrent": True, "recurrent_layers": {"l0": {"type": "RNN"}}})
    (f,) = diagnose(rnn)
    assert "gw.check" not in f.message and "recorded at the detail steps arrives" in f.message
    assert "'l0' 0.5" in f.message and f.remedies[0] == "lstm_or_gru"
    # ... and a vanished one is the run's cause, read from the run (no "uncertain"): a
    # gated carry below the floor is an error, one above it that never opened a warning
    lstm = {"recurrent": True, "recurrent_layers": {"l0": {"type": "LSTM"}}}
    for value, severity in ((1e-13, "error"), (1e-9, "warning")):
        first[:, 0] = value
        rnn = make_run(2, {"backprop_norm": const(1.0, 2, n), "time_grad_first": first,
                           "time_grad_last": last, "time_steps": steps_t}, loss=[0.17] * n,
                       structure=lstm)
        (f,) = diagnose(rnn)
        assert (f.kind, f.severity, f.evidence["through"]) == ("vanishing", severity, "time")
        assert f.evidence["gated"] is True and f.evidence["measured"] == "training run"


def test_a_vanished_signal_later_cut_by_dead_units_is_still_vanishing():
    # VGG-16 from N(0, 0.01) (He et al. 2015, sec. 2.2): the gradient vanishes from the first
    # step; the ReLUs of a net that cannot learn die later and cut the signal to exactly 0.
    # The vanishing is not "cleared" by that: it is the run's cause, and its verdict.
    n, steps = 6, 10
    bp = geometric(0.1, n, steps)
    bp[6:, :4] = 0.0  # from step 6 on, exactly 0 below the dead layer l3
    dead = const(0.0, n, steps)
    dead[6:, 3] = 0.97
    loss = [2.3] * steps  # it does not learn
    run = make_run(n, {"backprop_norm": bp, "dead_frac": dead}, loss=loss)
    found = diagnose(run)
    assert one(found, "vanishing").severity == "error"
    assert verdict(found) == "vanishing"
    # the same signal that recovers at the end is a note: the run's verdict is not vanishing
    healed = bp.copy()
    healed[6:] = 1.0
    healed_run = make_run(n, {"backprop_norm": healed, "dead_frac": const(0.0, n, steps)},
                          loss=loss)
    assert verdict(diagnose(healed_run)) != "vanishing"
