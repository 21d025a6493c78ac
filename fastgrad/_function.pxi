# _function.pxi -- compiled replay: fastgrad.compile, Function, fastgrad.load.
# Included by _core.pyx (one extension module); the kernels are src_c/fg_replay.c (one row)
# and src_c/fg_batch.c + fg_rows.h (blocks of rows); tapes are built by src_c/fg_tape_build.c.
#
# Takes from _core.pyx: the types Graph and Value, _enter (every op on a
# graph starts there), _raise_status (C status -> exception), _is_number,
# NOGIL_MIN_NODES, the module's numpy import (np) and libc malloc/free; the C
# declarations come from _core.pxd.  Gives _core.pyx nothing it calls.

import hashlib
import os
import queue

from cpython.pythread cimport (PyThread_type_lock, PyThread_allocate_lock, PyThread_free_lock,
                               PyThread_acquire_lock, PyThread_release_lock, WAIT_LOCK)

cdef int64_t FORMAT_VERSION = 1
# A default call takes one more thread per this many node-rows of work (rows
# x nodes with a value per row): below it, waking a thread costs more than it
# saves, so 100 rows never pay for threads.
cdef int64_t THREAD_MIN_WORK = 150_000

_STATE_DTYPES = {
    "version": np.int64, "sizes": np.int64, "single": np.bool_,
    "op": np.uint8, "a": np.int32, "b": np.int32, "cst": np.float64,
    "opnd": np.int32, "ocst": np.float64, "out": np.int32,
}


def _pool_worker(tasks):
    while True:
        run = tasks.get()
        if run is None:
            return
        run()
        run = None


class _Pool:
    """Daemon threads taking batch jobs' run methods from one queue.

    Handing out work is SimpleQueue.put, one C call per thread: no Python
    code (so no KeyboardInterrupt) runs inside it, unlike a
    ThreadPoolExecutor.submit interrupted while it holds its lock, which
    hangs every later submit.
    """

    def __init__(self, int n):
        self.tasks = queue.SimpleQueue()
        self.size = 0
        for _ in range(n):
            t = threading.Thread(target=_pool_worker, args=(self.tasks,), daemon=True,
                                 name=f"fastgrad-{self.size}")
            # Counted before start(): a KeyboardInterrupt inside start() (Python
            # code, waiting for the new thread) may come after the thread began,
            # and every thread begun must get its None from __del__ (a stray
            # None in a queue whose thread never began is harmless).
            self.size += 1
            t.start()

    def __del__(self):
        for _ in range(self.size):
            self.tasks.put(None)


_pool = None


def _thread_pool(int n):
    """A pool of at least n threads (a bigger one replaces it; the old one's
    threads exit once the queue that feeds them is dropped)."""
    global _pool
    pool = _pool
    if pool is None or pool.size < n:
        pool = _Pool(n)
        _pool = pool
    return pool


def _forget_thread_pool():
    # A forked child has none of the parent's threads: a pool inherited from
    # the parent would queue work that no thread ever takes (a hang).
    global _pool
    _pool = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_thread_pool)


def _row_targets():
    """[(name, supported by this CPU, rows per tile)] for every row-kernel target of this build."""
    return [(fg_rows_target_name(k).decode("ascii"), bool(fg_rows_target_supported(k)),
             fg_rows_target_tile(k)) for k in range(fg_rows_target_count())]


def _set_row_kernels(name):
    """Test hook: run batches with the named target's kernels; returns the previous name."""
    before = fg_rows_target_name(fg_rows_current()).decode("ascii")
    names = [t[0] for t in _row_targets()]
    if name not in names:
        raise ValueError(f"unknown row kernels {name!r}; this build has {names}")
    if fg_rows_select(names.index(name)) < 0:
        raise ValueError(f"this CPU cannot run the {name!r} row kernels")
    return before


_HESS_BLOCK_BYTES = 4 << 20   # tangent and tangent-adjoint rows of one hessian block


def _hessian_block_bytes(bytes_=0):
    """Tuning and test hook: the bytes of one Function.hessian block's tangent
    and tangent-adjoint arrays together; a positive argument sets it.  Returns
    the value before."""
    global _HESS_BLOCK_BYTES
    if not isinstance(bytes_, int) or bytes_ < 0:
        raise ValueError("block bytes must be a non-negative int")
    before = _HESS_BLOCK_BYTES
    if bytes_:
        _HESS_BLOCK_BYTES = bytes_
    return before


def _block_bytes(bytes_=0):
    """Tuning hook: the bytes a batch block's node rows aim at; a positive
    argument sets it.  Returns the value before."""
    if not isinstance(bytes_, int) or bytes_ < 0:
        raise ValueError("block bytes must be a non-negative int")
    return fg_batch_block_bytes(bytes_)


def show_config(mode="stdout"):
    """Which row kernels batched replay runs (picked at import from the CPU's
    features; FASTGRAD_ROW_KERNELS=name forces one), and which this build has.

    mode="stdout" prints it; mode="dicts" returns it as a dict.
    """
    targets = _row_targets()
    info = {"row_kernels": fg_rows_target_name(fg_rows_current()).decode("ascii"),
            "row_kernel_targets": {name: ok for name, ok, _ in targets},
            "tile_rows": {name: tile for name, _, tile in targets},
            "cpu_count": os.cpu_count() or 1}
    if mode == "dicts":
        return info
    if mode != "stdout":
        raise ValueError(f"mode must be 'stdout' or 'dicts', got {mode!r}")
    print(f"fastgrad row kernels: {info['row_kernels']} (this build: "
          + ", ".join(f"{n}{'' if ok else ' (not on this CPU)'}" for n, ok, _ in targets) + ")")


def _select_row_kernels_at_import():
    forced = os.environ.get("FASTGRAD_ROW_KERNELS", "")
    if forced:
        _set_row_kernels(forced)
    else:
        fg_rows_select(-1)


_select_row_kernels_at_import()


cdef object _real_array(object arg, str name, int ndim, bint aligned=True):
    """arg as a C-contiguous float64 array of ndim dimensions, or an error naming it;
    aligned (else: at any byte offset, for readers that load it with memcpy)."""
    # A list is read once: an element numpy calls back into (its __array__,
    # __float__) may change it, and numpy reads a list again after the
    # callbacks.  So are a batch's rows given as lists.
    held = _snapshot(arg) if type(arg) is list else arg
    if ndim == 2 and type(held) is tuple:
        held = tuple([_snapshot(row) if type(row) is list else row for row in <tuple>held])
    arr = np.asarray(held)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got {type(arg).__name__} of dtype {arr.dtype}")
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    if arr.dtype.kind == "f" and arr.dtype.itemsize > 8:
        # long double: a finite entry beyond the double range raises
        # OverflowError, as it does for Value(), instead of becoming inf
        with np.errstate(over="ignore"):
            out = np.require(arr, dtype=np.float64, requirements=("C", "A"))
        if (np.isinf(out) & np.isfinite(arr)).any():
            raise OverflowError(f"{name} holds a {arr.dtype} too large to convert to float")
        return out
    # aligned too, unless asked not to: a C-contiguous view into a byte buffer
    # at an odd offset is not, and most kernels load its doubles directly.  The
    # batch kernels read arguments with memcpy: a Dask worker's rows, fetched
    # from another worker, sit at any offset, and a copy of a 500000-row chunk
    # would cost each task 12 MB (in fresh pages, with Dask's malloc settings).
    return np.require(arr, dtype=np.float64, requirements=("C", "A") if aligned else ("C",))


cdef bint _has_dask(tuple args):
    """Whether an argument is a dask.array.Array (fastgrad/_dask.py takes those).
    Never imports Dask: without dask.array loaded no argument can be one."""
    mod = sys.modules.get("dask.array")
    cls = getattr(mod, "Array", None) if mod is not None else None
    return cls is not None and any(isinstance(a, cls) for a in args)


cdef tuple _offsets(tuple sizes):
    """Tape index of each argument's first input (inputs are laid out in order)."""
    out = []
    cdef int64_t total = 0
    for size in sizes:
        out.append(total)
        total += size
    return tuple(out)


cdef tuple _argnums(object argnums, int64_t nargs):
    """(tuple of argument indices, whether argnums was a single int)."""
    single = not isinstance(argnums, (tuple, list))
    nums = (argnums,) if single else tuple(argnums)
    for k in nums:
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 0 <= k < nargs:
            raise ValueError(f"argnums must index the {nargs} arguments, got {argnums!r}")
    return tuple(int(k) for k in nums), single


@cython.final
@cython.auto_pickle(False)
cdef class Function:
    """A traced graph frozen into a tape; made by ``fastgrad.compile`` or ``fastgrad.load``.

    Replays run in C over the tape in topological order: no Python per node,
    nothing held in any live graph.  Python control flow in the traced
    function was evaluated once, at trace time; ops that branch (relu,
    maximum/minimum, abs) branch inside the kernels, so they replay correctly
    on either side of the branch.

    Thread-safety: a Function may be called from several threads at once.
    """

    cdef fg_tape_t t
    cdef tuple sizes            # traced length of each argument
    cdef tuple offsets          # tape index of each argument's first input
    cdef bint single            # fn returned one Value (not a sequence)
    cdef double *ws             # cached workspace: 4 * n doubles
    cdef bint ws_busy           # taken by a call (another thread may run one)
    cdef dict layouts           # batched argument numbers -> _layout()
    cdef double *hws            # cached hessian tangent rows, all zero between calls
    cdef int64_t hws_cap        # doubles in hws
    cdef bint hws_busy
    cdef double *bws            # cached row-block workspace of a batched call's own thread
    cdef int64_t bws_cap        # doubles in bws
    cdef bint bws_busy

    def __init__(self, *args, **kwargs):
        raise TypeError("Functions are made by fastgrad.compile() or fastgrad.load()")

    def __dealloc__(self):
        fg_tape_free(&self.t)
        free(self.ws)
        free(self.hws)
        fg_batch_ws_free(self.bws)

    # ------------------------------------------------------------ plumbing

    cdef double *_take_ws(self) except NULL:
        """4*n doubles: the cached block, or a fresh one if a call holds it."""
        cdef double *p
        if not self.ws_busy:
            if self.ws == NULL:
                self.ws = <double *>malloc((4 * self.t.n + 1) * sizeof(double))
                if self.ws == NULL:
                    raise MemoryError()
            self.ws_busy = True
            return self.ws
        p = <double *>malloc((4 * self.t.n + 1) * sizeof(double))
        if p == NULL:
            raise MemoryError()
        return p

    cdef void _give_ws(self, double *p):
        if p == self.ws:
            self.ws_busy = False
        else:
            free(p)

    cdef int _check_nargs(self, tuple args, str what) except -1:
        if len(args) != len(self.sizes):
            raise TypeError(f"{what} takes {len(self.sizes)} arguments (traced), got {len(args)}")
        return 0

    cdef int _write(self, tuple args, double *v, str what) except -1:
        """Each argument's values into v at its inputs' tape indices."""
        cdef int64_t k, i, off, size
        cdef const double[::1] mv   # read-only arrays are fine
        self._check_nargs(args, what)
        for k in range(len(args)):
            arr = _real_array(args[k], f"{what} argument {k}", 1)
            size = self.sizes[k]
            if arr.shape[0] != size:
                raise ValueError(f"{what} argument {k} has length {arr.shape[0]}, traced with length {size}")
            mv = arr
            off = self.offsets[k]
            for i in range(size):
                v[off + i] = mv[i]
        return 0

    cdef void _forward(self, double *v) noexcept:
        if self.t.n > NOGIL_MIN_NODES:
            with nogil:
                fg_tape_forward(&self.t, 1, 1, v, NULL)
        else:
            fg_tape_forward(&self.t, 1, 1, v, NULL)

    cdef void _reverse(self, double *v, double *adj, const double *seed) noexcept:
        if self.t.n > NOGIL_MIN_NODES:
            with nogil:
                fg_tape_reverse(&self.t, 1, 1, v, adj, seed, NULL)
        else:
            fg_tape_reverse(&self.t, 1, 1, v, adj, seed, NULL)

    cdef object _outputs(self, double *v):
        cdef int64_t k
        if self.single:
            return v[self.t.out[0]]
        out = np.empty(self.t.n_out)
        cdef double[::1] mo = out
        for k in range(self.t.n_out):
            mo[k] = v[self.t.out[k]]
        return out

    cdef object _slice(self, double *x, int64_t argnum):
        """Copy of x over argument argnum's inputs."""
        cdef int64_t size = self.sizes[argnum], off = self.offsets[argnum]
        out = np.empty(size)
        cdef double[::1] mo = out
        if size:
            memcpy(&mo[0], x + off, size * sizeof(double))
        return out

    cdef int _scalar_output(self, str what) except -1:
        if self.t.n_out != 1 or not self.single:
            raise ValueError(f"{what} needs a function with one scalar output; this one has "
                             f"{self.t.n_out} outputs (use vjp or jacobian)")
        return 0

    # ------------------------------------------------------------ public

    @property
    def n_nodes(self):
        """Nodes on the tape (inputs, constants and ops)."""
        return int(self.t.n)

    @property
    def arg_sizes(self):
        """Traced length of each argument."""
        return self.sizes

    @property
    def n_outputs(self):
        return int(self.t.n_out)

    def __repr__(self):
        return (f"<fastgrad.Function: args of lengths {self.sizes}, {self.t.n_out} "
                f"output{'s' if self.t.n_out != 1 else ''}, {self.t.n} nodes>")

    def __call__(self, *args):
        """Outputs at args: a float for one output, else a 1-D ndarray."""
        cdef double *v = self._take_ws()
        try:
            self._write(args, v, "Function")
            self._forward(v)
            return self._outputs(v)
        finally:
            self._give_ws(v)

    def value_and_grad(self, *args, argnums=0):
        """(value, gradient w.r.t. args[argnums]) for a scalar output.

        The gradient is a 1-D ndarray, or a tuple of them when argnums is a tuple.
        """
        self._scalar_output("value_and_grad")
        nums, single = _argnums(argnums, len(self.sizes))
        cdef double *v = self._take_ws()
        cdef double *adj = v + self.t.n
        try:
            self._write(args, v, "value_and_grad")
            self._forward(v)
            self._reverse(v, adj, NULL)
            grads = tuple(self._slice(adj, k) for k in nums)
            return v[self.t.out[0]], (grads[0] if single else grads)
        finally:
            self._give_ws(v)

    def jvp(self, args, tangents):
        """(outputs, output tangents) for input tangents shaped like args (forward mode)."""
        args, tangents = _snapshot(args), _snapshot(tangents)
        cdef double *v = self._take_ws()
        cdef double *tan = v + 2 * self.t.n
        cdef int64_t k
        try:
            self._write(args, v, "jvp")
            self._write(tangents, tan, "jvp tangent")
            self._forward(v)
            fg_tape_jvp(&self.t, v, tan)
            if self.single:
                return v[self.t.out[0]], tan[self.t.out[0]]
            outs = self._outputs(v)
            touts = np.array([tan[self.t.out[k]] for k in range(self.t.n_out)])
            return outs, touts
        finally:
            self._give_ws(v)

    def vjp(self, args, cotangent):
        """(outputs, tuple of per-argument cotangents) for an output cotangent.

        cotangent is a number for a one-output function, else a 1-D sequence
        with one entry per output.
        """
        args = _snapshot(args)
        cot = _real_array(cotangent, "cotangent", 0 if self.single else 1)
        if cot.size != self.t.n_out:
            raise ValueError(f"cotangent has {cot.size} entries for {self.t.n_out} outputs")
        cdef const double[::1] mc = cot.reshape(-1)
        cdef double *v = self._take_ws()
        cdef double *adj = v + self.t.n
        try:
            self._write(args, v, "vjp")
            self._forward(v)
            self._reverse(v, adj, &mc[0])
            return self._outputs(v), tuple(self._slice(adj, k) for k in range(len(self.sizes)))
        finally:
            self._give_ws(v)

    def jacobian(self, *args, argnums=0):
        """d outputs / d args[argnums] as a 2-D ndarray (outputs x inputs).

        A tuple of them when argnums is a tuple.  Uses one reverse sweep per
        output or one tangent sweep per input, whichever is fewer.
        """
        nums, single = _argnums(argnums, len(self.sizes))
        cdef int64_t n = self.t.n, n_out = self.t.n_out, k, j, i, off, width = 0
        for k in nums:
            width += self.sizes[k]
        jacs = [np.zeros((n_out, self.sizes[k])) for k in nums]
        cdef double *v = self._take_ws()
        cdef double *adj = v + n
        cdef double *tan = v + 2 * n
        cdef double *seed = v + 3 * n
        cdef double[:, ::1] mj
        try:
            self._write(args, v, "jacobian")
            self._forward(v)
            if n_out <= width:
                for k in range(n_out):
                    for j in range(n_out):
                        seed[j] = 1.0 if j == k else 0.0
                    self._reverse(v, adj, seed)
                    for j in range(len(nums)):
                        mj = jacs[j]
                        off = self.offsets[nums[j]]
                        for i in range(self.sizes[nums[j]]):
                            mj[k, i] = adj[off + i]
            else:
                for j in range(len(nums)):
                    mj = jacs[j]
                    off = self.offsets[nums[j]]
                    for i in range(self.sizes[nums[j]]):
                        memset(tan, 0, self.t.n_in * sizeof(double))
                        tan[off + i] = 1.0
                        fg_tape_jvp(&self.t, v, tan)
                        for k in range(n_out):
                            mj[k, i] = tan[self.t.out[k]]
            return jacs[0] if single else tuple(jacs)
        finally:
            self._give_ws(v)

    def hvp(self, args, v, argnums=0):
        """Hessian-vector product H @ v of a scalar output w.r.t. args[argnums].

        Forward-over-reverse: one tangent sweep and one second-order reverse
        sweep.  With a tuple argnums, v and the result are tuples.
        """
        self._scalar_output("hvp")
        nums, single = _argnums(argnums, len(self.sizes))
        args = _snapshot(args)
        vs = (v,) if single else _snapshot(v)
        if len(vs) != len(nums):
            raise ValueError(f"hvp needs one vector per argnum, got {len(vs)} for {len(nums)}")
        cdef int64_t n = self.t.n, i, j, off
        cdef double *w = self._take_ws()
        cdef double *adj = w + n
        cdef double *tan = w + 2 * n
        cdef double *adjt = w + 3 * n
        cdef const double[::1] mv   # read-only arrays are fine
        try:
            self._write(args, w, "hvp")
            memset(tan, 0, self.t.n_in * sizeof(double))
            for j in range(len(nums)):
                vec = _real_array(vs[j], f"hvp vector {j}", 1)
                if vec.shape[0] != self.sizes[nums[j]]:
                    raise ValueError(f"hvp vector {j} has length {vec.shape[0]}, "
                                     f"argument {nums[j]} has {self.sizes[nums[j]]}")
                mv = vec
                off = self.offsets[nums[j]]
                for i in range(vec.shape[0]):
                    tan[off + i] = mv[i]
            self._forward(w)
            fg_tape_jvp(&self.t, w, tan)
            fg_tape_hvp(&self.t, w, tan, adj, adjt)
            res = tuple(self._slice(adjt, k) for k in nums)
            return res[0] if single else res
        finally:
            self._give_ws(w)

    def hessian(self, *args, argnums=0):
        """The dense Hessian of a scalar output w.r.t. args[argnums]: an n x n ndarray.

        One forward-over-reverse sweep over the tape carries a block of tangent
        directions at once (the block's tangent and tangent-adjoint rows take
        about _hessian_block_bytes() bytes, 4 MB; kept for the next call).
        Column j equals hvp at the unit vector j, bit for bit.  With a
        tuple argnums, a tuple of tuples of blocks (H[i][j]: args[argnums[i]]
        by args[argnums[j]]).
        """
        self._scalar_output("hessian")
        nums, single = _argnums(argnums, len(self.sizes))
        cdef int64_t n = self.t.n, m = 0, d, j, i
        for j in nums:
            m += self.sizes[j]
        cols = np.empty(m + 1, dtype=np.int64)
        cdef int64_t[::1] mc = cols
        m = 0
        for j in nums:
            for i in range(self.sizes[j]):
                mc[m] = self.offsets[j] + i
                m += 1
        H = np.zeros((m, m))
        cdef double[:, ::1] mh = H
        d = _HESS_BLOCK_BYTES // (2 * 8 * (n + 1))
        d = max(1, min(d, m))
        cdef int64_t need = 2 * n * d
        cdef double *v = self._take_ws()
        cdef double *rows = NULL
        cdef void *aux = NULL
        cdef bint cached = False
        try:
            self._write(args, v, "hessian")
            self._forward(v)
            if m:
                aux = malloc(n * (sizeof(double) + 4 * sizeof(int32_t) + 1) + 8)
                if aux == NULL:
                    raise MemoryError()
                if not self.hws_busy:
                    if need > self.hws_cap:   # a bigger block than the cached one
                        free(self.hws)
                        self.hws_cap = 0
                        self.hws = <double *>calloc(need, sizeof(double))
                        if self.hws == NULL:
                            raise MemoryError()
                        self.hws_cap = need
                    rows, cached = self.hws, True
                else:
                    rows = <double *>calloc(need, sizeof(double))
                    if rows == NULL:
                        raise MemoryError()
                if cached:
                    self.hws_busy = True
                with nogil:
                    fg_tape_hessian(&self.t, v, m, &mc[0], d, <double *>aux, rows, rows + n * d,
                                    <int32_t *>(<double *>aux + n),
                                    <uint8_t *>(<int32_t *>(<double *>aux + n) + 4 * n),
                                    &mh[0, 0])
        finally:
            if cached:
                self.hws_busy = False
            elif rows != NULL:
                free(rows)
            free(aux)
            self._give_ws(v)
        if single:
            return H
        bounds = np.cumsum([0] + [self.sizes[j] for j in nums])
        return tuple(tuple(H[bounds[r]:bounds[r + 1], bounds[c]:bounds[c + 1]].copy()
                           for c in range(len(nums))) for r in range(len(nums)))

    # ------------------------------------------------------------ batches

    cdef tuple _layout(self, tuple bnums):
        """(uni, lane_of, n_lanes, per_row) of batches over the arguments bnums:
        computed once per set of batched arguments, then kept (read-only)."""
        key = tuple(sorted(set(bnums)))
        if self.layouts is not None:
            lay = self.layouts.get(key)
            if lay is not None:
                return lay
        batched_in = np.zeros(self.t.n_in + 1, dtype=np.uint8)
        for k in key:
            batched_in[self.offsets[k]:self.offsets[k] + self.sizes[k]] = 1
        uni = np.empty(self.t.n + 1, dtype=np.uint8)
        lane_of = np.empty(self.t.n + 1, dtype=np.int32)
        cdef const uint8_t[::1] mb = batched_in
        cdef uint8_t[::1] mu = uni
        cdef int32_t[::1] ml = lane_of
        cdef int64_t per_row = 0, n_lanes
        fg_tape_uniform(&self.t, &mb[0], &mu[0])
        n_lanes = fg_batch_layout(&self.t, &mu[0], &ml[0], &per_row)
        lay = (uni, lane_of, n_lanes, per_row)
        if self.layouts is None:
            self.layouts = {}
        if len(self.layouts) < 16:
            self.layouts[key] = lay
        return lay

    cdef _BatchJob _batch_job(self, tuple args, object batch_argnums, str what, bint reverse,
                              tuple nums):
        """A job over the rows of the batched arguments, its outputs allocated:
        job.values (rows x outputs), job.grads (per-row gradients of the batched
        arguments in nums), job.shared (per-chunk summed adjoints) when reverse."""
        self._check_nargs(args, what)
        bnums, _ = _argnums(batch_argnums, len(self.sizes))
        cdef int64_t nargs = len(args), B = -1, k, size
        arrays = []
        for k in range(nargs):
            batched = k in bnums
            arr = _real_array(args[k], f"{what} argument {k}", 2 if batched else 1, False)
            size = self.sizes[k]
            if arr.shape[arr.ndim - 1] != size:
                raise ValueError(f"{what} argument {k} has rows of length {arr.shape[arr.ndim - 1]}, "
                                 f"traced with length {size}")
            if batched:
                if B >= 0 and arr.shape[0] != B:
                    raise ValueError(f"{what}: batched arguments have {B} and {arr.shape[0]} rows")
                B = arr.shape[0]
            arrays.append(arr)
        if B < 0:
            raise ValueError(f"{what} needs at least one batched argument (batch_argnums)")
        cdef _BatchJob job = _BatchJob.__new__(_BatchJob)
        job.owner = self
        job.mem = malloc(nargs * (2 * sizeof(int64_t) + 2 * sizeof(void *) + 1) + 1)
        if job.mem == NULL:
            raise MemoryError()
        cdef int64_t *off = <int64_t *>job.mem
        cdef int64_t *sz = off + nargs
        cdef const void **argp = <const void **>(sz + nargs)
        cdef double **gradp = <double **>(argp + nargs)
        cdef uint8_t *bat = <uint8_t *>(gradp + nargs)
        uni, lane_of, n_lanes, per_row = self._layout(bnums)
        cdef const uint8_t[::1] mu = uni
        cdef const int32_t[::1] ml = lane_of
        values = np.empty((B, self.t.n_out))
        grads = {}
        for k in range(nargs):
            off[k] = self.offsets[k]
            sz[k] = self.sizes[k]
            bat[k] = k in bnums
            argp[k] = _bytes(arrays[k])
            gradp[k] = NULL
            if reverse and bat[k] and k in nums:
                grads[k] = np.empty((B, sz[k]))
                gradp[k] = _data(grads[k])
        job.b.t = &self.t
        job.b.uni = &mu[0]
        job.b.rows = B
        job.b.nargs = nargs
        job.b.off = off
        job.b.size = sz
        job.b.batched = bat
        job.b.arg = argp
        job.b.values = _data(values)
        job.b.grad = gradp
        job.b.want_reverse = reverse
        job.b.target = fg_rows_current()
        job.b.lane_of = &ml[0]
        job.b.per_row = per_row
        job.b.n_lanes = n_lanes
        fg_batch_plan(&job.b)
        job.shared = None
        if reverse:
            job.shared = np.empty((job.b.nchunks, self.t.n_in))
            job.b.shared = _data(job.shared)
        job.values = values
        job.grads = grads
        job.keep = (arrays, uni, lane_of)   # what the pointers point into lives as long as the job
        return job

    cdef int _run_job(self, _BatchJob job, object threads) except -1:
        """Runs every chunk of job, on this thread and, when the work is big
        enough (or threads asks), on pool threads; returns only once no thread
        is left inside the job, whatever happens (KeyboardInterrupt included)."""
        cdef int64_t nthreads, k
        if threads is None:
            nthreads = os.cpu_count() or 1
            nthreads = min(nthreads, max(1, job.b.rows * max(job.b.per_row, 1) // THREAD_MIN_WORK))
        else:
            if not isinstance(threads, (int, np.integer)) or isinstance(threads, bool):
                raise TypeError(f"threads must be an int or None, got {type(threads).__name__}")
            if threads < 1:
                raise ValueError(f"threads must be >= 1, got {threads}")
            nthreads = min(threads, 1 << 16)
        nthreads = max(1, min(nthreads, job.b.nchunks))
        pool = None
        if nthreads > 1:
            try:
                pool = _thread_pool(nthreads - 1)
            except RuntimeError:   # no thread can be started: this one does every chunk
                pass
        # The calling thread's workspace is the Function's cached one when no
        # other call holds it: a call reuses pages the last one touched (freed
        # and mapped again per call, a large block costs a page fault per 4 KiB
        # each time, where the allocator returns memory eagerly, as in Dask
        # workers).  Taken and given back with the GIL held.
        cdef int64_t need = fg_batch_ws_doubles(&job.b)
        cdef bint cached = not self.bws_busy
        if cached:
            if self.bws_cap < need:
                fg_batch_ws_free(self.bws)
                self.bws = fg_batch_ws_alloc(need)
                self.bws_cap = need if self.bws != NULL else 0
            self.bws_busy = True
            job.caller_ws = self.bws        # NULL (out of memory): work() allocates
        job.open()
        # From here on the job is open: whatever is raised (a KeyboardInterrupt
        # between two puts), finish() runs and waits for every thread that joined.
        try:
            try:
                if pool is not None:
                    put, run = pool.tasks.put, job.run
                    for k in range(nthreads - 1):
                        put(run)
            except BaseException:
                with nogil:
                    job.finish(True)
                raise
            with nogil:
                job.finish(False)
        finally:
            job.caller_ws = NULL
            if cached:
                self.bws_busy = False
        if job.status == FG_ENOMEM:
            raise MemoryError()
        return 0

    def batch(self, *args, batch_argnums=(1,), threads=None):
        """Outputs for every row of the batched arguments.

        Arguments listed in batch_argnums are 2-D (rows x traced length), the
        others 1-D and shared by every row.  Returns shape (rows,) for one
        output, (rows, outputs) otherwise.  threads (default: as many as the
        work pays for, up to all cores) take blocks of rows with the GIL
        released; the result does not depend on it.
        """
        cdef _BatchJob job
        args = tuple(args)
        if _has_dask(args):
            self._check_nargs(args, "batch")
            from fastgrad import _dask
            return _dask.batch(self, args, _argnums(batch_argnums, len(self.sizes))[0], threads)
        job = self._batch_job(args, batch_argnums, "batch", False, ())
        self._run_job(job, threads)
        values = job.values
        return values.reshape(values.shape[0]) if self.single else values

    def batch_value_and_grad(self, *args, batch_argnums=(1,), argnums=0, threads=None):
        """(per-row values, gradient) of a scalar output over a batch.

        Rows of the batched arguments are independent inputs.  The gradient
        w.r.t. an unbatched argument is summed over rows (1-D); w.r.t. a
        batched one it is per row (rows x length).  A tuple argnums gives a
        tuple of gradients.  Rows run in blocks, whose sums are added in row
        order, so the result is the same bits for any threads.
        """
        cdef _BatchJob job
        cdef double[:, ::1] ms
        cdef double[::1] mg
        cdef int64_t c, i, lo, size
        self._scalar_output("batch_value_and_grad")
        nums, single = _argnums(argnums, len(self.sizes))
        if _has_dask(args):
            self._check_nargs(args, "batch_value_and_grad")
            from fastgrad import _dask
            return _dask.batch_value_and_grad(self, args, _argnums(batch_argnums, len(self.sizes))[0],
                                              nums, single, threads)
        job = self._batch_job(args, batch_argnums, "batch_value_and_grad", True, nums)
        self._run_job(job, threads)
        ms = job.shared
        grads = []
        for k in nums:
            if k in job.grads:
                grads.append(job.grads[k])
                continue
            lo, size = self.offsets[k], self.sizes[k]
            out = np.zeros(size)
            mg = out
            # the chunks' sums, added in chunk (row) order
            for c in range(job.b.nchunks):
                for i in range(size):
                    mg[i] += ms[c, lo + i]
            grads.append(out)
        values = job.values
        return values.reshape(values.shape[0]), (grads[0] if single else tuple(grads))

    # ------------------------------------------------------------ storage

    def _state(self):
        cdef int64_t n = self.t.n, m = self.t.nopnd, n_out = self.t.n_out
        state = {
            "version": np.array([FORMAT_VERSION], dtype=np.int64),
            "sizes": np.array(self.sizes, dtype=np.int64),
            "single": np.array([self.single], dtype=np.bool_),
            "op": np.empty(n, np.uint8), "a": np.empty(n, np.int32), "b": np.empty(n, np.int32),
            "cst": np.empty(n), "opnd": np.empty(m, np.int32), "ocst": np.empty(m),
            "out": np.empty(n_out, np.int32),
        }
        _copy_out(state["op"], self.t.op, n)
        _copy_out(state["a"], self.t.a, n * 4)
        _copy_out(state["b"], self.t.b, n * 4)
        _copy_out(state["cst"], self.t.cst, n * 8)
        _copy_out(state["opnd"], self.t.opnd, m * 4)
        _copy_out(state["ocst"], self.t.ocst, m * 8)
        _copy_out(state["out"], self.t.out, n_out * 4)
        return state

    def __dask_tokenize__(self):
        # Dask names graph keys by content: equal tapes give equal keys, so a
        # Function is one key of a graph however many chunks use it.
        h = hashlib.sha256()
        for key, arr in self._state().items():
            h.update(key.encode())
            h.update(arr.tobytes())
        return ("fastgrad.Function", h.hexdigest())

    def __reduce__(self):
        # Plain arrays, never code: unpickling validates them like load().
        return (_function_from_state, (self._state(),))

    def save(self, path):
        """Write the tape to path as plain arrays (an .npz archive; no pickle)."""
        with open(path, "wb") as fh:
            np.savez(fh, **self._state())


def _batch_plan(Function f, *args, batch_argnums=(1,), reverse=True):
    """Test hook: {block, chunk, nchunks, per_row} of a batched call with these arguments."""
    cdef _BatchJob job = f._batch_job(tuple(args), batch_argnums, "_batch_plan", reverse, ())
    return {"block": job.b.block, "chunk": job.b.chunk, "nchunks": job.b.nchunks,
            "per_row": job.b.per_row}


def _batch_ws_misalignment(Function f):
    """Test hook: the address of f's cached batch workspace modulo FG_WS_ALIGN
    (0: aligned), or -1 before a batched call made one."""
    if f.bws == NULL:
        return -1
    return <Py_ssize_t>(<size_t>f.bws % FG_WS_ALIGN)


cdef double _no_data[1]


cdef const void *_bytes(object arr) except NULL:
    """The first byte of a C-contiguous float64 array at any offset (a dummy
    for an empty one)."""
    cdef const uint8_t[::1] m
    if arr.size == 0:
        return _no_data
    m = arr.reshape(-1).view(np.uint8)
    return <const void *>&m[0]


cdef double *_data(object arr) except NULL:
    """The first double of a C-contiguous float64 array (a dummy for an empty
    one); read-only arrays too: only outputs the call allocated are written."""
    cdef const double[::1] m
    if arr.size == 0:
        return _no_data
    m = arr.reshape(-1)
    return <double *>&m[0]


@cython.final
@cython.auto_pickle(False)
cdef class _BatchJob:
    """One batched call, shared by the threads that run it.

    Every pointer lives in C fields that the call set up; the workers' entry
    point run() takes no arguments.  Threads join while the job is open, take
    chunks until none is left, and the caller (finish) returns only after the
    last one left, so no thread ever writes into arrays the call has let go.
    A job that is not open (made from Python, or its call over) does nothing.
    """

    cdef fg_batch_t b
    cdef PyThread_type_lock lock    # guards the fields below
    cdef PyThread_type_lock done    # held by the job; the last worker out releases it to the caller
    cdef int64_t next_chunk
    cdef int active                 # threads inside
    cdef bint is_open               # threads may still join
    cdef bint waiting               # the caller waits for done
    cdef int status                 # FG_OK, FG_ENOMEM, or FG_EINVAL (cancelled)
    cdef void *mem                  # the per-argument arrays of b
    cdef double *caller_ws          # the caller's workspace (the Function's), or NULL
    cdef object owner               # the Function whose tape b reads
    cdef object keep                # the arrays b points into
    cdef object values
    cdef dict grads
    cdef object shared

    def __cinit__(self):
        self.lock = PyThread_allocate_lock()
        self.done = PyThread_allocate_lock()
        if self.lock == NULL or self.done == NULL:
            raise MemoryError()
        PyThread_acquire_lock(self.done, WAIT_LOCK)

    def __dealloc__(self):
        if self.lock != NULL:
            PyThread_free_lock(self.lock)
        if self.done != NULL:
            PyThread_release_lock(self.done)
            PyThread_free_lock(self.done)
        free(self.mem)

    def __init__(self, *args, **kwargs):
        raise TypeError("batch jobs are made by Function.batch and batch_value_and_grad")

    def run(self):
        """A worker's part: chunks until none is left (nothing, once the call is over)."""
        with nogil:
            self.work(False)

    cdef void open(self) noexcept:
        self.next_chunk = 0
        self.status = FG_OK
        self.is_open = True

    cdef void work(self, bint caller) noexcept nogil:
        """caller: the calling thread, which uses caller_ws when there is one."""
        cdef int64_t c
        cdef double *ws
        cdef bint own               # ws is this call's to free
        PyThread_acquire_lock(self.lock, WAIT_LOCK)
        if not self.is_open:
            PyThread_release_lock(self.lock)
            return
        self.active += 1
        PyThread_release_lock(self.lock)
        ws = self.caller_ws if caller else NULL
        own = ws == NULL
        if own:
            ws = fg_batch_ws_alloc(fg_batch_ws_doubles(&self.b))
        if ws == NULL:
            PyThread_acquire_lock(self.lock, WAIT_LOCK)
            self.status = FG_ENOMEM
            PyThread_release_lock(self.lock)
        else:
            fg_batch_prepare(&self.b, ws)
            while True:
                PyThread_acquire_lock(self.lock, WAIT_LOCK)
                c = self.next_chunk
                if self.status != FG_OK or c >= self.b.nchunks:
                    c = -1
                else:
                    self.next_chunk = c + 1
                PyThread_release_lock(self.lock)
                if c < 0:
                    break
                fg_batch_run_chunk(&self.b, c, ws)
            if own:
                fg_batch_ws_free(ws)
        PyThread_acquire_lock(self.lock, WAIT_LOCK)
        self.active -= 1
        if self.active == 0 and self.waiting:
            self.waiting = False
            PyThread_release_lock(self.done)
        PyThread_release_lock(self.lock)

    cdef void finish(self, bint cancel) noexcept nogil:
        """The caller's share of the chunks (none when cancel), then closes the
        job and waits, uninterruptibly, until every thread that joined left."""
        cdef bint wait
        if cancel:
            PyThread_acquire_lock(self.lock, WAIT_LOCK)
            self.status = FG_EINVAL
            PyThread_release_lock(self.lock)
        else:
            self.work(True)
        PyThread_acquire_lock(self.lock, WAIT_LOCK)
        self.is_open = False
        wait = self.active > 0
        self.waiting = wait
        PyThread_release_lock(self.lock)
        if wait:
            PyThread_acquire_lock(self.done, WAIT_LOCK)


cdef void _copy_out(object arr, const void *src, int64_t nbytes):
    cdef uint8_t[::1] m = arr.view(np.uint8)
    if nbytes:
        memcpy(&m[0], src, nbytes)


cdef void _copy_in(void *dst, object arr, int64_t nbytes):
    cdef const uint8_t[::1] m = np.ascontiguousarray(arr).view(np.uint8)
    if nbytes:
        memcpy(dst, &m[0], nbytes)


# Functions made from a state (unpickled or loaded) in this process: tests count
# with it that a Dask worker receives a Function once per computation.
_states_loaded = 0


def _function_from_state(state, source="state"):
    """A Function from saved arrays, after checking every one of them."""
    global _states_loaded
    if not isinstance(state, dict):
        raise ValueError(f"{source}: not a fastgrad Function state")
    for key, dtype in _STATE_DTYPES.items():
        arr = state.get(key)
        if not isinstance(arr, np.ndarray):
            raise ValueError(f"{source}: missing array {key!r}")
        if arr.dtype != np.dtype(dtype) or arr.ndim != 1:
            raise ValueError(f"{source}: array {key!r} must be 1-D {np.dtype(dtype)}, "
                             f"got {arr.ndim}-D {arr.dtype}")
    if state["version"].shape != (1,) or state["version"][0] != FORMAT_VERSION:
        raise ValueError(f"{source}: unsupported format version {state['version'].tolist()}")
    sizes = state["sizes"]
    if (sizes < 0).any():
        raise ValueError(f"{source}: negative argument length")
    cdef int64_t n = state["op"].shape[0], m = state["opnd"].shape[0]
    # Summed as Python ints: numpy's int64 sum wraps, and hostile lengths could
    # wrap to a small count that passes the checks below.
    total_in = 0
    for s in sizes.tolist():
        total_in += s
    if total_in > n:
        raise ValueError(f"{source}: argument lengths add up to {total_in}, more than the {n} nodes")
    cdef int64_t n_out = state["out"].shape[0], n_in = total_in
    for key in ("a", "b", "cst"):
        if state[key].shape[0] != n:
            raise ValueError(f"{source}: array {key!r} has {state[key].shape[0]} entries for {n} nodes")
    if state["ocst"].shape[0] != m:
        raise ValueError(f"{source}: array 'ocst' has {state['ocst'].shape[0]} entries for {m} operands")
    if state["single"].shape != (1,) or (state["single"][0] and n_out != 1):
        raise ValueError(f"{source}: inconsistent output count")
    cdef Function f = Function.__new__(Function)
    rc = fg_tape_alloc(&f.t, n, n_in, m, n_out)
    if rc == FG_ENOMEM:
        raise MemoryError()
    if rc != FG_OK:
        raise ValueError(f"{source}: impossible sizes (nodes {n}, inputs {n_in}, outputs {n_out})")
    _copy_in(f.t.op, state["op"], n)
    _copy_in(f.t.a, state["a"], n * 4)
    _copy_in(f.t.b, state["b"], n * 4)
    _copy_in(f.t.cst, state["cst"], n * 8)
    _copy_in(f.t.opnd, state["opnd"], m * 4)
    _copy_in(f.t.ocst, state["ocst"], m * 8)
    _copy_in(f.t.out, state["out"], n_out * 4)
    if fg_tape_validate(&f.t) != FG_OK:
        raise ValueError(f"{source}: corrupt tape (an op code, parent index or operand is out of place)")
    f.sizes = tuple(int(s) for s in sizes)
    f.offsets = _offsets(f.sizes)
    f.single = bool(state["single"][0])
    _states_loaded += 1
    return f


def load(path):
    """A Function saved with ``Function.save``; every array is validated.

    A file that is not a saved Function, or whose arrays are corrupt or
    hostile, raises ValueError (never an out-of-bounds read).
    """
    with open(path, "rb") as fh:        # missing or unreadable: OSError, as for any file
        try:
            state = _read_archive(fh)
        except MemoryError:
            raise
        except Exception as exc:
            raise ValueError(f"{path!r} is not a saved fastgrad Function: {_reason(exc)}") from exc
    return _function_from_state(state, repr(path))


# What one archive member may expand to: its stored size times this (save()
# stores members uncompressed, ratio 1), or at least MEMBER_MIN_BOUND bytes.
cdef int64_t MEMBER_RATIO = 64
cdef int64_t MEMBER_MIN_BOUND = 1 << 20


def _reason(exc):
    """What went wrong, never an empty string: zipfile raises EOFError() and
    zlib errors without words, and a message must say something."""
    text = str(exc)
    if isinstance(exc, EOFError):
        return text or "its data end before the file does (EOFError)"
    return text or type(exc).__name__


cdef object _member_data_start(object fh, object info, object file_end):
    """Where a member's data begin, from its local header (as zipfile reads
    it: the header's own name and extra lengths), after checking that the
    header, and then the compressed bytes the central directory declares, lie
    inside the file."""
    import struct
    name = info.filename
    off = info.header_offset              # Python ints: zip64 fields reach 2**64 - 1
    if off < 0 or off + 30 > file_end:
        raise ValueError(f"member {name!r}: its header at offset {off} is past the end of the "
                         f"file ({file_end} bytes)")
    fh.seek(off)
    head = fh.read(30)
    if len(head) != 30 or head[:4] != b"PK\x03\x04":
        raise ValueError(f"member {name!r}: no local file header at offset {off}")
    n_name, n_extra = struct.unpack_from("<HH", head, 26)
    start = off + 30 + n_name + n_extra
    if start > file_end:
        raise ValueError(f"member {name!r}: its header at offset {off} runs {start - file_end} bytes "
                         f"past the end of the file ({file_end} bytes)")
    if info.compress_size > file_end - start:
        raise ValueError(f"member {name!r} claims {info.compress_size} compressed bytes but the file "
                         f"has only {file_end - start} after its header")
    return start


cdef dict _read_archive(object fh):
    """The arrays of an .npz archive that the format has (_STATE_DTYPES),
    each read only after checking what it may cost: unknown members are
    never decompressed; a known member whose header or compressed bytes lie
    outside the file, whose declared size exceeds its bound, or whose .npy
    header promises more data than the member holds, is refused before
    anything is allocated for it.  Every refusal of a member names it."""
    import zipfile
    from numpy.lib import format as npformat
    magic = fh.read(6)
    file_end = fh.seek(0, 2)
    fh.seek(0)
    if magic == npformat.MAGIC_PREFIX:
        raise ValueError("an .npy array, not an archive")
    state = {}
    with zipfile.ZipFile(fh) as zf:
        for key in _STATE_DTYPES:
            try:
                info = zf.getinfo(key + ".npy")
            except KeyError:
                continue                  # _function_from_state names it
            try:
                state[key] = _read_member(zf, fh, info, file_end)
            except MemoryError:
                raise
            except Exception as exc:
                reason = _reason(exc)
                if repr(info.filename) in reason:
                    raise
                raise ValueError(f"member {info.filename!r}: {reason}") from exc
    return state


cdef object _read_member(object zf, object fh, object info, object file_end):
    import zipfile
    from numpy.lib import format as npformat
    _member_data_start(fh, info, file_end)
    # The bound below rests on compress_size, now known to lie inside the
    # file; a stored member holds exactly what it declares.
    if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
        raise ValueError(f"member {info.filename!r} is stored uncompressed but declares "
                         f"{info.file_size} bytes in {info.compress_size}")
    bound = max(MEMBER_MIN_BOUND, MEMBER_RATIO * info.compress_size)
    if info.file_size > bound:
        raise ValueError(f"member {info.filename!r} expands to {info.file_size} bytes from "
                         f"{info.compress_size} (more than {bound})")
    with zf.open(info) as member:
        version = npformat.read_magic(member)
        if version == (1, 0):
            shape, fortran, dtype = npformat.read_array_header_1_0(member)
        elif version == (2, 0):
            shape, fortran, dtype = npformat.read_array_header_2_0(member)
        else:
            raise ValueError(f"member {info.filename!r}: unsupported .npy version {version}")
        if dtype.hasobject:
            raise ValueError("Object arrays cannot be loaded when allow_pickle=False")
        count = 1
        for d in shape:
            count *= d
        nbytes = count * dtype.itemsize
        if nbytes > info.file_size - member.tell():
            raise ValueError(f"member {info.filename!r} promises {nbytes} bytes of data "
                             f"in {info.file_size} bytes")
    with zf.open(info) as member:
        return npformat.read_array(member, allow_pickle=False)


cdef int _refuse_user_op(Graph g, int32_t node) except -1:
    v = _node_value(g, node)
    name = v.name
    what = f"the user-defined op {v._op!r}" + (f" (node {name!r})" if name else "")
    raise TypeError(
        f"compile(): {what} has a Python _backward, which a Function cannot replay; "
        "express it with fastgrad's ops instead (for example x.tanh(), x.exp(), x.log(), "
        "x.sigmoid(), x ** k, fastgrad.sum/dot, or arithmetic of those), so that every "
        "node has a rule in the op table")


def compile(fn, *example_args):
    """Trace fn once and freeze the graph into a Function.

    fn is called with one list of leaf Values per example argument (each a
    1-D sequence or array of numbers) and returns a Value or a sequence of
    Values (a number among them raises TypeError: it would replay as a
    constant).  The inputs are the Values fn was given, whatever fn then
    does to its lists.  The nodes reachable from the outputs are copied, in
    topological order, into a tape owned by the Function; sub-graphs that do
    not depend on the arguments are folded to constants.  Python control flow
    in fn runs once, now: the tape records the branch taken at the examples.
    fn must build from its arguments and numbers (Values from other graphs
    raise ValueError).
    """
    if not callable(fn):
        raise TypeError(f"compile() needs a callable, got {type(fn).__name__}")
    arrays = [_real_array(a, f"example argument {k}", 1) for k, a in enumerate(example_args)]
    cdef Graph g = Graph()
    cdef int64_t n_in = 0, n_out, k
    with g:
        lists = [[Value(x) for x in arr.tolist()] for arr in arrays]
        # The inputs as fn receives them, before it runs: whatever fn does to
        # its lists (sort, append, clear, replace), the tape's inputs are these.
        inputs_traced = tuple([v for lst in lists for v in lst])
        with enable_grad():         # a trace under no_grad() would record nothing
            result = fn(*lists)
        single = _is_value(result)
        if single:
            outs = [result]
        elif isinstance(result, (list, tuple)) or (isinstance(result, np.ndarray) and result.ndim == 1):
            outs = list(result)
        else:
            raise TypeError(f"compile(): fn must return a Value or a sequence of them, "
                            f"got {type(result).__name__}")
        if not outs:
            raise ValueError("compile(): fn returned no outputs")
        for k in range(len(outs)):
            if _is_value(outs[k]):
                if (<Value>outs[k]).graph is not g:
                    raise ValueError(f"compile(): output {k} belongs to {(<Value>outs[k]).graph!r}, "
                                     f"not to the traced graph {g!r}; build outputs from fn's arguments")
            else:
                # A number (say a float of fastgrad.grad) would replay as a
                # constant: the Function would be wrong for every other input.
                raise TypeError(f"compile(): output {k} is a {type(outs[k]).__name__}, not a Value "
                                "(fn must return Values built from its arguments)")
    n_in = len(inputs_traced)
    n_out = len(outs)
    cdef int32_t *inputs = <int32_t *>malloc((n_in + 1) * sizeof(int32_t))
    cdef int32_t *out_idx = <int32_t *>malloc((n_out + 1) * sizeof(int32_t))
    cdef Function f = Function.__new__(Function)
    try:
        if inputs == NULL or out_idx == NULL:
            raise MemoryError()
        _enter(g)
        for k in range(n_in):
            inputs[k] = (<Value>inputs_traced[k]).idx
        for k in range(n_out):
            out_idx[k] = (<Value>outs[k]).idx
        rc = fg_tape_build(&f.t, &g.g, n_in, inputs, n_out, out_idx)
        if rc == FG_EINVAL and g.g.nuser and fg_is_live(&g.g, g.g.err_node) \
                and g.g.op[g.g.err_node] == FG_OP_USER:
            _refuse_user_op(g, g.g.err_node)
        if rc != FG_OK:
            _raise_status(g, rc)
    finally:
        free(inputs)
        free(out_idx)
    f.sizes = tuple(len(a) for a in arrays)
    f.offsets = _offsets(f.sizes)
    f.single = single
    return f
