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

The same sources and flags also make the C library for C programs:
setup.py builds it beside the extension from the extension's settings, and
the top-level Makefile reads them from ``python3 pydarknet/_build_ffi.py
--print-make``.
"""
import contextlib
import io
import os
import re
import sys
import tempfile
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


def library_extension():
    """The extension's sources and compiler/linker settings as cffi hands
    them to setuptools, for building the same code as a plain C library."""
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        return ffibuilder.distutils_extension(tmp, verbose=False)


def make_variables():
    """Makefile assignments for the C library (``--print-make``): the sources
    and flags of the extension (the generated cffi glue left out), the
    directories the linked libraries live in (also as run-time paths), and
    the library version from the header."""
    ext = library_extension()
    sources = [s for s in ext.sources if not os.path.isabs(s)]
    macros = [f"-D{k}" if v is None else f"-D{k}={v}" for k, v in ext.define_macros]
    dirs = ext.library_dirs
    version = ".".join(re.search(rf"#define DN_VERSION_{part} (\d+)", HEADER.read_text()).group(1)
                       for part in ("MAJOR", "MINOR"))
    return {
        "DN_VERSION": version,
        "DN_SOURCES": " ".join(sources),
        "DN_CFLAGS": " ".join(ext.extra_compile_args + macros + [f"-I{d}" for d in ext.include_dirs]),
        "DN_LDFLAGS": " ".join([f"-L{d}" for d in dirs] + [f"-Wl,-rpath,{d}" for d in dirs]),
        "DN_LDLIBS": " ".join(f"-l{name}" for name in ext.libraries),
    }


if __name__ == "__main__":
    if sys.argv[1:] == ["--print-make"]:
        print("\n".join(f"{k} = {v}" for k, v in make_variables().items()))
    else:
        ffibuilder.compile(verbose=True)
