"""The bad-input catalogue of the public API, generated from :mod:`tests.bad_input.api_table`.

Each case calls one public function with one bad argument (the others fine) and asserts a
gradwatch error (also the matching built-in) whose message names the argument. A raw Python
exception fails the case; so does a bad value accepted without a word.
"""

from __future__ import annotations

import os
import warnings

import pytest

from gradwatch.errors import GradwatchError
from tests.bad_input.api_table import PENDING_WATCH, Fresh, api_cases
from tests.bad_input.places import make_places, resolve

CASES = api_cases()


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    return make_places(tmp_path_factory.mktemp("bad_api"))


def _value(v, places):
    return v.make() if isinstance(v, Fresh) else resolve(v, places)


def call_case(spec, param, value, places):
    """Call ``spec`` with ``param`` set to ``value``; return the exception raised, or None."""
    kwargs = {k: _value(v, places) for k, v in spec.base.items()}
    kwargs[param] = _value(value, places)
    here = os.getcwd()
    os.chdir(places["root"])  # a relative or empty path must not write into the checkout
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = spec.func(**kwargs)
        close = getattr(result, "close", None)
        if callable(close) and type(result).__name__ == "Monitor":
            close()
    except Exception as exc:  # noqa: BLE001 - classifying what came out is the point
        return exc
    finally:
        os.chdir(here)
    return None


def _pending(case) -> bool:
    return (case[1].name, case[2], case[3]) in PENDING_WATCH


def assert_gradwatch_error(places, spec, param, label, value):
    exc = call_case(spec, param, value, places)
    assert exc is not None, f"{spec.name}({param}={value!r}) was accepted silently"
    assert isinstance(exc, GradwatchError), f"raw {type(exc).__name__}: {exc}"
    word = spec.word.get((param, label), param)
    assert word in str(exc), f"message does not name {word!r}: {exc}"


@pytest.mark.parametrize(
    "spec,param,label,value", [c[1:] for c in CASES if not _pending(c)],
    ids=[c[0] for c in CASES if not _pending(c)],
)
def test_bad_api_input_is_a_gradwatch_error_naming_the_argument(places, spec, param, label,
                                                                 value):
    assert_gradwatch_error(places, spec, param, label, value)


# watch() validation fixed on the Monitor's branch (issue 14, item 8): these pass once it
# has merged.
@pytest.mark.parametrize(
    "spec,param,label,value", [c[1:] for c in CASES if _pending(c)],
    ids=[c[0] for c in CASES if _pending(c)],
)
def test_watch_validation_from_the_monitor_branch(places, spec, param, label, value):
    assert_gradwatch_error(places, spec, param, label, value)


def test_the_catalogue_is_big_enough():
    assert len(CASES) >= 300
    assert len({c[0] for c in CASES}) == len(CASES), "case ids must be unique"
