"""The C library from C programs. examples/detect.c is built with `cc` using
only the installed header and library (`python -m pydarknet --cflags --libs`,
shared and static), against `make install` and its pkg-config file, and
with AddressSanitizer + UBSan over the example and every library source (and
run under valgrind where installed). Its detections must equal net.detect
from Python on the same image; bad input must end with a message and exit
status 1, with no leak or invalid access."""
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

import pydarknet
from pydarknet import write_model

from conftest import ROOT, randomize, small_detector
from test_modelfile import TINY

CC = shutil.which("cc") or shutil.which("gcc")
EXAMPLE = ROOT / "examples" / "detect.c"
THRESH, NMS = 0.3, 0.45
pytestmark = pytest.mark.skipif(CC is None, reason="no C compiler")


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    folder = tmp_path_factory.mktemp("embed")
    net, _, _ = small_detector(folder)
    model = folder / "model.pdn"
    write_model(net, model)
    image = cv2.imread(str(ROOT / "data" / "dog.jpg"))
    ppm = folder / "dog.ppm"
    assert cv2.imwrite(str(ppm), image)  # binary P6, R,G,B order
    expected = net.detect(image, thresh=THRESH, nms=NMS)
    assert len(expected) > 5
    return SimpleNamespace(folder=folder, model=model, ppm=ppm, expected=expected, threads=net.threads)


def pydarknet_flags(*flags):
    # run from beside the package the tests import (the installed one in CI,
    # not the source folder that the current directory would put first)
    beside = os.path.dirname(os.path.dirname(os.path.abspath(pydarknet.__file__)))
    r = subprocess.run([sys.executable, "-m", "pydarknet", *flags], capture_output=True, text=True, cwd=beside)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


def build(exe, flags, extra=()):
    cmd = [CC, "-std=c11", "-Wall", "-Wextra", "-Werror", *extra, str(EXAMPLE), "-o", str(exe), *flags]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stderr}"
    return exe


def run(exe, *args, prefix=(), env=None):
    return subprocess.run([*prefix, str(exe), *map(str, args)], capture_output=True, text=True, timeout=300,
                          env=env)


def detect(exe, case, prefix=(), env=None, threads=None):
    r = run(exe, case.model, case.ppm, "-thresh", THRESH, "-nms", NMS, "-threads", threads or case.threads,
            prefix=prefix, env=env)
    assert r.returncode == 0, r.stderr
    return r


def assert_matches(stdout, expected):
    """The example's lines against Python's detections: same classes in the
    same order; confidences (printed to 6 decimals) and boxes (to 3) equal
    within the printing plus float32 rounding of a build with other flags."""
    rows = [line.split(" ", 6) for line in stdout.splitlines()]
    assert [int(r[0]) for r in rows] == [d.class_id for d in expected]
    assert [r[6] for r in rows] == [d.name for d in expected]
    np.testing.assert_allclose([float(r[1]) for r in rows], [d.confidence for d in expected], rtol=0, atol=3e-6)
    np.testing.assert_allclose([[float(v) for v in r[2:6]] for r in rows],
                               [[d.x, d.y, d.w, d.h] for d in expected], rtol=1e-5, atol=2e-3)


def bad_inputs(case):
    """(arguments, exit status, text of the message) for input the example must refuse."""
    folder = case.folder
    data = case.model.read_bytes()
    (folder / "cut.pdn").write_bytes(data[:len(data) // 2])
    (folder / "cut.ppm").write_bytes(case.ppm.read_bytes()[:5000])
    (folder / "text.pdn").write_text("[net]\nwidth=416\n")
    return [
        ((folder / "missing.pdn", case.ppm), 1, "missing.pdn: cannot open model file"),
        ((folder / "cut.pdn", case.ppm), 1, "cut.pdn: byte offset 12"),
        ((folder / "text.pdn", case.ppm), 1, "not a pydarknet model file"),
        ((case.model, folder / "cut.ppm"), 1, "image data ends"),
        ((case.model, case.model), 1, "not an 8-bit binary PPM"),
        ((case.model, case.ppm, "-thresh", "2"), 2, "usage"),
    ]


def check_bad_inputs(exe, case, env=None):
    for args, status, message in bad_inputs(case):
        r = run(exe, *args, env=env)
        assert r.returncode == status and message in r.stderr and not r.stdout, (args, r.stderr)
        assert "Sanitizer" not in r.stderr and "runtime error" not in r.stderr, r.stderr


def test_example_against_the_installed_library_matches_python(case, tmp_path):
    flags = pydarknet_flags("--cflags", "--libs")
    # the installed header and library alone, not the source tree
    assert not any("src_c" in f for f in flags), flags
    exe = build(tmp_path / "detect", flags)
    assert_matches(detect(exe, case).stdout, case.expected)
    # the thread count changes nothing
    assert detect(exe, case, threads=1).stdout == detect(exe, case).stdout
    check_bad_inputs(exe, case)


def test_example_linked_statically(case, tmp_path):
    exe = build(tmp_path / "detect-static", pydarknet_flags("--cflags", "--libs", "--static"))
    needed = subprocess.run(["ldd", str(exe)], capture_output=True, text=True).stdout if shutil.which("ldd") else ""
    assert "libpydarknet" not in needed
    assert_matches(detect(exe, case).stdout, case.expected)


def _library_settings():
    """The library's sources and flags as the Makefile gets them."""
    r = subprocess.run([sys.executable, "pydarknet/_build_ffi.py", "--print-make"], cwd=ROOT, capture_output=True,
                       text=True, check=True)
    return dict(line.split(" = ", 1) for line in r.stdout.splitlines())


def test_example_under_address_sanitizer(case, tmp_path):
    """Example and library compiled together with -fsanitize=address,undefined
    (-O0 to compile fast): a clean run (no leak at exit, no invalid access, no
    undefined behaviour), the same detections, and clean failures."""
    conf = _library_settings()
    san = ["-O0", "-g", "-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=all"]
    cflags = conf["DN_CFLAGS"].split() + san

    def compile_one(source):
        obj = tmp_path / (source.replace("/", "_") + ".o")
        r = subprocess.run([CC, *cflags, "-c", source, "-o", str(obj)], cwd=ROOT, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        return str(obj)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        objects = list(pool.map(compile_one, conf["DN_SOURCES"].split()))
    exe = build(tmp_path / "detect-asan", objects + conf["DN_LDFLAGS"].split() + conf["DN_LDLIBS"].split(),
                extra=san + [f"-I{ROOT / 'src_c' / 'include'}"])
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:exitcode=66", UBSAN_OPTIONS="print_stacktrace=1:exitcode=67")
    r = run(exe, case.model, case.ppm, "-thresh", THRESH, "-nms", NMS, "-threads", 2, env=env)
    if "LeakSanitizer has encountered a fatal error" in r.stderr:  # no ptrace in this sandbox: leaks unchecked
        env["ASAN_OPTIONS"] = "detect_leaks=0:exitcode=66"
        r = run(exe, case.model, case.ppm, "-thresh", THRESH, "-nms", NMS, "-threads", 2, env=env)
    assert r.returncode == 0 and "Sanitizer" not in r.stderr and "runtime error" not in r.stderr, r.stderr
    assert_matches(r.stdout, case.expected)
    check_bad_inputs(exe, case, env=env)


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
def test_example_under_valgrind(tmp_path, write_cfg):
    """valgrind checks the optimized library as installed; a 16x16 network keeps it fast."""
    import pydarknet

    net = pydarknet.load(write_cfg(TINY), names=["a", "b"])
    randomize(net, 3)
    model = tmp_path / "tiny.pdn"
    write_model(net, model)
    image = cv2.imread(str(ROOT / "data" / "dog.jpg"))[100:160, 200:280]
    ppm = tmp_path / "crop.ppm"
    assert cv2.imwrite(str(ppm), image)
    case = SimpleNamespace(folder=tmp_path, model=model, ppm=ppm, threads=1,
                           expected=net.detect(image, thresh=THRESH, nms=NMS))
    assert case.expected
    exe = build(tmp_path / "detect", pydarknet_flags("--cflags", "--libs"))
    prefix = ["valgrind", "-q", "--error-exitcode=99", "--leak-check=full", "--errors-for-leak-kinds=definite,indirect"]
    assert_matches(detect(exe, case, prefix=prefix).stdout, case.expected)
    for args, status, message in bad_inputs(case)[:3]:
        r = run(exe, *args, prefix=prefix)
        assert r.returncode == status and message in r.stderr, r.stderr


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_install_and_pkg_config(case, tmp_path):
    """`make lib install` into a prefix (-O0 to build fast), then the example
    built with pkg-config's flags (or the same by hand) from that prefix."""
    prefix, build_dir = tmp_path / "prefix", tmp_path / "build"
    env = dict(os.environ, PYDARKNET_CFLAGS="-O0")
    r = subprocess.run(["make", "-j2", "lib", "install", f"PREFIX={prefix}", f"BUILD={build_dir}",
                        f"PYTHON={sys.executable}"], cwd=ROOT, capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    for path in ("include/pydarknet.h", "lib/libpydarknet.so", "lib/libpydarknet.a", "lib/pkgconfig/pydarknet.pc"):
        assert (prefix / path).is_file(), path
    if shutil.which("pkg-config"):
        r = subprocess.run(["pkg-config", "--cflags", "--libs", "pydarknet"], capture_output=True, text=True,
                           env=dict(os.environ, PKG_CONFIG_PATH=str(prefix / "lib" / "pkgconfig")))
        assert r.returncode == 0, r.stderr
        flags = r.stdout.split()
    else:
        flags = [f"-I{prefix / 'include'}", f"-L{prefix / 'lib'}", "-lpydarknet", f"-Wl,-rpath,{prefix / 'lib'}"]
    assert f"-I{prefix / 'include'}" in flags
    exe = build(tmp_path / "detect", flags)
    assert_matches(detect(exe, case).stdout, case.expected)


def test_flags_command_line(capsys):
    from pydarknet.cli import main

    assert main(["--cflags"]) == 0
    out = capsys.readouterr().out.split()
    assert len(out) == 1 and out[0].startswith("-I") and out[0].endswith("include")
    assert main(["--libs", "--cflags"]) == 0
    assert "-lpydarknet" in capsys.readouterr().out.split()
    assert main(["--cflags", "--bogus"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pydarknet: error: usage") and "--bogus" in err
