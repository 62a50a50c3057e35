"""Choices measured on the machine (core/tuning.c): an inference
convolution's algorithm ("winograd", "packed" or "blas") timed on the first
pass at a shape, kept in a file, and followed afterwards.

The choices only change results by float32 rounding, so each algorithm is
checked against the path that computes it with tuning off (bit for bit) and
against the plain reference (within rounding); what tuning itself must get
right is that the kept choice is the one that runs, that a pass's output is
that choice's, and that the file is read, written and shared safely."""
import logging
import subprocess
import sys

import numpy as np
import pytest

import pydarknet
from conftest import randomize, random_input
from helpers import child_env
from layer_cases import NET, conv
from pydarknet._native import check, lib

ALL = lib.DN_SPEED_ALL
PACKED = pydarknet.cpu_kernel() != "none"
DIRECT = pydarknet.cpu_kernel() in ("avx512", "avx2")  # the kernels with a direct convolution
KERNELS = [k for k in ("avx512", "avx2") if lib.dn_cpu_kernel_available(k.encode())]
pytestmark = pytest.mark.skipif(not PACKED, reason="without a packed kernel a convolution has one algorithm")

# a 3x3 stride-1 layer with 7 x 7 tiles of 4 x 4 (Winograd's, the kernel's and OpenBLAS's),
# a 1x1 (the kernel's and OpenBLAS's), a stride-2 3x3 (the same two)
C, H, W = 8, 28, 28
BODY = conv(16, act="leaky") + conv(12, size=1, act="linear") + conv(8, stride=2, act="mish")
CONVS = [0, 1, 2]


@pytest.fixture
def tuning(tmp_path):
    path = tmp_path / "cache" / "cpu-tuning.txt"
    pydarknet.set_tuning(path)
    yield path
    pydarknet.set_tuning("off")


def build(write_cfg, batch=1, threads=2, speed=ALL):
    net = pydarknet.load(write_cfg(NET.format(c=C, h=H, w=W) + BODY), batch=batch, threads=threads)
    randomize(net, 3)
    check(lib.dn_net_set_speed(net._ptr, speed))
    return net


def run(net, seed=6, batch=1):
    net.forward(random_input((batch, C, H, W), seed) * 2 - 1)
    return [layer.output for layer in net.layers]


def lines(path):
    """(machine, key, choice, times) of each line"""
    return [tuple(line.split("\t")) for line in path.read_text().splitlines()]


def rewrite_choices(path, choose):
    rows = lines(path)
    path.write_text("".join("\t".join((m, k, choose(k, c), t)) + "\n" for m, k, c, t in rows))


def rel_err(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return np.abs(got - want).max() / max(np.abs(want).max(), 1e-6)


def test_first_pass_measures_keeps_and_outputs_the_choice(write_cfg, tuning, caplog):
    caplog.set_level(logging.DEBUG, logger="pydarknet")
    net = build(write_cfg)
    first = run(net)
    rows = lines(tuning)
    assert len(rows) == len(CONVS)
    assert {m for m, *_ in rows} == {pydarknet.tuning_machine()}
    keys = [k for _, k, _, _ in rows]
    # Winograd for the 3x3 stride-1 layer; the direct convolution where the kernel has it, stride 1
    direct = " direct" if DIRECT else ""
    assert [k.split(" | ")[1] for k in keys] == ["winograd packed blas" + direct, "packed blas", "packed blas"]
    for (_, key, choice, times), i in zip(rows, CONVS):
        allowed = key.split(" | ")[1].split()
        assert choice in allowed, key
        timed = dict(t.split("=") for t in times.split())
        assert sorted(timed) == sorted(allowed) and all(float(v) > 0 for v in timed.values())
        # the rule's (the first allowed) unless another took at most 95 % of its time
        fastest = min(allowed, key=lambda a: float(timed[a]))
        rule = allowed[0]
        assert choice == (fastest if float(timed[fastest]) < 0.95 * float(timed[rule]) else rule)
        assert net.layers[i].algorithm == choice
        assert f"layer {i} [convolutional]: {choice} (measured: {times})" in caplog.text
    assert caplog.text.count("measuring which convolution algorithm is fastest") == 1
    assert str(tuning) in caplog.text
    # the measuring pass's output is the kept algorithm's: the next pass gives the same bits, and
    # nothing is measured or written again
    caplog.clear()
    again = run(net)
    for i, (a, b) in enumerate(zip(again, first)):
        np.testing.assert_array_equal(a, b, err_msg=f"layer {i}")
    assert "measured" not in caplog.text and len(lines(tuning)) == len(CONVS)
    plain = build(write_cfg, speed=0)
    for i, (a, b) in enumerate(zip(first, run(plain))):
        assert rel_err(a, b) < 1e-4, f"layer {i}: {rel_err(a, b):.2e}"


# each choice against the path that computes it with tuning off: the speed bits that leave it as the rule
# (the direct convolution gives the packed kernel's bits: the same multiply-adds in the same order)
SAME_AS = {"blas": ALL & ~(lib.DN_SPEED_KERNEL | lib.DN_SPEED_WINOGRAD), "packed": ALL & ~lib.DN_SPEED_WINOGRAD,
           "winograd": ALL, "direct": ALL & ~lib.DN_SPEED_WINOGRAD}
TAKEN_BY = {"winograd": [0], "direct": [0]}  # the layers that may take it (the others take "packed")


@pytest.mark.parametrize("algorithm", ["blas", "packed", "winograd"] +
                         (["direct"] if DIRECT else []))
def test_kept_choices_are_followed(write_cfg, tuning, algorithm):
    run(build(write_cfg))
    # every layer told to take `algorithm` where it may
    rewrite_choices(tuning, lambda key, c: algorithm if algorithm in key.split(" | ")[1].split() else "packed")
    before = tuning.read_text()
    pydarknet.set_tuning(tuning)  # drops the choices in memory and reads the file again
    want_algos = [algorithm if i in TAKEN_BY.get(algorithm, CONVS) else "packed" for i in CONVS]
    tuned = build(write_cfg)
    got = run(tuned)
    assert [tuned.layers[i].algorithm for i in CONVS] == want_algos
    assert tuning.read_text() == before  # nothing measured again
    pydarknet.set_tuning("off")
    net = build(write_cfg, speed=SAME_AS[algorithm])
    want = run(net)
    assert [net.layers[i].algorithm for i in CONVS] == [a if a != "direct" else "packed" for a in want_algos]
    for i, (a, b) in enumerate(zip(got, want)):
        np.testing.assert_array_equal(a, b, err_msg=f"layer {i}")


def test_keys_name_the_batch_and_threads(write_cfg, tuning):
    run(build(write_cfg))
    run(build(write_cfg, batch=2), batch=2)
    run(build(write_cfg, threads=1))
    keys = [k for _, k, _, _ in lines(tuning)]
    assert len(keys) == 3 * len(CONVS) == len(set(keys))
    assert sum(" b2 " in k for k in keys) == len(CONVS) and sum("| 1 threads" in k for k in keys) == len(CONVS)


def test_off_applies_the_rules(write_cfg, tmp_path):
    pydarknet.set_tuning("off")
    assert pydarknet.tuning_file() is None
    net = build(write_cfg)
    run(net)
    assert [net.layers[i].algorithm for i in CONVS] == ["winograd", "packed", "packed"]
    check(lib.dn_net_set_speed(net._ptr, ALL & ~lib.DN_SPEED_KERNEL))
    run(net)
    assert [net.layers[i].algorithm for i in CONVS] == ["blas"] * 3
    net.enable_training()  # a training pass has no algorithm to choose
    check(lib.dn_net_set_speed(net._ptr, ALL))
    x = random_input((1, C, H, W), 2)
    from pydarknet._native import ffi
    check(lib.dn_net_forward_train(net._ptr, ffi.from_buffer("float[]", x), x.size, ffi.NULL, 0))
    assert [net.layers[i].algorithm for i in CONVS] == [None] * 3


def test_unreadable_lines_are_reported_and_skipped(write_cfg, tuning, caplog):
    run(build(write_cfg))
    ours = lines(tuning)
    other = "Some Other CPU (25/17/1) L2 1024K L3 32768K 2 cpus\t" + ours[0][1] + "\tblas\tblas=0.1\n"
    tuning.write_text("# comment\n"
                      "garbage\n"
                      + other +
                      "\t".join(ours[0][:2]) + "\n"                       # no choice
                      + "x" * 3000 + "\n"                                 # far too long
                      + "\t".join((ours[1][0], ours[1][1], "fft", "")) + "\n"  # a choice this build does not know
                      + "".join("\t".join(r) + "\n" for r in ours[2:]))
    caplog.set_level(logging.DEBUG, logger="pydarknet")
    pydarknet.set_tuning(tuning)
    net = build(write_cfg)
    got = run(net)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"tuning file {tuning} line 2: not <machine> TAB <key> TAB <choice> [TAB <times>]; "
                        "ignored (3 such lines)"]
    # layers 0 and 1 (no usable line of this machine) measured again, layer 2 read
    assert [f"layer {i} [convolutional]" in caplog.text for i in CONVS] == [True, True, False]
    text = tuning.read_text()
    assert other in text  # another machine's line is left as it was
    rows = [r for r in lines(tuning) if len(r) == 4 and r[0] == pydarknet.tuning_machine()]
    assert [r[1] for r in rows[-2:]] == [ours[0][1], ours[1][1]]
    # the last line of a key wins: a fresh read follows the new lines
    pydarknet.set_tuning(tuning)
    again = build(write_cfg)
    for i, (a, b) in enumerate(zip(run(again), got)):
        np.testing.assert_array_equal(a, b, err_msg=f"layer {i}")


@pytest.mark.parametrize("where", ["under a file", "a folder"])
def test_unusable_file_keeps_choices_in_memory(write_cfg, tmp_path, caplog, where):
    if where == "a folder":
        path = tmp_path / "folder"
        path.mkdir()
        message = f"tuning file {path}: cannot write (Is a directory); this process keeps its choices in memory"
    else:
        (tmp_path / "afile").write_text("not a folder")
        path = tmp_path / "afile" / "cpu-tuning.txt"
        message = (f"tuning file {path}: cannot read (Not a directory); this process measures again and keeps its "
                   "choices in memory")
    pydarknet.set_tuning(path)
    try:
        caplog.set_level(logging.DEBUG, logger="pydarknet")
        first = run(build(write_cfg))
        assert sum("measured" in r.getMessage() for r in caplog.records) == len(CONVS)
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert warnings == [message]
        caplog.clear()
        second = run(build(write_cfg))
        assert "measured" not in caplog.text and "WARNING" not in caplog.text.upper()
        for i, (a, b) in enumerate(zip(second, first)):
            np.testing.assert_array_equal(a, b, err_msg=f"layer {i}")
    finally:
        pydarknet.set_tuning("off")


CHILD = """
import sys, numpy as np, pydarknet
print(pydarknet.tuning_file())
net = pydarknet.load(sys.argv[1], threads=2)
net.forward(np.zeros((1, 8, 28, 28), np.float32))
print(net.layers[0].algorithm)
"""


@pytest.mark.parametrize("setting", ["file", "off", "xdg", "home"])
def test_environment_chooses_the_file(write_cfg, tmp_path, setting):
    cfg = write_cfg(NET.format(c=C, h=H, w=W) + BODY)
    env = child_env(HOME=str(tmp_path / "home"), XDG_CACHE_HOME="")
    env.pop("PYDARKNET_TUNING")
    want = {"file": tmp_path / "t.txt", "xdg": tmp_path / "xdg" / "pydarknet" / "cpu-tuning.txt",
            "home": tmp_path / "home" / ".cache" / "pydarknet" / "cpu-tuning.txt"}.get(setting)
    if setting == "file":
        env["PYDARKNET_TUNING"] = str(want)
    elif setting == "off":
        env["PYDARKNET_TUNING"] = "off"
    elif setting == "xdg":
        env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")
    r = subprocess.run([sys.executable, "-c", CHILD, str(cfg)], env=env, cwd=tmp_path, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    file, algorithm = r.stdout.split()
    if setting == "off":
        assert file == "None" and algorithm == "winograd"
        assert not any(p.name == "cpu-tuning.txt" for p in tmp_path.rglob("*"))
    else:
        assert file == str(want) and len(lines(want)) == len(CONVS)
        assert algorithm == lines(want)[0][2]


def test_commands_tell_of_measuring(tmp_path):
    """A first run that measures says so (it takes a while), once; a second run reads the file."""
    from conftest import DATA_DIR, data_image, small_detector

    _, cfg, weights = small_detector(tmp_path)
    data = tmp_path / "coco.data"
    data.write_text(f"classes=80\nnames={DATA_DIR / 'coco.names'}\n")
    tuning = tmp_path / "tuning.txt"
    argv = [sys.executable, "-m", "pydarknet", "detector", "test", str(data), str(cfg), str(weights),
            str(data_image()), "-dont_show"]

    def command():
        r = subprocess.run(argv, env=child_env(PYDARKNET_TUNING=str(tuning)), cwd=tmp_path, capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        return r.stderr

    err = command()
    assert err.count("pydarknet: measuring which convolution algorithm is fastest on this CPU, once for each shape "
                     f"(kept in {tuning}; PYDARKNET_TUNING=off: fixed rules)") == 1, err
    kept = tuning.read_text()
    assert len(kept.splitlines()) >= 10
    assert "measuring" not in command() and tuning.read_text() == kept


# the direct convolution over the shapes that exercise it: strips cut short (widths 6..70), dilation, 2x2 and
# 5x5 windows, no padding, K over one block (c*k*k > 128), over 128 filters (two chunks), batch 2, activations
DIRECT_NETS = [
    (3, 9, 6, conv(8, act="leaky") + conv(5, size=5, act="mish") + conv(9, size=2, act="logistic")),
    (16, 11, 37, conv(24, act="relu") + conv(7, dilation=2, act="leaky") + conv(130, act="linear")),
    (32, 5, 70, conv(16, act="swish") + conv(12, pad=0, act="leaky") + conv(20, size=5, act="mish")),
    # a padding larger than the window needs, with dilation: the frame must hold every input pixel
    (3, 7, 9, "[convolutional]\nfilters=8\nsize=3\nstride=1\npadding=5\ndilation=3\nactivation=leaky\n" +
     conv(6, act="relu") + conv(5, size=2, act="linear")),
]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("case", range(len(DIRECT_NETS)))
def test_direct_convolution_gives_the_packed_bits(write_cfg, tuning, case, kernel, restore_kernel):
    c, h, w, body = DIRECT_NETS[case]
    pydarknet.set_cpu_kernel(kernel)

    def net_of(speed=ALL):
        net = pydarknet.load(write_cfg(NET.format(c=c, h=h, w=w) + body), batch=2, threads=2)
        randomize(net, 5)
        check(lib.dn_net_set_speed(net._ptr, speed))
        return net

    x = random_input((2, c, h, w), 9) * 2 - 1
    net_of().forward(x)
    rewrite_choices(tuning, lambda key, choice: "direct")
    pydarknet.set_tuning(tuning)
    net = net_of()
    net.forward(x)
    assert [layer.algorithm for layer in net.layers] == ["direct"] * 3
    got = [layer.output for layer in net.layers]
    pydarknet.set_tuning("off")
    packed = net_of(ALL & ~lib.DN_SPEED_WINOGRAD)
    packed.forward(x)
    assert [layer.algorithm for layer in packed.layers] == ["packed"] * 3
    for i, (a, layer) in enumerate(zip(got, packed.layers)):
        np.testing.assert_array_equal(a, layer.output, err_msg=f"layer {i}")
