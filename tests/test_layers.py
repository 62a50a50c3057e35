"""Every layer's forward pass against a NumPy reference written from the
layer's math (float64), one short case per option: the rows of
tests/layer_cases.py whose `forward` names a test here. Tolerance: outputs
agree to 1e-4 of the tensor's largest magnitude, what float32 accumulation
over a few hundred terms allows."""
import numpy as np
import pytest

import pydarknet
from conftest import randomize, random_input
from layer_cases import NET, select


# every case runs with the BLAS GEMM and with the portable one
pytestmark = pytest.mark.usefixtures("gemm")


def build(write_cfg, case, batch=2, seed=0):
    """The case's network (tests/layer_cases.py) with seeded random weights."""
    net = pydarknet.load(write_cfg(case.cfg), batch=batch)
    randomize(net, seed)
    return net


def run(net, seed=1, batch=2):
    x = random_input((batch, net.channels, net.height, net.width), seed) * 2 - 1
    net.forward(x)
    return x.astype(np.float64)


def forward(write_cfg, case):
    """The case's network after a forward pass on inputs in -1..1, and the
    inputs; checks the output shape where the case gives it."""
    net = build(write_cfg, case)
    x = run(net)
    if case.out_shape is not None:
        assert net.layers[-1].output.shape == (2,) + case.out_shape
    return net, x


def outputs(net):
    return [np.asarray(layer.output, np.float64) for layer in net.layers]


def close(got, want, tol=1e-4):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    scale = max(np.abs(want).max(), 1e-6)
    err = np.abs(got - want).max() / scale
    assert err < tol, f"relative error {err:.2e}"


# ---------------------------------------------------------------- references
ACT = {
    "linear": lambda x: x,
    "logistic": lambda x: 1 / (1 + np.exp(-x)),
    "loggy": lambda x: 2 / (1 + np.exp(-x)) - 1,
    "relu": lambda x: np.maximum(x, 0),
    "relu6": lambda x: np.clip(x, 0, 6),
    "elu": lambda x: np.where(x >= 0, x, np.exp(x) - 1),
    "selu": lambda x: np.where(x >= 0, 1.0507 * x, 1.0507 * 1.6732 * (np.exp(x) - 1)),
    "gelu": lambda x: 0.5 * x * (1 + np.tanh(0.797885 * x + 0.035677 * x ** 3)),
    "relie": lambda x: np.where(x > 0, x, 0.01 * x),
    "ramp": lambda x: np.maximum(x, 0) + 0.1 * x,
    "leaky": lambda x: np.where(x > 0, x, 0.1 * x),
    "revleaky": lambda x: np.where(x > 0, x, 0.1 * x),
    "tanh": np.tanh,
    "plse": lambda x: np.where(x < -4, 0.01 * (x + 4), np.where(x > 4, 0.01 * (x - 4) + 1, 0.125 * x + 0.5)),
    "hardtan": lambda x: np.clip(x, -1, 1),
    "lhtan": lambda x: np.where(x < 0, 0.001 * x, np.where(x > 1, 0.001 * (x - 1) + 1, x)),
    "swish": lambda x: x / (1 + np.exp(-x)),
    "mish": lambda x: x * np.tanh(np.log1p(np.exp(x))),
    "hard_mish": lambda x: np.where(x > 0, x, np.where(x > -2, x * x / 2 + x, 0)),
}


def stair(x):
    n = np.floor(x)
    return np.where(n % 2 == 0, np.floor(x / 2), (x - n) + np.floor(x / 2))


def act_channels(x, kind):
    """normalize_channels* over axis 1 (channels) at each pixel."""
    if kind == "normalize_channels":
        p = np.maximum(x, 0)
        return p / (1e-4 + p.sum(axis=1, keepdims=True))
    m = x.max(axis=1, keepdims=True) if kind.endswith("maxval") else 0
    e = np.exp(x - m)
    return e / (1e-4 + e.sum(axis=1, keepdims=True))


def activate(x, kind):
    """Any darknet activation: element-wise (ACT), stair, or over the channels."""
    if kind == "stair":
        return stair(x)
    if kind.startswith("normalize_channels"):
        return act_channels(x, kind)
    return ACT[kind](x)


def conv_ref(x, w, b, sy, sx, pad, dil, groups):
    B, C, H, W = x.shape
    N, cg, k, _ = w.shape
    oh, ow = (H + 2 * pad - k) // sy + 1, (W + 2 * pad - k) // sx + 1
    e = pad * dil
    xp = np.pad(x, ((0, 0), (0, 0), (e, e + k * dil + H), (e, e + k * dil + W)))
    out = np.zeros((B, N, oh, ow))
    ng = N // groups
    for g in range(groups):
        for ky in range(k):
            for kx in range(k):
                patch = xp[:, g * cg:(g + 1) * cg, ky * dil:ky * dil + sy * (oh - 1) + 1:sy,
                           kx * dil:kx * dil + sx * (ow - 1) + 1:sx]
                out[:, g * ng:(g + 1) * ng] += np.einsum("bchw,nc->bnhw", patch, w[g * ng:(g + 1) * ng, :, ky, kx])
    return out + b[None, :, None, None]


def bn_ref(y, p):
    c = lambda v: np.asarray(v, np.float64)[None, :, None, None]
    return (y - c(p["rolling_mean"])) / np.sqrt(c(p["rolling_variance"]) + 1e-5) * c(p["scales"])


def convolutional_ref(layer, x):
    """[convolutional] from its options and parameters: convolution, batch
    normalization where asked, biases, activation."""
    p, a = layer.params, layer.spec.attrs
    w = p["weights"].reshape(a["filters"], x.shape[1] // a["groups"], a["size"], a["size"]).astype(np.float64)
    y = conv_ref(x, w, np.zeros(a["filters"]), a["stride_y"], a["stride_x"], a["padding"], a["dilation"], a["groups"])
    if a["batch_normalize"]:
        y = bn_ref(y, p)
    y += np.asarray(p["biases"], np.float64)[None, :, None, None]
    return activate(y, a["activation"])


def pool_ref(x, size, sy, sx, padding, kind):
    B, C, H, W = x.shape
    oh, ow = (H + padding - size) // sy + 1, (W + padding - size) // sx + 1
    off = -(padding // 2)
    out = np.zeros((B, C, oh, ow))
    for i in range(oh):
        for j in range(ow):
            y0, x0 = off + i * sy, off + j * sx
            win = x[:, :, max(y0, 0):max(y0 + size, 0), max(x0, 0):max(x0 + size, 0)]
            out[:, :, i, j] = win.max(axis=(2, 3)) if kind == "max" else win.mean(axis=(2, 3))
    return out


# ---------------------------------------------------------------- convolutional
@pytest.mark.parametrize("case", select(forward="convolutional"))
def test_convolutional(write_cfg, case):
    net, x = forward(write_cfg, case)
    close(net.layers[0].output, convolutional_ref(net.layers[0], x))


@pytest.mark.parametrize("case", select(forward="activation_in_convolutional"))
def test_activation_in_convolutional(write_cfg, case):
    net, x = forward(write_cfg, case)
    close(net.layers[0].output, convolutional_ref(net.layers[0], x))


@pytest.mark.parametrize("case", select(forward="stair_activation"))
def test_stair_activation(write_cfg, case):
    net, x = forward(write_cfg, case)
    x = x * 5
    net.forward(x.astype(np.float32))
    close(net.layers[0].output, stair(x))


@pytest.mark.parametrize("case", select(forward="channel_normalizing_activations"))
def test_channel_normalizing_activations(write_cfg, case):
    net, x = forward(write_cfg, case)
    close(net.layers[0].output, act_channels(x, net.layers[0].spec.attrs["activation"]))


# ---------------------------------------------------------------- connected
@pytest.mark.parametrize("case", select(forward="connected"))
def test_connected(write_cfg, case):
    net, x = forward(write_cfg, case)
    p, a = net.layers[0].params, net.layers[0].spec.attrs
    y = x.reshape(2, -1) @ p["weights"].reshape(a["output"], -1).astype(np.float64).T
    y = y[:, :, None, None]
    if a["batch_normalize"]:
        y = bn_ref(y, p)
    y += np.asarray(p["biases"], np.float64)[None, :, None, None]
    close(net.layers[0].output, ACT[a["activation"]](y))


# ---------------------------------------------------------------- pooling
def pool_layer_ref(layer, x, kind):
    a = layer.spec.attrs
    return pool_ref(x, a["size"], a["stride_y"], a["stride_x"], a["padding"], kind)


@pytest.mark.parametrize("case", select(forward="maxpool"))
def test_maxpool(write_cfg, case):
    net, x = forward(write_cfg, case)
    close(net.layers[0].output, pool_layer_ref(net.layers[0], x, "max"))


@pytest.mark.parametrize("case", select(forward="maxpool_depth"))
def test_maxpool_depth(write_cfg, case):
    net, x = forward(write_cfg, case)
    k = net.layers[0].spec.attrs["out_channels"]
    close(net.layers[0].output, np.stack([x[:, g::k].max(axis=1) for g in range(k)], axis=1))


@pytest.mark.parametrize("case", select(forward="local_avgpool"))
def test_local_avgpool(write_cfg, case):
    net, x = forward(write_cfg, case)
    close(net.layers[0].output, pool_layer_ref(net.layers[0], x, "avg"))


@pytest.mark.parametrize("case", select(forward="avgpool"))
def test_avgpool(write_cfg, case):
    net, x = forward(write_cfg, case)
    close(net.layers[0].output, x.mean(axis=(2, 3), keepdims=True))


# ---------------------------------------------------------------- graph layers
@pytest.mark.parametrize("case", select(forward="route_concatenates_and_groups"))
def test_route_concatenates_and_groups(write_cfg, case):
    # two convolutions of 4 and 6 filters; [route] layers=-1,-2; [route] layers=1,0 groups=2 group_id=1
    net, _ = forward(write_cfg, case)
    a, b = net.layers[0].output, net.layers[1].output
    close(net.layers[2].output, np.concatenate([b, a], axis=1))
    close(net.layers[3].output, np.concatenate([b[:, 3:], a[:, 2:]], axis=1))


@pytest.mark.parametrize("case", select(forward="shortcut_several_sources_and_activation"))
def test_shortcut_several_sources_and_activation(write_cfg, case):
    # the previous layer plus every layer of from=, then the activation
    net, _ = forward(write_cfg, case)
    o, a = outputs(net), net.layers[-1].spec.attrs
    close(net.layers[-1].output, ACT[a["activation"]](o[-2] + sum(o[i] for i in a["from"])))


@pytest.mark.parametrize("case", select(forward="shortcut_weighted"))
def test_shortcut_weighted(write_cfg, case):
    net = build(write_cfg, case)
    layer = net.layers[-1]
    a = layer.spec.attrs
    layer.params["weights"][0] = -0.3  # a negative weight, so relu normalization bites
    run(net)
    sources = [net.layers[-2].output] + [net.layers[i].output for i in a["from"]]
    # [source: the previous layer, then from=][channel or 1]
    wts = np.asarray(layer.params["weights"], np.float64).reshape(len(sources), -1)
    if a["weights_normalization"] == "relu":
        r = np.maximum(wts, 0)
        wts = r / (1e-4 + r.sum(axis=0))
    elif a["weights_normalization"] == "softmax":
        e = np.exp(wts - wts.max(axis=0))
        wts = e / (1e-4 + e.sum(axis=0))
    c = lambda v: v[None, :, None, None] if v.size > 1 else v[0]
    want = sum(s * c(w) for s, w in zip(sources, wts))
    close(layer.output, ACT[a["activation"]](want))


@pytest.mark.parametrize("case", select(forward="shortcut_of_different_size_samples"))
def test_shortcut_of_different_size_samples(write_cfg, case):
    # a 4x4 convolution of 4 filters joined onto a 2x2 one of 6: strided sampling
    net, _ = forward(write_cfg, case)
    a, b = net.layers[0].output, net.layers[1].output
    want = b.copy()
    want[:, :4] += a[:, :, ::2, ::2]
    close(net.layers[2].output, want)


@pytest.mark.parametrize("case", select(forward="upsample"))
def test_upsample(write_cfg, case):
    net, x = forward(write_cfg, case)
    a = net.layers[0].spec.attrs
    stride, scale = a["stride"], a["scale"]
    if stride > 0:
        want = scale * x.repeat(stride, axis=2).repeat(stride, axis=3)
    else:
        s = -stride
        B, C, H, W = x.shape
        want = scale * x[:, :, :H // s * s, :W // s * s].reshape(B, C, H // s, s, W // s, s).sum(axis=(3, 5))
    close(net.layers[0].output, want)


@pytest.mark.parametrize("case", select(forward="reorg3d_is_space_to_depth"))
def test_reorg3d_is_space_to_depth(write_cfg, case):
    net, x = forward(write_cfg, case)
    s = net.layers[0].spec.attrs["stride"]
    B, C, H, W = x.shape
    want = np.zeros((B, C * s * s, H // s, W // s))
    for k in range(C * s * s):
        off = k // C
        want[:, k] = x[:, k % C, off // s::s, off % s::s]
    close(net.layers[0].output, want)


@pytest.mark.parametrize("case", select(forward="reorg3d_reverse_is_a_permutation"))
def test_reorg3d_reverse_is_a_permutation(write_cfg, case):
    # darknet's reverse mode runs the same index map with source and
    # destination exchanged; check it is a permutation of the input
    net, x = forward(write_cfg, case)
    out = net.layers[0].output
    assert np.array_equal(np.sort(out.reshape(2, -1), axis=1), np.sort(x.astype(np.float32).reshape(2, -1), axis=1))


def old_reorg_ref(x, s, reverse):
    """darknet's reorg_old_layer in NumPy: its reorg map runs over the INPUT's
    shape (C, H, W); the other side of each pair is a (C/s^2, H*s, W*s) view of
    the input buffer (forward) or of the output buffer (reverse)."""
    B, C, H, W = x.shape
    ic = C // (s * s)
    if not reverse:
        view = x.reshape(B, ic, H * s, W * s)
        y = np.zeros_like(x)
        for k in range(C):
            off = k // ic
            y[:, k] = view[:, k % ic, off // s::s, off % s::s]
        return y.reshape(B, C * s * s, H // s, W // s)
    out = np.zeros((B, ic, H * s, W * s), x.dtype)
    for k in range(C):
        off = k // ic
        out[:, k % ic, off // s::s, off % s::s] = x[:, k]
    return out


@pytest.mark.parametrize("case", select(forward="reorg_is_darknets_old_reorg"))
def test_reorg_is_darknets_old_reorg(write_cfg, case):
    net, x = forward(write_cfg, case)
    a = net.layers[0].spec.attrs
    close(net.layers[0].output, old_reorg_ref(x, a["stride"], a["reverse"]))


@pytest.mark.parametrize("section,c,h,w,msg", [
    ("[reorg]\nstride=2", 6, 4, 4, "not divisible by stride\\^2=4"),
    ("[reorg]\nstride=2", 4, 5, 4, "not divisible by stride 2"),
    ("[reorg]\nstride=2\nreverse=1", 6, 4, 4, "not divisible by stride\\^2=4"),
    ("[reorg3d]\nstride=2\nreverse=1", 8, 4, 4, "not divisible by stride\\^4=16"),
    ("[reorg3d]\nstride=2", 3, 5, 4, "not divisible by stride 2"),
])
def test_reorg_shape_rules(write_cfg, section, c, h, w, msg):
    with pytest.raises(pydarknet.cfg.CfgError, match="net.cfg:5: layer 0 .*" + msg):
        pydarknet.load(write_cfg(NET.format(c=c, h=h, w=w) + section + "\n"), batch=2)


@pytest.mark.parametrize("case", select(forward="softmax"))
def test_softmax(write_cfg, case):
    net, x = forward(write_cfg, case)
    a = net.layers[0].spec.attrs
    z = x.reshape(2, a["groups"], -1) / a["temperature"]
    e = np.exp(z - z.max(axis=2, keepdims=True))
    close(net.layers[0].output, (e / e.sum(axis=2, keepdims=True)).reshape(x.shape))


def product_ref(net):
    """[scale_channels] and [sam]: the layer of from= times the previous layer
    (per channel, per pixel or per value, as their shapes broadcast), then the activation."""
    o, a = outputs(net), net.layers[-1].spec.attrs
    return ACT[a["activation"]](o[a["from"][0]] * o[-2])


@pytest.mark.parametrize("case", select(forward="scale_channels"))
def test_scale_channels(write_cfg, case):
    net, _ = forward(write_cfg, case)
    close(net.layers[-1].output, product_ref(net))


@pytest.mark.parametrize("case", select(forward="sam"))
def test_sam(write_cfg, case):
    net, _ = forward(write_cfg, case)
    close(net.layers[-1].output, product_ref(net))


@pytest.mark.parametrize("case", select(forward="batchnorm"))
def test_batchnorm(write_cfg, case):
    net, x = forward(write_cfg, case)
    p = net.layers[0].params
    # darknet's [batchnorm]: normalized, scaled, then its own biases added
    close(net.layers[0].output, bn_ref(x, p) + np.asarray(p["biases"], np.float64)[None, :, None, None])


@pytest.mark.parametrize("case", select(forward="identity_at_inference"))
def test_identity_at_inference(write_cfg, case):
    net, x = forward(write_cfg, case)
    close(net.layers[0].output, x, tol=1e-7)


@pytest.mark.parametrize("case", select(forward="reshape"))
def test_reshape(write_cfg, case):
    """[reshape] keeps every image's values in order (NumPy's reshape of the same buffer)."""
    net, x = forward(write_cfg, case)
    c, h, w = net.layers[0].shape
    assert c * h * w == int(np.prod(case.shape))
    np.testing.assert_array_equal(net.layers[0].output, x.reshape(x.shape[0], c, h, w))


@pytest.mark.parametrize("case", select(forward="reduction"))
def test_reduction(write_cfg, case):
    """Caffe's Reduction: the axes from `axis` to the last reduced (NumPy), times coeff."""
    net, x = forward(write_cfg, case)
    a = net.layers[0].spec.attrs
    x = np.asarray(x, np.float64)
    f = {"sum": lambda v: v, "asum": np.abs, "sumsq": np.square, "mean": lambda v: v}[a["operation"]](x)
    axes = tuple(range(a["axis"], 4))
    want = (f.mean(axis=axes, keepdims=True) if a["operation"] == "mean" else f.sum(axis=axes, keepdims=True))
    want = a["coeff"] * want
    close(net.layers[0].output, want.reshape(net.layers[0].output.shape), tol=1e-6)


@pytest.mark.parametrize("opts,message", [("axis=0", "the batch is never reduced"), ("axis=4", "axis=4"),
                                          ("operation=prod", "operation")])
def test_reduction_refuses_bad_options_naming_the_line(write_cfg, opts, message):
    with pytest.raises(pydarknet.CfgError, match=r"r\.cfg:\d+: .*" + message):
        pydarknet.load(write_cfg(f"[net]\nwidth=4\nheight=3\nchannels=2\n[reduction]\n{opts}\n", "r.cfg"))


def deform_conv_ref(x, w, offset, mask, stride, pad, dgroups):
    """DCNv2 as torchvision's deform_conv2d documents it, written out in loops: every tap of every output
    position samples its channel bilinearly at the grid point plus its (dy, dx) offset (zero beyond one pixel
    outside the image, corners outside count zero), times its mask."""
    B, C, H, W = x.shape
    F, _, k, _ = w.shape
    _, _, oh, ow = offset.shape
    sy, sx = stride
    cpg = C // dgroups

    def sample(plane, h, ww):
        if not (-1 < h < H and -1 < ww < W):
            return 0.0
        h0, w0 = int(np.floor(h)), int(np.floor(ww))
        lh, lw = h - h0, ww - w0
        v = 0.0
        for yy, xx, wt in ((h0, w0, (1 - lh) * (1 - lw)), (h0, w0 + 1, (1 - lh) * lw), (h0 + 1, w0, lh * (1 - lw)),
                           (h0 + 1, w0 + 1, lh * lw)):
            if 0 <= yy < H and 0 <= xx < W:
                v += wt * plane[yy, xx]
        return v

    cols = np.zeros((B, C * k * k, oh * ow))
    for b in range(B):
        for c in range(C):
            g = c // cpg
            for i in range(k * k):
                ky, kx = divmod(i, k)
                for oy in range(oh):
                    for ox in range(ow):
                        h = oy * sy - pad + ky + offset[b, 2 * (g * k * k + i), oy, ox]
                        ww = ox * sx - pad + kx + offset[b, 2 * (g * k * k + i) + 1, oy, ox]
                        m = 1.0 if mask is None else mask[b, g * k * k + i, oy, ox]
                        cols[b, c * k * k + i, oy * ow + ox] = m * sample(x[b, c], h, ww)
    return np.einsum("fk,bkn->bfn", w.reshape(F, -1), cols).reshape(B, F, oh, ow)


@pytest.mark.parametrize("case", select(forward="deformable"))
def test_deformable(write_cfg, case):
    """DCNv2 against deform_conv_ref: the offsets and masks from the internal convolution (computed here in
    NumPy too), then batch norm / bias and the activation as [convolutional]."""
    net, x = forward(write_cfg, case)
    layer = net.layers[0]
    a, p = layer.spec.attrs, layer.params
    k, dg, C = a["size"], a["deformable_groups"], case.shape[0]
    x = np.asarray(x, np.float64)
    pad = a["padding"]
    O = (3 if a["modulated"] else 2) * dg * k * k
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    _, F, oh, ow = layer.output.shape
    wo = p["offset_weights"].reshape(O, C, k, k).astype(np.float64)
    off = np.zeros((x.shape[0], O, oh, ow))
    for oy in range(oh):
        for ox in range(ow):
            patch = xp[:, :, oy * a["stride_y"]:oy * a["stride_y"] + k, ox * a["stride_x"]:ox * a["stride_x"] + k]
            off[:, :, oy, ox] = np.einsum("bckl,ockl->bo", patch, wo) + p["offset_biases"]
    assert np.abs(off[:, :2 * dg * k * k]).max() > 0.05   # offsets that move the samples off the grid
    mask = 1 / (1 + np.exp(-off[:, 2 * dg * k * k:])) if a["modulated"] else None
    z = deform_conv_ref(x, p["weights"].reshape(F, C, k, k).astype(np.float64), off[:, :2 * dg * k * k], mask,
                        (a["stride_y"], a["stride_x"]), pad, dg)
    if a["batch_normalize"]:
        z = ((z - p["rolling_mean"].reshape(1, -1, 1, 1)) / np.sqrt(p["rolling_variance"].reshape(1, -1, 1, 1) + 1e-5)
             * p["scales"].reshape(1, -1, 1, 1))
    z = z + p["biases"].reshape(1, -1, 1, 1)
    if a["activation"] == "logistic":
        z = 1 / (1 + np.exp(-z))
    close(layer.output, z, tol=1e-5)


@pytest.mark.parametrize("case", select(forward="groupnorm"))
def test_groupnorm(write_cfg, case):
    """GroupNorm: per image and group, the biased variance (NumPy), then gamma and beta per channel."""
    net, _ = forward(write_cfg, case)
    layer = net.layers[1]
    G, eps = layer.spec.attrs["groups"], layer.spec.attrs["eps"]
    x = np.asarray(net.layers[0].output, np.float64)
    B, C, H, W = x.shape
    r = x.reshape(B, G, -1)
    xhat = ((r - r.mean(axis=2, keepdims=True)) / np.sqrt(r.var(axis=2, keepdims=True) + eps)).reshape(x.shape)
    p = layer.params
    assert list(p) == ["biases", "scales"]   # the weights-file order: beta, then gamma
    want = xhat * p["scales"].reshape(1, -1, 1, 1) + p["biases"].reshape(1, -1, 1, 1)
    close(layer.output, want, tol=1e-5)


@pytest.mark.parametrize("case", select(forward="scale"))
def test_scale(write_cfg, case):
    net, _ = forward(write_cfg, case)
    p = net.layers[1].params
    assert list(p) == (["biases", "scales"] if "biases" in p else ["scales"])   # the weights-file order
    x = np.asarray(net.layers[0].output, np.float64)
    want = x * p["scales"].reshape(1, -1, 1, 1) + (p["biases"].reshape(1, -1, 1, 1) if "biases" in p else 0)
    close(net.layers[1].output, want, tol=1e-6)


def test_caffe_batchnorm_and_scale_map_onto_batchnorm_then_scale(write_cfg):
    """Caffe's BatchNorm (use_global_stats: y = (x - mean) / sqrt(var + eps)) + Scale (gamma, beta), eps
    darknet's .00001: [batchnorm] with Caffe's mean and variance as its rolling statistics, scales 1 and
    biases 0, then [scale] with gamma and beta, computes Caffe's pair in inference (NumPy's formula)."""
    rng = np.random.default_rng(4)
    C = 5
    mean, var = rng.normal(0, 1, C), rng.uniform(.2, 2, C)
    gamma, beta = rng.normal(1, .3, C), rng.normal(0, .5, C)
    net = pydarknet.load(write_cfg("[net]\nwidth=4\nheight=3\nchannels=5\n[batchnorm]\n[scale]\n", "bs.cfg"))
    bn, sc = net.layers[0].params, net.layers[1].params
    bn["rolling_mean"][:], bn["rolling_variance"][:], bn["scales"][:], bn["biases"][:] = mean, var, 1, 0
    sc["scales"][:], sc["biases"][:] = gamma, beta
    x = rng.normal(0, 2, (2, C, 3, 4)).astype(np.float32)
    want = (gamma.reshape(1, -1, 1, 1) * (x - mean.reshape(1, -1, 1, 1)) / np.sqrt(var.reshape(1, -1, 1, 1) + 1e-5)
            + beta.reshape(1, -1, 1, 1))
    close(net.predict(x)[0], want, tol=1e-6)


@pytest.mark.parametrize("shape,message", [("5,-1,1", "cannot hold the input's 2 x 3 x 4 values"),
                                           ("2,3,5", "holds 30 values, the input 2 x 3 x 4 has 24"),
                                           ("-1,-1,4", "infer one dimension"), ("2,3", "needs 3 values")])
def test_reshape_refuses_another_count_naming_the_line(write_cfg, shape, message):
    with pytest.raises(pydarknet.CfgError, match=r"r\.cfg:5: layer 0 \[reshape\]: .*" + message):
        pydarknet.load(write_cfg(f"[net]\nwidth=4\nheight=3\nchannels=2\n[reshape]\nshape={shape}\n", "r.cfg"))


# ---------------------------------------------------------------- heads
@pytest.mark.parametrize("case", select(forward="yolo_forward"))
def test_yolo_forward(write_cfg, case):
    net, x = forward(write_cfg, case)
    a = net.layers[0].spec.attrs
    B, (c, h, w) = 2, case.shape
    x = x.reshape(B, len(a["mask"]), 5 + a["classes"], h, w)
    s = a["scale_x_y"]
    y = x.copy()
    if not a["new_coords"]:
        idx = [0, 1, 4] + list(range(5, 5 + a["classes"]))
        y[:, :, idx] = ACT["logistic"](x[:, :, idx])
    y[:, :, :2] = y[:, :, :2] * s - (s - 1) / 2
    close(net.layers[0].output, y.reshape(B, c, h, w))


@pytest.mark.parametrize("case", select(forward="region_forward"))
def test_region_forward(write_cfg, case):
    net, x = forward(write_cfg, case)
    a = net.layers[0].spec.attrs
    B, (_, h, w) = 2, case.shape
    # darknet's forward_region_layer: the input flattened to cell-major
    # [B][H*W][num][5 + classes], the logistic on objectness only (x, y, w, h
    # stay raw), the softmax over each cell's and anchor's classes
    x = x.reshape(B, a["num"], 5 + a["classes"], h, w)
    y = x.copy()
    y[:, :, 4] = ACT["logistic"](x[:, :, 4])
    e = np.exp(x[:, :, 5:] - x[:, :, 5:].max(axis=2, keepdims=True))
    y[:, :, 5:] = e / e.sum(axis=2, keepdims=True)
    out = net.layers[0].output
    assert out.shape == (B, h, w, a["num"], 5 + a["classes"])
    close(out, y.transpose(0, 3, 4, 1, 2))
