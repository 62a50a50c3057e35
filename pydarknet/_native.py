"""Loads the C core and turns its status codes into Python exceptions."""
import ctypes
import os


def _preload_openblas():
    """Loads OpenBLAS from the scipy-openblas32 package so the extension finds
    it whatever the install layout (editable installs included)."""
    try:
        import scipy_openblas32 as ob   # optional: a build without BLAS runs without it
    except ImportError:
        return
    libdir = ob.get_lib_dir()
    for name in sorted(os.listdir(libdir)):
        if name.startswith("lib" + ob.get_library()) and ".so" in name:
            ctypes.CDLL(os.path.join(libdir, name), mode=ctypes.RTLD_GLOBAL)
            return


_preload_openblas()

from ._core import ffi, lib  # noqa: E402


class DarknetError(RuntimeError):
    """An error reported by the C core (bad input, shapes that do not fit, ...)."""

    def __init__(self, message, status=None):
        super().__init__(message)
        self.status = status


STATUS_NAMES = {
    lib.DN_ERR_ARG: "bad argument",
    lib.DN_ERR_NOMEM: "out of memory",
    lib.DN_ERR_SHAPE: "shape mismatch",
    lib.DN_ERR_FORMAT: "bad format",
    lib.DN_ERR_IO: "I/O error",
    lib.DN_ERR_UNSUPPORTED: "unsupported",
    lib.DN_ERR_STATE: "bad state",
}


def last_error():
    return ffi.string(lib.dn_last_error()).decode("utf-8", "replace")


def check(status, context=None):
    """Raises DarknetError carrying the core's message when status is not DN_OK."""
    if status != lib.DN_OK:
        msg = last_error() or STATUS_NAMES.get(status, f"error {status}")
        raise DarknetError(f"{context}: {msg}" if context else msg, status)


def cuda_devices():
    """Names of the CUDA devices this build can use (empty without CUDA or devices)."""
    n = ffi.new("int *")
    if lib.dn_cuda_device_count(n) != lib.DN_OK:
        return []
    buf = ffi.new("char[256]")
    names = []
    for i in range(n[0]):
        check(lib.dn_cuda_device_name(i, buf, 256))
        names.append(ffi.string(buf).decode("utf-8", "replace"))
    return names


def blas_available():
    return bool(lib.dn_blas_available())


def cpu_kernel():
    """The CPU GEMM kernel in use: "avx512", "avx2" or "none" (OpenBLAS)."""
    return ffi.string(lib.dn_cpu_kernel()).decode()


def set_cpu_kernel(name):
    """Use another CPU kernel the CPU runs, for networks built afterwards (for measurements)."""
    check(lib.dn_set_cpu_kernel(str(name).encode()))


def tuning_file():
    """The file that keeps the choices measured on this machine (see
    set_tuning): its path, "" when they are kept in memory only, None when
    measuring is off and the fixed rules apply."""
    f = lib.dn_tuning_file()
    return ffi.string(f).decode("utf-8", "replace") if f != ffi.NULL else None


def set_tuning(file=None):
    """Where measured choices are kept: a file path, None for the default
    ($XDG_CACHE_HOME or ~/.cache, pydarknet/cpu-tuning.txt) or "off" (no
    measuring: the fixed rules). The environment variable PYDARKNET_TUNING
    sets the same when the library first needs it. Choices in memory are
    dropped; the new file is read at the next pass that needs it."""
    check(lib.dn_set_tuning(ffi.NULL if file is None else os.fsencode(file)))


def tuning_machine():
    """How the tuning file names this machine (CPU, family/model, caches, CPUs)."""
    return ffi.string(lib.dn_tuning_machine()).decode("utf-8", "replace")


def version():
    return ffi.string(lib.dn_version()).decode()
