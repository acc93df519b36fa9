"""Full-scale claims against the records of full runs, kept in records/.

The full runs take minutes to hours here, so their numbers are stored and the claims --
pure functions of one seed's numbers, judged over the seeds -- are checked against them.

- ``records/NAME_full_tT.json``: the full run over seeds 0, 1, 2 at T torch threads
  (rebuilt with ``python -m tests.experiments.make_records LAB``). Every claim holds over
  the seeds, the verdicts stored with the record are the ones the code gives now, and each
  claim fails once one seed more than it can spare is doctored. Every experiment has one
  at 1 and one at 2 threads.
"""

import copy
import json
import math
from pathlib import Path

import pytest

from gradwatch.experiments import EXPERIMENTS, get
from gradwatch.experiments.seeds import FULL_SEEDS, claims_over_seeds
from gradwatch.jsonable import jsonable

RECORDS = Path(__file__).parent / "records"
SPECIAL = (math.nan, math.inf, -math.inf)

#: (name, threads) of every multi-seed record.
MULTI = sorted(
    (p.name.split("_full_t")[0], int(p.stem.split("_full_t")[1]))
    for p in RECORDS.glob("*_full_t*.json")
)


def _record(name, threads):
    return json.loads((RECORDS / f"{name}_full_t{threads}.json").read_text())


def _numbers(record):
    return [s["numbers"] for s in record["per_seed"]]


def _claim(claims, text):
    found = [c for c in claims if text in c["claim"]]
    assert len(found) == 1, text
    return found[0]


def _doctor(numbers, path, value):
    """``numbers`` with the value at ``path`` replaced ("*": the one key at that level, e.g.
    the seed's own key in a record that keys its runs by seed)."""
    doctored = copy.deepcopy(numbers)
    node = doctored
    for key in path[:-1]:
        node = node[_only(node) if key == "*" else key]
    last = _only(node) if path[-1] == "*" else path[-1]
    node[last] = value(node[last]) if callable(value) else value
    return doctored


def _only(node):
    (key,) = node  # a wildcard stands for exactly one key
    return key


def test_every_experiment_has_its_records_at_1_and_2_threads():
    assert not list(RECORDS.glob("*_full.json"))  # the one-seed records are all replaced
    assert MULTI == sorted((name, t) for name in EXPERIMENTS for t in (1, 2))


@pytest.mark.parametrize(("name", "threads"), MULTI)
def test_records_cover_three_seeds_at_their_thread_count(name, threads):
    record = _record(name, threads)
    assert record["name"] == name and record["quick"] is False
    assert record["threads"] == threads and record["seeds"] == list(range(FULL_SEEDS))
    assert [s["seed"] for s in record["per_seed"]] == record["seeds"]
    assert all(s["threads"] == threads and s["cpu_s"] > 0 for s in record["per_seed"])


@pytest.mark.parametrize(("name", "threads"), MULTI)
def test_every_claim_holds_over_the_seeds(name, threads):
    record = _record(name, threads)
    claims = claims_over_seeds(get(name).load().claims, _numbers(record), record["seeds"])
    for c in claims:
        assert c["holds"], f"{name}, {threads} thread(s): {c['claim']} -- {c['evidence']}"
    # the verdicts stored with the record are the ones the code gives now
    assert [(c["claim"], c["held_in"]) for c in claims] == [
        (c["claim"], c["held_in"]) for c in record["claims"]
    ]


CASES = [
    # (experiment, path into numbers, doctored value, text of the claim that must fail)
    ("he2015", ("runs", "30-he", "loss_end"), 0.5, "the 30-layer He net converges"),
    ("he2015", ("runs", "30-he", "loss_end"), float("nan"), "the 30-layer He net converges"),
    ("he2015", ("runs", "30-xavier", "loss_end"), 0.2, "Xavier net does not train"),
    ("he2015", ("runs", "30-xavier", "steps_to_fall"), 100, "leaves the plateau"),
    ("he2015", ("runs", "22-xavier", "loss_min_running"), 2.0, "the Xavier net trains too"),
    # glorot2010: every claim. Standard tanh as flat as normalized at init; normalized as
    # steep as standard; the top sigmoid layer left near 0.5; tanh saturating from the top
    ("glorot2010", ("runs", "shapeset/tanh-standard", "backprop_ratio"), 0.9, "shrinks toward"),
    ("glorot2010", ("runs", "digits/tanh-normalized", "backprop_ratio"), 0.2, "flatter"),
    ("glorot2010", ("runs", "shapeset/sigmoid-standard", "act_mean_end"), [0.5, 0.5, 0.5, 0.55],
     "saturation at 0"),
    ("glorot2010", ("runs", "shapeset/tanh-standard", "saturated_frac_end"), [0.0, 0.0, 0.0, 0.3],
     "saturates from the input side"),
    ("glorot2010", ("runs", "shapeset/sigmoid-standard", "test_error"), 0.1, "highest test error"),
    # normalized tanh worse than standard at every learning rate, whichever validation picks;
    # standard tanh better than normalized at every learning rate
    ("glorot2010", ("tuning", "tanh-normalized"),
     lambda lrs: {lr: {**v, "test_error": 0.8} for lr, v in lrs.items()}, "each at the learning"),
    ("glorot2010", ("tuning", "tanh-standard"),
     lambda lrs: {lr: {**v, "test_error": 0.5} for lr, v in lrs.items()}, "each at the learning"),
    ("pascanu2013", ("training", "adding/T100/lstm", "final"), 0.1, "the LSTM reaches"),
    ("pascanu2013", ("training", "adding/T100/rnn", "final"), 0.001, "the LSTM reaches"),
    ("pascanu2013", ("sweep", -1, "decay_slope"), -0.01, "separates the regimes"),
    # the LSTM keeps as little of the gradient over T = 100 as the vanilla RNN
    ("pascanu2013", ("flow", "lstm/T100", "first_over_last"), 1e-40, "gated cells keep"),
    ("pascanu2013", ("clipping", "clipped", "all_finite"), False, "clipping stops"),
    ("residual", ("runs", "100-residual", "loss_end"), 2.2, "Degradation"),
    ("residual", ("runs", "100-plain+bn", "loss_end"), 0.01, "trains worse than the residual"),
    ("residual", ("runs", "100-residual", "backprop_ratio"), 1e-4, "The residual net's does not"),
    ("residual", ("runs", "100-residual", "predicted_backprop_ratio"), 100.0, "Mean-field theory"),
    # xiong2020: post-LN as flat and small as pre-LN at init
    (
        "xiong2020",
        ("init", "post-LN-L24", "ffn_grad"),
        lambda g: [0.02] * len(g),
        "larger near the output",
    ),
    # pre-LN rising toward the output like post-LN
    (
        "xiong2020",
        ("init", "pre-LN-L12", "ffn_grad"),
        lambda g: [v * (1 + 0.2 * i) for i, v in enumerate(g)],
        "profile rises toward the output",
    ),
    # the deep pre-LN net's last-layer gradient as large as the shallow one's
    (
        "xiong2020",
        ("init", "pre-LN-L24", "ffn_grad"),
        lambda g: [v * 3 for v in g],
        "shrinks at least about as 1/√L",
    ),
    # the deep post-LN net's last-layer gradient shrinking with depth as fast as pre-LN's
    (
        "xiong2020",
        ("init", "post-LN-L24", "ffn_grad"),
        lambda g: [v / 10 for v in g],
        "shrinks at least about as 1/√L",
    ),
    ("xiong2020", ("runs", "post-LN", "loss_end"), 0.01, "the post-LN net stalls"),
    ("xiong2020", ("runs", "pre-LN", "loss_end"), 2.7, "the post-LN net stalls"),
    ("xiong2020", ("runs", "pre-LN", "all_finite"), False, "the post-LN net stalls"),
    ("xiong2020", ("runs", "post-LN+warmup", "loss_end"), 2.7, "Warmup rescues"),
    ("xiong2020", ("runs", "post-LN+warmup", "all_finite"), False, "Warmup rescues"),
    ("xiong2020", ("runs", "post-LN", "flagged"), [], "gw.diagnose flags"),
    ("xiong2020", ("runs", "pre-LN", "flagged"), ["stalled"], "gw.diagnose flags"),
    # the measured pre-LN line twice the theory's in its inner layers (0.3 decade)
    (
        "xiong2020",
        ("theory", "pre-LN-L12", "measured"),
        lambda g: [v * (2.0 if 0 < i < len(g) - 1 else 1.0) for i, v in enumerate(g)],
        "every layer's FFN gradient of the pre-LN",
    ),
    # post-LN's last layer at 24 layers twice the theory's
    (
        "xiong2020",
        ("theory", "post-LN-L24", "measured"),
        lambda g: [*g[:-1], 2 * g[-1]],
        "the last layer's FFN gradient",
    ),
    ("xiong2020", ("theory", "pre-LN-L6", "verdict"), "uncertain", "the last layer's FFN"),
    ("xiong2020", ("runs", "DeepNorm", "loss_end"), 2.0, "the DeepNorm net trains"),
    ("xiong2020", ("runs", "DeepNorm", "all_finite"), False, "the DeepNorm net trains"),
    ("xiong2020", ("first_update", "DeepNorm"), lambda v: 2 * v, "bounds the update"),
    # wortsman2023 (runs keyed arm, learning rate, seed): the baseline's logits as tame as
    # qk-layernorm's at lr 1
    ("wortsman2023", ("runs", "baseline", "1", "*", "attn_logit_max"), 50.0,
     "attention logits grow"),
    # the baseline trains at lr 0.3: no learning rate left where only it fails
    ("wortsman2023", ("runs", "baseline", "0.3", "*", "final_loss"), 1.0,
     "training fails above"),
    # qk-layernorm fails at 0.3: its range is no wider
    ("wortsman2023", ("runs", "qk-layernorm", "0.3", "*", "final_loss"), 4.5,
     "range of learning rates"),
    ("wortsman2023", ("runs", "qk-layernorm", "0.3", "*", "final_loss"), float("inf"),
     "range of learning rates"),
    # a failed baseline run gradwatch did not flag
    ("wortsman2023", ("runs", "baseline", "0.3", "*", "flagged"), [], "gw.diagnose flags"),
    # criticality: the near-critical net (σw² = 1.76, row 5) at chance at the largest depth
    ("criticality", ("accuracy", 5, -1), 0.1, "At the largest depth"),
    # the far-chaotic net (σw² = 4, the last row) trains at the largest depth
    ("criticality", ("accuracy", -1, -1), 0.9, "At the largest depth"),
    # the near-critical net trains no deeper than 60 layers: others reach further
    ("criticality", ("accuracy", 5), lambda a: [*a[:-2], 0.1, 0.1], "peaks at criticality"),
    # the far-ordered net (σw² = 0.5) trains to 60 layers: more than half the critical 80-100
    ("criticality", ("accuracy", 0), lambda a: [0.9] * (len(a) - 2) + [0.1, 0.1],
     "peaks at criticality"),
    ("criticality", ("accuracy",), lambda a: [[0.95] * len(r) for r in a], "where depth ≤ 6 ξ_c"),
    ("criticality", ("backprop_slope", 0, -1), 0.3, "changes by √χ1 per layer"),
    ("micikevicius2018", ("runs", "fp16", "loss_end"), 0.01, "learns worse"),
    ("micikevicius2018", ("runs", "fp16_scaled", "loss_end"), 2.0, "dynamic loss scaling"),
    ("micikevicius2018", ("runs", "fp32", "findings"), [], "gw.diagnose reports underflow"),
]


@pytest.mark.parametrize(("name", "path", "value", "text"), CASES)
def test_doctored_full_record_fails_claim(name, path, value, text):
    claims = get(name).load().claims
    # doctor the claim's seeds one by one: it holds while enough seeds are left, and fails
    # once one seed more than it can spare no longer supports it
    for n, threads in MULTI:
        if n != name:
            continue
        record = _record(name, threads)
        numbers, seeds = _numbers(record), record["seeds"]
        honest = _claim(claims_over_seeds(claims, numbers, seeds), text)
        assert honest["holds"]
        holding = [i for i, held in enumerate(honest["per_seed"]) if held]
        spare = len(holding) - honest["need"]  # seeds it can lose and still hold
        doctored = list(numbers)
        for k, i in enumerate(holding[: spare + 1]):
            doctored[i] = _doctor(numbers[i], path, value)
            assert not _claim(claims(doctored[i]), text)["holds"], (threads, i)
            judged = _claim(claims_over_seeds(claims, doctored, seeds), text)
            assert judged["holds"] == (k < spare), (threads, k)


def test_every_experiment_has_a_doctored_case():
    assert {n for n, *_ in CASES} == set(EXPERIMENTS)


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_claims_read_a_record_with_non_finite_numbers_as_strings(name):
    # result.json writes NaN and ±inf as "nan", "inf", "-inf" (gradwatch.jsonable); the
    # claims read them back as floats, so a record read from disk decides as the numbers did
    claims = get(name).load().claims
    cases = [(p, v) for n, p, v, _ in CASES if n == name and not callable(v)]
    seeds = [num for n, t in MULTI if n == name for num in _numbers(_record(n, t))]
    for numbers in seeds:
        for path, value in [*cases, *((p, x) for p, _ in cases[:1] for x in SPECIAL)]:
            doctored = _doctor(numbers, path, value)
            stored = json.loads(json.dumps(jsonable(doctored), allow_nan=False))
            assert [c["holds"] for c in claims(stored)] == [c["holds"] for c in claims(doctored)]
