"""Train the demo MLP on 1e7 two-moons rows stored as a Dask array, on a cluster.

The per-sample loss is traced once into a Function.  Each epoch is one
`batch_value_and_grad` over every row, a Dask computation: each chunk of rows
replays on a worker (the Function reaches each worker once, as plain arrays),
the gradient comes back as a tree reduction of per-chunk sums, and a
fastgrad.optim step updates the parameters here.  The rows never leave the
workers.

    python examples/dask_training.py                       # LocalCluster, 2 workers, 1e7 rows
    python examples/dask_training.py --rows 100000 --epochs 3
    python examples/dask_training.py --scheduler tcp://scheduler:8786   # a real cluster

Needs `pip install "fastgrad[dask]"`.
"""

from __future__ import annotations

import argparse
import random
import time

import dask
import dask.array as da
import numpy as np
from distributed import Client, LocalCluster, wait

import fastgrad
from fastgrad.nn import MLP, mlp_hinge_loss, mlp_score
from fastgrad.optim import Adam

def moons(rows: int, chunk: int, noise: float = 0.1, seed: int = 1337) -> da.Array:
    """(x0, x1, label) rows of two interleaving half circles, made chunk by chunk
    on the workers (fastgrad.datasets.make_moons, as a Dask array)."""
    rng = da.random.default_rng(seed)
    t = rng.uniform(0.0, np.pi, size=rows, chunks=chunk)
    label = rng.integers(0, 2, size=rows, chunks=chunk) * 2.0 - 1.0       # -1 outer, 1 inner
    x0 = da.where(label < 0, da.cos(t), 1.0 - da.cos(t)) + rng.normal(scale=noise, size=rows, chunks=chunk)
    x1 = da.where(label < 0, da.sin(t), 0.5 - da.sin(t)) + rng.normal(scale=noise, size=rows, chunks=chunk)
    return da.stack([x0, x1, label], axis=1)        # chunks (chunk, 1): fastgrad rechunks to whole rows


def main(rows: int, epochs: int, chunk: int, scheduler: str | None, workers: int) -> float:
    if scheduler:
        client = Client(scheduler)
        cluster = None
    else:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address="127.0.0.1:0")
        client = Client(cluster)
    try:
        n = len(client.scheduler_info()["workers"])
        print(f"cluster: {n} worker{'s' if n != 1 else ''} at {client.scheduler_info()['address']}")
        start = time.perf_counter()
        data = moons(rows, chunk).persist()          # the rows stay on the workers
        wait(data)
        print(f"made {rows:,} rows on the workers in {time.perf_counter() - start:.1f} s")
        random.seed(1337)
        params = np.array([p.data for p in MLP(2, [16, 16, 1]).parameters()])
        loss_fn = fastgrad.compile(mlp_hinge_loss, params, np.zeros(3))
        print(f"traced: {loss_fn}\ntraining on {rows:,} rows in {data.numblocks[0]} chunks, {epochs} epochs")

        opt = Adam(params, lr=0.05)                  # updates params in place
        loss = float("nan")
        for epoch in range(epochs):
            start = time.perf_counter()
            losses, grad = loss_fn.batch_value_and_grad(params, data)   # Dask arrays, lazy
            total, grad_sum = dask.compute(losses.sum(), grad)          # one pass over the rows
            loss = float(total) / rows + 1e-4 * float(params @ params)
            opt.step(grad_sum / rows + 2e-4 * params)                   # the mean, and the L2 term
            print(f"epoch {epoch + 1:3d}/{epochs}  loss {loss:.6f}  {time.perf_counter() - start:.2f} s",
                  flush=True)

        score = fastgrad.compile(mlp_score, params, np.zeros(2))
        correct = (score.batch(params, data[:, :2]) > 0) == (data[:, 2] > 0)
        print(f"accuracy {float(correct.mean().compute()):.1%}")
        return loss
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--chunk", type=int, default=250_000, help="rows per chunk (one task each)")
    parser.add_argument("--scheduler", default=None,
                        help="address of a running dask scheduler (default: start a LocalCluster)")
    parser.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes")
    a = parser.parse_args()
    main(a.rows, a.epochs, a.chunk, a.scheduler, a.workers)
