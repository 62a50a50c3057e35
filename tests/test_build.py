"""The C core builds on its own: without any BLAS (the portable GEMM), with
warnings as errors, and the public header compiles as C and as C++."""
import ctypes
import shutil
import subprocess

import pytest

from conftest import ROOT

SRC = ROOT / "src_c"
CC = shutil.which("cc") or shutil.which("gcc")
pytestmark = pytest.mark.skipif(CC is None, reason="no C compiler")


def sources():
    return sorted(str(p) for d in ("core", "ops", "layers") for p in (SRC / d).glob("*.c"))


def test_core_builds_without_blas_and_warning_free(tmp_path):
    lib = tmp_path / "libcore.so"
    cmd = [CC, "-std=c11", "-O1", "-Wall", "-Wextra", "-Werror", "-D_GNU_SOURCE", "-fPIC", "-shared",
           f"-I{SRC / 'include'}", f"-I{SRC / 'core'}", *sources(), "-o", str(lib), "-lm"]
    subprocess.run(cmd, check=True, capture_output=True)
    core = ctypes.CDLL(str(lib))
    assert core.dn_blas_available() == 0
    core.dn_version.restype = ctypes.c_char_p
    assert core.dn_version() == b"0.1"
    # the portable build refuses to switch BLAS on, with a message
    net = ctypes.c_void_p()
    assert core.dn_net_create(1, 3, 8, 8, ctypes.byref(net)) == 0
    assert core.dn_net_set_blas(net, 1) == 6
    core.dn_last_error.restype = ctypes.c_char_p
    assert b"no BLAS" in core.dn_last_error()
    core.dn_net_free(net)


@pytest.mark.parametrize("lang,compiler", [("c", "cc"), ("c++", "c++")])
def test_public_header_compiles(tmp_path, lang, compiler):
    exe = shutil.which(compiler) or shutil.which("g++" if lang == "c++" else "gcc")
    if exe is None:
        pytest.skip(f"no {lang} compiler")
    src = tmp_path / ("h.cpp" if lang == "c++" else "h.c")
    src.write_text('#include "pydarknet.h"\nint main(void) { dn_net *n = 0; dn_net_free(n); return 0; }\n')
    subprocess.run([exe, "-Wall", "-Werror", "-fsyntax-only", f"-I{SRC / 'include'}", str(src)], check=True)
