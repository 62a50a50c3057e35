#!/usr/bin/env python3
"""pydarknet on a CUDA device against PyTorch on the same device, in one process.

The network (default yolov4-tiny at 416, seeded random weights written once by
scripts/make_random_weights.py) is built twice from the same cfg: by pydarknet
(``gpu=0``) and as a PyTorch module (benchmarks/torch_darknet.py, built with
pydarknet's cfg parser, parameters copied from the pydarknet network). PyTorch
runs float32 NCHW with ``cudnn.benchmark`` on and TF32 off (matmul and cuDNN),
so both do full float32 arithmetic (pydarknet's cuBLAS runs in its default,
non-TF32 math mode).

Before timing, a check: the heads of both agree on the photo (max abs
difference / max magnitude < 1e-3), and one training iteration of both gives
the same loss (relative difference < 1e-3) and the same parameter gradients
within float32's reach (see GRAD_TOLERANCE; printed, and per tensor in the JSON).

Timed (warm-up first, then rounds alternating the systems, the order flipping
every round; torch.cuda.synchronize() before and after each timed call, which
waits for pydarknet's work too: both use the device's primary context):

  (a) latency, batch 1: host array in, the [yolo] heads back as host arrays.
      pydarknet ``net.predict(x)`` (input copy to the device, forward, heads
      copied back); PyTorch ``model(torch.from_numpy(x).to(dev))`` in
      inference mode, then ``.cpu()`` of every head. On a GPU also
      "pydarknet (CUDA graph)": a second pydarknet network of batch 1 with the
      same weights and ``cuda_graphs`` on (its layers launched as one CUDA
      graph; the heads checked against the first network's before timing).
  (b) throughput: the same at --batch (64) images; images/s = batch / median.
  (c) one training iteration of --batch images in --subdivisions (1)
      mini-batches, gradients accumulated, one SGD step (momentum and decay as
      the cfg's [net], darknet's update rule, which torch.optim.SGD reproduces
      with lr = rate / B and weight_decay = decay * B on the weights only).
      Both use the same stand-in loss, 0.5 * the sum of squares of every
      [yolo] output (the outputs as (a) returns them, so the logistic is in
      the graph), with batch-norm batch statistics:
        pydarknet: per mini-batch ``dn_net_forward_train`` without truths,
          each [yolo] layer's delta set to its output (the loss's gradient),
          ``dn_net_backward``; then ``dn_net_update``;
        PyTorch: forward, loss, ``backward()`` per mini-batch, ``opt.step()``;
          the input copied from a host array like pydarknet's.
      Also timed, for reference: pydarknet's real iteration as
      bench_training.py times it, ``net.train_batch(x, truths)`` with
      darknet's [yolo] loss (random boxes, 8 per image); PyTorch has no
      counterpart (the ratio uses the stand-in rows).

pydarknet's CUDA build runs its [yolo] layers on the host (the heads are
copied back and forth every pass); that cost is part of its figures, as it is
of any use of it.

--precision float16 / bfloat16 (GPU only) times mixed precision after the float32
checks: pydarknet's products on tensor cores in that type (net.gpu_precision;
float16 with its loss scaling) against PyTorch under torch.autocast in that type
(float16 training with torch.amp.GradScaler); its heads are compared with
PyTorch's float32 heads and the difference recorded (a gross-error guard only:
tests/test_cuda.py holds each layer to the operands' rounding).

--device cpu runs the same comparison on the CPU (pydarknet against PyTorch's
CPU build, --threads each, default 2; smaller default batch and fewer rounds),
so the script can be exercised without a GPU.

    python benchmarks/bench_gpu.py                       # yolov4-tiny, 416, GPU 0
    python benchmarks/bench_gpu.py --gpu 1 --batch 32
    python benchmarks/bench_gpu.py --device cpu          # the same on the CPU

Needs PyTorch (not a dependency of pydarknet) and, for the GPU, pydarknet built
with PYDARKNET_CUDA=1.
"""
import argparse
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from paths import add_cfg_dir_arg, add_image_arg, recorded_command  # noqa: E402

# per device: (batch, warm-up runs, latency rounds, batch rounds, threads, pause s, wait-idle s)
DEFAULTS = {"cuda": (64, 10, 50, 10, None, 0.0, 0.0), "cpu": (16, 2, 10, 3, 2, 0.3, 120.0)}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cuda (default) or cpu")
    ap.add_argument("--gpu", type=int, default=0, help="CUDA device index (default 0)")
    ap.add_argument("--cfg", default="yolov4-tiny", help="cfg path or a model name from --cfg-dir")
    add_cfg_dir_arg(ap)
    ap.add_argument("--size", type=int, default=416, help="input width and height (default 416)")
    ap.add_argument("--batch", type=int, default=None,
                    help="images of the throughput run and of a training iteration (default 64; cpu 16)")
    ap.add_argument("--subdivisions", type=int, default=1, help="mini-batches per training iteration (default 1)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed runs per system and part (default 10; cpu 2)")
    ap.add_argument("--repeat", type=int, default=None, help="timed rounds of the latency part (default 50; cpu 10)")
    ap.add_argument("--batch-repeat", type=int, default=None,
                    help="timed rounds of the throughput and training parts (default 10; cpu 3)")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads of both systems (default: cpu 2; cuda every usable CPU)")
    ap.add_argument("--pause", type=float, default=None,
                    help="seconds idle before each timed run (default cpu 0.3: lets the other system's "
                         "worker threads stop spinning; cuda 0)")
    ap.add_argument("--wait-idle", type=float, default=None,
                    help="before each part, wait up to this many seconds for other processes to go quiet "
                         "(default cpu 120, cuda 0)")
    ap.add_argument("--precision", choices=("float32", "float16", "bfloat16"), default="float32",
                    help="the precision timed (GPU only; default float32): mixed precision against torch.autocast")
    ap.add_argument("--check-only", action="store_true", help="run the correctness check, time nothing")
    ap.add_argument("--no-real-loss", action="store_true", help="skip pydarknet's train_batch reference row")
    add_image_arg(ap)
    ap.add_argument("--seed", type=int, default=1, help="seed of the random weights and inputs (default 1)")
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "pydarknet-bench"),
                    help="folder for the generated weights and cfg copies")
    ap.add_argument("--json", default=None, help="default benchmarks/results/torch_<device>.json")
    args = ap.parse_args(argv)
    batch, warmup, repeat, batch_repeat, threads, pause, wait = DEFAULTS[args.device]
    args.batch = batch if args.batch is None else args.batch
    args.warmup = warmup if args.warmup is None else args.warmup
    args.repeat = repeat if args.repeat is None else args.repeat
    args.batch_repeat = batch_repeat if args.batch_repeat is None else args.batch_repeat
    args.pause = pause if args.pause is None else args.pause
    args.wait_idle = wait if args.wait_idle is None else args.wait_idle
    if args.threads is None:
        args.threads = threads or len(os.sched_getaffinity(0))
    if args.json is None:
        args.json = os.path.join(HERE, "results", "torch_%s.json" % args.device)
    for name in ("batch", "subdivisions", "repeat", "batch_repeat", "threads", "size"):
        if getattr(args, name) < 1:
            ap.error("--%s must be at least 1" % name.replace("_", "-"))
    if args.precision != "float32" and args.device != "cuda":
        ap.error("--precision %s needs --device cuda" % args.precision)
    if args.batch % args.subdivisions:
        ap.error("--batch %d does not split into --subdivisions %d" % (args.batch, args.subdivisions))
    return args


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None:
    # Thread pools read these when the libraries load: set them before importing.
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        os.environ[var] = str(ARGS.threads)

import numpy as np  # noqa: E402

import pydarknet  # noqa: E402
from pydarknet._native import check, cuda_devices, ffi, lib  # noqa: E402

sys.path.insert(0, HERE)
from common import (Neighbours, load_input, machine_info, random_weights, resolve_cfg, sized_cfg,  # noqa: E402
                    wait_idle)

try:
    import torch  # noqa: E402
except ImportError:
    torch = None

TOLERANCE = 1e-3  # heads and loss; float32 through ~40 layers gives differences of ~1e-6 of the heads
# Gradients are judged against a float64 computation of darknet's own function (PyTorch
# with batch norm on the unbiased batch variance, as darknet computes it): pydarknet's
# float32 gradients must be within GRAD_TOLERANCE of it overall (relative L2), which a
# wrong or missing derivative (off by order 1) cannot meet. float32 itself is far from
# float64 here: with batch norm's batch statistics and random weights many weight
# gradients are residues of cancelling sums, and a maxpool window whose two largest inputs
# are within rounding of each other sends its gradient to the other input (one such flip
# in yolov4-tiny at 160 moves layer 2's weight gradient by 2e-3). Measured on the CPU
# (yolov4 at 128, batch 4): pydarknet 2.7e-2 from the reference, a float32 PyTorch
# computation of the same function 2.0e-2, PyTorch's own model (nn.BatchNorm2d: biased
# variance, another function) 0.65; all three are printed.
GRAD_TOLERANCE = 0.1
# Mixed precision's heads against PyTorch's float32 heads: a guard against a broken path only (a wrong scale or a
# lost product is off by order 1); the rounding itself is checked layer by layer in tests/test_cuda.py.
MIXED_GUARD = 0.25

# PyTorch's side of --precision: the autocast type (None: float32) and float16's gradient scaler
AMP = {"dtype": None, "scaler": None}


# ------------------------------------------------------------------ setup

def require_devices(args):
    """Exits with a one-line reason when the comparison cannot run here."""
    if torch is None:
        raise SystemExit("bench_gpu.py: PyTorch is not installed (pip install torch; it is not a pydarknet dependency)")
    if args.device == "cpu":
        return
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py: PyTorch sees no CUDA device (torch %s, built for CUDA %s); "
                         "use --device cpu to run the comparison on the CPU"
                         % (torch.__version__, torch.version.cuda or "none"))
    names = cuda_devices()
    if not names:
        raise SystemExit("bench_gpu.py: pydarknet has no CUDA (a build without PYDARKNET_CUDA=1, or no device "
                         "visible): rebuild with PYDARKNET_CUDA=1, or use --device cpu")
    if not 0 <= args.gpu < len(names) or args.gpu >= torch.cuda.device_count():
        raise SystemExit("bench_gpu.py: --gpu %d: pydarknet sees %d device(s), PyTorch %d"
                         % (args.gpu, len(names), torch.cuda.device_count()))


def build(args):
    """(pydarknet Network, PyTorch model, torch device, cfg path) with the same weights."""
    from torch_darknet import DarknetTorch

    cfg = sized_cfg(resolve_cfg(args.cfg, args.cfg_dir), args.size, args.cache)
    net = dn_network(args, cfg, args.batch)
    spec = net.spec
    try:
        model = DarknetTorch(spec)
    except pydarknet.CfgError as e:
        raise SystemExit("bench_gpu.py: %s" % e) from None
    model.load_from(net)
    if args.device == "cuda":
        net.set_device(args.gpu)
        dev = torch.device("cuda", args.gpu)
        torch.cuda.set_device(dev)
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    else:
        dev = torch.device("cpu")
    torch.set_num_threads(args.threads)
    return net, model.to(dev), dev, cfg


def check_mixed(net, model, dev, x, precision):
    """pydarknet's heads in mixed precision against PyTorch's float32 heads (and PyTorch's autocast heads against
    them too, for scale): recorded, and a guard against a broken path (MIXED_GUARD)."""
    model.eval()
    want = torch_predict(model, dev, x)   # float32: AMP not set yet
    net.gpu_precision = precision
    AMP["dtype"] = getattr(torch, precision)
    AMP["scaler"] = torch.amp.GradScaler("cuda") if precision == "float16" else None
    got, amp = dn_predict(net, x), torch_predict(model, dev, x)
    err = max(rel_err(g, w) for g, w in zip(got, want))
    amp_err = max(rel_err(g, w) for g, w in zip(amp, want))
    print("  check, %s: heads against PyTorch float32, max abs difference / max magnitude: pydarknet %.1e, "
          "PyTorch autocast %.1e" % (precision, err, amp_err))
    if not err < MIXED_GUARD:
        raise SystemExit("check failed: pydarknet's %s heads differ from float32's by %.2e (guard %g)"
                         % (precision, err, MIXED_GUARD))
    return {"pydarknet_vs_float32": err, "torch_autocast_vs_float32": amp_err}


def dn_network(args, cfg, batch):
    """The pydarknet network of the sized cfg with the benchmark's seeded weights (written once), on the CPU."""
    spec = pydarknet.parse_cfg(cfg)
    spec.options["subdivisions"] = args.subdivisions
    net = pydarknet.Network(spec, batch=batch, threads=args.threads)
    net.load_weights(random_weights(cfg, args.seed, args.cache, args.threads))
    return net


def graph_network(args, cfg):
    """A pydarknet network of batch 1 with the benchmark's weights on the GPU, its inference passes as CUDA graphs."""
    gnet = dn_network(args, cfg, 1)
    gnet.set_device(args.gpu)
    gnet.gpu_precision = args.precision
    gnet.cuda_graphs = True
    return gnet


def sync_for(dev):
    if dev.type == "cuda":
        return lambda: torch.cuda.synchronize(dev)
    return lambda: None


def random_truths(batch, classes, rng, per_image=8, rows=90):
    """[batch, rows, 5] boxes x y w h class (normalized), per_image of them per image."""
    t = np.zeros((batch, rows, 5), np.float32)
    n = min(per_image, rows)
    t[:, :n, 0:2] = rng.uniform(0.1, 0.9, (batch, n, 2))
    t[:, :n, 2:4] = rng.uniform(0.05, 0.5, (batch, n, 2))
    t[:, :n, 4] = rng.integers(0, max(classes, 1), (batch, n))
    return t


# ------------------------------------------------------------------ the two systems

def dn_predict(net, x):
    return net.predict(x)


def autocast(dev):
    return torch.autocast(dev.type, dtype=AMP["dtype"] or torch.float32, enabled=AMP["dtype"] is not None)


def torch_predict(model, dev, x):
    with torch.inference_mode(), autocast(dev):
        heads = model(torch.from_numpy(x).to(dev))
        return [h.float().cpu().numpy() for h in heads]


def _view(getter, net, index, writable=False):
    data = ffi.new("float **" if writable else "const float **")
    count = ffi.new("size_t *")
    check(getter(net._ptr, index, data, count))
    return np.frombuffer(ffi.buffer(data[0], count[0] * 4), dtype=np.float32)


def dn_grads(net):
    """{(layer, name): copy of the parameter's gradient} of every trained parameter."""
    out = {}
    for layer in net.layers:
        for j, (name, values) in enumerate(layer.params.items()):
            grad, count = ffi.new("float **"), values.size
            check(lib.dn_layer_param_state(net._ptr, layer.index, j, grad, ffi.NULL, ffi.NULL))
            if grad[0] != ffi.NULL:
                out[(layer.index, name)] = np.frombuffer(ffi.buffer(grad[0], count * 4), np.float32).copy()
    return out


def dn_stand_in_iteration(net, x, before_update=None):
    """One training iteration of pydarknet with the stand-in loss 0.5 * sum of
    squares of the [yolo] outputs: per mini-batch a training forward pass
    without truths, each head's delta (dLoss/d(output)) set to its output, a
    backward pass; then one update. Returns the loss (sum over the images)
    when before_update is given (called before the update), else None."""
    net.enable_training()
    if net.batch != net.mini_batch:
        net.resize(batch=net.mini_batch)
    loss = 0.0
    for k in range(0, x.shape[0], net.mini_batch):
        part = x[k:k + net.mini_batch]
        check(lib.dn_net_forward_train(net._ptr, ffi.from_buffer("float[]", part), part.size, ffi.NULL, 0))
        for layer in net.output_layers:
            out = _view(lib.dn_layer_output, net, layer.index)
            if before_update is not None:
                loss += 0.5 * float(np.square(out, dtype=np.float64).sum())
            np.copyto(_view(lib.dn_layer_delta, net, layer.index, writable=True), out)
        check(lib.dn_net_backward(net._ptr))
    if before_update is not None:
        before_update()
    check(lib.dn_net_update(net._ptr))
    return loss if before_update is not None else None


def torch_optimizer(model, net):
    """torch.optim.SGD doing darknet's update (dn_net_update): with B the images
    of the update (the mini-batch here: dn_net_update without train_batch),
    m = momentum * m - grad - decay * B * w (weights only), w += rate / B * m.
    The rate is the schedule's for the first update, kept constant."""
    opts = net.spec.options
    B = net.mini_batch
    weights = [p for _, name, p in model.param_pairs() if name == "weights"]
    others = [p for _, name, p in model.param_pairs() if name != "weights"]
    groups = [{"params": weights, "weight_decay": opts["decay"] * B}, {"params": others, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=net.learning_rate() / B, momentum=opts["momentum"])


def torch_stand_in_iteration(model, opt, dev, x, mini_batch, before_update=None):
    """The same iteration in PyTorch (see dn_stand_in_iteration)."""
    model.train()
    opt.zero_grad(set_to_none=True)
    total = None
    scaler = AMP["scaler"]
    for part in torch.from_numpy(x).to(dev).split(mini_batch):
        with autocast(dev):
            heads = model(part)
        loss = 0.5 * sum(h.float().square().sum() for h in heads)
        (scaler.scale(loss) if scaler is not None else loss).backward()
        total = loss.detach() if total is None else total + loss.detach()
    if before_update is not None:
        before_update()
    if scaler is not None:
        scaler.step(opt)
        scaler.update()
    else:
        opt.step()
    return float(total) if before_update is not None else None


# ------------------------------------------------------------------ check

def rel_err(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-12))


def check_inference(net, model, dev, x):
    model.eval()
    a, b = dn_predict(net, x), torch_predict(model, dev, x)
    if [h.shape for h in a] != [h.shape for h in b]:
        raise SystemExit("check: head shapes differ: pydarknet %s, PyTorch %s"
                         % ([h.shape for h in a], [h.shape for h in b]))
    errs = [rel_err(q, p) for p, q in zip(a, b)]
    print("  check, inference: heads %s, max abs difference / max magnitude %s"
          % (", ".join("x".join(map(str, h.shape[1:])) for h in a), ", ".join("%.1e" % e for e in errs)))
    if max(errs) >= TOLERANCE:
        raise SystemExit("check failed: the heads differ by %.2e of their magnitude (limit %g)"
                         % (max(errs), TOLERANCE))
    return errs


def reference_grads(net, dev, x, dtype):
    """The stand-in iteration's loss and gradients (before any update) of
    darknet's function computed by PyTorch: batch norm with the unbiased batch
    variance (torch_darknet.UnbiasedBatchNorm2d), in `dtype` on `dev`, from
    pydarknet's current parameters; per mini-batch, summed as pydarknet does."""
    from torch_darknet import DarknetTorch

    ref = DarknetTorch(net.spec, unbiased_bn=True)
    ref.load_from(net)
    ref = ref.to(dev, dtype).train()
    total = 0.0
    for part in torch.from_numpy(x).to(dev, dtype).split(net.mini_batch):
        loss = 0.5 * sum(h.square().sum() for h in ref(part))
        loss.backward()
        total += float(loss.detach())
    return total, {(i, name): p.grad.detach().cpu().double().numpy().reshape(-1) for i, name, p in ref.param_pairs()}


def rel_l2(got, want, keys):
    a = np.concatenate([got[k] for k in keys]).astype(np.float64)
    b = np.concatenate([want[k] for k in keys]).astype(np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def check_training(net, model, opt, dev, x):
    """One stand-in iteration of both, comparing the loss and every gradient
    before the update. It is each system's first training iteration. PyTorch's
    batch norm (biased variance) is another function than darknet's, so the
    gradients are judged against a float64 computation of darknet's own
    function (see GRAD_TOLERANCE)."""
    ref_loss, ref64 = reference_grads(net, dev, x, torch.float64)
    _, ref32 = reference_grads(net, dev, x, torch.float32)
    got = {}
    dn_loss = dn_stand_in_iteration(net, x, before_update=lambda: got.update(dn_grads(net)))
    pairs = model.param_pairs()
    want = {}
    t_loss = torch_stand_in_iteration(model, opt, dev, x, net.mini_batch, before_update=lambda: want.update(
        {(i, name): p.grad.detach().cpu().numpy().reshape(-1).copy() for i, name, p in pairs}))
    loss_err = abs(dn_loss - ref_loss) / max(abs(ref_loss), 1e-12)
    missing = sorted(set(ref64) - set(got))
    if missing:
        raise SystemExit("check: pydarknet has no gradient for %s" % missing)
    keys = sorted(ref64)
    grad_errs = {"%d %s" % k: rel_err(got[k], ref64[k]) for k in keys}
    worst = max(grad_errs, key=grad_errs.get)
    d_dn, d_32, d_torch = rel_l2(got, ref64, keys), rel_l2(ref32, ref64, keys), rel_l2(want, ref64, keys)
    print("  check, training: loss pydarknet %.6g, float64 reference %.6g (relative difference %.1e), PyTorch "
          "%.6g; gradients of %d parameters against the float64 reference (relative L2): pydarknet %.1e, the "
          "same function in PyTorch float32 %.1e, PyTorch's own (biased batch norm) float32 %.1e; pydarknet's "
          "largest of one tensor %.1e of its magnitude (layer %s)"
          % (dn_loss, ref_loss, loss_err, t_loss, len(keys), d_dn, d_32, d_torch, grad_errs[worst], worst))
    if loss_err >= TOLERANCE:
        raise SystemExit("check failed: the losses differ by %.2e (limit %g)" % (loss_err, TOLERANCE))
    if d_dn >= GRAD_TOLERANCE:
        raise SystemExit("check failed: pydarknet's gradients are %.2e from the float64 reference (limit %g; "
                         "float32 PyTorch computing the same function: %.2e)" % (d_dn, GRAD_TOLERANCE, d_32))
    return {"loss_pydarknet": dn_loss, "loss_torch": t_loss, "loss_reference": ref_loss, "loss_rel_diff": loss_err,
            "grad_rel_l2_to_float64": {"pydarknet": d_dn, "torch_float32_same_function": d_32,
                                       "torch_float32_biased_bn": d_torch},
            "grad_rel_diff_per_tensor": grad_errs}


# ------------------------------------------------------------------ timing

def compare(parts, warmup, repeat, sync, pause, wait):
    """parts: [(name, fn)]. Warm-up, then (after waiting up to `wait` s for
    other processes to go quiet) `repeat` rounds alternating the parts (the
    order flips every round). Returns name -> seconds per timed call and
    name -> other processes' CPU use during each."""
    for _, fn in parts:
        for _ in range(warmup):
            fn()
        sync()
    if wait:
        wait_idle(wait)
    times = {name: [] for name, _ in parts}
    loads = {name: [] for name, _ in parts}
    mon = Neighbours()
    for r in range(repeat):
        for name, fn in (parts if r % 2 == 0 else parts[::-1]):
            if pause:
                time.sleep(pause)
            sync()
            mon.start()
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
            loads[name].append(round(mon.stop(), 2))
    return times, loads


def summary(times, images):
    t = np.asarray(times)
    return {"median_ms": float(np.median(t) * 1e3), "min_ms": float(t.min() * 1e3),
            "p90_ms": float(np.percentile(t, 90) * 1e3), "images_per_s": images / float(np.median(t)),
            "runs_s": [float(v) for v in t]}


def print_table(rows):
    print()
    print("| part | system | batch | median ms | min ms | p90 ms | images/s | other processes' CPU (max) |")
    print("|---|---|---|---|---|---|---|---|")
    for part, system, batch, s, load in rows:
        print("| %s | %s | %d | %.2f | %.2f | %.2f | %.1f | %.2f |"
              % (part, system, batch, s["median_ms"], s["min_ms"], s["p90_ms"], s["images_per_s"], load))


# ------------------------------------------------------------------ main

def main(args):
    require_devices(args)
    net, model, dev, cfg = build(args)
    sync = sync_for(dev)
    info = machine_info()
    info.update({"torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                 "pydarknet_device": net.device_name, "pydarknet_blas": net.uses_blas,
                 "pydarknet_convolution": "cuDNN" if net.cudnn else ("im2col + cuBLAS" if net.gpu is not None
                                                                      else "CPU")})
    if dev.type == "cuda":
        info.update({"gpu": torch.cuda.get_device_name(dev), "torch_cuda": torch.version.cuda,
                     "cudnn": torch.backends.cudnn.version(), "tf32": False, "cudnn_benchmark": True})
    stem = os.path.splitext(os.path.basename(cfg))[0]
    print("%s, batch %d (subdivisions %d), %s; pydarknet on %s (convolutions: %s), PyTorch %s on %s; %d CPU "
          "thread(s); machine: %s, %s usable CPU(s)"
          % (stem, args.batch, args.subdivisions, args.precision, net.device_name, info["pydarknet_convolution"],
             torch.__version__, info.get("gpu", "CPU"), args.threads, info["cpu_model"], info["cpus_usable"]),
          flush=True)
    rng = np.random.default_rng(args.seed)
    photo = load_input(args.image, args.size)
    xb = rng.random((args.batch, 3, args.size, args.size), dtype=np.float32)
    result = {"machine": info, "command": recorded_command(sys.argv),
              "cfg": os.path.basename(cfg),
              "device": args.device, "batch": args.batch, "subdivisions": args.subdivisions,
              "threads": args.threads, "pause_s": args.pause, "tolerance": TOLERANCE,
              "grad_tolerance": GRAD_TOLERANCE}

    result["check_inference"] = check_inference(net, model, dev, photo)
    opt = torch_optimizer(model, net)
    result["check_training"] = check_training(net, model, opt, dev, xb)
    model.eval()
    result["precision"] = args.precision
    if args.precision != "float32":
        result["check_mixed"] = check_mixed(net, model, dev, photo, args.precision)
        info["pydarknet_convolution"] = "im2col + cuBLAS, %s operands" % args.precision
    if args.check_only:
        return

    rows = []
    print("timing latency (batch 1)...", flush=True)
    parts = [("pydarknet", lambda: dn_predict(net, photo)), ("PyTorch", lambda: torch_predict(model, dev, photo))]
    gnet = None
    if dev.type == "cuda":
        gnet = graph_network(args, cfg)
        want = dn_predict(net, photo)
        for _ in range(3):   # the first pass settles the memory, the second makes the graph, the third launches it
            got = dn_predict(gnet, photo)
        err = max(rel_err(g, w) for g, w in zip(got, want))
        if gnet.cuda_graph_launches != 2 or err > TOLERANCE:
            raise SystemExit("bench_gpu.py: the CUDA graph network launched %d graphs in 3 passes (want 2), its heads "
                             "differ from the plain network's by %.3g" % (gnet.cuda_graph_launches, err))
        result["check_cuda_graph"] = {"launches_in_3_passes": 2, "max_rel_err": err}
        parts.insert(1, ("pydarknet (CUDA graph)", lambda: dn_predict(gnet, photo)))
    times, loads = compare(parts, args.warmup, args.repeat, sync, args.pause, args.wait_idle)
    rows += [("latency", k, 1, summary(times[k], 1), max(loads[k])) for k in times]
    result["latency"] = {k: dict(summary(times[k], 1), neighbour_cpus=loads[k]) for k in times}
    if gnet is not None:
        result["latency"]["pydarknet (CUDA graph)"]["graph_launches"] = gnet.cuda_graph_launches
        gnet.set_device(None)
        del gnet

    print("timing throughput (batch %d)..." % args.batch, flush=True)
    times, loads = compare([("pydarknet", lambda: dn_predict(net, xb)),
                            ("PyTorch", lambda: torch_predict(model, dev, xb))],
                           max(1, args.warmup // 5), args.batch_repeat, sync, args.pause,
                           args.wait_idle)
    rows += [("throughput", k, args.batch, summary(times[k], args.batch), max(loads[k])) for k in times]
    result["throughput"] = {k: dict(summary(times[k], args.batch), neighbour_cpus=loads[k]) for k in times}

    print("timing training iterations (batch %d, subdivisions %d)..." % (args.batch, args.subdivisions), flush=True)
    parts = [("pydarknet", lambda: dn_stand_in_iteration(net, xb)),
             ("PyTorch", lambda: torch_stand_in_iteration(model, opt, dev, xb, net.mini_batch))]
    if not args.no_real_loss and model.specs[model.heads[0]].type == "yolo":
        truths = random_truths(args.batch, model.specs[model.heads[0]].attrs["classes"], rng)
        parts.append(("pydarknet train_batch ([yolo] loss)", lambda: net.train_batch(xb, truths)))

        def device_loss_batch():   # the [yolo] loss on the device (yolo.cu; the C core reads the variable each pass)
            before = os.environ.get("PYDARKNET_LOSS")
            os.environ["PYDARKNET_LOSS"] = "device"
            try:
                return net.train_batch(xb, truths)
            finally:
                if before is None:
                    os.environ.pop("PYDARKNET_LOSS")
                else:
                    os.environ["PYDARKNET_LOSS"] = before

        parts.append(("pydarknet train_batch ([yolo] loss on the device)", device_loss_batch))
    times, loads = compare(parts, max(1, args.warmup // 5), args.batch_repeat, sync, args.pause,
                           args.wait_idle)
    rows += [("training iteration", k, args.batch, summary(times[k], args.batch), max(loads[k])) for k in times]
    result["training"] = {k: dict(summary(times[k], args.batch), neighbour_cpus=loads[k]) for k in times}

    print_table(rows)
    ratios = {part: result[part]["pydarknet"]["median_ms"] / result[part]["PyTorch"]["median_ms"]
              for part in ("latency", "throughput", "training")}
    if "pydarknet (CUDA graph)" in result["latency"]:
        ratios["latency_cuda_graph"] = (result["latency"]["pydarknet (CUDA graph)"]["median_ms"]
                                        / result["latency"]["PyTorch"]["median_ms"])
    result["ratio_pydarknet_over_torch"] = ratios
    print("\npydarknet / PyTorch time (medians; below 1: pydarknet faster): latency %.2f, throughput %.2f, "
          "training iteration %.2f (stand-in loss on both)"
          % (ratios["latency"], ratios["throughput"], ratios["training"]))
    if "latency_cuda_graph" in ratios:
        print("latency with the CUDA graph: %.2f" % ratios["latency_cuda_graph"])
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
        print("wrote %s" % args.json)


if __name__ == "__main__":
    main(ARGS)
