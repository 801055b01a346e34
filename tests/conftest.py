"""Test-session setup shared by every test file.

Hypothesis profiles, registered once here:
  ci   (default) derandomized, so a run is reproducible and CI never flakes; no deadline (timings on shared runners
       vary); a modest number of examples to keep the suite fast; print_blob so a failure can be replayed.
  dev  random, many more examples, for hunting bugs locally:  HYPOTHESIS_PROFILE=dev python -m pytest
torch is the test oracle only: one thread (deterministic reductions, no oversubscription of small CI machines).
Its default dtype is left alone; tests that want float64 build their tensors from float64 arrays, or use the
`torch_float64` fixture.
The command-line tests' module-scoped `corpus` fixture is here too.
"""
import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("ci", derandomize=True, deadline=None, max_examples=30, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("dev", deadline=None, max_examples=300, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

try:
    import torch
except ImportError:  # torch is only the oracle; tests that need it import it themselves and fail or skip there
    torch = None
else:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The command-line tests' corpus (cli_support.write_corpus), written once per test file; a file may define its
    own `corpus` fixture instead (test_trajectory.py does)."""
    from cli_support import write_corpus
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture
def torch_float64():
    """torch's default dtype set to float64 for one test, then restored."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def pytest_terminal_summary(terminalreporter):
    """The largest relative errors against torch seen per op (recorded by helpers.check)."""
    import sys
    helpers = sys.modules.get("helpers")
    lines = helpers.error_summary() if helpers is not None else []
    if lines:
        terminalreporter.section("largest relative errors against torch (float64)")
        for line in lines:
            terminalreporter.write_line(line)
