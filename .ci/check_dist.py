"""Check what the sdist and the wheel hold, against the checkout they came from.

    python .ci/check_dist.py --root . --sdist dist/fastgrad-X.tar.gz --wheel dist/fastgrad-X-*.whl

sdist: every file a source build needs (setup.py, pyproject.toml, README,
LICENSE, CHANGELOG, fastgrad/*.py/.pyx/.pxd/.pxi/.pyi, py.typed, every
src_c/*.c and *.h) and the tests and examples; no generated C (_core.c), no
binaries, no caches. wheel: the package, the compiled extension, the stubs
and py.typed; no generated C, no tests, no bench. Exit status 1 on any miss.
"""

from __future__ import annotations

import argparse
import sys
import tarfile
import zipfile
from fnmatch import fnmatch
from pathlib import Path

SDIST_TOP = ["setup.py", "pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md", "MANIFEST.in", "PKG-INFO"]
SDIST_GLOBS = ["fastgrad/*.py", "fastgrad/*.pyx", "fastgrad/*.pxd", "fastgrad/*.pxi", "fastgrad/*.pyi",
               "fastgrad/py.typed", "src_c/*.c", "src_c/*.h", "tests/*.py", "examples/*.py"]
NEVER = ["fastgrad/_core.c", "*.so", "*.pyd", "*.dll", "*.dylib", "*.o", "*.obj", "*.pyc",
         "*__pycache__*", "*.hypothesis*", "build/*", "bench/*", ".venv*", "dist/*"]
WHEEL_NEVER = NEVER[:1] + ["*.o", "*.obj", "*.pyc", "tests/*", "bench/*", "examples/*", "src_c/*"]


def fail(problems: list[str], what: str) -> None:
    for p in problems:
        print(f"  MISSING/WRONG in {what}: {p}")


def check_sdist(root: Path, sdist: Path) -> list[str]:
    with tarfile.open(sdist) as tf:
        names = [m.name for m in tf.getmembers() if m.isfile()]
    tops = {n.split("/", 1)[0] for n in names}
    if len(tops) != 1:
        return [f"expected one top-level directory, got {sorted(tops)}"]
    files = {n.split("/", 1)[1] for n in names if "/" in n}
    expected = set(SDIST_TOP)
    for pattern in SDIST_GLOBS:
        expected |= {p.relative_to(root).as_posix() for p in root.glob(pattern)}
    problems = [f"{f} (in the checkout, not in the sdist)" for f in sorted(expected - files)]
    if not any(fnmatch(f, "src_c/*.h") for f in files):
        problems.append("no src_c/*.h at all")
    problems += [f"{f} (must never ship)" for f in sorted(files)
                 if any(fnmatch(f, pat) for pat in NEVER)]
    print(f"sdist {sdist.name}: {len(files)} files, "
          f"{sum(fnmatch(f, 'src_c/*.h') for f in files)} headers, "
          f"{sum(fnmatch(f, 'src_c/*.c') for f in files)} C sources, "
          f"{sum(fnmatch(f, 'tests/*.py') for f in files)} test files")
    return problems


def check_wheel(root: Path, wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        files = set(zf.namelist())
    pkg = {f for f in files if f.startswith("fastgrad/")}
    expected = {"fastgrad/_core.pyi", "fastgrad/py.typed"}
    expected |= {"fastgrad/" + p.name for p in (root / "fastgrad").glob("*.py")}
    problems = [f"{f} (not in the wheel)" for f in sorted(expected - files)]
    cores = [f for f in pkg if fnmatch(f, "fastgrad/_core.*.so") or fnmatch(f, "fastgrad/_core.*.pyd")
             or f in ("fastgrad/_core.so", "fastgrad/_core.pyd")]
    if len(cores) != 1:
        problems.append(f"expected one compiled fastgrad/_core extension, got {cores}")
    problems += [f"{f} (must never ship in a wheel)" for f in sorted(files)
                 if any(fnmatch(f, pat) for pat in WHEEL_NEVER)]
    if not any(f.endswith(".dist-info/licenses/LICENSE") or f.endswith(".dist-info/LICENSE") for f in files):
        problems.append("LICENSE not in the .dist-info")
    print(f"wheel {wheel.name}: {len(files)} files: " + ", ".join(sorted(pkg)))
    return problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent)
    ap.add_argument("--sdist", type=Path)
    ap.add_argument("--wheel", type=Path, action="append", default=[])
    args = ap.parse_args()
    bad = 0
    if args.sdist:
        problems = check_sdist(args.root.resolve(), args.sdist)
        fail(problems, args.sdist.name)
        bad += len(problems)
    for wheel in args.wheel:
        problems = check_wheel(args.root.resolve(), wheel)
        fail(problems, wheel.name)
        bad += len(problems)
    if not args.sdist and not args.wheel:
        ap.error("nothing to check: give --sdist and/or --wheel")
    print("dist check: OK" if not bad else f"dist check: {bad} problem(s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
