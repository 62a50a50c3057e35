"""The CUDA path: its sources compile with nvcc, the device API reports
clearly where there is no CUDA, and (where a device is present) every layer
case of tests/layer_cases.py runs on the GPU and agrees with the CPU.

GPU against CPU tolerances: forward outputs within 1e-4 of the tensor's
largest magnitude (float32 sums of a few hundred terms in another order, as
the CPU layer tests allow against float64); gradients and weights after a
training step within 1e-3, since cuBLAS, the per-channel reductions and the
atomic adds of the pooling backward sum thousands of float32 terms in an
order of their own, and batch normalization divides by a batch deviation that
amplifies those differences."""
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import pydarknet
from pydarknet._native import DarknetError, check, cuda_devices, ffi, lib
from conftest import build_module, randomize, random_input
from layer_cases import NET, ONE, YOLO, select
from helpers import trained

_build_ffi = build_module()


# ----------------------------------------------------------------------------- compiling

def _nvcc_and_cublas():
    nvcc = _build_ffi.find_nvcc()
    if nvcc is None:
        pytest.skip("nvcc is not installed")
    blas = _build_ffi.cublas_dirs(_build_ffi.cuda_toolkit(nvcc))
    if blas is None:
        pytest.skip("the cuBLAS headers are not installed (pip install nvidia-cublas)")
    return nvcc, blas[0]


@pytest.mark.parametrize("source", [os.path.relpath(s, _build_ffi.SRC) for s in _build_ffi.cuda_sources()])
def test_cuda_source_compiles(tmp_path, source):
    """Each .cu file compiles with the build's flags (one architecture, to stay quick)."""
    nvcc, include = _nvcc_and_cublas()
    cmd = _build_ffi.nvcc_command(nvcc, str(_build_ffi.SRC / source), str(tmp_path / "out.o"), [include],
                                  ["-arch=sm_80"])
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out.o").stat().st_size > 0


@pytest.mark.parametrize("source", ["core/cuda.cu", "layers/convolutional.cu"])
def test_cudnn_path_compiles(tmp_path, source):
    """The files with a cuDNN path compile with it (PYDARKNET_CUDNN=1's flags) against the nvidia-cudnn wheel."""
    nvcc, include = _nvcc_and_cublas()
    dnn = _build_ffi.cudnn_dirs()
    if dnn is None:
        pytest.skip("the cuDNN headers are not installed (pip install nvidia-cudnn-cu13)")
    cmd = _build_ffi.nvcc_command(nvcc, str(_build_ffi.SRC / source), str(tmp_path / "out.o"), [include, dnn[0]],
                                  ["-arch=sm_80"], defines=["DN_CUDNN"])
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    nm = subprocess.run(["nm", "-u", str(tmp_path / "out.o")], capture_output=True, text=True).stdout
    assert "cudnnCreate" in nm or "cudnnConvolutionForward" in nm   # the cuDNN path is in, not compiled out


def test_every_kernel_launch_names_the_networks_stream():
    """Every launch in the .cu files goes on the pass's stream (<<<grid, DN_LAUNCH>>>): the network's stream does
    not wait for the legacy default stream, so a launch there would run out of order with the pass."""
    import re
    for src in _build_ffi.cuda_sources():
        for m in re.finditer(r"<<<(.*?)>>>", Path(src).read_text(), re.S):
            assert m.group(1).rstrip().endswith("DN_LAUNCH"), f"{src}: <<<{m.group(1)}>>>"


# the layers' .c files that name device passes in their ops table
GPU_LAYER_SOURCES = sorted(c for c in (_build_ffi.SRC / "layers").glob("*.c") if "DN_GPU_OPS(" in c.read_text())


def test_every_gpu_layer_has_its_cuda_file():
    """The layers that name device passes in their ops table have layer.cu beside layer.c."""
    for c_file in GPU_LAYER_SOURCES:
        assert c_file.with_suffix(".cu").exists(), c_file


@pytest.mark.parametrize("name", ["core/network.c", "core/train.c", "core/device.c", "core/detections.c"] +
                         [os.path.relpath(c, _build_ffi.SRC) for c in GPU_LAYER_SOURCES])
def test_c_side_compiles_for_cuda(tmp_path, name):
    """The C files that dispatch to the device compile with DN_CUDA too (no CUDA headers needed)."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler")
    src = _build_ffi.SRC
    r = subprocess.run([cc, "-std=c11", "-Wall", "-Werror", "-Wno-unused-function", "-D_GNU_SOURCE", "-DDN_CUDA=1",
                        f"-I{src / 'include'}", f"-I{src / 'core'}", "-c", str(src / name), "-o",
                        str(tmp_path / "out.o")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


# ----------------------------------------------------------------------------- the API without a device

def _status_and_count():
    n = ffi.new("int *")
    return lib.dn_cuda_device_count(n), n[0]


def test_device_count_and_errors_without_a_device(write_cfg):
    status, count = _status_and_count()
    if count:
        pytest.skip("a CUDA device is present")
    assert count == 0 and cuda_devices() == []
    net = pydarknet.load(write_cfg(NET.format(c=3, h=4, w=4) + ONE.format(f=2)))
    with pytest.raises(DarknetError) as e:
        net.set_device(0)
    if status == lib.DN_ERR_UNSUPPORTED:
        assert "this build has no CUDA" in str(e.value) and "PYDARKNET_CUDA=1" in str(e.value)
    else:
        assert "no CUDA device found" in str(e.value)
    assert net.gpu is None and net.device_name == "CPU"
    net.set_device(None)  # the CPU is always there
    with pytest.raises(DarknetError, match="device -2"):
        check(lib.dn_net_set_device(net._ptr, -2))
    # the network still runs on the CPU after the refusal
    net.forward(random_input((1, 3, 4, 4)))


def test_cudnn_switch_on_the_cpu(write_cfg):
    """A network on the CPU has no cuDNN: it reads False, switching it off is a no-op, on is one clear error."""
    net = pydarknet.load(write_cfg(NET.format(c=3, h=8, w=8) + ONE.format(f=4)))
    assert net.cudnn is False
    net.cudnn = False
    with pytest.raises(DarknetError, match="cuDNN|CUDA device"):
        net.cudnn = True
    assert net.cudnn is False


def test_cuda_graphs_switch_on_the_cpu(write_cfg):
    """A network on the CPU runs no CUDA graphs: off, none launched, switching off a no-op, on one clear error."""
    net = pydarknet.load(write_cfg(NET.format(c=3, h=8, w=8) + ONE.format(f=4)))
    assert net.cuda_graphs is False and net.cuda_graph_launches == 0
    net.cuda_graphs = False
    with pytest.raises(DarknetError, match="CUDA device"):
        net.cuda_graphs = True
    assert net.cuda_graphs is False


def test_mixed_precision_switch_on_the_cpu(write_cfg):
    """A network on the CPU computes in float32: setting it is a no-op, float16/bfloat16 one clear error, a name that
    is no precision a ValueError; its loss scale is 1 and setting one says it is float16's on a device."""
    net = pydarknet.load(write_cfg(NET.format(c=3, h=8, w=8) + ONE.format(f=4)))
    assert net.gpu_precision == "float32" and net.loss_scale == 1.0 and net.skipped_updates == 0
    net.gpu_precision = "float32"
    for p in ("float16", "bfloat16"):
        with pytest.raises(DarknetError, match="CUDA device"):
            net.gpu_precision = p
    with pytest.raises(ValueError, match="float16"):
        net.gpu_precision = "half"
    with pytest.raises(DarknetError, match="power of two"):
        net.loss_scale = 3
    with pytest.raises(DarknetError, match="CUDA device"):
        net.loss_scale = 1024
    assert net.gpu_precision == "float32"


def test_cli_gpu_flag_without_a_device_is_one_error_line(write_cfg, tmp_path, capsys):
    if _status_and_count()[1]:
        pytest.skip("a CUDA device is present")
    from pydarknet.cli import main

    cfg = write_cfg(NET.format(c=3, h=8, w=8) + ONE.format(f=14) + YOLO)
    net = pydarknet.load(cfg)
    weights = tmp_path / "w.weights"
    net.save_weights(str(weights))
    image = tmp_path / "img.png"
    import cv2

    cv2.imwrite(str(image), np.zeros((8, 8, 3), np.uint8))
    rc = main(["detect", str(cfg), str(weights), str(image), "-dont_show", "-i", "0"])
    err = capsys.readouterr().err
    assert rc == 1
    lines = [l for l in err.splitlines() if l.startswith("pydarknet: error:")]
    assert len(lines) == 1 and "-i 0:" in lines[0] and "CUDA" in lines[0], err


# ----------------------------------------------------------------------------- GPU against CPU

def _gpu():
    if not _status_and_count()[1]:
        pytest.skip("no CUDA device (or a build without CUDA: PYDARKNET_CUDA=1 pip install .)")
    return 0


def _pair(write_cfg, body, c, h, w, batch=2):
    """The same network with the same weights on the CPU and on the GPU."""
    nets = []
    for name in ("cpu.cfg", "gpu.cfg"):
        net = pydarknet.load(write_cfg(NET.format(c=c, h=h, w=w) + body, name), batch=batch)
        randomize(net, 0)
        nets.append(net)
    nets[1].set_device(_gpu())
    return nets


def close(got, want, tol):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    err = np.abs(got - want).max() / max(np.abs(want).max(), 1e-6)
    assert err < tol, f"relative error {err:.2e}"


@pytest.mark.parametrize("case", select(gpu=True))
def test_forward_matches_cpu(write_cfg, case):
    c, h, w = case.shape
    cpu, gpu = _pair(write_cfg, case.body, c, h, w)
    x = random_input((2, c, h, w), 1) * 2 - 1
    cpu.forward(x)
    gpu.forward(x)
    for a, b in zip(cpu.layers, gpu.layers):
        close(b.output, a.output, 1e-4)


def _grads(net, x, R, truth=None):
    """Input delta and every parameter gradient of one training pass whose
    loss is sum(R * last output) (or the loss heads' with truths)."""
    net.enable_training()
    net.resize(batch=x.shape[0])
    x = np.ascontiguousarray(x, np.float32)
    check(lib.dn_net_seed(net._ptr, 5))
    t = ffi.NULL if truth is None else ffi.from_buffer("float[]", truth)
    check(lib.dn_net_forward_train(net._ptr, ffi.from_buffer("float[]", x), x.size, t, 0 if truth is None else truth.size))
    if truth is None:
        data, count = ffi.new("float **"), ffi.new("size_t *")
        check(lib.dn_layer_delta(net._ptr, len(net.layers) - 1, data, count))
        np.frombuffer(ffi.buffer(data[0], count[0] * 4), np.float32)[:] = R
    check(lib.dn_net_backward(net._ptr))
    data, count = ffi.new("float **"), ffi.new("size_t *")
    check(lib.dn_net_input_delta(net._ptr, data, count))
    out = {"input": np.frombuffer(ffi.buffer(data[0], count[0] * 4), np.float32).copy(),
           "loss": float(lib.dn_net_loss(net._ptr))}
    for layer in net.layers:
        for j, (name, values) in enumerate(layer.params.items()):
            grad = ffi.new("float **")
            check(lib.dn_layer_param_state(net._ptr, layer.index, j, grad, ffi.NULL, ffi.NULL))
            if grad[0] != ffi.NULL:
                out[(layer.index, name)] = np.frombuffer(ffi.buffer(grad[0], values.size * 4), np.float32).copy()
            out[(layer.index, name, "value")] = values.copy()  # rolling statistics move in training
    return out


@pytest.mark.parametrize("case", select(gpu=True))
def test_gradients_match_cpu(write_cfg, case):
    c, h, w = case.shape
    cpu, gpu = _pair(write_cfg, case.body, c, h, w)
    x = random_input((2, c, h, w), 1) * 2 - 1
    R = np.random.default_rng(2).standard_normal(2 * int(np.prod(cpu.layers[-1].shape))).astype(np.float32)
    want, got = _grads(cpu, x, R), _grads(gpu, x, R)
    assert want.keys() == got.keys()
    for k in want:
        if k != "loss":
            close(got[k], want[k], 1e-3)


@pytest.mark.parametrize("where", ["host", "device"])   # PYDARKNET_LOSS: [yolo], [softmax], [cost] on the device
@pytest.mark.parametrize("head,c", [(YOLO, 14), ("[region]\nanchors=1,1, 2,2\nclasses=3\nnum=2\ncoords=4\nsoftmax=1\n", 16),
                                    ("[cost]\ntype=sse\n", 14), ("[cost]\ntype=smooth_l1\nsigma=2\n", 14),
                                    ("[cost]\ntype=huber\ndelta=0.5\nscale=2\n", 14), ("[cost]\ntype=l2\n", 14),
                                    ("[softmax]\ngroups=4\ntemperature=0.5\n", 4),
                                    ("[softmax]\ngroups=4\nfocal_gamma=2\nfocal_alpha=0.25\n", 4)])
def test_loss_heads_match_cpu(write_cfg, monkeypatch, head, c, where):
    monkeypatch.setenv("PYDARKNET_LOSS", where)
    body = f"[convolutional]\nfilters={c}\nsize=3\npad=1\nactivation=linear\n" + head
    cpu, gpu = _pair(write_cfg, body, 3, 8, 8)
    x = random_input((2, 3, 8, 8), 1)
    if head.startswith(("[cost]", "[softmax]")):
        truth = random_input((2, c * 8 * 8), 3).reshape(-1)
    else:
        truth = np.zeros((2, 4, 5), np.float32)
        truth[:, 0] = [0.4, 0.5, 0.3, 0.4, 1]
        truth[:, 1] = [0.7, 0.3, 0.2, 0.2, 0]
        truth = truth.reshape(-1)
    want, got = _grads(cpu, x, None, truth), _grads(gpu, x, None, truth)
    assert abs(got["loss"] - want["loss"]) <= 1e-4 * abs(want["loss"])
    # The bias gradient sums the head's delta over each channel's positions and images. For the softmax's
    # cross-entropy that sum is exactly 0 (sum_j p_j T - t_j = 0 per group, and a group is a channel here), so
    # what both sides hold is float32 rounding noise (~1e-5 against terms of ~5): compare it with the bound of a
    # float32 sum of n terms, n * 2^-24 * sum |term|, not relative to itself.
    data, count = ffi.new("float **"), ffi.new("size_t *")
    check(lib.dn_layer_delta(cpu._ptr, 0, data, count))
    delta = np.frombuffer(ffi.buffer(data[0], count[0] * 4), np.float32).reshape(2, c, -1).astype(np.float64)
    n = delta.shape[0] * delta.shape[2]
    bias_bound = n * 2.0 ** -24 * np.abs(delta).sum(axis=(0, 2))
    for k in want:
        if k == (0, "biases"):
            assert (np.abs(got[k] - want[k]) <= bias_bound).all(), (got[k], want[k], bias_bound)
            if head.startswith("[softmax]"):
                assert (np.abs(want[k]) <= bias_bound).all()  # the CPU's own value is noise of that size too
            else:
                close(got[k], want[k], 1e-3)
        elif k != "loss":
            close(got[k], want[k], 1e-3)


# [yolo] options that take the loss down each of its paths (yolo.c's comment)
YOLO_LOSS_OPTIONS = ["iou_loss=iou\nignore_thresh=0.05", "iou_loss=mse", "iou_loss=giou\nfocal_loss=1",
                     "iou_loss=diou\nobjectness_smooth=1\ntruth_thresh=0.2",
                     "iou_loss=ciou\niou_thresh=0.2\nlabel_smooth_eps=0.1\nignore_thresh=0.1",
                     "counters_per_class=10,30\ndelta_normalizer=0.5\nmax_delta=2\niou_normalizer=0.07",
                     "new_coords=1\nscale_x_y=2.0\niou_loss=ciou\nfocal_loss=1"]


def _both_losses_match_cpu(write_cfg, monkeypatch, body, x, truth):
    """The head's loss on the GPU, on the host (the default) and on the device (PYDARKNET_LOSS=device): the CPU's
    loss within 1e-4 and its gradients within 1e-3."""
    want = None
    for where in ("host", "device"):
        cpu, gpu = _pair(write_cfg, body, 3, 8, 8, batch=x.shape[0])
        if want is None:
            want = _grads(cpu, x, None, truth)
        monkeypatch.setenv("PYDARKNET_LOSS", where)
        got = _grads(gpu, x, None, truth)
        assert abs(got["loss"] - want["loss"]) <= 1e-4 * abs(want["loss"]), (where, got["loss"], want["loss"])
        for k in want:
            if k != "loss":
                close(got[k], want[k], 1e-3)


@pytest.mark.parametrize("options", YOLO_LOSS_OPTIONS)
def test_yolo_loss_on_the_device_matches_cpu(write_cfg, monkeypatch, options):
    """PYDARKNET_LOSS=device: yolo_loss.h's functions run on the device (a thread per prediction, then per
    image for the truths) give the CPU's loss (1e-4) and gradients (1e-3), along every path of the loss; the
    default host loss on the same GPU network too."""
    act = "logistic" if "new_coords=1" in options else "linear"   # new_coords: the layer before applies it
    body = f"[convolutional]\nfilters=14\nsize=3\npad=1\nactivation={act}\n" + YOLO + options + "\n"
    x = random_input((3, 3, 8, 8), 1)
    truth = np.zeros((3, 5, 5), np.float32)
    truth[:, 0] = [0.4, 0.5, 0.3, 0.4, 1]
    truth[:, 1] = [0.7, 0.3, 0.2, 0.2, 0]
    truth[1, 2] = [0.45, 0.55, 0.9, 0.8, 1]   # a large box: another best anchor
    truth[2, 3] = [0.1, 0.9, 0.05, 0.1, 0]    # a small one at the edge
    truth = truth.reshape(-1)
    _both_losses_match_cpu(write_cfg, monkeypatch, body, x, truth)


REGION = "[region]\nanchors=1,1, 2,2\nclasses=3\nnum=2\ncoords=4\n"


@pytest.mark.parametrize("options", ["softmax=1\nrescore=1", "softmax=1\nbias_match=1\nrescore=0\nthresh=0.2",
                                     "softmax=0\nclass_scale=2", "softmax=1\nfocal_loss=1\nobject_scale=5"])
def test_region_loss_on_the_device_matches_cpu(write_cfg, monkeypatch, options):
    """PYDARKNET_LOSS=device for [region]: region_loss.h's functions on the device (a thread per anchor and cell,
    then per image for the truths) give the CPU's loss (1e-4) and gradients (1e-3); the host loss too."""
    body = "[convolutional]\nfilters=16\nsize=3\npad=1\nactivation=linear\n" + REGION + options + "\n"
    x = random_input((3, 3, 8, 8), 1)
    truth = np.zeros((3, 4, 5), np.float32)
    truth[:, 0] = [0.4, 0.5, 0.3, 0.4, 1]
    truth[:, 1] = [0.7, 0.3, 0.2, 0.2, 0]
    truth[1, 2] = [0.45, 0.55, 0.9, 0.8, 2]
    truth = truth.reshape(-1)
    _both_losses_match_cpu(write_cfg, monkeypatch, body, x, truth)


@pytest.mark.parametrize("where", ["host", "device"])
@pytest.mark.parametrize("extra", ["", "adam=1\nB1=0.9\nB2=0.999\neps=0.000001"])
def test_training_iterations_match_cpu(write_cfg, monkeypatch, extra, where):
    """Two iterations of batch 8 in mini-batches of 4: accumulation, batch-norm
    statistics, the yolo loss (on the host or on the device) and the optimizer
    (SGD with momentum and decay, or Adam)."""
    device = _gpu()
    monkeypatch.setenv("PYDARKNET_LOSS", where)
    cpu, cpu_losses = trained(write_cfg, 2, 2, extra, "cpu.cfg")
    gpu, gpu_losses = trained(write_cfg, 2, 2, extra, "gpu.cfg", device=device)
    np.testing.assert_allclose(gpu_losses, cpu_losses, rtol=1e-4)
    for a, b in zip(cpu.layers, gpu.layers):
        pa, pb = a.params, b.params
        for k in pa:
            close(pb[k], pa[k], 1e-3)
    assert gpu.iteration == cpu.iteration == 2


CONV_VARIANTS = ("[convolutional]\nfilters=6\nsize=3\nstride=1\npad=1\nbatch_normalize=1\nactivation=leaky\n"
                 "[convolutional]\nfilters=6\nsize=3\nstride=2\npad=1\ngroups=3\nactivation=mish\n"
                 "[convolutional]\nfilters=8\nsize=3\nstride=1\npad=1\ndilation=2\nactivation=linear\n"
                 "[convolutional]\nfilters=5\nsize=1\nstride=1\npad=0\nactivation=logistic\n"
                 "[convolutional]\nfilters=4\nsize=5\nstride_x=2\nstride_y=1\npad=1\nactivation=linear\n")


def test_cudnn_and_gemm_paths_match_cpu(write_cfg):
    """With cuDNN in the build, a network's convolutions run on it by default; switched off they run on im2col +
    cuBLAS. Both give the CPU's forward pass and gradients (grouped, strided, dilated, 1x1, non-square strides)."""
    cpu, gpu = _pair(write_cfg, CONV_VARIANTS, 3, 12, 12)
    if not gpu.cudnn:   # off by default: no cuDNN in the build, or PYDARKNET_CUDNN=0
        try:
            gpu.cudnn = True
        except DarknetError as e:
            assert "cuDNN" in str(e)
            pytest.skip("this build has no cuDNN (PYDARKNET_CUDNN=1)")
    x = random_input((2, 3, 12, 12), 1) * 2 - 1
    R = np.random.default_rng(2).standard_normal(2 * int(np.prod(cpu.layers[-1].shape))).astype(np.float32)
    want = _grads(cpu, x, R)
    for on in (True, False):
        gpu = _pair(write_cfg, CONV_VARIANTS, 3, 12, 12)[1]   # fresh gradients (a pass adds into them)
        gpu.cudnn = on
        assert gpu.cudnn == on
        got = _grads(gpu, x, R)
        for k in want:
            if k != "loss" and not (isinstance(k, tuple) and k[-1] == "value"):
                close(got[k], want[k], 1e-3)


def test_device_name_and_move_back(write_cfg):
    gpu = _gpu()
    net = pydarknet.load(write_cfg(NET.format(c=3, h=8, w=8) + ONE.format(f=4)), gpu=gpu)
    assert net.gpu == gpu and net.device_name == f"GPU {gpu} ({cuda_devices()[gpu]})"
    x = random_input((1, 3, 8, 8))
    net.forward(x)
    on_gpu = net.layers[0].output
    net.set_device(None)
    net.forward(x)
    close(net.layers[0].output, on_gpu, 1e-5)


def test_profiling_times_every_layer_on_the_device(write_cfg):
    """The one layer loop times device layers too (they used to report 0):
    forward and backward of each layer of a small detector, on the GPU."""
    gpu = _gpu()
    body = ONE.format(f=8) + "[maxpool]\nsize=2\nstride=2\n" + ONE.format(f=14) + YOLO
    net = pydarknet.load(write_cfg(NET.format(c=3, h=16, w=16) + body, "net.cfg"), batch=2, gpu=gpu)
    randomize(net, 0)
    x = random_input((2, 3, 16, 16), 1)
    f, b, n = ffi.new("double *"), ffi.new("double *"), ffi.new("long long *")
    check(lib.dn_net_set_profiling(net._ptr, 1))
    for _ in range(2):
        net.forward(x)
    net.enable_training()
    check(lib.dn_net_forward_train(net._ptr, ffi.from_buffer("float[]", x), x.size, ffi.NULL, 0))
    check(lib.dn_net_backward(net._ptr))
    for i in range(len(net.layers)):
        check(lib.dn_net_layer_times(net._ptr, i, f, b, n))
        assert n[0] == 3 and f[0] > 0 and b[0] > 0, (i, net.layers[i].type, f[0], b[0], n[0])


@pytest.mark.parametrize("name", ["yolov4-tiny", "yolov4"])
def test_public_model_gradients_match_cpu(write_cfg, name):
    """Whole public models at 128x128, batch 4: every parameter gradient of one
    training pass on the GPU against the CPU (a stand-in loss: the heads' deltas
    set to fixed random values). float32 alone spreads two correct computations
    widely here (random weights and batch statistics make many weight gradients
    cancelling residues, and a maxpool near-tie sends one value's gradient to its
    neighbour): two CPU paths (the fast kernels and the plain loops with the
    portable GEMM) differ by 1.3e-2 (yolov4-tiny) and 5.1e-2 (yolov4) relative L2.
    So the GPU must be within 3x the CPU paths' spread measured in the same run,
    and never beyond 0.1 of it where that spread is smaller: a wrong or missing
    derivative is off by order 1."""
    gpu = _gpu()
    text = (Path(__file__).resolve().parents[1] / "cfg" / f"{name}.cfg").read_text()
    text = "\n".join("width=128" if l.startswith("width=") else "height=128" if l.startswith("height=") else l
                     for l in text.splitlines())
    x = random_input((4, 3, 128, 128), 1)

    def gradients(device, plain=False):
        net = pydarknet.load(write_cfg(text, f"{name}.cfg"), batch=4)
        randomize(net, 0)
        if plain:
            check(lib.dn_net_set_speed(net._ptr, 0))
            check(lib.dn_net_set_blas(net._ptr, 0))
        if device is not None:
            net.set_device(device)
        net.enable_training()
        check(lib.dn_net_forward_train(net._ptr, ffi.from_buffer("float[]", x), x.size, ffi.NULL, 0))
        for k, layer in enumerate(net.output_layers):
            data, count = ffi.new("float **"), ffi.new("size_t *")
            check(lib.dn_layer_delta(net._ptr, layer.index, data, count))
            R = np.random.default_rng(k).standard_normal(count[0]).astype(np.float32)
            np.frombuffer(ffi.buffer(data[0], count[0] * 4), np.float32)[:] = R
        check(lib.dn_net_backward(net._ptr))
        g = []
        for layer in net.layers:
            for j, values in enumerate(layer.params.values()):
                ptr = ffi.new("float **")
                check(lib.dn_layer_param_state(net._ptr, layer.index, j, ptr, ffi.NULL, ffi.NULL))
                if ptr[0] != ffi.NULL:
                    g.append(np.frombuffer(ffi.buffer(ptr[0], values.size * 4), np.float32).astype(np.float64))
        return np.concatenate(g)

    want, plain, got = gradients(None), gradients(None, plain=True), gradients(gpu)
    spread = np.linalg.norm(plain - want) / np.linalg.norm(want)
    assert np.isfinite(got).all()
    assert np.linalg.norm(got - want) / np.linalg.norm(want) <= max(3 * spread, 0.1), spread


def test_the_bucket_hook_gets_the_devices_gradients_in_one_range(write_cfg):
    """On a device the gradient block comes to the host once, after the backward pass: one range, the whole
    block, holding the device's gradients (the CPU's within 1e-3); a hook that doubles it in place with a doubled
    image count trains what the CPU trains without one (the doubled gradients went back to the device)."""
    from test_gradient_buckets import CFG, Recorder, params
    from pydarknet.synthetic import shapes_batch

    device = _gpu()
    nets = []
    for name in ("cpu.cfg", "gpu.cfg"):
        net = pydarknet.load(write_cfg(CFG, name))
        randomize(net, 3)
        nets.append(net)
    cpu, gpu = nets
    gpu.set_device(device)
    cpu.enable_training()
    gpu.enable_training()
    seen = Recorder(cpu, 0)
    rec = Recorder(gpu, 200, double=True)
    x, t = shapes_batch(12, 32, seed=4)
    for k in range(2):
        cpu.train_batch(x[6 * k:6 * k + 6], t[6 * k:6 * k + 6])
        gpu.train_batch(x[6 * k:6 * k + 6], t[6 * k:6 * k + 6])
    total = lib.dn_net_gradient_count(gpu._ptr)
    assert rec.ranges == [(0, total), (0, total)]
    for got, want in zip(rec.at_handover, seen.final):
        close(got, 2 * want, 1e-3)
    a, b = params(cpu), params(gpu)
    for k in a:
        close(b[k], a[k], 1e-3)



def test_the_gradient_hook_alone_gets_the_devices_gradients(write_cfg):
    """On a device without a bucket hook, the gradient block is brought to the host (one copy) for the gradient
    hook, which may rewrite it: the block it sees is the CPU's gradients, and doubling it with the image count
    trains what the CPU trains plainly (the doubled block went back to the device as one copy)."""
    from test_gradient_buckets import CFG, block, params
    from pydarknet.synthetic import shapes_batch

    device = _gpu()
    nets = []
    for name in ("cpu.cfg", "gpu.cfg"):
        net = pydarknet.load(write_cfg(CFG, name))
        randomize(net, 3)
        net.enable_training()
        nets.append(net)
    cpu, gpu = nets
    gpu.set_device(device)
    seen, want = [], []
    values, cpu_values = block(gpu), block(cpu)

    @ffi.callback("dn_status(dn_net *, void *, unsigned long long *)")
    def doubling(ptr, user, images):
        seen.append(values.copy())
        values[:] *= 2
        images[0] *= 2
        return lib.DN_OK

    @ffi.callback("dn_status(dn_net *, void *, unsigned long long *)")
    def recording(ptr, user, images):
        want.append(cpu_values.copy())
        return lib.DN_OK

    check(lib.dn_net_set_gradient_hook(gpu._ptr, doubling, ffi.NULL))
    check(lib.dn_net_set_gradient_hook(cpu._ptr, recording, ffi.NULL))
    x, t = shapes_batch(12, 32, seed=4)
    for k in range(2):
        cpu.train_batch(x[6 * k:6 * k + 6], t[6 * k:6 * k + 6])
        gpu.train_batch(x[6 * k:6 * k + 6], t[6 * k:6 * k + 6])
    assert len(seen) == len(want) == 2
    for got, ref in zip(seen, want):
        close(got, ref, 1e-3)
    a, b = params(cpu), params(gpu)
    for k in a:
        close(b[k], a[k], 1e-3)


# ----------------------------------------------------------------------------- CUDA graphs, the input's upload

def _public_model(write_cfg, name, size, batch):
    text = (Path(__file__).resolve().parents[1] / "cfg" / f"{name}.cfg").read_text()
    text = "\n".join(f"width={size}" if l.startswith("width=") else f"height={size}" if l.startswith("height=")
                     else l for l in text.splitlines())
    net = pydarknet.load(write_cfg(text, f"{name}.cfg"), batch=batch)
    randomize(net, 0)
    return net


def _graph_passes(net, xs, graphs):
    """Each input's heads (copies) after an inference pass with the graphs switched as given."""
    net.cuda_graphs = graphs
    return [[h.copy() for h in net.predict(x)] for x in xs]


def _same(got, want):
    for g, w in zip(got, want):
        for a, b in zip(g, w):
            assert a.shape == b.shape and np.array_equal(a, b), f"differ by {np.abs(a - b).max():.3g}"


def test_cuda_graphs_run_what_the_layers_run(write_cfg):
    """Network.cuda_graphs: an inference pass's layers as one CUDA graph give the very bits the same network gives
    without it (the same kernels with the same arguments), each pass with its own input; the graph is made on the
    second pass at a memory layout and launched from then on; weights written between passes are read, and a
    resize, training (its buffers) and the cuDNN switch each make the next graph anew."""
    device = _gpu()
    net = _public_model(write_cfg, "yolov4-tiny", 128, 1)
    net.set_device(device)
    xs = [random_input((1, 3, 128, 128), k) for k in range(4)]
    got = _graph_passes(net, xs, True)
    assert net.cuda_graph_launches == 3        # the first pass settles the memory, the second makes the graph
    want = _graph_passes(net, xs, False)
    assert net.cuda_graph_launches == 3
    _same(got, want)

    # weights written between passes: the graph reads the device copies they go to
    before = _graph_passes(net, xs[:2], True)
    w = net.layers[0].params["weights"]
    w *= 0.5
    got = _graph_passes(net, xs[:2], True)
    assert net.cuda_graph_launches == 7
    assert not np.array_equal(got[0][0], before[0][0])
    _same(got, _graph_passes(net, xs[:2], False))

    # a resize: new memory, so the first pass at the new size runs as usual and the graph comes on the second
    net.resize(height=160, width=160)
    ys = [random_input((1, 3, 160, 160), 10 + k) for k in range(3)]
    got = _graph_passes(net, ys, True)
    assert net.cuda_graph_launches == 9
    _same(got, _graph_passes(net, ys, False))

    # a training iteration between inference passes (its deltas, gradients and scratch are allocated)
    from pydarknet.synthetic import shapes_batch
    x, t = shapes_batch(net.mini_batch, 160, seed=4)
    net.cuda_graphs = True
    net.train_batch(x, t)
    net.resize(batch=1)
    got = _graph_passes(net, ys, True)
    assert net.cuda_graph_launches == 11
    _same(got, _graph_passes(net, ys, False))

    if net.cudnn:   # a build with cuDNN: its convolutions in the graph, and the switch makes it anew
        for on in (False, True):
            net.cudnn = on
            launches = net.cuda_graph_launches
            got = _graph_passes(net, ys, True)
            assert net.cuda_graph_launches == launches + 2
            _same(got, _graph_passes(net, ys, False))


def _device_layer_types():
    """The layer types with device passes (a .cu beside their .c; [reorg3d] runs [reorg]'s)."""
    return {c.stem for c in GPU_LAYER_SOURCES} | {"reorg3d"}


@pytest.mark.parametrize("case", select(gpu=True))
def test_every_layer_case_in_a_cuda_graph_matches_cpu(write_cfg, case):
    """Every layer case's inference pass as a CUDA graph: the third pass launches the graph the second made, and
    gives the CPU's outputs for its own input; a case with a layer that runs on host copies is not captured and
    runs as usual."""
    c, h, w = case.shape
    cpu, gpu = _pair(write_cfg, case.body, c, h, w)
    gpu.cuda_graphs = True
    xs = [random_input((2, c, h, w), k) * 2 - 1 for k in (1, 2, 3)]
    for x in xs:
        gpu.forward(x)
    cpu.forward(xs[-1])
    on_device = {l.type for l in gpu.layers} <= _device_layer_types()
    assert gpu.cuda_graph_launches == (2 if on_device else 0), sorted({l.type for l in gpu.layers})
    for a, b in zip(cpu.layers, gpu.layers):
        close(b.output, a.output, 1e-4)


def test_cuda_graphs_leave_a_pass_they_cannot_capture_to_run_as_usual(write_cfg):
    """A layer that runs on host copies ([fcos] copies its input to the host) cannot be in a graph: the capture is
    given up, the pass runs as usual and gives what it gives without graphs, and that layout is not tried again."""
    device = _gpu()
    body = ONE.format(f=8) + "[fcos]\nclasses=3\n"
    net = pydarknet.load(write_cfg(NET.format(c=3, h=16, w=16) + body))
    randomize(net, 0)
    net.set_device(device)
    xs = [random_input((1, 3, 16, 16), k) for k in range(3)]
    got = _graph_passes(net, xs, True)
    assert net.cuda_graph_launches == 0
    _same(got, _graph_passes(net, xs, False))


def test_graphs_from_the_environment(write_cfg, monkeypatch):
    """PYDARKNET_CUDA_GRAPHS=1 when the network goes to the device turns them on; unset, they are off."""
    device = _gpu()
    for value, on in (("1", True), ("0", False), ("", False)):
        monkeypatch.setenv("PYDARKNET_CUDA_GRAPHS", value)
        net = pydarknet.load(write_cfg(NET.format(c=3, h=8, w=8) + ONE.format(f=4)))
        net.set_device(device)
        assert net.cuda_graphs is on


def test_each_training_pass_reads_its_own_input(write_cfg):
    """A training pass's input goes up on a stream of its own into the other of two device buffers while the pass
    before still runs: after an iteration of four mini-batches with different images, the first layer's output is
    the last mini-batch's (as on the CPU), and so are the weights of two iterations."""
    device = _gpu()
    cpu, _ = trained(write_cfg, 4, 2, name="cpu.cfg")
    gpu, _ = trained(write_cfg, 4, 2, name="gpu.cfg", device=device)
    assert gpu.mini_batch == 2
    close(gpu.layers[0].output, cpu.layers[0].output, 1e-3)
    for a, b in zip(cpu.layers, gpu.layers):
        for k, v in a.params.items():
            close(b.params[k], v, 1e-3)


# ----------------------------------------------------------------------------- mixed precision

# The unit roundoff of each reduced type (half the distance from 1 to the next value): float16 keeps 11 bits of
# mantissa, bfloat16 8. A product's two operands rounded to it are each off by at most u relatively, so each term
# of a sum by 2u; the sums themselves are float32. Forward outputs (sums of at most a few hundred terms of random
# sign, so a term's magnitude stays within ~16x of the output's largest) are held to 16u of the tensor's largest
# magnitude; gradients, sums over every pixel of both images (a few hundred terms each, more cancellation), to 64u.
UNIT_ROUNDOFF = {"float16": 2.0 ** -11, "bfloat16": 2.0 ** -8}
GEMM_LAYERS = ("[convolutional]", "[connected]", "[deformable]")


@pytest.mark.parametrize("precision", sorted(UNIT_ROUNDOFF))
@pytest.mark.parametrize("case", [p for p in select(gpu=True) if any(t in p.values[0].body for t in GEMM_LAYERS)])
def test_mixed_precision_forward_matches_cpu(write_cfg, case, precision):
    """Every layer case with a matrix product, its products' operands rounded to float16/bfloat16 on the tensor
    cores: the CPU's float32 outputs within the rounding of the operands."""
    c, h, w = case.shape
    cpu, gpu = _pair(write_cfg, case.body, c, h, w)
    gpu.gpu_precision = precision
    assert gpu.gpu_precision == precision and not gpu.cudnn   # mixed precision takes the cuBLAS path
    x = random_input((2, c, h, w), 1) * 2 - 1
    cpu.forward(x)
    gpu.forward(x)
    for a, b in zip(cpu.layers, gpu.layers):
        close(b.output, a.output, 16 * UNIT_ROUNDOFF[precision])


@pytest.mark.parametrize("precision", sorted(UNIT_ROUNDOFF))
def test_mixed_precision_gradients_below_float16s_range_survive(write_cfg, precision):
    """A loss whose gradient is ~1e-7 (the deltas reaching the products 1e-8 to 2e-7: below float16's smallest
    normal value, 6.1e-5, most below its smallest subnormal, 6e-8): float16's loss scale (65536) lifts the gradient
    operand of every backward product into its normal range before it is rounded (and takes it out of the product
    after), so every weight gradient and the input's delta are the CPU's within the operands' rounding; without
    the scale they would be zero or a few subnormal steps. bfloat16 has float32's range and no scale."""
    cpu, gpu = _pair(write_cfg, CONV_VARIANTS + "[connected]\noutput=7\nactivation=leaky\n", 3, 12, 12)
    gpu.enable_training()
    gpu.gpu_precision = precision
    assert gpu.loss_scale == (65536.0 if precision == "float16" else 1.0)
    x = random_input((2, 3, 12, 12), 1) * 2 - 1
    R = np.random.default_rng(2).standard_normal(2 * 7).astype(np.float32) * np.float32(1e-7)
    want, got = _grads(cpu, x, R), _grads(gpu, x, R)
    for k in want:
        if k != "loss" and not (isinstance(k, tuple) and k[-1] == "value"):
            assert np.abs(want[k]).max() > 0, k
            close(got[k], want[k], 64 * UNIT_ROUNDOFF[precision])


def _stand_in_update(net, x, scale):
    """One forward, backward (every output's delta `scale` times fixed random values) and update; the weights after."""
    check(lib.dn_net_forward_train(net._ptr, ffi.from_buffer("float[]", x), x.size, ffi.NULL, 0))
    data, count = ffi.new("float **"), ffi.new("size_t *")
    check(lib.dn_layer_delta(net._ptr, len(net.layers) - 1, data, count))
    R = np.random.default_rng(3).standard_normal(count[0]).astype(np.float32) * np.float32(scale)
    np.frombuffer(ffi.buffer(data[0], count[0] * 4), np.float32)[:] = R
    check(lib.dn_net_backward(net._ptr))
    check(lib.dn_net_update(net._ptr))
    return {(l.index, k): v.copy() for l in net.layers for k, v in l.params.items()}


def test_float16_skips_an_update_whose_gradients_overflow(write_cfg):
    """float16 with loss scale 2^24 and gradients near 1: scaled, they pass float16's largest value (65504), so the
    products make infinities; that iteration updates nothing (it still counts), the scale halves and the skip is
    counted. At scale 1 the same gradients update the weights as the CPU does."""
    from helpers import small_yolo

    device = _gpu()
    nets = []
    for name in ("cpu.cfg", "gpu.cfg"):
        net = small_yolo(write_cfg, 1, seed=3, name=name)
        net.enable_training()
        nets.append(net)
    cpu, gpu = nets
    gpu.set_device(device)
    gpu.gpu_precision = "float16"
    gpu.loss_scale = 2.0 ** 24
    x = random_input((gpu.mini_batch, 3, 32, 32), 1)
    before = {(l.index, k): v.copy() for l in gpu.layers for k, v in l.params.items()}
    after = _stand_in_update(gpu, x, 1.0)
    assert gpu.skipped_updates == 1 and gpu.loss_scale == 2.0 ** 23 and gpu.iteration == 1
    for k in before:
        assert np.array_equal(after[k], before[k]), k
    gpu.loss_scale = 1.0
    got = _stand_in_update(gpu, x, 1.0)
    want = _stand_in_update(cpu, x, 1.0)
    assert gpu.skipped_updates == 1 and gpu.iteration == 2
    for k in want:
        assert not np.array_equal(got[k], before[k]) or np.array_equal(want[k], before[k]), k
        close(got[k], want[k], 64 * UNIT_ROUNDOFF["float16"])


@pytest.mark.parametrize("precision", sorted(UNIT_ROUNDOFF))
def test_mixed_precision_training_follows_the_cpu(write_cfg, precision):
    """Two iterations of the small detector (the [yolo] loss, batch norm, SGD with momentum) in mixed precision:
    the losses and every weight the CPU's within the products' rounding."""
    device = _gpu()
    cpu, want = trained(write_cfg, 2, 2, name="cpu.cfg")
    gpu, got = trained(write_cfg, 2, 2, name="gpu.cfg", device=device, precision=precision)
    tol = 64 * UNIT_ROUNDOFF[precision]
    np.testing.assert_allclose(got, want, rtol=tol)
    assert gpu.skipped_updates == 0
    for a, b in zip(cpu.layers, gpu.layers):
        for k, v in a.params.items():
            close(b.params[k], v, tol)


def test_precision_from_the_environment(write_cfg, monkeypatch):
    """PYDARKNET_CUDA_PRECISION sets the precision when the network goes to the device; a bad value is one error."""
    device = _gpu()
    for value, want in (("float16", "float16"), ("bfloat16", "bfloat16"), ("float32", "float32"), ("", "float32")):
        monkeypatch.setenv("PYDARKNET_CUDA_PRECISION", value)
        net = pydarknet.load(write_cfg(NET.format(c=3, h=8, w=8) + ONE.format(f=4)))
        net.set_device(device)
        assert net.gpu_precision == want
    monkeypatch.setenv("PYDARKNET_CUDA_PRECISION", "half")
    net = pydarknet.load(write_cfg(NET.format(c=3, h=8, w=8) + ONE.format(f=4)))
    with pytest.raises(DarknetError, match="PYDARKNET_CUDA_PRECISION=half"):
        net.set_device(device)
    assert net.gpu is None   # the failed move leaves it on the CPU
