"""cffi builder for the C core (API mode).

The declarations between the DN_CDEF markers of the public header are fed to
``cdef`` and the same header is ``#include``d by ``set_source``, so the C
compiler checks the two against each other. OpenBLAS comes from the PyPI
package scipy-openblas32 when it is importable at build time (set
PYDARKNET_NO_BLAS=1 to build the portable GEMM only).

Compiler flags: PYDARKNET_CFLAGS (default -O3). The build stays portable:
the hot loops are compiled for several instruction sets and picked at load
time (GCC target_clones), and the GEMM kernel (AVX-512 or AVX2 + FMA) is chosen at run time
(add -DDN_NO_PACKED_GEMM or -DDN_NO_CLONES to leave either out). No
-ffast-math: results and NaN checks must not change (-fno-trapping-math,
always on, only gives up FP exception flags, which the library never reads).

cuDNN: with PYDARKNET_CUDNN=1 as well, the convolutions can run on cuDNN
(from the PyPI wheel nvidia-cudnn-cu13; switchable at run time, see
dn_net_set_cudnn), beside the im2col + cuBLAS path, which stays the default
build.

CUDA: with PYDARKNET_CUDA=1 the .cu files beside the C files are compiled by
nvcc (found as $NVCC, on PATH, or in $CUDA_HOME/bin) into objects linked into
the extension, with the CUDA runtime (static, from the toolkit) and cuBLAS
(from the PyPI wheel nvidia-cublas, or the toolkit). Target architectures:
PYDARKNET_CUDA_ARCH, a comma-separated list of compute capabilities, default
80,90 (machine code for each, and PTX for the last so newer GPUs can run it).

The same sources and flags also make the C library for C programs:
setup.py builds it beside the extension from the extension's settings, and
the top-level Makefile reads them from ``python3 pydarknet/_build_ffi.py
--print-make``.
"""
import contextlib
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
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
        import scipy_openblas32 as ob   # optional: without it the build has the portable GEMM only
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


def cuda_sources():
    return sorted(str(p) for d in ("core", "ops", "layers") for p in (SRC / d).glob("*.cu"))


def find_nvcc():
    """The nvcc to use, or None."""
    for cand in (os.environ.get("NVCC"), shutil.which("nvcc"),
                 os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc")):
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return None


def cuda_toolkit(nvcc):
    """The toolkit directory: CUDA_HOME when set, else the one holding nvcc
    (nvcc may be a wrapper elsewhere: then /usr/local/cuda)."""
    for cand in (os.environ.get("CUDA_HOME"), Path(os.path.realpath(nvcc)).parent.parent, "/usr/local/cuda"):
        if cand and (Path(cand) / "include" / "cuda_runtime.h").exists():
            return Path(cand)
    raise RuntimeError(f"the CUDA toolkit of {nvcc} was not found (set CUDA_HOME)")


def cublas_dirs(toolkit=None):
    """(include dir, library file) of cuBLAS: the nvidia-cublas wheel's, else the toolkit's; None when absent."""
    roots = []
    try:
        import nvidia   # optional: the nvidia-cublas wheel, for CUDA builds only

        roots += [Path(p) for p in nvidia.__path__]
    except ImportError:
        pass
    for root in roots:
        for inc in sorted(root.glob("*/include/cublas_v2.h")) + sorted(root.glob("cublas/include/cublas_v2.h")):
            libs = sorted(inc.parent.parent.joinpath("lib").glob("libcublas.so*"))
            if libs:
                return str(inc.parent), str(libs[0])
    if toolkit is not None:
        for lib in ("lib64", "lib", "targets/x86_64-linux/lib"):
            libs = sorted((toolkit / lib).glob("libcublas.so*"))
            if (toolkit / "include" / "cublas_v2.h").exists() and libs:
                return str(toolkit / "include"), str(libs[0])
    return None


def cudnn_dirs():
    """(include dir, library file) of cuDNN from the nvidia-cudnn wheel (nvidia-cudnn-cu13); None when absent."""
    try:
        import nvidia   # optional: the nvidia-cudnn wheel, for cuDNN builds only
    except ImportError:
        return None
    for root in [Path(p) for p in nvidia.__path__]:
        for inc in sorted(root.glob("cudnn/include/cudnn.h")):
            libs = sorted(inc.parent.parent.joinpath("lib").glob("libcudnn.so*"))
            if libs:
                return str(inc.parent), str(libs[0])
    return None


def cuda_archs():
    archs = [a.strip().replace(".", "") for a in os.environ.get("PYDARKNET_CUDA_ARCH", "80,90").split(",") if a.strip()]
    flags = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    return flags + [f"-gencode=arch=compute_{archs[-1]},code=compute_{archs[-1]}"]


def nvcc_command(nvcc, source, obj, includes, arch_flags, defines=()):
    """The nvcc command compiling one .cu file of the core to an object."""
    return [nvcc, "-c", "-O3", "-std=c++17", "-DDN_CUDA=1", *[f"-D{d}=1" for d in defines], "-D_GNU_SOURCE=1",
            "-Xcompiler", "-fPIC", f"-I{SRC / 'include'}", f"-I{SRC / 'core'}", *[f"-I{i}" for i in includes],
            *arch_flags, source, "-o", obj]


def compile_cuda(nvcc, includes, outdir, defines=()):
    """Compiles every .cu file (in parallel, skipping objects newer than their
    sources and the headers) and returns the object paths."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    headers = [p.stat().st_mtime for d in ("include", "core", "ops") for p in (SRC / d).glob("*.h")]
    arch_flags = cuda_archs()
    jobs = []
    for src in cuda_sources():
        rel = Path(src).relative_to(SRC)
        obj = outdir / (str(rel).replace(os.sep, "_") + ".o")
        newest = max([Path(src).stat().st_mtime] + headers)
        if not obj.exists() or obj.stat().st_mtime < newest:
            jobs.append(nvcc_command(nvcc, src, str(obj), includes, arch_flags, defines))

    def run(cmd):
        print(" ".join(cmd), file=sys.stderr)
        subprocess.run(cmd, check=True)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(run, jobs))
    return [str(outdir / (str(Path(s).relative_to(SRC)).replace(os.sep, "_") + ".o")) for s in cuda_sources()]


def cuda_config():
    """Compiler and linker settings for the CUDA build (PYDARKNET_CUDA=1), or None."""
    if os.environ.get("PYDARKNET_CUDA", "") in ("", "0"):
        return None
    nvcc = find_nvcc()
    if nvcc is None:
        raise RuntimeError("PYDARKNET_CUDA=1 but nvcc was not found (set NVCC or CUDA_HOME, or put nvcc on PATH)")
    toolkit = cuda_toolkit(nvcc)
    blas = cublas_dirs(toolkit)
    if blas is None:
        raise RuntimeError("PYDARKNET_CUDA=1 but cuBLAS was not found: pip install nvidia-cublas "
                           "(or pydarknet[cuda]), or use a CUDA toolkit that has it")
    cublas_include, cublas_lib = blas
    cudart = next((p for lib in ("lib64", "lib", "targets/x86_64-linux/lib")
                   for p in [toolkit / lib / "libcudart_static.a"] if p.exists()), None)
    if cudart is None:
        raise RuntimeError(f"PYDARKNET_CUDA=1 but libcudart_static.a was not found under {toolkit}")
    includes, libs, defines = [cublas_include], [cublas_lib], []
    if os.environ.get("PYDARKNET_CUDNN", "") not in ("", "0"):
        dnn = cudnn_dirs()
        if dnn is None:
            raise RuntimeError("PYDARKNET_CUDNN=1 but cuDNN was not found: pip install nvidia-cudnn-cu13")
        includes.append(dnn[0])
        libs.append(dnn[1])
        defines.append("DN_CUDNN")
    # one object folder per architecture list and cuDNN choice, so changing either never reuses objects
    archs = os.environ.get("PYDARKNET_CUDA_ARCH", "80,90").replace(",", "-").replace(" ", "")
    objects = compile_cuda(nvcc, includes, ROOT / "build" / "cuda" / f"sm-{archs}{'-cudnn' if defines else ''}",
                           defines)
    # cuBLAS (and cuDNN) are found next to this package in site-packages (the wheels' layout), else where they
    # were at build time
    rpaths = []
    for lib in libs:
        libdir = os.path.dirname(lib)
        rpaths += [f"-Wl,-rpath,$ORIGIN/../nvidia/{Path(libdir).parent.name}/lib", f"-Wl,-rpath,{libdir}"]
    return dict(
        define_macros=[("DN_CUDA", "1")] + [(d, "1") for d in defines],
        extra_objects=objects + [str(cudart)] + libs,
        libraries=["dl", "rt", "stdc++"],
        extra_link_args=rpaths,
    )


def build_ffi():
    ffi = FFI()
    ffi.cdef(public_declarations())
    ffi.cdef('extern "Python" void _pydarknet_log(int, const char *, void *);')
    ffi.cdef('extern "Python" dn_status _pydarknet_gradient_hook(dn_net *, void *, unsigned long long *);')
    ffi.cdef('extern "Python" dn_status _pydarknet_reduce_hook(dn_net *, void *, double *, size_t);')
    ffi.cdef('extern "Python" dn_status _pydarknet_bucket_hook(dn_net *, void *, size_t, size_t);')
    blas = blas_config() or {}
    cuda = cuda_config() or {}
    opt = os.environ.get("PYDARKNET_CFLAGS", "-O3").split()
    ffi.set_source(
        "pydarknet._core",
        '#include "pydarknet.h"\n',
        sources=c_sources(),
        include_dirs=[str(SRC / "include"), str(SRC / "core")] + blas.get("include_dirs", []),
        define_macros=[("_GNU_SOURCE", "1")] + blas.get("define_macros", []) + cuda.get("define_macros", []),
        # -fno-trapping-math: FP exception flags are never read, so conditional
        # arithmetic (leaky, clamps) can be vectorized; values are unchanged
        extra_compile_args=["-std=c11", "-Wall", "-Wno-unused-function", "-Werror=implicit-function-declaration",
                            "-fno-trapping-math"] + opt,
        libraries=["m", "pthread"] + blas.get("libraries", []) + cuda.get("libraries", []),
        library_dirs=blas.get("library_dirs", []),
        extra_objects=cuda.get("extra_objects", []),
        extra_link_args=blas.get("extra_link_args", []) + cuda.get("extra_link_args", []),
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
    and flags of the extension (the generated cffi glue left out), objects
    it links (the CUDA build's), the directories the linked libraries live
    in (also as run-time paths, with the absolute ones the extension names),
    and the library version from the header."""
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
        "DN_OBJECTS": " ".join(ext.extra_objects or []),
        "DN_LDFLAGS": " ".join([f"-L{d}" for d in dirs] + [f"-Wl,-rpath,{d}" for d in dirs]
                               + [a for a in ext.extra_link_args if "$ORIGIN" not in a]),
        "DN_LDLIBS": " ".join(f"-l{name}" for name in ext.libraries),
    }


if __name__ == "__main__":
    if sys.argv[1:] == ["--print-make"]:
        print("\n".join(f"{k} = {v}" for k, v in make_variables().items()))
    else:
        ffibuilder.compile(verbose=True)
