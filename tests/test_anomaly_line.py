"""detect_anomaly names the user's line however the package was reached.

Whether a frame is fastgrad's own is decided by its module's name, not by a
path prefix: a source checkout reached through a sys.path entry such as
"../repo" names its files by paths no prefix of the extension's own path
matches, and then fastgrad's nn.py was reported instead of the user's line.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import pytest

import fastgrad

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(fastgrad.__file__)))


def _run(path: str, path_entry: str, cwd: str) -> str:
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {path_entry!r})
        import random
        import fastgrad
        from fastgrad.nn import MLP
        random.seed(0)
        model = MLP(2, [3, 1])
        with fastgrad.detect_anomaly():
            try:
                model([float("inf"), 1.0])   # line 11
            except FloatingPointError as exc:
                print(exc)
        print(fastgrad.__file__)
    """)
    with open(path, "w") as fh:
        fh.write(code)
    out = subprocess.run([sys.executable, path], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_anomaly_names_the_user_line_through_an_unnormalised_path(tmp_path):
    entry = os.path.join(ROOT, "..", os.path.basename(ROOT))      # ".../repo/../repo"
    msg, where = _run(str(tmp_path / "train.py"), entry, str(tmp_path)).splitlines()
    assert os.path.sep + ".." + os.path.sep in where              # the package came that way
    assert "'dot' produced inf in the forward pass, at " in msg
    assert msg.endswith(f"train.py:11 (in <module>)"), msg
    assert "nn.py" not in msg


def test_anomaly_names_the_user_line_from_the_checkout_root(tmp_path):
    # python -m pytest / python -m fastgrad in the repo root: "." on sys.path
    msg, where = _run(str(tmp_path / "probe.py"), ".", ROOT).splitlines()
    assert msg.endswith("probe.py:11 (in <module>)"), msg


@pytest.mark.parametrize("x, want", [(math.inf, 1.0), (-math.inf, -1.0), (0.5, 0.5)])
def test_clamp_with_both_bounds_is_one_op_to_anomaly_mode_and_no_grad(x, want):
    """clamp(x, lo, hi) is two nodes (clamp_min, then clamp_max); the user
    made one op, so only its value counts: inf clamped to [-1, 1] is 1.0."""
    with fastgrad.Graph() as g:
        v = fastgrad.Value(x)
        with fastgrad.detect_anomaly():
            y = v.clamp(-1.0, 1.0)
        assert y.data == want and y._op == "clamp_max"
        assert [p._op for p in y._prev] == ["clamp_min"]
        with fastgrad.no_grad():
            z = v.clamp(-1.0, 1.0)
        assert z.data == want and not z._prev
        del y, z
        assert g.stats()["live_nodes"] == 1
        with fastgrad.detect_anomaly(), pytest.raises(FloatingPointError, match="'clamp_max' produced nan"):
            v.clamp(-1.0, math.nan)
        assert g.stats()["live_nodes"] == 1
