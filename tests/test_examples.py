"""The examples and the demo run and learn (few steps, headless)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def run(args):
    import fastgrad

    # The subprocess imports the same fastgrad as this test run (installed or in-place build).
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(fastgrad.__file__).parent.parent), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300, env=env,
                          cwd=ROOT)


@pytest.mark.skipif(not EXAMPLES.is_dir(), reason="examples/ is not shipped with the package")
def test_micrograd_demo_with_only_the_import_changed_trains():
    proc = run([str(EXAMPLES / "micrograd_demo.py")])
    assert proc.returncode == 0, proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("step 99") and "accuracy 100.0%" in last


@pytest.mark.skipif(not EXAMPLES.is_dir(), reason="examples/ is not shipped with the package")
def test_compiled_training_example_runs():
    proc = run([str(EXAMPLES / "compiled_training.py"), "--steps", "30"])
    assert proc.returncode == 0, proc.stderr
    assert "value_and_grad" in proc.stdout and "accuracy" in proc.stdout


def test_demo_prints_the_seed_table_then_trains():
    proc = run(["-m", "fastgrad", "--steps", "20"])
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    table = {ln.split()[0]: float(ln.split()[-1]) for ln in lines
             if ln.startswith("  ") and len(ln.split()) == 3 and ln.split()[0] != "node"}
    assert table == {"x": -16, "y": 12, "z": 2, "w": 0, "x_multiply_y": 4, "z_max_w": 2,
                     "xy_plus_zw": 2, "residual_op": 2, "multiply_2": 1}
    assert "epoch   19" in proc.stdout and "ms per epoch" in proc.stdout
    assert "step" not in proc.stdout.replace("steps", "")   # one word, as on the plot


def test_demo_help_has_no_rest_markup():
    proc = run(["-m", "fastgrad", "--help"])
    assert proc.returncode == 0 and "``" not in proc.stdout and "epochs" in proc.stdout


def test_demo_rejects_negative_steps():
    proc = run(["-m", "fastgrad", "--steps", "-1"])
    assert proc.returncode == 2 and "--steps" in proc.stderr


def test_demo_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "moons.png"
    proc = run(["-m", "fastgrad", "--steps", "5", "--no-compare", "--plot", str(out)])
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"Drew the decision boundary to {out}" in proc.stdout


def test_demo_plot_without_matplotlib_says_how_to_get_it(tmp_path):
    # matplotlib hidden from the child: `import matplotlib` raises ImportError
    code = ("import runpy, sys; sys.modules['matplotlib'] = None; "
            f"sys.argv = ['fastgrad', '--steps', '1', '--plot', {str(tmp_path / 'x.png')!r}]; "
            "runpy.run_module('fastgrad', run_name='__main__')")
    proc = run(["-c", code])
    assert proc.returncode == 1
    assert "needs matplotlib" in proc.stderr and "fastgrad[plot]" in proc.stderr
    assert not (tmp_path / "x.png").exists()


def test_demo_reports_the_speedup_over_micrograd_when_installed():
    pytest.importorskip("micrograd")
    proc = run(["-m", "fastgrad", "--steps", "3"])
    assert proc.returncode == 0, proc.stderr
    assert "micrograd, its own demo epoch" in proc.stdout and "x faster" in proc.stdout
    assert "median of" in proc.stdout


@pytest.mark.skipif(not EXAMPLES.is_dir(), reason="examples/ is not shipped with the package")
def test_dask_training_example_trains_on_its_own_local_cluster():
    pytest.importorskip("dask.array")
    pytest.importorskip("distributed")
    proc = run([str(EXAMPLES / "dask_training.py"), "--rows", "20000", "--chunk", "5000", "--epochs", "3"])
    assert proc.returncode == 0, proc.stderr
    assert "cluster: 2 workers" in proc.stdout and "in 4 chunks" in proc.stdout
    losses = [float(ln.split()[3]) for ln in proc.stdout.splitlines() if ln.startswith("epoch")]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert "accuracy" in proc.stdout.splitlines()[-1]


@pytest.mark.skipif(not EXAMPLES.is_dir(), reason="examples/ is not shipped with the package")
def test_dask_training_example_runs_on_a_scheduler_address():
    pytest.importorskip("dask.array")
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address="127.0.0.1:0") as cluster:
        proc = run([str(EXAMPLES / "dask_training.py"), "--rows", "8000", "--chunk", "4000", "--epochs", "1",
                    "--scheduler", cluster.scheduler_address])
    assert proc.returncode == 0, proc.stderr
    assert f"1 worker at {cluster.scheduler_address}" in proc.stdout and "epoch   1/1" in proc.stdout
