"""Threads (docs/design.md sections 2 and 4): a graph is usable from any thread (ops,
backward(), grad(), dropping handles), sweeps run with the GIL released while
other threads' ops on that graph wait, Functions may be called from several
threads at once.  (Before 0.2 a graph belonged to the thread that made it and
other threads got RuntimeError; these tests assert the shared contract.)

Every result computed while other threads run must equal, bit for bit, the
same computation done alone: the kernels are deterministic, so any
difference is a race.
"""

from __future__ import annotations

import functools
import threading
from typing import Any, Callable

import numpy as np
import pytest

import fastgrad
from fastgrad import Value

PARAMS = np.random.default_rng(7).normal(size=2 * 16 + 16 + 16 + 1) * 0.5
ROWS = np.random.default_rng(8).normal(size=(512, 3))


def mlp(p: list, x: list) -> Any:
    """2-16-1 MLP: p holds 16 (w0, w1, b) triples, then 16 weights and a bias."""
    hidden = [fastgrad.dot(p[3 * k:3 * k + 2], x, p[3 * k + 2]).tanh() for k in range(16)]
    return fastgrad.dot(p[48:64], hidden, p[64])


def row_loss(p: list, row: list) -> Any:
    return (1.0 + -row[2] * mlp(p, row[:2])).relu()


FUNCTION = fastgrad.compile(row_loss, PARAMS, ROWS[0])


def dynamic_step(seed: int) -> tuple:
    """One micrograd-style step in this thread's own graph, big enough
    (about 4k nodes) that backward() and grad() release the GIL."""
    rng = np.random.default_rng(seed)
    rows = rng.normal(size=(100, 3))
    with fastgrad.Graph() as g:
        params = [Value(float(x)) for x in PARAMS]
        losses = [row_loss(params, [Value(float(v)) for v in r]) for r in rows]
        total = fastgrad.sum(losses) * (1.0 / len(losses))
        total.backward()
        grads = [p.grad for p in params]
        again = fastgrad.grad(total, params[:5])
        assert g.stats()["live_nodes"] > 2048
    return total.data, grads, again


def batch_step(threads: int) -> tuple:
    values, grad = FUNCTION.batch_value_and_grad(PARAMS, ROWS, batch_argnums=(1,), threads=threads)
    v1, g1 = FUNCTION.value_and_grad(PARAMS, ROWS[3])
    return values.tolist(), grad.tolist(), v1, g1.tolist()


def run_concurrently(jobs: list[Callable[[], Any]], rounds: int) -> list[list]:
    """Runs every job `rounds` times, each in its own thread, all released at
    once; returns each job's results.  Exceptions in a thread fail the test."""
    results: list[list] = [[] for _ in jobs]
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(jobs))

    def worker(k: int) -> None:
        try:
            barrier.wait()
            for _ in range(rounds):
                results[k].append(jobs[k]())
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


@pytest.mark.parametrize("n", [1, 2, 8])
def test_threads_building_graphs_beside_batched_replay_match_single_threaded(n):
    seeds = list(range(n))
    want_dynamic = {s: dynamic_step(s) for s in seeds}
    want_batch = batch_step(2)
    # n threads differentiate their own graphs while n others run batched
    # replay split over 2 pool threads, every one with the GIL released.
    jobs: list[Callable[[], Any]] = [functools.partial(dynamic_step, s) for s in seeds]
    jobs += [functools.partial(batch_step, 2) for _ in range(n)]
    results = run_concurrently(jobs, rounds=2)
    for s, got in zip(seeds, results[:n]):
        assert all(r == want_dynamic[s] for r in got)
    for got in results[n:]:
        assert all(r == want_batch for r in got)


def test_concurrent_batches_with_different_thread_counts():
    """Regression: a call asking for more pool threads used to shut the
    shared pool down under a call that was submitting to it
    (RuntimeError: cannot schedule new futures after shutdown)."""
    counts = [2, 3, 5, 8, 2, 4]
    want = {t: batch_step(t) for t in set(counts)}
    results = run_concurrently([functools.partial(batch_step, t) for t in counts], rounds=20)
    for t, got in zip(counts, results):
        assert all(r == want[t] for r in got)


def test_batch_thread_counts_agree_with_one_thread():
    values1, grad1 = FUNCTION.batch_value_and_grad(PARAMS, ROWS, threads=1)
    for t in (2, 3, 8, 64, 10_000):
        values, grad = FUNCTION.batch_value_and_grad(PARAMS, ROWS, threads=t)
        assert np.array_equal(values, values1)       # rows are independent: exact
        np.testing.assert_allclose(grad, grad1, rtol=1e-12, atol=1e-12)   # summed per chunk


@pytest.mark.parametrize("rows, threads", [(2, 2), (3, 2), (5, 4), (7, 7)])
def test_one_row_chunks_of_a_batch(rows, threads):
    """Regression: a chunk of one row took the single-row kernel path, which
    ignores the batch stride, and gave wrong values and gradients."""
    block = ROWS[:rows]
    values, grads = FUNCTION.batch_value_and_grad(PARAMS, block, batch_argnums=(1,),
                                                  argnums=(0, 1), threads=threads)
    for r in range(rows):
        v, (gp, gx) = FUNCTION.value_and_grad(PARAMS, block[r], argnums=(0, 1))
        assert values[r] == v
        np.testing.assert_array_equal(grads[1][r], gx)
    want = sum(FUNCTION.value_and_grad(PARAMS, block[r])[1] for r in range(rows))
    np.testing.assert_allclose(grads[0], want, rtol=1e-12, atol=1e-14)


def test_one_function_called_from_many_threads():
    """value_and_grad shares a cached workspace: a second caller gets its own."""
    xs = ROWS[:16]
    want = [FUNCTION.value_and_grad(PARAMS, r) for r in xs]

    def job(k: int) -> Callable[[], Any]:
        return lambda: FUNCTION.value_and_grad(PARAMS, xs[k])

    results = run_concurrently([job(k) for k in range(8)], rounds=50)
    for k, got in enumerate(results):
        for v, g in got:
            assert v == want[k][0] and np.array_equal(g, want[k][1])


def test_handles_dropped_from_a_foreign_thread_while_the_owner_runs_a_big_backward():
    """The dropped uses are handed back to the owner, which frees them at its
    next op: never while its sweep runs with the GIL released."""
    overlapped = 0
    for _ in range(5):
        with fastgrad.Graph() as g:
            xs = [Value(0.001 * i) for i in range(3000)]
            doomed = [x * 2.0 + 1.0 for x in xs]          # 2 nodes each, dropped elsewhere
            y = fastgrad.sum(xs)
            for _ in range(400_000):                      # a long chain: a slow backward
                y = y * 1.0 + 0.0
            live_before = g.stats()["live_nodes"]
            started, done = threading.Event(), threading.Event()
            dropped_during: list[int] = []

            def drop() -> None:
                started.wait()
                count = 0
                while doomed:
                    doomed.pop()
                    count += not done.is_set()
                dropped_during.append(count)

            t = threading.Thread(target=drop)
            t.start()
            started.set()
            y.backward()          # > 2048 live nodes: the GIL is released
            done.set()
            t.join()
            overlapped += dropped_during[0] > 0
            assert all(x.grad == 1.0 for x in xs)
            # The owner's next op (stats counts as one) frees the handed-back nodes.
            assert g.stats()["live_nodes"] == live_before - 2 * len(xs)
            z = xs[0] * 3.0
            assert z.data == 0.0
            del y, z
            assert g.stats()["live_nodes"] == len(xs)
    assert overlapped, "the foreign thread never dropped a handle during a backward"


def test_ops_on_a_graph_from_another_thread_work_and_leave_it_intact():
    with fastgrad.Graph() as g:
        x = Value(2.0)
        y = x * x
    got: dict = {}

    def other() -> None:
        got["add"] = (x + 1).data
        y.backward()
        got["grad"] = fastgrad.grad(y, x)
        got["sum"] = fastgrad.sum([x, y]).data
        got["max"] = fastgrad.maximum(x, 1.0).data

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert got == {"add": 3.0, "grad": 4.0, "sum": 6.0, "max": 2.0}
    assert x.grad == 4.0
    assert g.stats()["live_nodes"] == 2


def build_model(seed: int = 3) -> Any:
    import random

    from fastgrad.nn import MLP
    random.seed(seed)
    return MLP(3, [8, 8, 1])


def forward_and_grad(model: Any, rows: np.ndarray) -> tuple:
    """Forward over the rows and d loss / d parameters via grad() (no .grad touched)."""
    params = model.parameters()
    loss = fastgrad.sum([(1.0 + -float(r[2]) * model([float(r[0]), float(r[1]), 1.0])).relu()
                         for r in rows]) * (1.0 / len(rows))
    return loss.data, fastgrad.grad(loss, params)


def test_eight_threads_sharing_a_model_equal_the_sequential_results():
    model = build_model()
    batches = [np.random.default_rng(k).normal(size=(40, 3)) for k in range(8)]
    want = [forward_and_grad(model, b) for b in batches]
    results = run_concurrently([functools.partial(forward_and_grad, model, b) for b in batches],
                               rounds=3)
    for k, got in enumerate(results):
        assert all(r == want[k] for r in got)


def train(model: Any, steps: int) -> list:
    rows = ROWS[:60]
    losses = []
    for _ in range(steps):
        model.zero_grad()
        loss = fastgrad.sum([(1.0 + -float(r[2]) * model([float(r[0]), float(r[1]), 1.0])).relu()
                             for r in rows]) * (1.0 / len(rows))
        loss.backward()
        for p in model.parameters():
            p.data -= 0.05 * p.grad
        losses.append(loss.data)
    return losses


def test_a_thread_trains_a_model_built_in_another():
    want = train(build_model(), 5)
    model = build_model()            # built here, in the main thread
    box: list = []
    t = threading.Thread(target=lambda: box.append(train(model, 5)))
    t.start()
    t.join()
    assert box == [want]
    assert [p.data for p in model.parameters()] == [p.data for p in _trained(5).parameters()]


def _trained(steps: int) -> Any:
    m = build_model()
    train(m, steps)
    return m


def test_overlapping_backward_calls_on_one_big_graph_from_many_threads():
    """Each backward() holds the graph while its sweep runs with the GIL
    released; the others wait, so every one computes the same numbers."""
    with fastgrad.Graph():
        xs = [Value(0.001 * i) for i in range(3000)]
        outs = [fastgrad.sum([(x * (k + 1.0)).tanh() for x in xs]) for k in range(4)]
    want = []
    for o in outs:
        for x in xs:
            x.grad = 0.0
        o.backward()
        want.append([x.grad for x in xs])

    def job(k: int) -> list:
        return fastgrad.grad(outs[k], xs)

    results = run_concurrently([functools.partial(job, k % 4) for k in range(8)], rounds=3)
    for k, got in enumerate(results):
        assert all(r == want[k % 4] for r in got)


def test_reinit_from_another_thread_during_a_running_backward_is_refused():
    """Value.__init__ on a live Value raises TypeError: it can never free a
    node under a sweep (issue #10 freed it directly, from any thread)."""
    with fastgrad.Graph() as g:
        xs = [Value(0.001 * i) for i in range(2000)]
        y = fastgrad.sum(xs)
        for _ in range(200_000):
            y = y * 1.0 + 0.0
        looping, done = threading.Event(), threading.Event()
        refused: list = []
        accepted: list = []

        def reinit() -> None:
            looping.set()
            while True:
                try:
                    xs[5].__init__(7.0)
                except TypeError:
                    refused.append(1)
                else:
                    accepted.append(1)
                if done.is_set():
                    break

        t = threading.Thread(target=reinit)
        t.start()
        looping.wait()
        y.backward()
        done.set()
        t.join()
        assert refused and not accepted
        assert all(x.grad == 1.0 for x in xs)
        assert xs[5].data == 0.005
        live = g.stats()["live_nodes"]
        del y
        assert g.stats()["live_nodes"] == len(xs)
        assert live > len(xs)


def test_no_per_thread_state_outlives_its_thread():
    """A thread that entered a graph and never left it (it ended inside the
    block) keeps nothing alive once it is gone."""
    import gc
    import weakref

    box: list = []

    def work() -> None:
        g = fastgrad.Graph()
        g.__enter__()
        x = Value(1.0)
        (x * 2.0).backward()
        box.append(weakref.ref(g))

    t = threading.Thread(target=work)
    t.start()
    t.join()
    del t
    gc.collect()
    assert box[0]() is None


def test_a_pool_interrupted_while_its_threads_start_leaves_no_thread_behind(monkeypatch):
    """Ctrl-C inside Thread.start() (Python code: it waits for the new thread)
    while a batch starts the pool: the thread may already run.  It must still
    be told to stop when the half-made pool is dropped; it was left waiting
    on a queue nobody fed, one thread per such interrupt."""
    import gc
    import time

    from fastgrad import _core

    f = fastgrad.compile(lambda p, x: fastgrad.dot(p, x).tanh(), [0.5, -0.5], [1.0, 2.0])
    rows = np.ones((4000, 2))
    real_start = threading.Thread.start
    started: list[threading.Thread] = []

    def start_then_interrupt(self: threading.Thread) -> None:
        real_start(self)
        started.append(self)
        if len(started) == 2:
            raise KeyboardInterrupt

    _core._forget_thread_pool()
    gc.collect()
    monkeypatch.setattr(threading.Thread, "start", start_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        f.batch([0.5, -0.5], rows, threads=4)
    monkeypatch.undo()
    gc.collect()
    # The threads this pool started, not a count of all threads: another
    # test's thread may end (or a library's start) meanwhile.
    assert len(started) == 2
    deadline = time.monotonic() + 30
    while any(t.is_alive() for t in started) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(t.is_alive() for t in started)
    assert np.allclose(f.batch([0.5, 0.25], rows, threads=2), np.tanh(0.75))
