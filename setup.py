"""Extension definitions only; metadata lives in pyproject.toml.

FASTGRAD_DEBUG=1      -O0 -g, C asserts on, Cython bounds checks on
FASTGRAD_SANITIZE=address,undefined   compile and link with those sanitizers
No -march=native unless FASTGRAD_NATIVE=1: wheels run on other machines.
"""

import os
import sys
from glob import glob

from Cython.Build import cythonize
from setuptools import Extension, setup

debug = os.environ.get("FASTGRAD_DEBUG", "") not in ("", "0")
sanitize = os.environ.get("FASTGRAD_SANITIZE", "")
native = os.environ.get("FASTGRAD_NATIVE", "") not in ("", "0")

compile_args = []
link_args = []
if sys.platform == "win32":
    # MSVC (2019+) compiles src_c's C99 as C: for-loop declarations, static inline.
    # Python's own flags carry /DNDEBUG; a debug build takes it back out.
    compile_args += ["/Od", "/Zi", "/UNDEBUG"] if debug else ["/O2"]
    if debug:
        link_args.append("/DEBUG")
    if "address" in sanitize:
        compile_args.append("/fsanitize=address")  # the one sanitizer MSVC has
else:
    # -ffp-contract=off: no fused multiply-add behind our back (clang fuses by
    # default), so every platform rounds the same way and replay equals the
    # dynamic engine bit for bit.
    compile_args += ["-std=c99", "-Wall", "-Wno-unused-function", "-ffp-contract=off"]
    # Python's CFLAGS carry -DNDEBUG; a debug build takes it back out. They also
    # carry -g: release builds drop the DWARF (a 3.7 MB extension becomes 0.7 MB).
    compile_args += ["-O0", "-g", "-UNDEBUG"] if debug else ["-O2", "-g0", "-fno-math-errno", "-DNDEBUG"]
    # Loops at 32-byte boundaries: without it, where the kernels' loops happen
    # to land moved replay and backward by up to +-10 % between unrelated edits
    # (gcc 12, x86_64); with it, within +-3 % and faster (value_and_grad
    # ~101 -> ~90 us on the demo MLP).  bench/cfloor.py builds its floors the same way.
    if not debug:
        compile_args.append("-falign-loops=32")
    if native:
        compile_args.append("-march=native")
    if sanitize:
        flags = [f"-fsanitize={sanitize}", "-fno-omit-frame-pointer", "-g"]
        if "undefined" in sanitize:
            flags.append("-fno-sanitize-recover=undefined")  # UB aborts, never just a log line
        compile_args += flags
        link_args += flags

directives = {
    "language_level": 3,
    "embedsignature": True,
    "boundscheck": debug,
    "wraparound": False,
    "cdivision": True,
    "initializedcheck": debug,
}

extensions = [
    Extension(
        "fastgrad._core",
        sources=["fastgrad/_core.pyx"] + sorted(glob("src_c/*.c")),
        include_dirs=["src_c"],
        depends=sorted(glob("src_c/*.h")) + ["fastgrad/_core.pxd"],  # header edits rebuild every file
        extra_compile_args=compile_args,
        extra_link_args=link_args,
    )
]

setup(ext_modules=cythonize(extensions, compiler_directives=directives))
