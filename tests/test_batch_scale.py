"""Batched replay at scale (docs/design.md, "Replay"): rows go through the tape in
blocks, with register-tiled kernels compiled for several instruction sets and
picked at import, threads taking chunks of blocks.

Every batched entry point must equal the row-by-row loop: per-row values and
per-row gradients exactly, the gradient summed over rows to a tight tolerance
(the batch sums per block, then blocks in row order).  That summed gradient is
the same bits for every thread count and every dispatch target.  Memory does
not grow with the rows, and no signal, fork or Python-level call can make a
worker write into memory the call gave back.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastgrad
from fastgrad import _core

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGETS = [name for name, ok, _ in _core._row_targets() if ok]
TILES = {name: tile for name, _, tile in _core._row_targets()}


def program(p, x):
    """Every kind of row-kernel path: dots with shared weights and per-row
    activations (the fused reverse), per-row x per-row, constant operands,
    sums mixing shared and per-row operands, binary ops with a shared parent,
    shared sub-expressions, and most unary ops."""
    h = [fastgrad.dot(p[0:3], x, p[3]).tanh(),
         fastgrad.dot(x, x).relu(),
         fastgrad.sum([x[0], p[4], 2.0, x[1]]),
         (p[5] * x[2]).sigmoid(),
         (x[0] - p[0]).exp() / (1 + x[1] ** 2),
         fastgrad.maximum(x[0], p[1]) + fastgrad.minimum(p[2], x[2]),
         (p[3] * p[4]).cos() * x[0],
         fastgrad.dot([p[0], 1.5], [x[1], x[2]]),
         abs(x[2]).sqrt() + x[1].sin(),
         (x[0] * x[0] + 1).log() - 2 / (abs(x[1]) + 1) + 3 ** x[2] * 0.1,
         fastgrad.dot(p, [x[0]] * 6)]
    return fastgrad.sum(h) * p[0] + fastgrad.dot(h, h) * 0.01


PARAMS = np.linspace(-0.5, 0.7, 6)
F = fastgrad.compile(program, PARAMS, np.array([0.3, -0.2, 0.5]))
# Several outputs, one of them uniform (it depends on no batched input).
G = fastgrad.compile(lambda p, x: [program(p, x), p[0] * p[1] + 1.0, (x[0] * p[2]).tanh()],
                     PARAMS, np.array([0.3, -0.2, 0.5]))


def rows_of(n, seed=0):
    return np.random.default_rng(seed).uniform(-1.5, 1.5, size=(n, 3))


def plan(n):
    return _core._batch_plan(F, PARAMS, rows_of(max(n, 1)))


def boundary_counts():
    """0, 1, around every target's tile and lane piece, around the block and
    the chunk (more than 64 blocks make chunks of several blocks), primes."""
    block = plan(100_000)["block"]
    counts = {0, 1, 2, 7, 8, 9, 31, 32, 33, block - 1, block, block + 1, 2 * block + 1,
              1009, 4099, 65537}   # primes
    for tile in TILES.values():
        counts |= {tile - 1, tile, tile + 1}
    big = plan(70 * block)
    assert big["chunk"] > block, big            # several blocks per chunk
    counts |= {70 * block + 3, 2 * big["chunk"] - 1}
    return sorted(c for c in counts if c >= 0)


COUNTS = boundary_counts()


@pytest.fixture(params=TARGETS)
def target(request):
    before = _core._set_row_kernels(request.param)
    yield request.param
    _core._set_row_kernels(before)


def loop_reference(rows):
    vals, gp, gx = [], [], []
    for r in rows:
        v, (a, b) = F.value_and_grad(PARAMS, r, argnums=(0, 1))
        vals.append(v)
        gp.append(a)
        gx.append(b)
    return np.array(vals), np.array(gp).reshape(-1, 6), np.array(gx).reshape(-1, 3)


REFERENCE = {n: loop_reference(rows_of(n)) for n in COUNTS if n <= 5000}


@pytest.mark.parametrize("threads", [1, 2, 8])
def test_every_batched_entry_point_equals_the_row_loop(target, threads):
    for n in COUNTS:
        rows = rows_of(n)
        values, (gp, gx) = F.batch_value_and_grad(PARAMS, rows, argnums=(0, 1), threads=threads)
        out = F.batch(PARAMS, rows, threads=threads)
        assert values.shape == (n,) and gp.shape == (6,) and gx.shape == (n, 3)
        np.testing.assert_array_equal(out, values)
        if n in REFERENCE:
            want_v, want_gp, want_gx = REFERENCE[n]
            np.testing.assert_array_equal(values, want_v, err_msg=f"{n} rows")
            np.testing.assert_array_equal(gx, want_gx, err_msg=f"{n} rows")
            np.testing.assert_allclose(gp, want_gp.sum(axis=0), rtol=1e-12, atol=1e-13,
                                       err_msg=f"{n} rows")
        else:   # spot checks: every row would take long
            for r in (0, n // 2, n - 1):
                v, (_, b) = F.value_and_grad(PARAMS, rows[r], argnums=(0, 1))
                assert values[r] == v
                np.testing.assert_array_equal(gx[r], b)


def test_multi_output_batches_with_a_uniform_output_equal_the_row_loop(target):
    for n in (0, 1, 33, plan(10**5)["block"] + 1):
        rows = rows_of(n, seed=3)
        for threads in (1, 2, 8):
            out = G.batch(PARAMS, rows, threads=threads)
            assert out.shape == (n, 3)
            want = np.array([G(PARAMS, r) for r in rows]).reshape(n, 3)
            np.testing.assert_array_equal(out, want)


def test_the_summed_gradient_is_the_same_bits_for_every_thread_count_and_target():
    rows = rows_of(3 * plan(10**5)["chunk"] + 17, seed=5)
    got = {}
    for name in TARGETS:
        before = _core._set_row_kernels(name)
        try:
            for threads in (1, 2, 3, 8):
                got[name, threads] = F.batch_value_and_grad(PARAMS, rows, argnums=(0, 1),
                                                            threads=threads)
        finally:
            _core._set_row_kernels(before)
    (v0, (gp0, gx0)) = next(iter(got.values()))
    for key, (v, (gp, gx)) in got.items():
        assert v.tobytes() == v0.tobytes(), key
        assert gp.tobytes() == gp0.tobytes(), key
        assert gx.tobytes() == gx0.tobytes(), key


def test_a_batched_argument_first_and_several_batched_arguments():
    f = fastgrad.compile(lambda x, p, z: (fastgrad.dot(x, p) * z[0]).tanh() + z[1] * p[0],
                         [0.1, 0.2], [0.3, 0.4], [0.5, 0.6])
    rng = np.random.default_rng(9)
    for n in (1, 17, plan(10**5)["block"] + 5):
        xs, zs = rng.normal(size=(n, 2)), rng.normal(size=(n, 2))
        p = np.array([0.7, -0.3])
        vals, (gx, gp, gz) = f.batch_value_and_grad(xs, p, zs, batch_argnums=(0, 2),
                                                    argnums=(0, 1, 2), threads=2)
        loop = [f.value_and_grad(xs[r], p, zs[r], argnums=(0, 1, 2)) for r in range(n)]
        np.testing.assert_array_equal(vals, [v for v, _ in loop])
        np.testing.assert_array_equal(gx, [g[0] for _, g in loop])
        np.testing.assert_array_equal(gz, [g[2] for _, g in loop])
        np.testing.assert_allclose(gp, np.sum([g[1] for _, g in loop], axis=0), rtol=1e-12, atol=1e-14)


def test_default_threads_follow_the_work_and_small_batches_take_one_chunk():
    assert plan(100)["nchunks"] == 1          # 100 rows never pay for a thread
    p = plan(10**6)
    assert p["nchunks"] <= 64 and p["chunk"] % p["block"] == 0
    assert p["block"] >= 64 and p["block"] % 64 == 0


def test_show_config_reports_the_selected_kernels():
    info = fastgrad.show_config(mode="dicts")
    assert info["row_kernels"] in info["row_kernel_targets"]
    assert info["row_kernel_targets"]["baseline"] is True
    assert info["row_kernel_targets"][info["row_kernels"]] is True
    # the widest target this CPU supports is the default
    assert info["row_kernels"] == TARGETS[-1]
    with pytest.raises(ValueError, match="unknown row kernels"):
        _core._set_row_kernels("sse1")


def run_child(code: str, timeout: float = 120, env=None) -> subprocess.CompletedProcess:
    """code in a fresh interpreter (a crash or a hang fails the test, not pytest)."""
    full_env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
                    OPENBLAS_NUM_THREADS="1", **(env or {}))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout, env=full_env, cwd=ROOT)


def test_an_environment_variable_forces_the_baseline_kernels():
    proc = run_child("import fastgrad; print(fastgrad.show_config(mode='dicts')['row_kernels'])",
                     env={"FASTGRAD_ROW_KERNELS": "baseline"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "baseline"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
@pytest.mark.skipif(os.environ.get("FASTGRAD_SANITIZED") == "1", reason="ASan's shadow memory inflates RSS")
def test_peak_memory_of_a_million_rows_does_not_grow_with_the_rows():
    """A 50-node tape over 1e6 rows: node x rows arrays would take 800 MB
    (values and adjoints); blocks take a few MB whatever the row count."""
    proc = run_child("""
        import numpy as np, fastgrad

        def status(key):
            with open("/proc/self/status") as f:
                return next(int(l.split()[1]) * 1024 for l in f if l.startswith(key + ":"))

        def fn(p, x):
            h = [fastgrad.dot(p[3 * k:3 * k + 2], x, p[3 * k + 2]).tanh() for k in range(8)]
            return fastgrad.dot(p[24:32], h, p[32]).relu()

        p = np.linspace(-1, 1, 33)
        f = fastgrad.compile(fn, p, [0.1, 0.2])
        rows = np.random.default_rng(0).normal(size=(1_000_000, 2))
        f.batch_value_and_grad(p, rows[:1000], threads=2)     # pool, caches, code paths warm
        base = status("VmRSS")
        with open("/proc/self/clear_refs", "w") as fh:        # resets VmHWM to the current RSS
            fh.write("5")
        values, grad = f.batch_value_and_grad(p, rows, threads=2)
        out = values.nbytes + grad.nbytes
        print(f.n_nodes, status("VmHWM") - base - out)
    """)
    assert proc.returncode == 0, proc.stderr
    nodes, growth = map(int, proc.stdout.split())
    assert nodes >= 40
    # node x rows would be nodes * 1e6 * 16 bytes; 64 MB covers the blocks,
    # per-chunk sums and allocator slack at any row count.
    assert growth < 64 * 2**20, f"peak RSS grew by {growth / 2**20:.0f} MB beyond the outputs"


CHILD_MLP = """
    import numpy as np, fastgrad

    def fn(p, x):
        h = [fastgrad.dot(p[3 * k:3 * k + 2], x[:2], p[3 * k + 2]).relu() for k in range(16)]
        return (1 + -x[2] * fastgrad.dot(p[48:64], h, p[64])).relu()

    p = np.random.default_rng(1).normal(size=65) * 0.5
    f = fastgrad.compile(fn, p, [0.1, 0.2, 1.0])
    rows = np.random.default_rng(2).normal(size=(40_000, 3))
    want = f.batch_value_and_grad(p, rows, threads=1)

    def check(got):
        assert np.array_equal(got[0], want[0])
        assert np.array_equal(got[1], want[1])
"""


@pytest.mark.skipif(not hasattr(__import__("signal"), "setitimer"), reason="needs signal.setitimer")
def test_ctrl_c_during_threaded_batches_never_leaves_a_worker_writing():
    """SIGALRM every 0.7 ms, every 8th tick raising KeyboardInterrupt inside a
    threaded batch call (at whatever point of the call the main thread is);
    every call that returns is right, nothing crashes, and the process goes on
    working.  The code before this test hung (an interrupted submit) or freed
    blocks the workers still wrote."""
    proc = run_child(CHILD_MLP + """
    import signal, time

    armed = [False]
    ticks = [0]

    def interrupt(signum, frame):
        # raises only inside a call below (disarming itself), so the loop's own
        # bookkeeping is never interrupted; every 8th tick, so calls complete too
        ticks[0] += 1
        if armed[0] and ticks[0] % 8 == 0:
            armed[0] = False
            raise KeyboardInterrupt

    signal.signal(signal.SIGALRM, interrupt)
    hits = done = 0
    end = time.monotonic() + 30.0     # a slow (sanitized) build gets longer
    signal.setitimer(signal.ITIMER_REAL, 0.0007, 0.0007)
    while time.monotonic() < end and (hits < 20 or done < 20):
        got = None
        try:
            armed[0] = True
            got = f.batch_value_and_grad(p, rows, threads=2)
            armed[0] = False
        except KeyboardInterrupt:
            hits += 1
        armed[0] = False
        if got is not None:
            check(got)
            done += 1
    signal.setitimer(signal.ITIMER_REAL, 0, 0)
    check(f.batch_value_and_grad(p, rows, threads=2))
    check((f.batch(p, rows, threads=8), want[1]))
    print(hits, done)
    """, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    hits, done = map(int, proc.stdout.split())
    assert hits >= 5 and done >= 5       # the signal did land, many times, and calls completed


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_runs_threaded_batches_after_the_parent_used_the_pool():
    proc = run_child(CHILD_MLP + """
    import os, time
    check(f.batch_value_and_grad(p, rows, threads=2))        # the parent's pool has threads now
    pid = os.fork()
    if pid == 0:
        try:
            check(f.batch_value_and_grad(p, rows, threads=2))
            check(f.batch_value_and_grad(p, rows))
            os._exit(0)
        except BaseException:
            os._exit(3)
    deadline = time.monotonic() + 60
    while True:
        wpid, status = os.waitpid(pid, os.WNOHANG)
        if wpid:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            print("hung")
            raise SystemExit(1)
        time.sleep(0.01)
    check(f.batch_value_and_grad(p, rows, threads=2))         # and the parent still works
    print(os.waitstatus_to_exitcode(status))
    """, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert proc.stdout.strip() == "0"


def test_nothing_python_callable_takes_addresses():
    """f._chunk(0, 0, 0, 1, 0, 1) used to write through address 0.  No
    underscore method of Function or of the batch job accepts integers, and a
    job made from Python does nothing when run."""
    proc = run_child("""
        import fastgrad
        from fastgrad import _core
        f = fastgrad.compile(lambda a, b: fastgrad.dot(a, b), [1.0, 2.0], [3.0, 4.0])
        accepted = []
        for cls, obj in ((_core.Function, f), (_core._BatchJob, None)):
            for name in dir(cls):
                if not name.startswith("_") or name.startswith("__"):
                    continue
                attr = getattr(obj if obj is not None else cls, name)
                if not callable(attr):
                    continue
                try:
                    attr(0, 0, 0, 1, 0, 1)
                except TypeError:
                    continue
                accepted.append(f"{cls.__name__}.{name}")
        try:
            _core._BatchJob()
            accepted.append("_BatchJob()")
        except TypeError:
            pass
        job = _core._BatchJob.__new__(_core._BatchJob)
        assert job.run() is None          # never opened: touches nothing
        for name in ("run",):
            try:
                getattr(job, name)(0, 0, 0, 1, 0, 1)
                accepted.append(name + "(ints)")
            except TypeError:
                pass
        print(accepted)
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def unaligned(a, offset):
    """a's doubles in a C-contiguous view at `offset` bytes past an aligned one."""
    raw = bytearray(offset) + np.ascontiguousarray(a, dtype=np.float64).tobytes()
    out = np.frombuffer(raw, dtype=np.float64, offset=offset, count=a.size).reshape(a.shape)
    assert not out.flags.aligned and out.flags.c_contiguous
    return out


@pytest.mark.parametrize("offset", [1, 4, 7])
def test_unaligned_inputs_give_the_aligned_results(offset):
    """A C-contiguous float64 view at an odd byte offset (distributed's
    out-of-band pickle frames give one: rows a Dask worker fetched from another)
    is read in place by the batch kernels, with memcpy, and copied aligned for
    the others; never loaded as a misaligned double (under UBSan,
    tools/sanitize.sh, such a load aborts)."""
    def loss(w, x):
        return fastgrad.sum([wi * xi for wi, xi in zip(w, x)]).tanh()

    f = fastgrad.compile(loss, [0.5, -0.25, 1.0], [1.0, 2.0, 3.0])
    w = np.array([0.3, -0.1, 0.7])
    xs = np.random.default_rng(3).normal(size=(300, 3))
    uw, uxs = unaligned(w, offset), unaligned(xs, offset)
    want_v, want_g = f.batch_value_and_grad(w, xs)
    for a, b in ((uw, xs), (w, uxs), (uw, uxs)):
        got_v, got_g = f.batch_value_and_grad(a, b)
        assert np.array_equal(want_v, got_v) and np.array_equal(want_g, got_g)
        assert np.array_equal(f.batch(a, b), want_v)
        gv, gg = f.batch_value_and_grad(a, b, argnums=1)
        assert np.array_equal(gv, want_v)
        np.testing.assert_array_equal(gg, f.batch_value_and_grad(w, xs, argnums=1)[1])
    assert f(uw, xs[0]) == f(w, xs[0])
    assert f(w, uxs[0]) == f(w, xs[0])


@pytest.mark.parametrize("rows", [1, 100, 100_000])
def test_the_batch_workspace_is_aligned_to_a_cache_line(rows):
    """Every node row of the workspace starts on a cache line (block rows are
    whole tiles), so no vector load of the row kernels spans two.  malloc's
    16-byte alignment made a batch 30-40% slower depending on where its
    workspace landed: always where the allocator maps large blocks afresh
    (Dask workers set MALLOC_TRIM_THRESHOLD_), at random elsewhere."""
    f = fastgrad.compile(program, PARAMS, np.array([0.3, -0.2, 0.5]))
    assert _core._batch_ws_misalignment(f) == -1
    for reverse in (True, False):
        if reverse:
            f.batch_value_and_grad(PARAMS, rows_of(rows))
        else:
            f.batch(PARAMS, rows_of(rows))
        assert _core._batch_ws_misalignment(f) == 0
        assert plan(rows)["block"] % 64 == 0 or plan(rows)["block"] == rows
