"""Skip markers for tests that need an interpreter feature not every CPython has.

.ci/run runs the suite against a wheel on every CPython 3.10+ it finds (and
cibuildwheel on macOS and Windows): a test that needs one of these features
takes the marker, so it skips with the reason where the feature is absent
instead of failing there.

    from features import requires_fork, requires_monitoring

    @requires_fork
    def test_child_after_fork(): ...

Not skips, but version differences to know: from 3.12 on, ``os.fork()`` in
a process with other threads warns (DeprecationWarning); under pyproject's
``filterwarnings = error`` CPython 3.12 and 3.13 drop that warning silently
rather than raise (test_features.py checks), so it fails nothing.  3.14 makes
``forkserver`` the default start method on Linux: name the start method
(``multiprocessing.get_context("fork")``) rather than rely on the default.
"""

from __future__ import annotations

import importlib.util
import multiprocessing
import os
import sys

import pytest

HAS_FORK = hasattr(os, "fork") and "fork" in multiprocessing.get_all_start_methods()
HAS_FORKSERVER = "forkserver" in multiprocessing.get_all_start_methods()
HAS_SWITCHINTERVAL = hasattr(sys, "setswitchinterval") and hasattr(sys, "getswitchinterval")
# CPython's C-API test module: pyenv and python.org builds carry it, some
# distributions ship it in a separate package (Debian: libpython3.X-testsuite).
HAS_TESTCAPI = importlib.util.find_spec("_testcapi") is not None
HAS_MONITORING = hasattr(sys, "monitoring")  # PEP 669, 3.12+
HAS_GIL = getattr(sys, "_is_gil_enabled", lambda: True)()

requires_fork = pytest.mark.skipif(not HAS_FORK, reason="needs the fork start method (POSIX)")
requires_forkserver = pytest.mark.skipif(not HAS_FORKSERVER, reason="needs the forkserver start method (POSIX)")
requires_switchinterval = pytest.mark.skipif(
    not HAS_SWITCHINTERVAL, reason="needs sys.setswitchinterval (CPython)")
requires_testcapi = pytest.mark.skipif(
    not HAS_TESTCAPI, reason="needs CPython's _testcapi module (not shipped by this interpreter)")
requires_monitoring = pytest.mark.skipif(not HAS_MONITORING, reason="needs sys.monitoring (CPython 3.12+)")
requires_gil = pytest.mark.skipif(not HAS_GIL, reason="assumes the GIL (not a free-threaded build)")
