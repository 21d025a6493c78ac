"""Batched replay over Dask arrays: ``Function.batch`` and ``batch_value_and_grad``
with ``dask.array.Array`` arguments return Dask arrays, lazily.

Imported only when such an argument reaches a batched entry point (``_core``'s
hook checks ``sys.modules`` first), so fastgrad itself never imports Dask.

The graph, for rows in chunks r0, r1, ...:

- one key holds the Function (``dask.delayed`` of it, named by its
  ``__dask_tokenize__``): every chunk task depends on that key, so a
  distributed worker receives the Function once per computation, as the plain
  arrays it pickles to, however many chunks it runs;
- one task per chunk calls the numpy ``batch``/``batch_value_and_grad`` on the
  chunk's rows (whatever kernels and threads those use in the worker);
  ``batch_value_and_grad``'s task returns (values, gradients) and the results
  are views of it, so ``dask.compute(values, grad)`` replays each chunk once;
- the gradient w.r.t. a shared argument is each chunk's row sum, summed by a
  tree reduction (``dask.array`` ``sum(split_every=...)``): rows never gather
  in one place.

Validation happens at the call, from the lazily known shapes and dtypes, with
the numpy path's exception types and messages.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from typing import Any

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.delayed import delayed

from fastgrad._core import Function

# Functions a worker process replayed lately, by token.  Each computation sends
# the Function once per worker; the chunk tasks then replay the resident copy of
# it, whose row blocks stay allocated (and paged in) from one computation to the
# next, as they do for a Function reused in one process.
RESIDENT_MAX = 2
_resident: OrderedDict[str, Function] = OrderedDict()
_resident_lock = threading.Lock()

# A chunk task replays its whole chunk in one call: the batch kernels run
# over blocks of rows sized to the cache, so a call's workspace does not grow
# with its rows (docs/design.md, batched replay), and Dask's cost is per task
# (a millisecond or more of scheduler and worker time each): chunks are best large.

# Fan-in of the gradient's tree reduction: partial sums are one vector per
# chunk, small next to a chunk's replay, so a wide tree means fewer tasks.
SPLIT_EVERY = 8


def batch(f: Function, args: tuple[Any, ...], bnums: tuple[int, ...], threads: int | None) -> Any:
    """``f.batch(*args)`` as a Dask array (rows,) or (rows, outputs), chunked like the rows."""
    what = "batch"
    ftoken = tokenize(f)
    pairs = _blockwise_args(f, ftoken, args, bnums, what)
    nthreads = _threads(threads)
    single = bool(f._state()["single"][0])
    n_out = f.n_outputs
    name = "fastgrad-batch-" + tokenize(ftoken, args, bnums, nthreads)
    if single:
        return da.blockwise(_batch_chunk, ("r",), *pairs, name=name, dtype=np.float64,
                            concatenate=False, meta=np.empty((0,)), batch_argnums=bnums,
                            threads=nthreads, ftoken=ftoken)
    return da.blockwise(_batch_chunk, ("r", "o"), *pairs, name=name, dtype=np.float64,
                        concatenate=False, new_axes={"o": n_out}, meta=np.empty((0, 0)),
                        batch_argnums=bnums, threads=nthreads, ftoken=ftoken)


def batch_value_and_grad(f: Function, args: tuple[Any, ...], bnums: tuple[int, ...],
                         nums: tuple[int, ...], single: bool, threads: int | None) -> Any:
    """(values, gradient) of ``f.batch_value_and_grad(*args)`` as Dask arrays.

    The gradient w.r.t. a shared argument is summed over rows by a tree
    reduction; w.r.t. a batched one it is per row, chunked like the rows.
    """
    what = "batch_value_and_grad"
    ftoken = tokenize(f)
    pairs = _blockwise_args(f, ftoken, args, bnums, what)
    nthreads = _threads(threads)
    token = tokenize(ftoken, args, bnums, nums, nthreads)
    # One task per chunk: (values, gradients) of its rows; an object array whose
    # blocks are those pairs, never computed itself, only through the views below.
    both = da.blockwise(_value_and_grad_chunk, ("r",), *pairs, name="fastgrad-vg-" + token,
                        dtype=object, concatenate=False, meta=np.empty((0,), dtype=object),
                        batch_argnums=bnums, argnums=nums, threads=nthreads, ftoken=ftoken)
    row_chunks = both.chunks[0]
    values = da.map_blocks(_values_of, both, name="fastgrad-values-" + token, dtype=np.float64,
                           meta=np.empty((0,)))
    sizes = f.arg_sizes
    grads = []
    for j, k in enumerate(nums):
        if k in bnums:
            grads.append(da.map_blocks(_grad_of, both, index=j, name=f"fastgrad-grad{j}-{token}",
                                       chunks=(row_chunks, (sizes[k],)), new_axis=1,
                                       dtype=np.float64, meta=np.empty((0, 0))))
        else:
            partial = da.map_blocks(_partial_of, both, index=j, name=f"fastgrad-partial{j}-{token}",
                                    chunks=((1,) * len(row_chunks), (sizes[k],)), new_axis=1,
                                    dtype=np.float64, meta=np.empty((0, 0)))
            grads.append(partial.sum(axis=0, split_every=SPLIT_EVERY))
    return values, (grads[0] if single else tuple(grads))


# ---------------------------------------------------------------- the tasks
# Module functions: pickled by reference (their name), never as code.

# blockwise runs them with concatenate=False: an argument's axis that the output
# lacks (the whole row; a shared argument's only axis) comes as the list of its
# blocks, which _blockwise_args makes one block (concatenate=True would copy
# each chunk's rows, ~2 ms per 125000 rows, to join that one block).

def _one_block(b: Any) -> Any:
    while isinstance(b, list):
        (b,) = b
    return b


def _batch_chunk(f: Function, *blocks: Any, batch_argnums: tuple[int, ...], threads: int,
                 ftoken: str) -> Any:
    return _resident_copy(f, ftoken).batch(*map(_one_block, blocks), batch_argnums=batch_argnums,
                                           threads=threads)


def _value_and_grad_chunk(f: Function, *blocks: Any, batch_argnums: tuple[int, ...],
                          argnums: tuple[int, ...], threads: int, ftoken: str) -> Any:
    return _resident_copy(f, ftoken).batch_value_and_grad(*map(_one_block, blocks),
                                                          batch_argnums=batch_argnums,
                                                          argnums=argnums, threads=threads)


def _resident_copy(f: Function, token: str) -> Function:
    """The Function of this token this process already holds, else f (kept)."""
    with _resident_lock:
        g = _resident.get(token)
        if g is None:
            g = _resident[token] = f
            while len(_resident) > RESIDENT_MAX:
                _resident.popitem(last=False)
        _resident.move_to_end(token)
        return g


def _values_of(pair: Any) -> Any:
    return pair[0]


def _grad_of(pair: Any, index: int) -> Any:
    return pair[1][index]


def _partial_of(pair: Any, index: int) -> Any:
    return pair[1][index][None, :]


# ---------------------------------------------------------------- checks

def _threads(threads: int | None) -> int:
    """Kernel threads per chunk task.  Dask already runs chunks in parallel, one
    per worker thread, so by default each chunk replays on the thread running it."""
    if threads is None:
        return 1
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    return int(threads)


def _blockwise_args(f: Function, ftoken: str, args: tuple[Any, ...], bnums: tuple[int, ...],
                    what: str) -> list[Any]:
    """``da.blockwise``'s (argument, index) pairs: the Function as one key, each
    batched argument as (rows, whole row) blocks, each shared one whole.

    Raises what the numpy path raises for the same shapes and dtypes, before
    any chunk runs."""
    sizes = f.arg_sizes
    rows: float | None = None
    pairs: list[Any] = [delayed(f, name="fastgrad-function-" + ftoken, pure=True), None]
    for k, arg in enumerate(args):
        batched = k in bnums
        ndim = 2 if batched else 1
        name = f"{what} argument {k}"
        arr = arg if isinstance(arg, da.Array) else np.asarray(arg)
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"{name} must hold real numbers, got {type(arg).__name__} of dtype {arr.dtype}")
        if arr.ndim != ndim:
            raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}")
        length = arr.shape[ndim - 1]
        if math.isnan(length):
            raise ValueError(f"{name} has rows of unknown length (NaN chunk sizes); "
                             f"call .compute_chunk_sizes() on it first")
        if length != sizes[k]:
            raise ValueError(f"{what} argument {k} has rows of length {length}, traced with length {sizes[k]}")
        if not batched:
            if isinstance(arr, da.Array):
                pairs += [arr.rechunk(-1), (f"s{k}",)]      # one block, a dependency of every task
            else:
                pairs += [np.ascontiguousarray(arr, dtype=np.float64), None]
            continue
        n = arr.shape[0]
        if math.isnan(n) and len(bnums) > 1:
            raise ValueError(f"{name} has an unknown number of rows (NaN chunk sizes), so its rows "
                             f"cannot be matched with the other batched arguments'; call "
                             f".compute_chunk_sizes() on it first")
        if rows is not None and n != rows:
            raise ValueError(f"{what}: batched arguments have {rows} and {n} rows")
        rows = n
        if isinstance(arr, da.Array):
            if arr.numblocks[1] != 1:
                arr = arr.rechunk({1: -1})                    # whole rows per block
        else:
            arr = da.from_array(np.ascontiguousarray(arr, dtype=np.float64), chunks=(-1, -1))
        pairs += [arr, ("r", f"c{k}")]
    if rows is None:
        raise ValueError(f"{what} needs at least one batched argument (batch_argnums)")
    return pairs
