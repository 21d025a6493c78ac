"""Batched replay over Dask arrays (docs/design.md, "Beyond one machine").

Dask arrays in, Dask arrays out: per-row values equal the numpy call exactly, the
gradient summed over rows (a tree reduction) within 1e-12 relative, on the
threaded and processes schedulers and on a real dask.distributed LocalCluster
of two worker processes, one of which is killed mid-computation in one test.
"""

import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")
distributed = pytest.importorskip("distributed")

import fastgrad  # noqa: E402
from fastgrad.nn import MLP  # noqa: E402
from fastgrad.nn import mlp_hinge_loss as sample_loss  # noqa: E402
from fastgrad.nn import mlp_score as mlp  # noqa: E402

TIMEOUT = 180            # seconds: generous, for a loaded 2-core machine


def make_rows(n, seed=0):
    rng = np.random.default_rng(seed)
    return np.column_stack([rng.normal(size=(n, 2)), rng.choice([-1.0, 1.0], n)])


random.seed(1337)
PARAMS = np.array([p.data for p in MLP(2, [16, 16, 1]).parameters()])
ROWS = make_rows(10_007)
LOSS = fastgrad.compile(sample_loss, PARAMS, ROWS[0])
WANT_VALUES, WANT_GRAD = LOSS.batch_value_and_grad(PARAMS, ROWS)


def assert_same(values, grad, want_values=WANT_VALUES, want_grad=WANT_GRAD):
    """Values exactly equal; gradients within 1e-12 relative (summed in another order)."""
    assert isinstance(values, np.ndarray) and values.dtype == np.float64
    np.testing.assert_array_equal(values, want_values)
    assert grad.shape == want_grad.shape
    assert np.abs(grad - want_grad).max() <= 1e-12 * np.abs(want_grad).max()


@pytest.fixture(scope="module")
def client():
    """Two worker processes of one thread each, on the loopback interface."""
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       host="127.0.0.1", dashboard_address="127.0.0.1:0")
    c = distributed.Client(cluster, set_as_default=False)
    try:
        c.wait_for_workers(2, timeout=TIMEOUT)
        yield c
    finally:
        c.close()
        cluster.close()


CHUNKINGS = {
    "one chunk": (-1, -1),
    "two chunks": (5004, -1),
    "many chunks": (300, -1),
    "uneven last chunk": (1000, -1),        # 10 chunks of 1000 and one of 7
    "rows split across chunks": (2000, 1),  # rechunked to whole rows
}


@pytest.mark.parametrize("chunks", CHUNKINGS.values(), ids=CHUNKINGS.keys())
def test_distributed_values_and_gradient_equal_one_process(client, chunks):
    X = da.from_array(ROWS, chunks=chunks)
    values, grad = LOSS.batch_value_and_grad(PARAMS, X)
    assert isinstance(values, da.Array) and isinstance(grad, da.Array)
    assert values.shape == (len(ROWS),) and grad.shape == PARAMS.shape
    assert values.chunks[0] == X.chunks[0]                 # chunked like the rows
    assert_same(*client.compute([values, grad], sync=True))


@pytest.mark.parametrize("scheduler", ["threads", "processes", "synchronous"])
def test_local_schedulers_give_the_same_results(scheduler):
    X = da.from_array(ROWS, chunks=(2500, -1))
    values, grad = LOSS.batch_value_and_grad(PARAMS, X)
    kw = {"num_workers": 2} if scheduler == "processes" else {}
    assert_same(*dask.compute(values, grad, scheduler=scheduler, **kw))


def test_kernel_threads_per_chunk_may_be_asked_for():
    X = da.from_array(ROWS, chunks=(5004, -1))
    values, grad = LOSS.batch_value_and_grad(PARAMS, X, threads=2)
    assert_same(*dask.compute(values, grad, scheduler="threads"))


def test_compute_of_values_and_gradient_replays_each_chunk_once():
    from dask.callbacks import Callback

    ran = []

    class Count(Callback):
        def _pretask(self, key, dsk, state):
            ran.append(key[0] if isinstance(key, tuple) else key)

    X = da.from_array(ROWS, chunks=(1000, -1))
    values, grad = LOSS.batch_value_and_grad(PARAMS, X)
    assert not ran                                          # lazy: nothing ran yet
    with Count():
        got = dask.compute(values, grad, scheduler="threads")
    assert_same(*got)
    assert sum(k.startswith("fastgrad-vg-") for k in ran) == X.numblocks[0] == 11


def test_gradient_is_a_tree_reduction_not_one_gather():
    from dask.core import get_dependencies

    X = da.from_array(ROWS, chunks=(100, -1))               # 101 chunks
    _, grad = LOSS.batch_value_and_grad(PARAMS, X)
    graph = dict(grad.__dask_graph__())
    # The 101 per-chunk partial sums are combined by tasks of at most split_every (8)
    # inputs, level by level (101 -> 13 -> 2 -> 1); no task reads every chunk.
    fan_in = [len(get_dependencies(graph, k)) for k in graph if str(k).startswith("('sum-")]
    assert max(fan_in) <= 8
    assert sum(n > 1 for n in fan_in) >= 101 // 8 + 1
    assert_same(WANT_VALUES, grad.compute(scheduler="threads"))


def test_per_row_gradient_of_a_batched_argument_is_chunked_like_the_rows(client):
    X = da.from_array(ROWS, chunks=(3000, -1))
    values, (gp, grows) = LOSS.batch_value_and_grad(PARAMS, X, argnums=(0, 1))
    assert grows.shape == ROWS.shape and grows.chunks == ((3000, 3000, 3000, 1007), (3,))
    want_values, (want_gp, want_rows) = LOSS.batch_value_and_grad(PARAMS, ROWS, argnums=(0, 1))
    v, p, r = client.compute([values, gp, grows], sync=True)
    assert_same(v, p, want_values, want_gp)
    np.testing.assert_array_equal(r, want_rows)             # per row: nothing summed


def test_shared_argument_may_be_a_dask_array():
    X = da.from_array(ROWS, chunks=(4000, -1))
    P = da.from_array(PARAMS, chunks=100)                   # several chunks: made one
    values, grad = LOSS.batch_value_and_grad(P, X)
    assert_same(*dask.compute(values, grad, scheduler="threads"))


def test_batch_of_one_and_of_several_outputs():
    score = fastgrad.compile(mlp, PARAMS, ROWS[0, :2])
    X = da.from_array(ROWS[:, :2], chunks=(999, -1))
    out = score.batch(PARAMS, X)
    assert isinstance(out, da.Array) and out.chunks[0] == X.chunks[0]
    np.testing.assert_array_equal(out.compute(scheduler="threads"), score.batch(PARAMS, ROWS[:, :2]))

    two = fastgrad.compile(lambda p, x: [mlp(p, x), mlp(p, x).relu()], PARAMS, ROWS[0, :2])
    out = two.batch(PARAMS, X)
    assert out.shape == (len(ROWS), 2) and out.chunks == (X.chunks[0], (2,))
    np.testing.assert_array_equal(out.compute(scheduler="threads"), two.batch(PARAMS, ROWS[:, :2]))


def test_unknown_row_counts_are_handled():
    X = da.from_array(ROWS, chunks=(2000, -1))
    keep = X[X[:, 0] > 0]                                   # rows known only once computed
    assert np.isnan(keep.shape[0])
    values, grad = LOSS.batch_value_and_grad(PARAMS, keep)
    mask = ROWS[:, 0] > 0
    assert_same(*dask.compute(values, grad, scheduler="threads"),
                *LOSS.batch_value_and_grad(PARAMS, ROWS[mask]))


def test_function_travels_once_per_worker_not_once_per_chunk(client):
    X = da.from_array(ROWS, chunks=(400, -1))               # 26 chunks for 2 workers
    values, grad = LOSS.batch_value_and_grad(PARAMS, X)
    graph = dict(grad.__dask_graph__())
    assert sum(str(k).startswith("fastgrad-function-") for k in graph) == 1     # one key
    before = client.run(lambda: fastgrad._core._states_loaded)
    with distributed.get_task_stream(client) as ts:
        got = client.compute([values, grad], sync=True)
    after = client.run(lambda: fastgrad._core._states_loaded)
    assert_same(*got)
    chunks_on = {}
    for rec in ts.data:
        if str(rec["key"]).startswith("('fastgrad-vg-"):
            chunks_on[rec["worker"]] = chunks_on.get(rec["worker"], 0) + 1
    assert sum(chunks_on.values()) == X.numblocks[0]
    for worker, n in chunks_on.items():
        assert after[worker] - before[worker] == 1, (worker, n, before, after)
    assert max(chunks_on.values()) > 1                      # so once per chunk would show


def _resident_ids():
    from fastgrad import _dask

    return {token: id(f) for token, f in _dask._resident.items()}


def test_workers_replay_a_resident_copy_from_one_computation_to_the_next(client):
    from dask.base import tokenize

    X = da.from_array(ROWS, chunks=(1000, -1))
    seen = []
    for _ in range(2):
        before = client.run(lambda: fastgrad._core._states_loaded)
        assert_same(*client.compute(list(LOSS.batch_value_and_grad(PARAMS, X)), sync=True))
        after = client.run(lambda: fastgrad._core._states_loaded)
        assert all(after[w] - before[w] <= 1 for w in after)   # still sent once per computation
        seen.append(client.run(_resident_ids))
    token = tokenize(LOSS)
    holders = [w for w in seen[1] if token in seen[1][w] and token in seen[0].get(w, {})]
    assert holders
    for w in holders:                                       # the same object both times
        assert seen[0][w][token] == seen[1][w][token]


def test_function_tokenizes_by_its_arrays():
    from dask.base import tokenize

    again = pickle.loads(pickle.dumps(LOSS))
    assert again is not LOSS and tokenize(again) == tokenize(LOSS)
    other = fastgrad.compile(sample_loss, PARAMS, ROWS[1])   # same graph, same tape
    assert tokenize(other) == tokenize(LOSS)
    assert tokenize(fastgrad.compile(lambda p, r: sample_loss(p, r) * 2, PARAMS, ROWS[0])) != tokenize(LOSS)


def _slow(block):
    # Makes each chunk take a while, deterministically, so a worker can be killed
    # with most of the computation still to run (never a timing assertion).
    time.sleep(0.15)
    return block


def test_a_worker_killed_mid_computation_changes_nothing(client):
    X = da.from_array(ROWS, chunks=(400, -1)).map_blocks(_slow, dtype=np.float64)
    values, grad = LOSS.batch_value_and_grad(PARAMS, X)
    pids = client.run(os.getpid)
    victim = sorted(pids)[0]
    futures = client.compute([values, grad])
    deadline = time.monotonic() + TIMEOUT
    while True:                                             # until the victim holds 2 chunks' values
        held = client.has_what().get(victim, ())
        if sum(str(k).startswith("('fastgrad-values-") for k in held) >= 2:
            break
        assert not all(f.done() for f in futures), "finished before a worker could be killed"
        assert time.monotonic() < deadline, "no chunk finished on the worker to kill"
        time.sleep(0.01)
    assert not all(f.done() for f in futures)               # killed mid-computation
    os.kill(pids[victim], signal.SIGKILL)
    assert_same(*[f.result(timeout=TIMEOUT) for f in futures])
    client.wait_for_workers(2, timeout=TIMEOUT)             # the nanny restarts it
    assert pids[victim] not in client.run(os.getpid).values()


# ---------------------------------------------------------------- bad input

def same_error(call_dask, call_numpy):
    """Both raise the same exception type with the same message (the argument's
    type name aside), and the Dask one at the call, before anything runs."""
    with pytest.raises((TypeError, ValueError)) as want:
        call_numpy()
    with pytest.raises(want.type) as got:
        call_dask()
    assert str(got.value).replace("Array", "ndarray") == str(want.value)
    return str(got.value)


def test_bad_input_raises_at_the_call_as_numpy_input_does():
    X = da.from_array(ROWS, chunks=(1000, -1))
    f = LOSS
    cases = [
        # row length differs from the traced length
        (lambda: f.batch_value_and_grad(PARAMS, X[:, :2]), lambda: f.batch_value_and_grad(PARAMS, ROWS[:, :2])),
        # wrong dimensionality
        (lambda: f.batch_value_and_grad(PARAMS, X[:, 0]), lambda: f.batch_value_and_grad(PARAMS, ROWS[:, 0])),
        (lambda: f.batch(PARAMS, X[None]), lambda: f.batch(PARAMS, ROWS[None])),
        (lambda: f.batch(da.from_array(ROWS[:, :2]), X, batch_argnums=(1,)),
         lambda: f.batch(ROWS[:, :2], ROWS, batch_argnums=(1,))),
        # non-numeric dtype
        (lambda: f.batch_value_and_grad(PARAMS, X.astype(object)),
         lambda: f.batch_value_and_grad(PARAMS, ROWS.astype(object))),
        (lambda: f.batch(PARAMS, X.astype(str)), lambda: f.batch(PARAMS, ROWS.astype(str))),
        # batched arguments of different row counts
        (lambda: f.batch(da.from_array(np.ones((5, 337))), X, batch_argnums=(0, 1)),
         lambda: f.batch(np.ones((5, 337)), ROWS, batch_argnums=(0, 1))),
        # no batched argument, wrong argument count, bad argnums, bad threads
        (lambda: f.batch(PARAMS, X, batch_argnums=()), lambda: f.batch(PARAMS, ROWS, batch_argnums=())),
        (lambda: f.batch_value_and_grad(X), lambda: f.batch_value_and_grad(ROWS)),
        (lambda: f.batch_value_and_grad(PARAMS, X, argnums=2), lambda: f.batch_value_and_grad(PARAMS, ROWS, argnums=2)),
        (lambda: f.batch(PARAMS, X, threads=0), lambda: f.batch(PARAMS, ROWS, threads=0)),
    ]
    messages = [same_error(*case) for case in cases]
    assert "traced with length 3" in messages[0] and "must be 2-D" in messages[1]
    assert "must hold real numbers" in messages[4]


def test_several_outputs_refused_by_value_and_grad_as_for_numpy():
    two = fastgrad.compile(lambda p, r: [sample_loss(p, r), sample_loss(p, r)], PARAMS, ROWS[0])
    X = da.from_array(ROWS, chunks=(1000, -1))
    same_error(lambda: two.batch_value_and_grad(PARAMS, X), lambda: two.batch_value_and_grad(PARAMS, ROWS))


def test_unknown_chunk_sizes_that_cannot_be_matched_are_refused_clearly():
    X = da.from_array(ROWS, chunks=(2000, -1))
    keep = X[X[:, 0] > 0]
    wide = keep[:, [0] * 337]                               # (nan, 337): one row count unknown twice
    with pytest.raises(ValueError, match=r"argument 0 has an unknown number of rows.*compute_chunk_sizes"):
        LOSS.batch(wide, keep, batch_argnums=(0, 1))
    cols = X[:, X[0] > 0]                                   # rows of unknown length
    assert np.isnan(cols.shape[1])
    with pytest.raises(ValueError, match=r"argument 1 has rows of unknown length.*compute_chunk_sizes"):
        LOSS.batch_value_and_grad(PARAMS, cols)


# ---------------------------------------------------------------- without Dask

def test_fastgrad_imports_and_batches_without_dask():
    """Dask blocked from importing: fastgrad imports, numpy batches run, and
    a numpy call never imports the Dask layer."""
    import fastgrad as fg

    code = (
        "import sys\n"
        "sys.modules['dask'] = None; sys.modules['distributed'] = None\n"
        "import numpy as np, fastgrad\n"
        "f = fastgrad.compile(lambda p, r: fastgrad.dot(p, r), [1.0, 2.0], [3.0, 4.0])\n"
        "v, g = f.batch_value_and_grad([1.0, 2.0], np.ones((5, 2)))\n"
        "assert v.tolist() == [3.0] * 5 and g.tolist() == [5.0, 5.0]\n"
        "assert 'fastgrad._dask' not in sys.modules\n"
        "print('ok')\n"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(fg.__file__).parent.parent), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT,
                          env=env)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
