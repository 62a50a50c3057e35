"""Every layer's forward pass against a NumPy reference written from the
layer's math (float64), one short case per option. Tolerance: outputs agree
to 1e-4 of the tensor's largest magnitude, what float32 accumulation over a
few hundred terms allows."""
import numpy as np
import pytest

import pydarknet
from conftest import randomize, random_input

NET = "[net]\nwidth={w}\nheight={h}\nchannels={c}\n"


@pytest.fixture(autouse=True, params=["blas", "portable"])
def gemm(request, monkeypatch):
    """Every case runs with the BLAS GEMM and with the portable one."""
    if request.param == "portable":
        monkeypatch.setenv("PYDARKNET_GEMM", "portable")
    elif not pydarknet.blas_available():
        pytest.skip("this build has no BLAS")
    return request.param


def build(write_cfg, body, c=3, h=8, w=8, batch=2, seed=0):
    net = pydarknet.load(write_cfg(NET.format(c=c, h=h, w=w) + body), batch=batch)
    randomize(net, seed)
    return net


def run(net, seed=1, batch=2):
    x = random_input((batch, net.channels, net.height, net.width), seed) * 2 - 1
    net.forward(x)
    return x.astype(np.float64)


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


def act_channels(x, kind):
    """normalize_channels* over axis 1 (channels) at each pixel."""
    if kind == "normalize_channels":
        p = np.maximum(x, 0)
        return p / (1e-4 + p.sum(axis=1, keepdims=True))
    m = x.max(axis=1, keepdims=True) if kind.endswith("maxval") else 0
    e = np.exp(x - m)
    return e / (1e-4 + e.sum(axis=1, keepdims=True))


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
@pytest.mark.parametrize("opts,c", [
    ("filters=4\nsize=3\nstride=1\npad=1", 3),
    ("filters=6\nsize=3\nstride=2\npad=1", 3),
    ("filters=4\nsize=1\nstride=1\npad=0", 5),
    ("filters=4\nsize=3\nstride_x=2\nstride_y=1\npadding=1", 3),
    ("filters=4\nsize=3\nstride=1\npadding=0", 3),
    ("filters=6\nsize=3\nstride=1\npad=1\ngroups=3", 6),
    ("filters=6\nsize=3\nstride=1\npad=1\ngroups=6", 6),
    ("filters=4\nsize=3\nstride=1\npad=1\ndilation=2", 3),
    ("filters=4\nsize=5\nstride=3\npadding=1", 3),
])
@pytest.mark.parametrize("bn", [0, 1])
def test_convolutional(write_cfg, opts, c, bn):
    net = build(write_cfg, f"[convolutional]\n{opts}\nbatch_normalize={bn}\nactivation=linear\n", c=c, h=9, w=8)
    x = run(net)
    layer = net.layers[0]
    p = layer.params
    a = layer.spec.attrs
    w = p["weights"].reshape(a["filters"], c // a["groups"], a["size"], a["size"]).astype(np.float64)
    y = conv_ref(x, w, np.zeros(a["filters"]), a["stride_y"], a["stride_x"], a["padding"], a["dilation"], a["groups"])
    if bn:
        y = bn_ref(y, p)
    y += np.asarray(p["biases"], np.float64)[None, :, None, None]
    close(layer.output, y)


@pytest.mark.parametrize("act", sorted(ACT))
def test_activation_in_convolutional(write_cfg, act):
    net = build(write_cfg, f"[convolutional]\nfilters=4\nsize=1\nstride=1\nactivation={act}\n", c=3, h=5, w=5)
    x = run(net)
    p = net.layers[0].params
    w = p["weights"].reshape(4, 3).astype(np.float64)
    y = np.einsum("bchw,nc->bnhw", x, w) + np.asarray(p["biases"], np.float64)[None, :, None, None]
    close(net.layers[0].output, ACT[act](y))


def test_stair_activation(write_cfg):
    net = build(write_cfg, "[activation]\nactivation=stair\n", c=2, h=4, w=4)
    x = run(net) * 5
    net.forward(x.astype(np.float32))
    n = np.floor(x)
    want = np.where(n % 2 == 0, np.floor(x / 2), (x - n) + np.floor(x / 2))
    close(net.layers[0].output, want)


@pytest.mark.parametrize("kind", ["normalize_channels", "normalize_channels_softmax",
                                  "normalize_channels_softmax_maxval"])
def test_channel_normalizing_activations(write_cfg, kind):
    net = build(write_cfg, f"[activation]\nactivation={kind}\n", c=5, h=3, w=4)
    x = run(net)
    close(net.layers[0].output, act_channels(x, kind))


# ---------------------------------------------------------------- connected
@pytest.mark.parametrize("bn", [0, 1])
def test_connected(write_cfg, bn):
    net = build(write_cfg, f"[connected]\noutput=7\nbatch_normalize={bn}\nactivation=leaky\n", c=2, h=3, w=4)
    x = run(net)
    p = net.layers[0].params
    y = x.reshape(2, -1) @ p["weights"].reshape(7, -1).astype(np.float64).T
    y = y[:, :, None, None]
    if bn:
        y = bn_ref(y, p)
    y += np.asarray(p["biases"], np.float64)[None, :, None, None]
    close(net.layers[0].output, ACT["leaky"](y))


# ---------------------------------------------------------------- pooling
@pytest.mark.parametrize("opts", ["size=2\nstride=2", "size=2\nstride=1", "size=3\nstride=2",
                                  "size=3\nstride=1\npadding=2", "size=5\nstride=1", "size=2\nstride_x=2\nstride_y=1"])
def test_maxpool(write_cfg, opts):
    net = build(write_cfg, f"[maxpool]\n{opts}\n", c=3, h=9, w=8)
    x = run(net)
    a = net.layers[0].spec.attrs
    close(net.layers[0].output, pool_ref(x, a["size"], a["stride_y"], a["stride_x"], a["padding"], "max"))


def test_maxpool_depth(write_cfg):
    net = build(write_cfg, "[maxpool]\nmaxpool_depth=1\nout_channels=2\n", c=6, h=4, w=4)
    x = run(net)
    close(net.layers[0].output, np.stack([x[:, g::2].max(axis=1) for g in range(2)], axis=1))


@pytest.mark.parametrize("opts", ["size=2\nstride=2", "size=3\nstride=1", "size=3\nstride=2\npadding=1"])
def test_local_avgpool(write_cfg, opts):
    net = build(write_cfg, f"[local_avgpool]\n{opts}\n", c=3, h=7, w=8)
    x = run(net)
    a = net.layers[0].spec.attrs
    close(net.layers[0].output, pool_ref(x, a["size"], a["stride_y"], a["stride_x"], a["padding"], "avg"))


def test_avgpool(write_cfg):
    net = build(write_cfg, "[avgpool]\n", c=4, h=5, w=3)
    x = run(net)
    close(net.layers[0].output, x.mean(axis=(2, 3), keepdims=True))


# ---------------------------------------------------------------- graph layers
ONE = "[convolutional]\nfilters={f}\nsize=1\nstride=1\nactivation=linear\n"


def test_route_concatenates_and_groups(write_cfg):
    body = ONE.format(f=4) + ONE.format(f=6) + "[route]\nlayers=-1,-2\n" + "[route]\nlayers=1,0\ngroups=2\ngroup_id=1\n"
    net = build(write_cfg, body, c=3, h=4, w=5)
    run(net)
    a, b = net.layers[0].output, net.layers[1].output
    close(net.layers[2].output, np.concatenate([b, a], axis=1))
    close(net.layers[3].output, np.concatenate([b[:, 3:], a[:, 2:]], axis=1))


def test_shortcut_several_sources_and_activation(write_cfg):
    body = ONE.format(f=4) * 3 + "[shortcut]\nfrom=-2,-3\nactivation=leaky\n"
    net = build(write_cfg, body, c=3, h=4, w=5)
    run(net)
    o = [net.layers[i].output.astype(np.float64) for i in range(3)]
    close(net.layers[3].output, ACT["leaky"](o[2] + o[1] + o[0]))


@pytest.mark.parametrize("wtype,norm", [("per_feature", "none"), ("per_channel", "none"), ("per_feature", "relu"),
                                        ("per_channel", "softmax")])
def test_shortcut_weighted(write_cfg, wtype, norm):
    body = ONE.format(f=4) * 2 + f"[shortcut]\nfrom=0\nweights_type={wtype}\nweights_normalization={norm}\n"
    net = build(write_cfg, body, c=3, h=3, w=3)
    net.layers[2].params["weights"][0] = -0.3  # a negative weight, so relu normalization bites
    run(net)
    wts = np.asarray(net.layers[2].params["weights"], np.float64).reshape(2, -1)  # [input, from][channel or 1]
    if norm == "relu":
        r = np.maximum(wts, 0)
        wts = r / (1e-4 + r.sum(axis=0))
    elif norm == "softmax":
        e = np.exp(wts - wts.max(axis=0))
        wts = e / (1e-4 + e.sum(axis=0))
    c = lambda v: v[None, :, None, None] if v.size > 1 else v[0]
    want = net.layers[1].output * c(wts[0]) + net.layers[0].output * c(wts[1])
    close(net.layers[2].output, want)


def test_shortcut_of_different_size_samples(write_cfg):
    # pjreddie's resnet joins a 4x4 layer onto a 2x2 one: strided sampling
    body = ONE.format(f=4) + "[convolutional]\nfilters=6\nsize=1\nstride=2\nactivation=linear\n[shortcut]\nfrom=-2\n"
    net = build(write_cfg, body, c=3, h=4, w=4)
    run(net)
    a, b = net.layers[0].output, net.layers[1].output
    want = b.copy()
    want[:, :4] += a[:, :, ::2, ::2]
    close(net.layers[2].output, want)


@pytest.mark.parametrize("stride,scale", [(2, 1.0), (3, 0.5), (-2, 1.0)])
def test_upsample(write_cfg, stride, scale):
    net = build(write_cfg, f"[upsample]\nstride={stride}\nscale={scale}\n", c=2, h=4, w=6)
    x = run(net)
    if stride > 0:
        want = scale * x.repeat(stride, axis=2).repeat(stride, axis=3)
    else:
        s = -stride
        want = scale * x.reshape(2, 2, 4 // s, s, 6 // s, s).sum(axis=(3, 5))
    close(net.layers[0].output, want)


def test_reorg3d_is_space_to_depth(write_cfg):
    net = build(write_cfg, "[reorg3d]\nstride=2\n", c=3, h=4, w=6)
    x = run(net)
    s, C = 2, 3
    out = net.layers[0].output
    assert out.shape == (2, 12, 2, 3)
    want = np.zeros(out.shape)
    for k in range(12):
        off = k // C
        want[:, k] = x[:, k % C, off // s::s, off % s::s]
    close(out, want)


def test_reorg3d_reverse_is_a_permutation(write_cfg):
    # darknet's reverse mode runs the same index map with source and
    # destination exchanged; check it is a permutation of the input
    net = build(write_cfg, "[reorg3d]\nstride=2\nreverse=1\n", c=16, h=2, w=2)
    x = run(net)
    out = net.layers[0].output
    assert out.shape == (2, 4, 4, 4)
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


@pytest.mark.parametrize("opts,c,h,w,shape", [
    ("stride=2", 4, 4, 6, (16, 2, 3)),
    ("stride=2", 12, 2, 2, (48, 1, 1)),
    ("stride=3", 9, 3, 6, (81, 1, 2)),
    ("stride=2\nreverse=1", 8, 3, 2, (2, 6, 4)),
])
def test_reorg_is_darknets_old_reorg(write_cfg, opts, c, h, w, shape):
    net = build(write_cfg, f"[reorg]\n{opts}\n", c=c, h=h, w=w)
    x = run(net)
    out = net.layers[0].output
    assert out.shape == (2,) + shape
    close(out, old_reorg_ref(x, 3 if "stride=3" in opts else 2, "reverse" in opts))


@pytest.mark.parametrize("section,c,h,w,msg", [
    ("[reorg]\nstride=2", 6, 4, 4, "not divisible by stride\\^2=4"),
    ("[reorg]\nstride=2", 4, 5, 4, "not divisible by stride 2"),
    ("[reorg]\nstride=2\nreverse=1", 6, 4, 4, "not divisible by stride\\^2=4"),
    ("[reorg3d]\nstride=2\nreverse=1", 8, 4, 4, "not divisible by stride\\^4=16"),
    ("[reorg3d]\nstride=2", 3, 5, 4, "not divisible by stride 2"),
])
def test_reorg_shape_rules(write_cfg, section, c, h, w, msg):
    with pytest.raises(pydarknet.cfg.CfgError, match="net.cfg:5: layer 0 .*" + msg):
        build(write_cfg, section + "\n", c=c, h=h, w=w)


@pytest.mark.parametrize("groups,temp", [(1, 1.0), (4, 1.0), (2, 0.5)])
def test_softmax(write_cfg, groups, temp):
    net = build(write_cfg, f"[softmax]\ngroups={groups}\ntemperature={temp}\n", c=8, h=1, w=1)
    x = run(net)
    z = x.reshape(2, groups, -1) / temp
    e = np.exp(z - z.max(axis=2, keepdims=True))
    close(net.layers[0].output, (e / e.sum(axis=2, keepdims=True)).reshape(2, 8, 1, 1))


def test_scale_channels_per_channel(write_cfg):
    body = ONE.format(f=4) + "[avgpool]\n[scale_channels]\nfrom=-2\nactivation=logistic\n"
    net = build(write_cfg, body, c=3, h=4, w=5)
    run(net)
    f, s = net.layers[0].output, net.layers[1].output
    close(net.layers[2].output, ACT["logistic"](f * s))


def test_scale_channels_per_pixel(write_cfg):
    body = ONE.format(f=4) + ONE.format(f=1) + "[scale_channels]\nfrom=-2\nscale_wh=1\n"
    net = build(write_cfg, body, c=3, h=4, w=5)
    run(net)
    close(net.layers[2].output, net.layers[0].output * net.layers[1].output)


def test_sam(write_cfg):
    body = ONE.format(f=4) + ONE.format(f=4) + "[sam]\nfrom=-2\n"
    net = build(write_cfg, body, c=3, h=4, w=5)
    run(net)
    close(net.layers[2].output, net.layers[0].output * net.layers[1].output)


def test_batchnorm(write_cfg):
    net = build(write_cfg, "[batchnorm]\n", c=3, h=4, w=4)
    x = run(net)
    p = net.layers[0].params
    # darknet's [batchnorm]: normalized, scaled, then its own biases added
    close(net.layers[0].output, bn_ref(x, p) + np.asarray(p["biases"], np.float64)[None, :, None, None])


@pytest.mark.parametrize("section", ["[dropout]\nprobability=.5", "[empty]", "[cost]\ntype=sse"])
def test_identity_at_inference(write_cfg, section):
    net = build(write_cfg, section + "\n", c=3, h=4, w=4)
    x = run(net)
    close(net.layers[0].output, x, tol=1e-7)


# ---------------------------------------------------------------- heads
YOLO = "[yolo]\nmask=0,1\nanchors=10,14, 23,27, 37,58\nclasses=2\nnum=3\n"


@pytest.mark.parametrize("extra", ["", "scale_x_y=1.1", "new_coords=1\nscale_x_y=2.0"])
def test_yolo_forward(write_cfg, extra):
    net = build(write_cfg, YOLO + extra + "\n", c=14, h=4, w=4)
    x = run(net).reshape(2, 2, 7, 4, 4)
    s = net.layers[0].spec.attrs["scale_x_y"]
    y = x.copy()
    if not net.layers[0].spec.attrs["new_coords"]:
        y[:, :, [0, 1, 4, 5, 6]] = ACT["logistic"](x[:, :, [0, 1, 4, 5, 6]])
    y[:, :, :2] = y[:, :, :2] * s - (s - 1) / 2
    close(net.layers[0].output, y.reshape(2, 14, 4, 4))


def test_region_forward(write_cfg):
    net = build(write_cfg, "[region]\nanchors=1,1, 2,2\nclasses=3\nnum=2\ncoords=4\nsoftmax=1\n", c=16, h=3, w=3)
    # darknet's forward_region_layer: the input flattened to cell-major
    # [B][H*W][num][5 + classes], the logistic on objectness only (x, y, w, h
    # stay raw), the softmax over each cell's and anchor's classes
    x = run(net).reshape(2, 2, 8, 3, 3)
    y = x.copy()
    y[:, :, 4] = ACT["logistic"](x[:, :, 4])
    e = np.exp(x[:, :, 5:] - x[:, :, 5:].max(axis=2, keepdims=True))
    y[:, :, 5:] = e / e.sum(axis=2, keepdims=True)
    out = net.layers[0].output
    assert out.shape == (2, 3, 3, 2, 8)
    close(out, y.transpose(0, 3, 4, 1, 2))
