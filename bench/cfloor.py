"""The plain-C floors: compiled at run time with the compiler Python's extensions
are built with, loaded with ctypes, and run over fastgrad's own arrays.

Floor       bench/floor.c, random_backward: one reverse sweep over a Graph's node arrays.
TapeFloor   bench/tapefloor.c, mlp_compiled: SGD steps (forward, reverse, update) over
            a compiled Function's tape (Function._state()).
"""

from __future__ import annotations

import ctypes
import os
import shlex
import subprocess
import sysconfig
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(HERE, "floor.c")

# The ops floor.c has a case for, by fastgrad's C enum name (FG_OP_<NAME>).
FLOOR_OPS = ("LEAF", "ADD", "SUB", "MUL", "TANH", "RELU", "NEG", "ADDC", "MULC")
# Parents each op reads: the topological check uses it.
ARITY = {"LEAF": 0, "ADD": 2, "SUB": 2, "MUL": 2, "TANH": 1, "RELU": 1, "NEG": 1,
         "ADDC": 1, "MULC": 1}
CFLAGS = ["-O2", "-falign-loops=32", "-shared", "-fPIC"]

_P = ctypes.c_void_p


def compiler() -> list[str]:
    cc = sysconfig.get_config_var("CC") or "cc"
    return shlex.split(cc)


def build(source: str, cflags: list[str], codes: dict[str, int], what: str):
    """Compiles source with -DOP_<name>=<code> into a temporary shared library.
    Returns (its TemporaryDirectory, the loaded CDLL, the flags, the command)."""
    tmp = tempfile.TemporaryDirectory(prefix="fastgrad-floor-")
    lib = os.path.join(tmp.name, "floor.so")
    defs = [f"-DOP_{name}={code}" for name, code in codes.items()]
    command = compiler() + cflags + defs + [source, "-o", lib, "-lm"]
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"compiling {what} failed: {' '.join(command)}\n{proc.stderr}")
    return tmp, ctypes.CDLL(lib), " ".join(compiler() + cflags), command


class Floor:
    """floor_backward() compiled for one op-code table."""

    def __init__(self, codes: dict[str, int]):
        missing = [name for name in FLOOR_OPS if name not in codes]
        if missing:
            raise RuntimeError(f"fastgrad has no op code for {missing}")
        self.codes = {name: int(codes[name]) for name in FLOOR_OPS}
        self.tmp, self.lib, self.flags, self.command = build(SOURCE, CFLAGS, self.codes, "the C floor")
        fn = self.lib.floor_backward
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.c_int64, ctypes.c_int32, _P, _P, _P, _P, _P, _P]
        self.fn = fn

    def check_arrays(self, arrs: dict[str, np.ndarray], n: int) -> None:
        """Only known ops, and creation order is a topological order (parents precede)."""
        op = arrs["op"][:n]
        known = np.array(sorted(self.codes.values()))
        if not np.isin(op, known).all():
            bad = sorted(set(np.unique(op).tolist()) - set(known.tolist()))
            raise RuntimeError(f"graph holds op codes the floor does not know: {bad}")
        idx = np.arange(n)
        for name, arity in ARITY.items():
            sel = op == self.codes[name]
            if arity >= 1 and not (arrs["a"][:n][sel] < idx[sel]).all():
                raise RuntimeError(f"creation order is not topological ({name}: a >= index)")
            if arity >= 2 and not (arrs["b"][:n][sel] < idx[sel]).all():
                raise RuntimeError(f"creation order is not topological ({name}: b >= index)")

    def bind(self, arrs: dict[str, np.ndarray], n: int, out: int):
        """A zero-argument callable running the floor; returns (callable, grad array).

        op/a/b/val/cst are read in place (fastgrad's own buffers when its views are
        contiguous); grad is a private array, fastgrad's grad view is read-only.
        """
        keep = {}
        for key, dtype in (("op", np.uint8), ("a", np.int32), ("b", np.int32),
                           ("val", np.float64), ("cst", np.float64)):
            arr = arrs[key]
            if arr.dtype != dtype or not arr.flags.c_contiguous:
                arr = np.ascontiguousarray(arr, dtype=dtype)
            keep[key] = arr
        grad = np.zeros(n, dtype=np.float64)
        keep["grad"] = grad
        args = (ctypes.c_int64(n), ctypes.c_int32(out),
                *(_P(keep[k].ctypes.data) for k in ("op", "a", "b", "val", "cst", "grad")))
        fn = self.fn

        def run(_keep=keep):  # the buffers live as long as the pointers into them
            if fn(*args) != 0:
                raise RuntimeError("floor_backward met an unknown op")

        return run, grad


TAPE_SOURCE = os.path.join(HERE, "tapefloor.c")
# The ops tapefloor.c has a case for; a tape holding another op is refused.
TAPE_OPS = ("LEAF", "CONST", "ADD", "SUB", "MUL", "NEG", "ADDC", "MULC", "RELU", "TANH", "SUM", "DOT")
# setup.py's release optimisation flags.  Not Python's -fwrapv, which the extension
# inherits from sysconfig's CFLAGS: with it this loop ran ~10% slower (102 vs 92 us
# per MLP step), and a floor is the fastest plain loop, not a copy of our flags.
TAPE_CFLAGS = ["-O2", "-falign-loops=32", "-fno-math-errno", "-std=c99", "-shared", "-fPIC"]


class TapeFloor:
    """tape_sgd_steps() over one compiled Function's tape.

    `state` is Function._state(); `codes` fastgrad._core.op_codes().  The tape's
    inputs are its arguments in order; the first `n_params` are the parameters
    the SGD step updates.
    """

    def __init__(self, codes: dict[str, int], state: dict[str, np.ndarray], n_params: int):
        missing = [name for name in TAPE_OPS if name not in codes]
        if missing:
            raise RuntimeError(f"fastgrad has no op code for {missing}")
        self.codes = {name: int(codes[name]) for name in TAPE_OPS}
        op = state["op"]
        known = np.array(sorted(self.codes.values()))
        if not np.isin(op, known).all():
            names = {int(v): k for k, v in codes.items()}
            bad = sorted(names[int(c)] for c in set(np.unique(op).tolist()) - set(known.tolist()))
            raise RuntimeError(f"the tape holds ops the floor does not know: {bad}")
        if state["out"].shape[0] != 1:
            raise RuntimeError("the tape floor needs one scalar output")
        self.n = int(op.shape[0])
        self.n_in = int(state["sizes"].sum())
        if not (op[:self.n_in] == self.codes["LEAF"]).all():
            raise RuntimeError("the tape's first nodes are not its inputs")
        self.n_params = int(n_params)
        self.tmp, self.lib, self.flags, self.command = build(TAPE_SOURCE, TAPE_CFLAGS, self.codes,
                                                             "the tape floor")
        fn = self.lib.tape_sgd_steps
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.c_int64, _P, ctypes.c_int64, ctypes.c_int64] + [_P] * 6 + \
            [ctypes.c_int32, _P, ctypes.c_int64, _P, _P, _P]
        self.fn = fn
        self.arrays = {key: np.ascontiguousarray(state[key], dtype=dtype)
                       for key, dtype in (("op", np.uint8), ("a", np.int32), ("b", np.int32),
                                          ("cst", np.float64), ("opnd", np.int32), ("ocst", np.float64))}
        self.out = int(state["out"][0])

    def bind(self, inputs: np.ndarray, steps: int):
        """A zero-argument callable taking `steps` SGD steps from `inputs` (all the
        tape's arguments concatenated, parameters first; updated in place).
        Returns (callable, state) where state["v"], state["g"] are the value and
        adjoint arrays and state["loss"] the last loss."""
        inputs = np.ascontiguousarray(inputs, dtype=np.float64)
        if inputs.shape != (self.n_in,):
            raise ValueError(f"the tape has {self.n_in} inputs, got {inputs.shape}")
        keep = dict(self.arrays)
        keep.update(inputs=inputs, v=np.zeros(self.n), g=np.zeros(self.n),
                    k=np.zeros(1, np.int64), loss=np.zeros(1))
        ptr = {name: _P(arr.ctypes.data) for name, arr in keep.items()}
        args = (ctypes.c_int64(steps), ptr["k"], ctypes.c_int64(self.n), ctypes.c_int64(self.n_in),
                ptr["op"], ptr["a"], ptr["b"], ptr["cst"], ptr["opnd"], ptr["ocst"],
                ctypes.c_int32(self.out), ptr["inputs"], ctypes.c_int64(self.n_params),
                ptr["v"], ptr["g"], ptr["loss"])
        fn = self.fn

        def run(_keep=keep):  # the buffers live as long as the pointers into them
            if fn(*args) != 0:
                raise RuntimeError("tape_sgd_steps met an unknown op")

        return run, keep
