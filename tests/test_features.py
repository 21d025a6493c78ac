"""tests/features.py: each skip marker skips exactly where its feature is absent."""

from __future__ import annotations

import os
import sys
import threading

import pytest

import features


def condition(marker: pytest.MarkDecorator) -> bool:
    return bool(marker.args[0])


def test_monitoring_marker_follows_the_version():
    assert condition(features.requires_monitoring) == (sys.version_info < (3, 12))
    if not condition(features.requires_monitoring):
        sys.monitoring.use_tool_id(5, "fastgrad-test")
        try:
            assert sys.monitoring.get_tool(5) == "fastgrad-test"
        finally:
            sys.monitoring.free_tool_id(5)


def test_markers_skip_only_where_the_feature_is_missing():
    assert condition(features.requires_fork) == (sys.platform == "win32" or not hasattr(os, "fork"))
    assert condition(features.requires_switchinterval) is False  # every CPython has it
    if sys.platform.startswith("linux"):
        assert not condition(features.requires_fork)
        assert not condition(features.requires_forkserver)


@features.requires_switchinterval
def test_switchinterval_round_trips():
    old = sys.getswitchinterval()
    try:
        sys.setswitchinterval(1e-6)
        assert sys.getswitchinterval() < old or old <= 1e-6
    finally:
        sys.setswitchinterval(old)
    assert sys.getswitchinterval() == old


@features.requires_testcapi
def test_testcapi_imports_where_found():
    import _testcapi  # type: ignore[import-not-found]  # no stubs: a test module of CPython

    assert hasattr(_testcapi, "INT_MAX")


@features.requires_fork
def test_fork_beside_a_thread_runs_the_child():
    """Forking while another thread lives passes under filterwarnings=error on
    every version (3.12+ warn, but drop the warning an error filter makes)."""
    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:
        pid = os.fork()
        if pid == 0:
            os._exit(7)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 7
    finally:
        stop.set()
        t.join()
