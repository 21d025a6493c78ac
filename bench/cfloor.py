"""The plain-C floor for the random_backward workload: compile bench/floor.c at run
time with the compiler Python's extensions are built with, load it with ctypes, and
run it over fastgrad's own node arrays.
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
CFLAGS = ["-O2", "-shared", "-fPIC"]

_P = ctypes.c_void_p


def compiler() -> list[str]:
    cc = sysconfig.get_config_var("CC") or "cc"
    return shlex.split(cc)


class Floor:
    """floor_backward() compiled for one op-code table."""

    def __init__(self, codes: dict[str, int]):
        missing = [name for name in FLOOR_OPS if name not in codes]
        if missing:
            raise RuntimeError(f"fastgrad has no op code for {missing}")
        self.codes = {name: int(codes[name]) for name in FLOOR_OPS}
        self.tmp = tempfile.TemporaryDirectory(prefix="fastgrad-floor-")
        lib = os.path.join(self.tmp.name, "floor.so")
        defs = [f"-DOP_{name}={code}" for name, code in self.codes.items()]
        self.flags = " ".join(compiler() + CFLAGS)
        self.command = compiler() + CFLAGS + defs + [SOURCE, "-o", lib, "-lm"]
        proc = subprocess.run(self.command, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"compiling the C floor failed: {' '.join(self.command)}\n{proc.stderr}")
        self.lib = ctypes.CDLL(lib)
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
