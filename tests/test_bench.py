"""The benchmark harness runs, writes JSON with every workload, and reports missing
engines as skipped.  Timings are never asserted (they belong to bench/, not tests)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "bench" / "run.py"
WORKLOADS = {"seed", "mlp_step", "mlp_compiled", "optim_step", "random_backward", "chain", "memory",
             "batch_scaling", "hessian", "create_graph"}

pytestmark = pytest.mark.skipif(not RUN.is_file(), reason="bench/ is not shipped with the package")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """`python bench/run.py --quick --engines fastgrad,torch` with torch made
    unimportable, so one requested engine is missing whatever is installed."""
    import fastgrad

    tmp = tmp_path_factory.mktemp("bench")
    blocker = tmp / "blocker"
    blocker.mkdir()
    (blocker / "torch.py").write_text("raise ImportError('torch hidden by tests/test_bench.py')\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(blocker), str(Path(fastgrad.__file__).parent.parent),
                                         env.get("PYTHONPATH", "")])
    out = tmp / "latest.json"
    proc = subprocess.run([sys.executable, str(RUN), "--quick", "--engines", "fastgrad,torch",
                           "--json", str(out)],
                          capture_output=True, text=True, timeout=600, env=env, cwd=tmp)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc, json.loads(out.read_text()), out


def test_json_has_every_workload(quick_run):
    _, doc, _ = quick_run
    assert {r["workload"] for r in doc["results"]} == WORKLOADS
    fastgrad_rows = [r for r in doc["results"] if r["engine"] == "fastgrad"]
    assert {r["workload"] for r in fastgrad_rows} == WORKLOADS
    for rec in doc["results"]:
        assert rec["status"] in ("ok", "skipped", "failed")
        if rec["status"] == "ok" and rec["workload"] != "memory":
            assert rec["median_s"] > 0 and rec["min_s"] <= rec["median_s"] <= rec["max_s"]
        if rec["status"] != "ok":
            assert rec["reason"]


def test_quick_run_covers_compiled_replay_and_the_floors(quick_run):
    _, doc, _ = quick_run
    engines = {(r["workload"], r["engine"]) for r in doc["results"]}
    for row in [("mlp_compiled", "fastgrad-batched"), ("mlp_compiled", "c_floor"),
                ("random_backward", "c_floor"), ("mlp_step", "fastgrad[micrograd.nn]")]:
        assert row in engines
    assert all(r["status"] == "ok" for r in doc["results"] if r["engine"].startswith("fastgrad")), \
        [(r["workload"], r["engine"], r["reason"]) for r in doc["results"] if r["status"] != "ok"]


def test_missing_engine_is_reported_as_skipped(quick_run):
    proc, doc, _ = quick_run
    assert "torch" in doc["meta"]["skipped_engines"]
    assert "hidden by tests/test_bench.py" in doc["meta"]["skipped_engines"]["torch"]
    assert "skipping engine torch" in proc.stdout
    assert not any(r["engine"] == "torch" for r in doc["results"])


def test_markdown_table_and_targets_on_stdout(quick_run):
    proc, doc, _ = quick_run
    assert "| workload | variant | engine | median | min | max |" in proc.stdout
    assert "Targets (docs/design.md section 5)" in proc.stdout
    assert {t["target"] for t in doc["targets"]} >= {"seed fwd+bwd", "compiled replay vs C floor"}
    assert doc["meta"]["cpus"] and "loadavg_1_5_15_at_start" in doc["meta"]


def test_plot_is_written_when_matplotlib_is_installed(quick_run):
    pytest.importorskip("matplotlib")
    _, _, out = quick_run
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
