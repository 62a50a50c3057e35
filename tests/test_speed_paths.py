"""The speed paths (dn_net_set_speed: worker threads, fused batch norm,
Winograd, the packed GEMM kernel) against the plain code they replace, and
their independence from the thread count.

* fast == plain: every layer's output in inference, and after a training
  forward and backward pass every parameter gradient, the input's delta and
  the batch-norm rolling statistics, agree within float32 rounding of sums
  taken in another order: 1e-4 of the tensor's largest magnitude for outputs
  (as tests/test_layers.py), 2e-4 for gradients (sums over up to 10^5 terms).
* 1 thread == 2 threads, bit for bit, with every speed path on: work is cut
  into tasks by the shape alone.
The networks are the rows of tests/layer_cases.py marked `speed`: their
convolution shapes reach every plan of the tiled code (1x1 direct, column
tiles with private packing, shared packing, groups, stride 2, dilation,
filters not a multiple of 8, fewer than 32 positions) and Winograd (with and
without padding, outputs not a multiple of 4).
"""
import os

import numpy as np
import pytest

import pydarknet
from conftest import randomize, random_input, model_cfg
from pydarknet._native import check, ffi, lib
from layer_cases import NET, conv, select

ALL = lib.DN_SPEED_ALL
PLAIN = 0


def build(write_cfg, c, h, w, body, batch, seed=3, threads=1):
    net = pydarknet.load(write_cfg(NET.format(c=c, h=h, w=w) + body), batch=batch, threads=threads)
    randomize(net, seed)
    return net


def set_speed(net, paths):
    check(lib.dn_net_set_speed(net._ptr, paths))


def outputs(net):
    return [layer.output.copy() for layer in net.layers]


def rel_err(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return np.abs(got - want).max() / max(np.abs(want).max(), 1e-6)


def view(ptr, count):
    return np.frombuffer(ffi.buffer(ptr, count * 4), dtype=np.float32).copy()


def train_pass(net, x, seed=5):
    """A training forward pass, a fixed random delta on the last layer, a
    backward pass; returns the gradients, input delta and parameters."""
    net.enable_training()
    check(lib.dn_net_forward_train(net._ptr, ffi.from_buffer("float[]", x), x.size, ffi.NULL, 0))
    last = len(net.layers) - 1
    data, count = ffi.new("float **"), ffi.new("size_t *")
    check(lib.dn_layer_delta(net._ptr, last, data, count))
    r = np.random.default_rng(seed).standard_normal(count[0]).astype(np.float32)
    ffi.memmove(data[0], ffi.from_buffer("float[]", r), r.nbytes)
    check(lib.dn_net_backward(net._ptr))
    out = {"input_delta": None, "outputs": outputs(net)}
    check(lib.dn_net_input_delta(net._ptr, data, count))
    out["input_delta"] = view(data[0], count[0])
    for layer in net.layers:
        for j, (name, values) in enumerate(layer.params.items()):
            grad = ffi.new("float **")
            check(lib.dn_layer_param_state(net._ptr, layer.index, j, grad, ffi.NULL, ffi.NULL))
            if grad[0] != ffi.NULL:
                out[(layer.index, name, "grad")] = view(grad[0], values.size)
            out[(layer.index, name)] = values.copy()
    return out


@pytest.mark.parametrize("case", select(speed=True))
@pytest.mark.parametrize("fast", [ALL, lib.DN_SPEED_THREADS, lib.DN_SPEED_THREADS | lib.DN_SPEED_FUSE,
                                  lib.DN_SPEED_THREADS | lib.DN_SPEED_KERNEL],
                         ids=["all", "threads", "threads+fuse", "threads+kernel"])
def test_inference_fast_matches_plain(write_cfg, case, fast):
    (c, h, w), body = case.shape, case.body
    x = random_input((2, c, h, w), 1) * 2 - 1
    plain = build(write_cfg, c, h, w, body, 2, threads=2)
    set_speed(plain, PLAIN)
    plain.forward(x)
    fastnet = build(write_cfg, c, h, w, body, 2, threads=2)
    set_speed(fastnet, fast)
    fastnet.forward(x)
    for i, (a, b) in enumerate(zip(outputs(fastnet), outputs(plain))):
        assert rel_err(a, b) < 1e-4, f"layer {i}: relative error {rel_err(a, b):.2e}"


@pytest.mark.parametrize("case", select(speed=True))
def test_training_fast_matches_plain(write_cfg, case):
    (c, h, w), body = case.shape, case.body
    x = random_input((3, c, h, w), 2) * 2 - 1
    runs = {}
    for paths in (PLAIN, ALL):
        net = build(write_cfg, c, h, w, body, 3, threads=2)
        set_speed(net, paths)
        runs[paths] = train_pass(net, x)
    for key, want in runs[PLAIN].items():
        got = runs[ALL][key]
        if key == "outputs":
            for i, (a, b) in enumerate(zip(got, want)):
                assert rel_err(a, b) < 1e-4, f"output of layer {i}: {rel_err(a, b):.2e}"
            continue
        assert rel_err(got, want) < 2e-4, f"{key}: relative error {rel_err(got, want):.2e}"


@pytest.mark.parametrize("case", select(speed=True))
def test_thread_count_does_not_change_results(write_cfg, case):
    (c, h, w), body = case.shape, case.body
    x = random_input((3, c, h, w), 4) * 2 - 1
    runs = []
    for threads in (1, 2, 3):
        net = build(write_cfg, c, h, w, body, 3, threads=threads)
        net.forward(x)
        inference = outputs(net)
        runs.append((inference, train_pass(net, x)))
    for inference, train in runs[1:]:
        for a, b in zip(inference, runs[0][0]):
            np.testing.assert_array_equal(a, b)
        for key, want in runs[0][1].items():
            if key == "outputs":
                for a, b in zip(train[key], want):
                    np.testing.assert_array_equal(a, b)
            else:
                np.testing.assert_array_equal(train[key], want, err_msg=str(key))


def test_yolov4_tiny_threads_and_plain(tmp_path):
    """A whole public model: 2 threads == 1 thread exactly, and == the plain paths within tolerance."""
    from opencv_ref import cfg_with_size

    cfg = cfg_with_size(model_cfg("yolov4-tiny"), 256, 256, tmp_path)
    x = random_input((1, 3, 256, 256), 7)
    outs = {}
    for threads, paths in ((1, ALL), (2, ALL), (2, PLAIN)):
        net = pydarknet.load(cfg, threads=threads)
        randomize(net, 9)
        set_speed(net, paths)
        net.forward(x)
        outs[(threads, paths)] = outputs(net)
    for a, b in zip(outs[(2, ALL)], outs[(1, ALL)]):
        np.testing.assert_array_equal(a, b)
    for i, (a, b) in enumerate(zip(outs[(2, ALL)], outs[(2, PLAIN)])):
        assert rel_err(a, b) < 1e-4, f"layer {i}: relative error {rel_err(a, b):.2e}"


def test_speed_setting_and_environment(write_cfg, monkeypatch):
    net = build(write_cfg, 3, 8, 8, conv(4), 1)
    assert lib.dn_net_speed(net._ptr) == ALL
    assert lib.dn_net_set_speed(net._ptr, 1 << 12) != 0
    set_speed(net, lib.DN_SPEED_FUSE)
    assert lib.dn_net_speed(net._ptr) == lib.DN_SPEED_FUSE
    monkeypatch.setenv("PYDARKNET_SPEED", "0")
    assert lib.dn_net_speed(build(write_cfg, 3, 8, 8, conv(4), 1)._ptr) == 0


def test_layer_times(write_cfg):
    net = build(write_cfg, 3, 32, 32, conv(8) + "[maxpool]\nsize=2\nstride=2\n", 1, threads=2)
    x = random_input((1, 3, 32, 32), 1)
    f, b, n = ffi.new("double *"), ffi.new("double *"), ffi.new("long long *")
    check(lib.dn_net_set_profiling(net._ptr, 1))
    for _ in range(3):
        net.forward(x)
    for i in range(2):
        check(lib.dn_net_layer_times(net._ptr, i, f, b, n))
        assert n[0] == 3 and f[0] > 0 and b[0] == 0
    check(lib.dn_net_set_profiling(net._ptr, 0))
    net.forward(x)
    check(lib.dn_net_layer_times(net._ptr, 0, f, b, n))
    assert n[0] == 3
    assert lib.dn_net_layer_times(net._ptr, 5, f, b, n) != 0


def test_forked_child_runs_serially(write_cfg):
    """Worker threads do not survive fork(); a child process still gets results."""
    if not hasattr(os, "fork"):
        pytest.skip("no fork")
    net = build(write_cfg, 3, 40, 40, conv(16) + conv(8), 1, threads=2)
    x = random_input((1, 3, 40, 40), 3)
    net.forward(x)
    want = net.layers[-1].output
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            net.forward(x)
            ok = np.array_equal(net.layers[-1].output, want)
            os.write(w, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(w)
    got = os.read(r, 1)
    os.waitpid(pid, 0)
    assert got == b"1"


# ---- the CPU kernels (AVX-512, AVX2 + FMA): the same bits, chosen at run time

KERNELS = [k for k in ("avx512", "avx2") if lib.dn_cpu_kernel_available(k.encode())]


def run_with_kernel(kernel, write_cfg, c, h, w, body, x, batch, paths=ALL):
    """Inference outputs and a training pass's results with one CPU kernel
    (set before the network is built: setup sizes Winograd's workspace for it)."""
    pydarknet.set_cpu_kernel(kernel)
    net = build(write_cfg, c, h, w, body, batch, threads=2)
    set_speed(net, paths)
    net.forward(x)
    return outputs(net), train_pass(net, x)


def assert_same_runs(got, want, what):
    for i, (a, b) in enumerate(zip(got[0], want[0])):
        np.testing.assert_array_equal(a, b, err_msg=f"{what}: inference output of layer {i}")
    for key, value in want[1].items():
        if key == "outputs":
            for i, (a, b) in enumerate(zip(got[1][key], value)):
                np.testing.assert_array_equal(a, b, err_msg=f"{what}: training output of layer {i}")
        else:
            np.testing.assert_array_equal(got[1][key], value, err_msg=f"{what}: {key}")


# filters 1..8 and 15 give every count of rows of a last micro-tile; the
# outputs every count of columns of a last panel (6 x 7 = 42: 10; 5 x 9 = 45:
# 13; 1 x 17: 17; 4 x 8 = 32: a whole panel; 2 x 3: 6) and the shapes of the
# tiled plans (KSHARED below 16 panels, KPRIVATE from 512 positions: 23 x 24)
EDGE_BODIES = [(3, 6, 7, conv(1) + conv(2, act="relu") + conv(3, act="linear") + conv(4, act="mish")),
               (5, 5, 9, conv(5, act="logistic") + conv(6, size=1) + conv(7, bn=0) + conv(8, size=1, act="relu")),
               (4, 1, 17, conv(15, act="linear") + conv(9, size=1)),
               (6, 4, 8, conv(7) + conv(16, act="mish")),
               (3, 2, 3, conv(8) + conv(3)),
               (8, 23, 24, conv(11) + conv(15, size=1, act="linear") + conv(7, stride=2))]


@pytest.mark.skipif(not KERNELS, reason="the CPU runs none of the packed kernels")
@pytest.mark.parametrize("case", select(speed=True) + [pytest.param(b, id=f"edges-{i}") for i, b in
                                                      enumerate(EDGE_BODIES)])
def test_cpu_kernels_give_the_same_bits(write_cfg, case, restore_kernel):
    """Every micro-kernel the CPU runs gives the bits of every other for the
    same GEMMs (the same fused multiply-adds in the same order): compared with
    Winograd off, since where it takes over depends on the kernel. With every
    path on, the kernels agree within rounding, and with the portable path."""
    c, h, w, body = case if isinstance(case, tuple) else (*case.shape, case.body)
    x = random_input((3, c, h, w), 6) * 2 - 1
    direct = ALL & ~lib.DN_SPEED_WINOGRAD
    runs = {k: run_with_kernel(k, write_cfg, c, h, w, body, x, 3, direct) for k in KERNELS}
    for k in KERNELS[1:]:
        assert_same_runs(runs[k], runs[KERNELS[0]], f"{k} vs {KERNELS[0]}")
    every = {k: run_with_kernel(k, write_cfg, c, h, w, body, x, 3)[0] for k in KERNELS + ["none"]}
    for k in KERNELS[1:] + ["none"]:
        for i, (a, b) in enumerate(zip(every[k], every[KERNELS[0]])):
            assert rel_err(a, b) < 1e-4, f"layer {i}: {k} vs {KERNELS[0]}: {rel_err(a, b):.2e}"


def test_cpu_kernel_choice(restore_kernel):
    best = pydarknet.cpu_kernel()
    assert best == (KERNELS[0] if KERNELS else "none")
    assert lib.dn_cpu_kernel_available(b"none") == 1
    assert lib.dn_cpu_kernel_available(b"sse9") == 0
    with pytest.raises(pydarknet.DarknetError, match="unknown CPU kernel 'sse9'"):
        pydarknet.set_cpu_kernel("sse9")
    for k in ("avx512", "avx2"):
        if k not in KERNELS:
            with pytest.raises(pydarknet.DarknetError, match=f"the {k} kernel: (this CPU does not run it|this build "
                                                               f"leaves it out)"):
                pydarknet.set_cpu_kernel(k)
    pydarknet.set_cpu_kernel("none")
    assert pydarknet.cpu_kernel() == "none"


@pytest.mark.parametrize("value", ["avx2", "none", "sse9"])
def test_cpu_kernel_environment(value, tmp_path):
    import subprocess
    import sys
    from helpers import child_env

    code = "import pydarknet; print(pydarknet.cpu_kernel())"
    r = subprocess.run([sys.executable, "-c", code], env=child_env(PYDARKNET_CPU_KERNEL=value),
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    best = KERNELS[0] if KERNELS else "none"
    if value == "sse9":
        assert r.stdout.strip() == best
        assert f"PYDARKNET_CPU_KERNEL=sse9: unknown kernel (avx512, avx2 or none); using {best}" in r.stderr
    elif value == "avx2" and "avx2" not in KERNELS:
        assert r.stdout.strip() == best and "this CPU does not run it" in r.stderr
    else:
        assert r.stdout.strip() == value and r.stderr == ""


# ---- Winograd keeps its transformed filters between passes

WINOGRAD_NET = (9, 48, 48, conv(70, act="logistic") + conv(64, bn=0, act="linear"))  # 144 tiles, C*9: 81, 630


def run(net, x):
    """Every layer's output of one inference pass, stacked."""
    net.forward(x)
    return np.concatenate([o.ravel() for o in outputs(net)])


@pytest.mark.skipif(not KERNELS, reason="Winograd runs on the packed kernels")
def test_winograd_sees_every_weight_change(write_cfg, tmp_path):
    """The transformed filters are made again for every filter whose weights
    changed, however they changed: through a view kept from before the
    earlier passes (one value, the last of a filter's, which the fingerprint
    reads alone), a whole filter, or a weights file loaded; each pass equals a
    network built with those weights (the same bits), and none equals the pass
    before it."""
    c, h, w, body = WINOGRAD_NET
    x = random_input((1, c, h, w), 8)
    net = build(write_cfg, c, h, w, body, 1, threads=2)
    first = run(net, x)
    direct = build(write_cfg, c, h, w, body, 1, threads=2)
    set_speed(direct, ALL & ~lib.DN_SPEED_WINOGRAD)
    assert not np.array_equal(run(direct, x), first), "Winograd did not run: nothing below would test it"
    kept = [layer.params["weights"] for layer in net.layers]  # views, written after passes below

    def fresh():
        other = build(write_cfg, c, h, w, body, 1, threads=2)
        for layer, mine in zip(other.layers, net.layers):
            for name, values in mine.params.items():
                layer.params[name][:] = values
        return run(other, x)

    before = first
    changes = [lambda: kept[0].__setitem__(9 * c * 5 + 4, kept[0][9 * c * 5 + 4] + 0.25),  # filter 5, middle
               lambda: kept[1].__setitem__(kept[1].size - 1, -kept[1][-1] + 0.5),  # last filter's last value
               lambda: kept[1].__setitem__(slice(630 * 3, 630 * 4), 0.01)]  # filter 3, all of it
    for i, change in enumerate(changes):
        change()
        got = run(net, x)
        assert not np.array_equal(got, before), f"change {i}: the output did not move"
        np.testing.assert_array_equal(got, fresh(), err_msg=f"change {i}")
        before = got
    saved = tmp_path / "other.weights"
    other = build(write_cfg, c, h, w, body, 1, seed=11, threads=2)
    other.save_weights(str(saved))
    net.load_weights(str(saved))
    got = run(net, x)
    assert not np.array_equal(got, before)
    np.testing.assert_array_equal(got, run(other, x))


# ---- denormals in inference (DN_SPEED_FLUSH)

def test_inference_flushes_denormals(write_cfg):
    """Products below 2^-126 count as zero in inference passes with
    DN_SPEED_FLUSH and the worker threads (every thread's share: they take
    the caller's mode), not without them (OpenBLAS's threads keep their
    own mode) nor in training; the caller's own mode is restored after the
    pass."""
    rng = np.random.default_rng(4)
    net = build(write_cfg, 64, 64, 64, conv(16, bn=0, act="linear"), 1, threads=2)  # Winograd: 256 tiles
    net.layers[0].params["weights"][:] = rng.uniform(1e-21, 2e-21, net.layers[0].params["weights"].size)
    net.layers[0].params["biases"][:] = 0
    x = rng.uniform(0.5e-19, 1e-19, (1, 64, 64, 64)).astype(np.float32)  # products near 1e-40
    tiny = np.float32(np.finfo(np.float32).tiny)
    for paths in (ALL, lib.DN_SPEED_THREADS | lib.DN_SPEED_FLUSH):
        set_speed(net, paths)
        net.forward(x)
        assert np.count_nonzero(net.layers[0].output) == 0, f"speed {paths}: denormal products kept"
        assert tiny / np.float32(4) != 0, f"speed {paths}: the caller's thread left flushing denormals"
    # the sums of 576 products, each 0.5e-40 .. 2e-40: 3e-38 .. 1.2e-37, as the plain path computes them
    set_speed(net, PLAIN)
    net.forward(x)
    want = net.layers[0].output
    assert want.min() > 2e-38 and want.max() < 2e-37
    for paths in (ALL & ~lib.DN_SPEED_FLUSH, lib.DN_SPEED_FLUSH):
        set_speed(net, paths)
        net.forward(x)
        assert rel_err(net.layers[0].output, want) < 1e-4, f"speed {paths}"
    set_speed(net, ALL)
    net.enable_training()
    check(lib.dn_net_forward_train(net._ptr, ffi.from_buffer("float[]", x), x.size, ffi.NULL, 0))
    assert rel_err(net.layers[0].output, want) < 1e-4, "a training pass flushed denormals"


# ---- the packed convolution's column tiles are sized from the L2 cache: never the results

TILE_CHILD = """
import sys, numpy as np, pydarknet
net = pydarknet.load(sys.argv[1], threads=2)
rng = np.random.default_rng(4)
for layer in net.layers:
    for name, p in layer.params.items():
        p[...] = 1 + rng.random(p.size) if name == "rolling_variance" else rng.standard_normal(p.size) * 0.2
net.forward(rng.random((1, 16, 96, 96), dtype=np.float32))
np.save(sys.argv[2], np.concatenate([l.output.ravel() for l in net.layers]))
"""


@pytest.mark.skipif(not KERNELS, reason="the CPU runs none of the packed kernels")
def test_tile_sizes_follow_the_l2_cache_and_keep_the_bits(write_cfg, tmp_path):
    """A B block of an eighth of the L2 cache, 64-256 KiB: 96 x 96 outputs (288 panels of 32, K blocks of
    128) are cut into 18 column tiles with a 2 MiB L2 or more, 36 with 1 MiB, 72 with 512 KiB or less. The
    same bits every way (inference, Winograd off, which would take the 3x3 layer); a bad size is named."""
    import subprocess
    import sys
    from helpers import child_env

    cfg = write_cfg(NET.format(c=16, h=96, w=96) + conv(16) + conv(24, size=1, act="relu") +
                    conv(16, stride=2, act="mish"))
    runs = {}
    for l2 in ("", "64M", "1M", "524288", "100k", "2Q"):
        out = tmp_path / f"out{l2}.npy"
        r = subprocess.run([sys.executable, "-c", TILE_CHILD, str(cfg), str(out)], cwd=tmp_path, timeout=120,
                           env=child_env(PYDARKNET_CPU_L2=l2, PYDARKNET_SPEED=str(ALL & ~lib.DN_SPEED_WINOGRAD)),
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        if l2 == "2Q":
            assert "pydarknet: PYDARKNET_CPU_L2=2Q: not a size (bytes, or with K or M); using " in r.stderr
        else:
            assert r.stderr == ""
        runs[l2] = np.load(out)
    for l2, got in runs.items():
        np.testing.assert_array_equal(got, runs[""], err_msg=f"L2 {l2}")


# ---- 2x2 stride-2 max pooling in vector registers: darknet's comparisons, the same bits

@pytest.mark.parametrize("kernel", KERNELS or ["none"])
@pytest.mark.parametrize("w", [2, 4, 15, 16, 17, 31, 32, 33, 34, 48, 66, 70])
def test_maxpool_2x2_vectors_give_the_plain_bits(write_cfg, w, kernel, restore_kernel):
    """The vector rows (16 or 8 outputs at a time, the rest in scalar; odd widths take the general
    path, their last window reaching past the image) take `v > best ? v : best` in the plain loop's order: NaN ignored, the first of equal signed zeros kept, -FLT_MAX for an all-NaN
    window; against the plain pass (speed 0) and a NumPy statement of that rule."""
    h, c = 6, 3
    pydarknet.set_cpu_kernel(kernel)  # the rows follow the GEMM kernel's instruction set
    net = pydarknet.load(write_cfg(NET.format(c=c, h=h, w=w) + "[maxpool]\nsize=2\nstride=2\n"), batch=2, threads=2)
    rng = np.random.default_rng(w)
    x = rng.standard_normal((2, c, h, w)).astype(np.float32)
    specials = np.array([np.nan, 0.0, -0.0, -np.inf, np.inf, -3.4028235e38], np.float32)
    mask = rng.random(x.shape) < 0.3
    x[mask] = rng.choice(specials, mask.sum())
    x[0, 0, :2, :2] = np.nan           # an all-NaN window
    x[1, 1, 2:4, :2] = [[-0.0, 0.0], [0.0, -0.0]]
    set_speed(net, ALL)
    net.forward(x)
    fast = net.layers[0].output
    set_speed(net, PLAIN)
    net.forward(x)
    plain = net.layers[0].output
    assert fast.tobytes() == plain.tobytes()
    # darknet's padding (size - 1) gives odd widths a last window half outside: NaN there is skipped too
    ow = (w - 1) // 2 + 1
    padded = np.pad(x, ((0, 0), (0, 0), (0, 0), (0, 2 * ow - w)), constant_values=np.nan)
    want = np.full((2, c, h // 2, ow), -3.4028235e38, np.float32)
    for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1)):
        v = padded[:, :, dy::2, dx::2]
        want = np.where(v > want, v, want)
    assert fast.tobytes() == want.tobytes()
    assert np.signbit(fast[1, 1, 1, 0])  # -0.0 came first


def test_many_workers_cut_more_tasks_with_the_same_bits(write_cfg):
    """With more workers than the shape's own cut has tasks, the packed convolution cuts more (a 13x13
    layer of 256 filters: 2 chunks of 128 for up to 2 workers, 8 of 32 for 8, 16 of 16 for 16; a 24x24
    one: 4 column tiles, then 8 and 9): every value is the same, inference and training."""
    body = conv(256, act="leaky") + conv(64, size=1, act="relu") + conv(24, act="mish")
    cases = [(16, 13, 13, body), (16, 24, 24, conv(40) + conv(24, size=1, act="linear"))]
    for c, h, w, net_body in cases:
        x = random_input((2, c, h, w), 8) * 2 - 1
        runs = {}
        for threads in (1, 2, 8, 16):
            net = build(write_cfg, c, h, w, net_body, 2, threads=threads)
            net.forward(x)
            runs[threads] = (outputs(net), train_pass(net, x))
        for threads in (2, 8, 16):
            assert_same_runs(runs[threads], runs[1], f"{h}x{w}, {threads} threads vs 1")
