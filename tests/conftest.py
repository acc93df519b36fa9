import os

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")

#: Long end-to-end tests, left out of the default run (``python -m pytest`` stays under five
#: minutes on two cores) and run by CI with ``python -m pytest -m slow``. Listed here, by test
#: (all parametrisations), so that the list of what the default run skips is in one place.
SLOW_TESTS = frozenset({
    # the whole demo in a subprocess: CI's first README command runs it in full, and the
    # report tests (tests/report) and test_demo's in-process test cover its parts
    "tests/commands/test_demo.py::test_demo_prints_both_verdicts_and_writes_the_report",
    "tests/store/test_run_directory.py::test_sigkill_at_random_points_loses_nothing_flushed",
    "tests/store/test_run_directory.py::test_sigterm_flushes_everything",
    # real processes killed at flush boundaries and under load (the fast tests of the same
    # bounds, in process, stay in the default run)
    "tests/store/test_kill_bound.py::test_a_sigkill_loses_at_most_one_flush_interval",
    "tests/monitor/test_flush_boundary_loss.py::"
    "test_a_killed_run_has_the_loss_of_every_step_on_disk_and_resumes_whole",
    "tests/experiments/test_criticality.py::test_ray_and_local_pool_give_the_same_grid",
    "tests/experiments/test_criticality.py::test_seeded_repeatable",
    "tests/experiments/test_pascanu2013.py::test_seeded_repeatable",
    "tests/experiments/test_repeatable.py::test_tiny_run_twice_identical",
    "tests/integrations/test_ddp.py::test_ddp_two_ranks_match_a_single_process_on_the_combined_batch",
})
#: Tests that use one of these fixtures are slow too: each runs experiments' quick mode once
#: per session (a minute or more apiece on two cores).
SLOW_FIXTURES = frozenset({"quick_result"})


@pytest.hookimpl(tryfirst=True)  # before -m 'not slow' deselects by marker
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.nodeid.split("[", 1)[0] in SLOW_TESTS or SLOW_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    # one intra-op thread: the tests' models are small, where more threads only add overhead
    # (and oversubscribe the CPU when a test starts subprocesses)
    torch.set_num_threads(1)
    yield
