"""The C library and header of this installation, for C programs:

    cc prog.c $(python -m pydarknet --cflags --libs) -o prog

``pip install`` builds ``pydarknet/lib/libpydarknet.so`` and ``.a`` from the
same sources and flags as the extension and copies the public header to
``pydarknet/include/pydarknet.h`` (setup.py). ``--libs`` links the shared
library with a run-time path to it (the library finds OpenBLAS itself);
``--libs --static`` links the static library and what it needs (OpenBLAS
when the build uses it, libm, pthreads).
"""
from __future__ import annotations

import sys
from pathlib import Path

from ._native import blas_available

PACKAGE = Path(__file__).resolve().parent
FLAGS = ("--cflags", "--libs", "--static")


def include_dir() -> Path:
    return PACKAGE / "include"


def lib_dir() -> Path:
    return PACKAGE / "lib"


def cflags() -> list:
    return [f"-I{include_dir()}"]


def libs(static: bool = False) -> list:
    lib = lib_dir()
    if not static:
        return [f"-L{lib}", "-lpydarknet", f"-Wl,-rpath,{lib}"]
    out = [str(lib / "libpydarknet.a")]
    if blas_available():
        import scipy_openblas32 as ob   # optional: only builds that link OpenBLAS have it

        blas = ob.get_lib_dir()
        out += [f"-L{blas}", f"-l{ob.get_library()}", f"-Wl,-rpath,{blas}"]
    return out + ["-lm", "-lpthread"]


def missing() -> list:
    """The files of the C library that are not there (a source checkout not built yet)."""
    wanted = [include_dir() / "pydarknet.h", lib_dir() / "libpydarknet.so", lib_dir() / "libpydarknet.a"]
    return [p for p in wanted if not p.is_file()]


def main(argv) -> int:
    """Prints the flags asked for (``--cflags``, ``--libs``, ``--static``) on one line."""
    unknown = [a for a in argv if a not in FLAGS]
    if unknown or not ({"--cflags", "--libs"} & set(argv)):
        print(f"pydarknet: error: usage: pydarknet [--cflags] [--libs] [--static] (got {' '.join(argv)})",
              file=sys.stderr)
        return 2
    absent = missing()
    if absent:
        print(f"pydarknet: error: {absent[0]}: the C library is not built here (pip install . builds it; "
              "in a source checkout: python3 setup.py build_ext --inplace)", file=sys.stderr)
        return 1
    parts = (cflags() if "--cflags" in argv else []) + (libs("--static" in argv) if "--libs" in argv else [])
    print(" ".join(parts))
    return 0
