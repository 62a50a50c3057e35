"""Build script: the C core becomes the cffi extension pydarknet._core and,
from the same sources compiled with the same compiler and flags, the C
library for C programs: pydarknet/lib/libpydarknet.so and libpydarknet.a
beside the public header, copied to pydarknet/include/pydarknet.h
(``python -m pydarknet --cflags --libs`` gives the flags to use them)."""
import hashlib
import os
import shutil
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))
HEADER = os.path.join("src_c", "include", "pydarknet.h")

# cffi's builder module lives inside the package; make it importable from a
# source checkout during the build.
sys.path.insert(0, ROOT)


def library_rpath(arg):
    """A link argument of the extension for the library one folder deeper
    (pydarknet/lib/): run-time paths relative to $ORIGIN reach one level higher."""
    return arg.replace("-Wl,-rpath,$ORIGIN/", "-Wl,-rpath,$ORIGIN/../")


def build_variant():
    """The build settings that change what the C sources compile to. Objects
    are kept per variant, so switching (e.g. PYDARKNET_CUDA=1 after a CPU
    build in the same checkout) never links objects of the other one."""
    keys = ("PYDARKNET_CUDA", "PYDARKNET_CUDA_ARCH", "PYDARKNET_CUDNN", "PYDARKNET_NO_BLAS", "PYDARKNET_CFLAGS")
    text = ";".join(f"{k}={os.environ.get(k, '')}" for k in keys)
    return "variant-" + hashlib.sha1(text.encode()).hexdigest()[:12]


class BuildExtAndLibrary(build_ext):
    """build_ext, then the C library from the extension's C sources and settings."""

    def finalize_options(self):
        super().finalize_options()
        self.build_temp = os.path.join(self.build_temp, build_variant())

    def run(self):
        super().run()
        ext = next(e for e in self.extensions if e.name == "pydarknet._core")
        package = os.path.join(ROOT if self.inplace else self.build_lib, "pydarknet")
        self.build_library(ext, os.path.join(package, "lib"))
        include = os.path.join(package, "include")
        os.makedirs(include, exist_ok=True)
        shutil.copyfile(os.path.join(ROOT, HEADER), os.path.join(include, "pydarknet.h"))

    def build_library(self, ext, libdir):
        sources = [s for s in ext.sources if s.replace(os.sep, "/").startswith("src_c/")]
        shared = os.path.join(libdir, "libpydarknet.so")
        inputs = sources + [HEADER, os.path.join("src_c", "core", "internal.h")]
        stamp = os.path.join(libdir, ".variant")
        if not self.force and os.path.exists(shared) and _read(stamp) == build_variant() and \
                os.path.getmtime(shared) >= max(os.path.getmtime(p) for p in inputs):
            return
        objects = self.compiler.compile(
            sources, output_dir=os.path.join(self.build_temp, "libpydarknet"), macros=ext.define_macros,
            include_dirs=ext.include_dirs, extra_postargs=ext.extra_compile_args + ["-fvisibility=hidden"])
        objects += list(ext.extra_objects or [])
        os.makedirs(libdir, exist_ok=True)
        self.compiler.create_static_lib(objects, "pydarknet", output_dir=libdir)
        rpaths = [f"-Wl,-rpath,{d}" for d in ext.library_dirs] + [library_rpath(a) for a in ext.extra_link_args]
        self.compiler.link_shared_object(objects, shared, libraries=ext.libraries, library_dirs=ext.library_dirs,
                                         extra_postargs=rpaths)
        with open(stamp, "w") as f:
            f.write(build_variant())


def _read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


setup(cffi_modules=["pydarknet/_build_ffi.py:ffibuilder"], cmdclass={"build_ext": BuildExtAndLibrary})
