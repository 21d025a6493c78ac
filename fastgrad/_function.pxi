# _function.pxi -- compiled replay: fastgrad.compile, Function, fastgrad.load.
# Included by _core.pyx (one extension module); the kernels are src_c/fg_tape.c.

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor, wait as _futures_wait

cdef int64_t FORMAT_VERSION = 1
# Below this many node-rows a batch is not split across threads: handing the
# work to a pool costs more than it saves.
cdef int64_t THREAD_MIN_WORK = 200_000
# A Function keeps its batch blocks between calls up to this many doubles each.
cdef int64_t BLOCK_CACHE_MAX = 8_000_000

_STATE_DTYPES = {
    "version": np.int64, "sizes": np.int64, "single": np.bool_,
    "op": np.uint8, "a": np.int32, "b": np.int32, "cst": np.float64,
    "opnd": np.int32, "ocst": np.float64, "out": np.int32,
}

_pool = None
_pool_size = 0


def _thread_pool(int n):
    global _pool, _pool_size
    if _pool is None or _pool_size < n:
        # The old pool is dropped, never shut down: another thread may hold it
        # between _thread_pool() and submit() (shutdown made that submit raise
        # RuntimeError).  Its idle workers exit when it is collected.
        _pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="fastgrad")
        _pool_size = n
    return _pool


cdef object _real_array(object arg, str name, int ndim):
    """arg as a C-contiguous float64 array of ndim dimensions, or an error naming it."""
    arr = np.asarray(arg)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got {type(arg).__name__} of dtype {arr.dtype}")
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.float64)


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


cdef void _rows(const fg_tape_t *t, int64_t ld, int64_t r0, int64_t r1, double *V, double *ADJ,
               const uint8_t *uni) noexcept nogil:
    fg_tape_forward(t, ld, r1 - r0, V + r0, uni)
    if ADJ != NULL:
        fg_tape_reverse(t, ld, r1 - r0, V + r0, ADJ + r0, NULL, uni)


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
    cdef object blocks          # cached (V, ADJ) node x row blocks of the last batch size
    cdef bint blocks_busy

    def __init__(self, *args, **kwargs):
        raise TypeError("Functions are made by fastgrad.compile() or fastgrad.load()")

    def __dealloc__(self):
        fg_tape_free(&self.t)
        free(self.ws)

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
        args, tangents = tuple(args), tuple(tangents)
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
        args = tuple(args)
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
        args = tuple(args)
        vs = (v,) if single else tuple(v)
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

    # ------------------------------------------------------------ batches

    cdef list _bounds(self, int64_t B, object threads):
        """Row ranges, one per thread: [b0=0, b1, ..., B]."""
        cdef int64_t nthreads, k
        if threads is None:
            nthreads = os.cpu_count() or 1
            if self.t.n * B < THREAD_MIN_WORK:
                nthreads = 1
        else:
            nthreads = threads
            if nthreads < 1:
                raise ValueError(f"threads must be >= 1, got {threads}")
        nthreads = max(1, min(nthreads, B))
        return [B * k // nthreads for k in range(nthreads + 1)]

    cdef tuple _take_blocks(self, int64_t B):
        """(V, ADJ), n x B each: the cached pair when free and of this size.
        Fresh blocks every call would cost page faults that dwarf the sweep."""
        c = self.blocks
        if not self.blocks_busy and c is not None and c[0].shape[1] == B:
            self.blocks_busy = True
            return c
        V = np.empty((self.t.n, B))
        c = (V, np.empty_like(V))
        if not self.blocks_busy and self.t.n * B <= BLOCK_CACHE_MAX:
            self.blocks = c
            self.blocks_busy = True
        return c

    cdef void _give_blocks(self, tuple c):
        if c is self.blocks:
            self.blocks_busy = False

    cdef tuple _batch_inputs(self, tuple args, object batch_argnums, str what, object threads):
        """(V, ADJ, B, bnums, uni, bounds): value and adjoint blocks (n x B),
        every batched input row written; shared inputs, uniform, are written
        only in each chunk's first row (the only row their readers read)."""
        self._check_nargs(args, what)
        bnums, _ = _argnums(batch_argnums, len(self.sizes))
        arrays = []
        cdef int64_t B = -1, k, i, size
        for k in range(len(args)):
            batched = k in bnums
            arr = _real_array(args[k], f"{what} argument {k}", 2 if batched else 1)
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
        bounds = self._bounds(B, threads)
        starts = bounds[:len(bounds) - 1] if B else []
        batched = np.zeros(self.t.n_in + 1, dtype=np.uint8)
        uni = np.empty(self.t.n + 1, dtype=np.uint8)
        for k in bnums:
            batched[self.offsets[k]:self.offsets[k] + self.sizes[k]] = 1
        cdef const uint8_t[::1] mb = batched
        cdef uint8_t[::1] mu = uni
        fg_tape_uniform(&self.t, &mb[0], &mu[0])
        blocks = self._take_blocks(B)
        V = blocks[0]
        try:
            for k in range(len(args)):
                off = self.offsets[k]
                size = self.sizes[k]
                if k in bnums:
                    V[off:off + size, :] = arrays[k].T
                elif B:
                    V[off:off + size, starts] = arrays[k][:, None]
        except BaseException:
            self._give_blocks(blocks)
            raise
        return blocks, B, bnums, uni, bounds

    cdef object _run_batch(self, object V, object ADJ, int64_t B, list bounds, object uni):
        """Runs the rows in chunks (bounds); returns the chunks' first rows
        (where the uniform nodes and their row-summed adjoints live)."""
        cdef int64_t nthreads = len(bounds) - 1, k
        cdef double[:, ::1] mV = V
        cdef double[:, ::1] mA
        cdef const uint8_t[::1] mu = uni
        cdef double *pV = &mV[0, 0] if B > 0 else NULL
        cdef double *pA = NULL
        if B == 0:
            return [0]
        if ADJ is not None:
            mA = ADJ
            pA = &mA[0, 0]
        if nthreads == 1:
            with nogil:
                _rows(&self.t, B, 0, B, pV, pA, &mu[0])
            return [0]
        pool = _thread_pool(nthreads - 1)
        futures = []
        try:
            for k in range(1, nthreads):
                futures.append(pool.submit(self._chunk, <size_t>pV, <size_t>pA, <size_t>&mu[0], B,
                                           bounds[k], bounds[k + 1]))
            self._chunk(<size_t>pV, <size_t>pA, <size_t>&mu[0], B, bounds[0], bounds[1])
        finally:
            # Whatever happened, no worker may still write into V and ADJ once
            # this returns or raises (the caller owns and frees them).
            _futures_wait(futures)
        for f in futures:
            f.result()
        return bounds[:nthreads]

    def _chunk(self, size_t pV, size_t pA, size_t pU, int64_t ld, int64_t r0, int64_t r1):
        # Rows [r0, r1) of the blocks at pV/pA; the caller keeps them alive.
        with nogil:
            _rows(&self.t, ld, r0, r1, <double *>pV, <double *>pA, <const uint8_t *>pU)

    def batch(self, *args, batch_argnums=(1,), threads=None):
        """Outputs for every row of the batched arguments.

        Arguments listed in batch_argnums are 2-D (rows x traced length), the
        others 1-D and shared by every row.  Returns shape (rows,) for one
        output, (rows, outputs) otherwise.  threads (default: all cores when
        the batch is large enough) split the rows with the GIL released.
        """
        args = tuple(args)
        if _has_dask(args):
            self._check_nargs(args, "batch")
            from fastgrad import _dask
            return _dask.batch(self, args, _argnums(batch_argnums, len(self.sizes))[0], threads)
        blocks, B, _, uni, bounds = self._batch_inputs(args, batch_argnums, "batch", threads)
        V = blocks[0]
        try:
            self._run_batch(V, None, B, bounds, uni)
            outs = np.empty((self.t.n_out, B))
            for k in range(self.t.n_out):
                # a uniform output was computed once per chunk, in its first row
                outs[k] = V[self.t.out[k], 0] if uni[self.t.out[k]] and B else V[self.t.out[k]]
            return outs[0] if self.single else np.ascontiguousarray(outs.T)
        finally:
            self._give_blocks(blocks)

    def batch_value_and_grad(self, *args, batch_argnums=(1,), argnums=0, threads=None):
        """(per-row values, gradient) of a scalar output over a batch.

        Rows of the batched arguments are independent inputs.  The gradient
        w.r.t. an unbatched argument is summed over rows (1-D); w.r.t. a
        batched one it is per row (rows x length).  A tuple argnums gives a
        tuple of gradients.
        """
        self._scalar_output("batch_value_and_grad")
        args = tuple(args)
        nums, single = _argnums(argnums, len(self.sizes))
        if _has_dask(args):
            self._check_nargs(args, "batch_value_and_grad")
            from fastgrad import _dask
            return _dask.batch_value_and_grad(self, args, _argnums(batch_argnums, len(self.sizes))[0],
                                              nums, single, threads)
        blocks, B, bnums, uni, bounds = self._batch_inputs(args, batch_argnums, "batch_value_and_grad",
                                                           threads)
        try:
            return self._value_and_grad_rows(blocks, B, bnums, uni, bounds, nums, single)
        finally:
            self._give_blocks(blocks)

    cdef tuple _value_and_grad_rows(self, tuple blocks, int64_t B, tuple bnums, object uni, list bounds,
                                    tuple nums, bint single):
        V, ADJ = blocks
        starts = self._run_batch(V, ADJ, B, bounds, uni)
        out = self.t.out[0]
        values = np.full(B, V[out, 0]) if uni[out] and B else V[out].copy()
        grads = []
        for k in nums:
            lo, hi = self.offsets[k], self.offsets[k] + self.sizes[k]
            if k in bnums:
                grads.append(np.array(ADJ[lo:hi].T, order="C"))   # a copy: ADJ is reused
            elif B == 0:
                grads.append(np.zeros(hi - lo))
            else:
                # shared inputs are uniform: each chunk summed its rows into its first row
                grads.append(ADJ[lo:hi][:, starts].sum(axis=1))
        return values, (grads[0] if single else tuple(grads))

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
            archive = np.load(fh, allow_pickle=False)
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise ValueError(f"an .npy array, not an archive")
            with archive:
                state = {key: archive[key] for key in archive.files}
        except Exception as exc:
            raise ValueError(f"{path!r} is not a saved fastgrad Function: {exc}") from exc
    return _function_from_state(state, repr(path))


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
    Values/numbers.  The nodes reachable from the outputs are copied, in
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
            elif _is_number(outs[k]):
                outs[k] = Value(outs[k])
            else:
                raise TypeError(f"compile(): output {k} is a {type(outs[k]).__name__}, not a Value or number")
    leaves = [v for lst in lists for v in lst]
    n_in = len(leaves)
    n_out = len(outs)
    cdef int32_t *inputs = <int32_t *>malloc((n_in + 1) * sizeof(int32_t))
    cdef int32_t *out_idx = <int32_t *>malloc((n_out + 1) * sizeof(int32_t))
    cdef Function f = Function.__new__(Function)
    try:
        if inputs == NULL or out_idx == NULL:
            raise MemoryError()
        for k in range(n_in):
            inputs[k] = (<Value>leaves[k]).idx
        for k in range(n_out):
            out_idx[k] = (<Value>outs[k]).idx
        _enter(g)
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
