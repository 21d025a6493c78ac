"""detect_anomaly names the user's line however the package was reached.

Whether a frame is fastgrad's own is decided by its module's name, not by a
path prefix: a source checkout reached through a sys.path entry such as
"../repo" names its files by paths no prefix of the extension's own path
matches, and then fastgrad's nn.py was reported instead of the user's line.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

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
