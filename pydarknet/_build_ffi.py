"""cffi builder for the C core (API mode).

The declarations between the DN_CDEF markers of the public header are fed to
``cdef`` and the same header is ``#include``d by ``set_source``, so the C
compiler checks the two against each other. OpenBLAS comes from the PyPI
package scipy-openblas32 when it is importable at build time (set
PYDARKNET_NO_BLAS=1 to build the portable GEMM only).

Compiler flags: PYDARKNET_CFLAGS (default -O3). The build stays portable:
the hot loops are compiled for several instruction sets and picked at load
time (GCC target_clones), and the AVX-512 GEMM kernel is chosen at run time
(add -DDN_NO_PACKED_GEMM or -DDN_NO_CLONES to leave either out). No
-ffast-math: results and NaN checks must not change (-fno-trapping-math,
always on, only gives up FP exception flags, which the library never reads).
"""
import os
import re
import sys
from pathlib import Path

from cffi import FFI

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src_c"
HEADER = SRC / "include" / "pydarknet.h"


def public_declarations(header=HEADER):
    text = header.read_text()
    m = re.search(r"/\* DN_CDEF_BEGIN \*/(.*)/\* DN_CDEF_END \*/", text, re.S)
    if not m:
        raise RuntimeError(f"{header}: DN_CDEF markers not found")
    return m.group(1)


def c_sources():
    return sorted(str(p.relative_to(ROOT)) for d in ("core", "ops", "layers") for p in (SRC / d).glob("*.c"))


def blas_config():
    """Compiler and linker settings for OpenBLAS, or None to build without it."""
    if os.environ.get("PYDARKNET_NO_BLAS", "") not in ("", "0"):
        return None
    try:
        import scipy_openblas32 as ob
    except ImportError:
        print("pydarknet: scipy-openblas32 not found; building the portable GEMM only", file=sys.stderr)
        return None
    libdir = ob.get_lib_dir()
    return dict(
        define_macros=[("DN_USE_BLAS", "1"), ("DN_BLAS_PREFIX", "scipy_")],
        include_dirs=[ob.get_include_dir()],
        library_dirs=[libdir],
        libraries=[ob.get_library()],
        # found at run time next to this package in site-packages; the
        # package also loads it explicitly before importing the extension
        extra_link_args=["-Wl,-rpath,$ORIGIN/../scipy_openblas32/lib"],
    )


def build_ffi():
    ffi = FFI()
    ffi.cdef(public_declarations())
    ffi.cdef('extern "Python" void _pydarknet_log(int, const char *, void *);')
    blas = blas_config() or {}
    opt = os.environ.get("PYDARKNET_CFLAGS", "-O3").split()
    ffi.set_source(
        "pydarknet._core",
        '#include "pydarknet.h"\n',
        sources=c_sources(),
        include_dirs=[str(SRC / "include"), str(SRC / "core")] + blas.get("include_dirs", []),
        define_macros=[("_GNU_SOURCE", "1")] + blas.get("define_macros", []),
        # -fno-trapping-math: FP exception flags are never read, so conditional
        # arithmetic (leaky, clamps) can be vectorized; values are unchanged
        extra_compile_args=["-std=c11", "-Wall", "-Wno-unused-function", "-Werror=implicit-function-declaration",
                            "-fno-trapping-math"] + opt,
        libraries=["m", "pthread"] + blas.get("libraries", []),
        library_dirs=blas.get("library_dirs", []),
        extra_link_args=blas.get("extra_link_args", []),
    )
    return ffi


ffibuilder = build_ffi()

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
