"""Every CLI command's options and, for each, the bad values users type.

A command is a working command line (``base``) and, per option, the bad values to try; each
case puts one bad value in place of the good one (or adds the option). ``{name}`` in an
argument is a path from :func:`tests.bad_input.places.make_places` (``{a_file}``,
``{empty_dir}``, ...). The word a case names is what the one-line error must mention.
"""

from __future__ import annotations

import contextlib
import io
import os
import traceback
import warnings
from dataclasses import dataclass

from gradwatch.cli import main

NUM_INT = [("zero", "0"), ("negative", "-1"), ("word", "x"), ("float", "1.5"), ("empty", "")]
SEED = [("negative", "-1"), ("word", "x"), ("float", "0.5"), ("huge", str(2**70))]
def tagged(values: list[tuple[str, str]], tag: str) -> list[tuple[str, str]]:
    """``values`` with their labels prefixed by ``tag`` (one option in two commands' forms)."""
    return [(f"{tag}-{label}", value) for label, value in values]


OUT_DIR = [("a-file", "{a_file}"), ("under-a-file", "{a_file}/sub"), ("empty", "")]
OUT_FILE = [("a-folder", "{empty_dir}"), ("under-a-file", "{a_file}/x.html"), ("empty", "")]
SPEC = [
    ("no-colon", "{factory}"),
    ("missing-file", "{root}/nofile.py:make"),
    ("not-python", "{notes}:make"),
    ("missing-factory", "{factory}:nothing"),
    ("not-callable", "{factory}:NOT_CALLABLE"),
    ("factory-raises", "{factory}:boom"),
    ("returns-int", "{factory}:make_int"),
    ("file-raises", "{broken}:make"),
    ("a-folder", "{empty_dir}:make"),
    ("empty", ""),
    ("torchscript", "{factory}:scripted"),
]
SHAPE = [
    ("word", "2,x"),
    ("zero", "0,4"),
    ("negative", "-2,4"),
    ("empty", ""),
    ("wrong-features", "2,5"),
    ("float", "2,4.5"),
    ("commas", ",,"),
    ("out-of-memory", "100000,100000"),
    ("huge", "100000,100000,100000"),
    ("overflow", str(2**70) + ",4"),
]
TARGETS = [("one-class", "classes:1"), ("word", "classes:x"), ("kind", "labels:3"),
           ("no-count", "classes:"), ("negative", "classes:-3"),
           ("superscript-digit", "classes:²"), ("overflow", "classes:" + str(2**70)),
           ("huge", "classes:1000000000000")]
RUN_DIR = [("missing", "{missing}"), ("a-file", "{a_file}"), ("empty-dir", "{empty_dir}"),
           ("foreign", "{foreign}"), ("empty", "")]
REPORT_OUT = ["-o", "{root}/out/report.html"]


@dataclass
class Command:
    """A CLI command: a working command line and, per option, the bad values."""

    name: str
    base: list[str]
    bad: dict[str, list[tuple[str, str]]]
    # option -> the word the message must name, when not the option itself
    word: dict[str, str]


#: Sizes that would run away (allocate terabytes, or run for days) instead of failing.
HUGE = [("huge", "1000000000"), ("overflow", str(2**70))]
#: A model whose forward pass raises ValueError (BatchNorm in train mode on one example).
ONE_EXAMPLE = ("batch-of-one-through-batchnorm", "1,4")

COMMANDS = [
    Command("demo", ["demo", "--out", "{root}/demo"],
            {"--out": OUT_DIR, "--depth": [*NUM_INT, ("one", "1"), *HUGE],
             "--width": [*NUM_INT, *HUGE], "--steps": [*NUM_INT, *HUGE], "--seed": SEED},
            {}),
    Command("runs", ["runs", "{root}"],
            {"DIR": [("missing", "{missing}"), ("a-file", "{a_file}"), ("empty", "")],
             "--depth": NUM_INT},
            {}),
    Command("check", ["check", "{factory}:make", "--input-shape", "2,4"],
            {"FILE.py:FACTORY": SPEC, "--input-shape": SHAPE, "--targets": TARGETS,
             "--seed": SEED,
             "--fail-on": [("unknown", "magic"), ("empty", ""), ("commas", ","),
                           ("healthy", "healthy"), ("typo-in-list", "vanishing,exploding,nan")]},
            {"FILE.py:FACTORY": "model", "--input-shape": "input"}),
    Command("check", ["check", "{factory}:batchnorm", "--input-shape", "2,4"],
            {"--input-shape": [ONE_EXAMPLE]}, {"--input-shape": "input"}),
    Command("theory", ["theory", "--activation", "tanh", "--sigma-w2", "1.5"],
            {"--activation": [("unknown", "relux"), ("empty", ""), ("bad-slope", "leaky_relu:x"),
                              ("number", "3")],
             "--sigma-w2": [("zero", "0"), ("negative", "-1"), ("word", "x"), ("nan", "nan"),
                            ("inf", "inf"), ("empty", "")],
             "--sigma-b2": [("negative", "-0.5"), ("word", "x"), ("nan", "nan"), ("inf", "inf"),
                            ("empty", "")],
             "--depth": NUM_INT},
            {"--sigma-w2": "sigma", "--sigma-b2": "sigma"}),
    Command("theory", ["theory", "--activation", "relu", "--sigma-w2", "2", "--blocks", "4"],
            {"--blocks": tagged(NUM_INT, "mlp"), "--width": tagged(NUM_INT, "mlp"),
             "--branch-layers": tagged(NUM_INT, "mlp"),
             "--residual-alpha": [("mlp-word", "x"), ("mlp-nan", "nan"), ("mlp-empty", "")]},
            {}),
    Command("theory", ["theory", "--attention", "--blocks", "2"],
            {"--width": tagged([*NUM_INT, ("no-multiple-of-heads", "6")], "attention"),
             "--heads": tagged(NUM_INT, "attention"), "--seq-len": tagged(NUM_INT, "attention")},
            {}),
    Command("theory", ["theory", "--rnn", "tanh", "--steps", "10"],
            {"--rnn": [("unknown", "lstmx"), ("empty", "")],
             "--steps": tagged([*NUM_INT, ("one", "1"), ("huge", "100000")], "rnn"),
             "--width": tagged(NUM_INT, "rnn"), "--layers": tagged(NUM_INT, "rnn"),
             "--input-size": tagged(NUM_INT, "rnn")},
            {}),
    Command("fix", ["fix", "{factory}:make", "--input-shape", "2,4"],
            {"FILE.py:FACTORY": [*SPEC[:6], SPEC[-1]], "--input-shape": SHAPE[:8],
             "--allow": [("unknown", "magic"), ("empty", ""), ("commas", ",")],
             "--max-rounds": NUM_INT, "--seed": SEED, "--targets": [*TARGETS[:3], *TARGETS[-3:]],
             "--save": [("a-folder", "{empty_dir}"), ("missing-folder", "{root}/nope/fixed.pt"),
                        ("under-a-file", "{a_file}/fixed.pt"), ("empty", "")]},
            {"FILE.py:FACTORY": "model", "--input-shape": "input"}),
    Command("fix", ["fix", "{factory}:batchnorm", "--input-shape", "2,4"],
            {"--input-shape": [ONE_EXAMPLE]}, {"--input-shape": "input"}),
    Command("experiment", ["experiment", "glorot2010", "--quick", "--out", "{root}/exp"],
            {"NAME": [("unknown", "nosuch"), ("empty", "")], "--seed": SEED,
             "--executor": [("unknown", "magic"), ("empty", "")], "--out": OUT_DIR},
            {"NAME": "experiment"}),
    Command("report", ["report", "{a_run}", *REPORT_OUT],
            {"RUN_DIR": RUN_DIR, "-o": OUT_FILE, "--tensorboard": OUT_DIR, "--figures": OUT_DIR},
            {}),
]


def with_bad(cmd: Command, option: str, value: str) -> list[str]:
    """``cmd.base`` with ``option`` set to ``value`` (a positional is replaced in place)."""
    args = list(cmd.base)
    if not option.startswith("-"):  # the positional argument: the second word
        if len(args) > 1 and not args[1].startswith("-"):
            args[1] = value
        else:
            args.insert(1, value)
        return args
    if option in args:
        args[args.index(option) + 1] = value
        return args
    return [*args, option, value]


def names_option(line: str, word: str) -> bool:
    """Whether an error line names ``word``: as typed (``--sigma-w2``) or as the API spells the
    same argument (``sigma_w2``), which the CLI passes its errors through from."""
    line = line.lower()
    return word.lower() in line or word.lstrip("-").replace("-", "_").lower() in line


def cli_cases() -> list[tuple[str, list[str], str]]:
    """(case id, argv with {places}, word the error must name) for every option and value."""
    out = []
    for cmd in COMMANDS:
        for option, values in cmd.bad.items():
            for label, value in values:
                word = cmd.word.get(option, option)
                out.append((f"{cmd.name}/{option}={label}", with_bad(cmd, option, value), word))
    return out


def run_cli(argv, places):
    """Run the CLI in-process from the places' folder; return (exit code, stdout, stderr)."""
    args = [a.format(**{k: str(v) for k, v in places.items()}) for a in argv]
    out, err = io.StringIO(), io.StringIO()
    here = os.getcwd()
    os.chdir(places["root"])  # default output folders land in the temporary folder
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                code = main(args)
            except SystemExit as exc:  # argparse's own errors
                code = exc.code
            except BaseException:  # noqa: BLE001 - an uncaught error is what a user sees as a traceback
                traceback.print_exc(file=err)
                code = "traceback"
    finally:
        os.chdir(here)
    return code, out.getvalue(), err.getvalue()
