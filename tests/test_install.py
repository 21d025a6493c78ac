"""The suite tests the installed wheel, not the source tree.

`.ci/run` (and cibuildwheel's test-command) set FASTGRAD_EXPECT_INSTALLED=1 when
they run the tests from a directory outside the checkout against a wheel
installed in a fresh virtual environment. Then `import fastgrad` must resolve to
that environment's site-packages, the compiled extension must be the wheel's,
and the stubs must have shipped. Anywhere else these tests skip.
"""

from __future__ import annotations

import importlib.machinery
import importlib.metadata
import os
import sys
import sysconfig
from pathlib import Path

import pytest

import fastgrad
from fastgrad import _core

pytestmark = pytest.mark.skipif(
    os.environ.get("FASTGRAD_EXPECT_INSTALLED") != "1",
    reason="FASTGRAD_EXPECT_INSTALLED=1 is set only when testing an installed wheel (.ci/run)",
)


def site_packages() -> set[Path]:
    return {Path(sysconfig.get_path(k)).resolve() for k in ("purelib", "platlib")}


def test_runs_in_a_virtual_environment():
    assert sys.prefix != sys.base_prefix, "the wheel is tested in a fresh venv"


def test_fastgrad_is_imported_from_site_packages():
    here = Path(fastgrad.__file__).resolve()
    assert any(here.is_relative_to(sp) for sp in site_packages()), here
    assert Path(sys.prefix).resolve() in here.parents
    # one directory only: no source checkout merged into the package path
    assert [Path(p).resolve() for p in fastgrad.__path__] == [here.parent]


def test_extension_module_is_the_wheels():
    core = Path(_core.__file__).resolve()
    assert core.parent == Path(fastgrad.__file__).resolve().parent
    assert any(core.name.endswith(s) for s in importlib.machinery.EXTENSION_SUFFIXES), core.name
    recorded = {Path(f.locate()).resolve() for f in importlib.metadata.files("fastgrad") or []}
    assert core in recorded, "the extension was not installed by the fastgrad wheel"


def test_stubs_and_typed_marker_are_installed():
    pkg = Path(fastgrad.__file__).resolve().parent
    names = {f.name for f in pkg.iterdir()}
    assert {"_core.pyi", "py.typed", "__init__.py", "nn.py"} <= names
    assert "_core.c" not in names


def test_version_is_the_installed_metadata():
    assert fastgrad.__version__ == importlib.metadata.version("fastgrad")
    assert fastgrad.__version__ != "0+unknown"


def test_runs_on_the_cpython_ci_asked_for():
    """.ci/run tests one wheel per CPython: each run must really be on that version."""
    wanted = os.environ.get("FASTGRAD_EXPECT_PYTHON")
    if not wanted:
        pytest.skip("FASTGRAD_EXPECT_PYTHON=3.X is set by .ci/run's per-CPython wheel runs")
    assert sys.implementation.name == "cpython"
    assert f"{sys.version_info.major}.{sys.version_info.minor}" == wanted
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    wheel_tags = [line.split(":", 1)[1].strip() for line in
                  (importlib.metadata.distribution("fastgrad").read_text("WHEEL") or "").splitlines()
                  if line.startswith("Tag:")]
    assert wheel_tags and all(t.startswith(f"{tag}-{tag}-") for t in wheel_tags), wheel_tags
