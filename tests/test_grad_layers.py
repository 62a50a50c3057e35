"""Backward passes of the layers without weights of their own (and the
shortcut's feature weights) against central differences, one short case per
option; plus dropout's training-mode statistics. Inputs keep away from kinks:
values at least 0.2 from 0 for relu-like activations, and for max pooling
distinct values 0.05 apart, far more than the difference step."""
import numpy as np
import pytest

import pydarknet
from conftest import randomize
from gradcheck import check_gradients
from pydarknet._native import ffi, lib

NET = "[net]\nwidth={w}\nheight={h}\nchannels={c}\n"


def away(shape, seed=0):
    """Values of random sign with magnitudes in [0.2, 1.2]."""
    rng = np.random.default_rng(seed)
    return (rng.choice([-1.0, 1.0], size=shape) * rng.uniform(0.2, 1.2, shape)).astype(np.float32)


def spaced(shape, seed=0):
    """Distinct values 0.05 apart, shuffled, centred on 0."""
    n = int(np.prod(shape))
    return ((np.random.default_rng(seed).permutation(n) - n / 2) * 0.05).reshape(shape).astype(np.float32)


def build(write_cfg, body, c=3, h=8, w=8, seed=0):
    net = pydarknet.load(write_cfg(NET.format(c=c, h=h, w=w) + body))
    randomize(net, seed)
    return net


def grad(write_cfg, body, c=3, h=8, w=8, x=None, batch=2):
    net = build(write_cfg, body, c, h, w)
    x = away((batch, c, h, w)) if x is None else x
    return check_gradients(net, x)


# ---------------------------------------------------------------- pooling
@pytest.mark.parametrize("opts,h,w", [
    ("size=2\nstride=2", 8, 8),
    ("size=3\nstride=1", 7, 7),
    ("size=3\nstride=2", 9, 8),
    ("size=5\nstride=1", 7, 6),
    ("size=2\nstride_x=2\nstride_y=1", 6, 8),
    ("size=3\nstride=2\npadding=0", 9, 9),
])
def test_maxpool(write_cfg, opts, h, w):
    grad(write_cfg, f"[maxpool]\n{opts}\n", c=3, h=h, w=w, x=spaced((2, 3, h, w)))


def test_maxpool_depth(write_cfg):
    grad(write_cfg, "[maxpool]\nmaxpool_depth=1\nout_channels=2\n", c=6, h=4, w=5, x=spaced((2, 6, 4, 5)))


@pytest.mark.parametrize("opts,h,w", [
    ("size=2\nstride=2", 8, 8),
    ("size=3\nstride=1", 6, 7),
    ("size=3\nstride=2", 7, 7),
    ("size=2\nstride_x=1\nstride_y=2\npadding=0", 6, 5),
])
def test_local_avgpool(write_cfg, opts, h, w):
    grad(write_cfg, f"[local_avgpool]\n{opts}\n", c=3, h=h, w=w)


def test_avgpool(write_cfg):
    grad(write_cfg, "[activation]\nactivation=logistic\n[avgpool]\n", c=4, h=5, w=6)


# ---------------------------------------------------------------- route
@pytest.mark.parametrize("route", ["layers=0,1", "layers=1,0,-3", "layers=0,1\ngroups=2\ngroup_id=1",
                                   "layers=1\ngroups=4\ngroup_id=2"])
def test_route(write_cfg, route):
    body = ("[activation]\nactivation=leaky\n[activation]\nactivation=logistic\n"
            f"[activation]\nactivation=tanh\n[route]\n{route}\n")
    grad(write_cfg, body, c=4, h=5, w=5)


# ---------------------------------------------------------------- shortcut
SOURCES = "[empty]\n[activation]\nactivation=tanh\n[activation]\nactivation=linear\n"


@pytest.mark.parametrize("act", ["linear", "leaky", "mish"])
@pytest.mark.parametrize("frm", ["0", "0,1", "-3,-2,-1"])
def test_shortcut(write_cfg, act, frm):
    # the sum tanh(x) + x (+ ...) keeps the sign of x and |sum| >= 0.2
    grad(write_cfg, SOURCES + f"[shortcut]\nfrom={frm}\nactivation={act}\n", c=3, h=5, w=4)


@pytest.mark.parametrize("wtype", ["per_feature", "per_channel"])
@pytest.mark.parametrize("norm", ["none", "relu", "softmax"])
def test_shortcut_weighted(write_cfg, wtype, norm):
    # three different terms: logistic(tanh(x)) (the input), x and tanh(x)
    body = ("[empty]\n[activation]\nactivation=tanh\n[activation]\nactivation=logistic\n"
            f"[shortcut]\nfrom=0,1\nactivation=logistic\nweights_type={wtype}\nweights_normalization={norm}\n")
    net = build(write_cfg, body, c=3, h=4, w=5)
    weights = net.layers[3].params["weights"]
    rng = np.random.default_rng(5)
    # magnitudes away from relu's kink; the input's weights positive so no group is all zero
    weights[:] = rng.uniform(0.5, 1.5, weights.size) * rng.choice([-1, 1], weights.size)
    weights[:weights.size // 3] = np.abs(weights[:weights.size // 3])
    _, grads = check_gradients(net, away((2, 3, 4, 5)))
    g = grads[(3, "weights")]
    if norm == "relu":
        assert np.all(g[weights < 0] == 0) and np.any(g[weights > 0] != 0)


@pytest.mark.parametrize("body,c,h,w", [
    ("[empty]\n[upsample]\nstride=2\n", 3, 4, 4),          # the source is smaller: sampled up
    ("[empty]\n[upsample]\nstride=-2\n", 3, 8, 8),         # the source is larger: sampled down
    ("[empty]\n[route]\nlayers=0\ngroups=2\n", 4, 6, 6),   # the source has more channels
    ("[empty]\n[route]\nlayers=0,0\n", 2, 6, 6),           # the source has fewer channels
])
def test_shortcut_sampled(write_cfg, body, c, h, w):
    grad(write_cfg, body + "[shortcut]\nfrom=0\nactivation=leaky\n", c=c, h=h, w=w)


# ---------------------------------------------------------------- upsample, reorg
@pytest.mark.parametrize("opts,h,w", [
    ("stride=2", 4, 5),
    ("stride=3\nscale=.5", 3, 4),
    ("stride=-2", 8, 6),
    ("stride=-2\nscale=.25", 7, 6),   # the last row belongs to no block
])
def test_upsample(write_cfg, opts, h, w):
    grad(write_cfg, f"[upsample]\n{opts}\n", c=3, h=h, w=w)


@pytest.mark.parametrize("section,opts,c,h,w", [
    ("reorg", "stride=2", 4, 8, 6),
    ("reorg", "stride=3", 9, 6, 9),
    ("reorg", "stride=2\nreverse=1", 4, 3, 2),
    ("reorg3d", "stride=2", 3, 8, 6),
    ("reorg3d", "stride=3", 2, 6, 9),
    ("reorg3d", "stride=2\nreverse=1", 16, 3, 2),
])
def test_reorg(write_cfg, section, opts, c, h, w):
    grad(write_cfg, f"[{section}]\n{opts}\n", c=c, h=h, w=w)


# ---------------------------------------------------------------- scale_channels, sam
@pytest.mark.parametrize("act", ["linear", "logistic", "swish"])
def test_scale_channels(write_cfg, act):
    body = f"[activation]\nactivation=tanh\n[avgpool]\n[scale_channels]\nfrom=0\nactivation={act}\n"
    grad(write_cfg, body, c=4, h=5, w=4)


@pytest.mark.parametrize("act", ["linear", "mish"])
def test_scale_channels_wh(write_cfg, act):
    body = ("[activation]\nactivation=tanh\n[route]\nlayers=0\ngroups=4\ngroup_id=1\n"
            f"[scale_channels]\nfrom=0\nscale_wh=1\nactivation={act}\n")
    grad(write_cfg, body, c=4, h=5, w=4)


@pytest.mark.parametrize("act", ["linear", "leaky", "mish"])
def test_sam(write_cfg, act):
    body = f"[activation]\nactivation=logistic\n[activation]\nactivation=tanh\n[sam]\nfrom=0\nactivation={act}\n"
    grad(write_cfg, body, c=3, h=4, w=4)


# ---------------------------------------------------------------- activation layer
@pytest.mark.parametrize("act", ["leaky", "logistic", "tanh", "mish", "swish", "gelu", "elu", "hard_mish",
                                 "normalize_channels", "normalize_channels_softmax"])
def test_activation(write_cfg, act):
    grad(write_cfg, f"[activation]\nactivation={act}\n", c=4, h=3, w=4)


# ---------------------------------------------------------------- training and inference passes agree
@pytest.mark.parametrize("body,c", [
    ("[maxpool]\nsize=3\nstride=2\n", 3),
    ("[maxpool]\nmaxpool_depth=1\nout_channels=2\n", 4),
    ("[empty]\n[activation]\nactivation=mish\n[shortcut]\nfrom=0\nactivation=swish\nweights_type=per_channel\n"
     "weights_normalization=softmax\n", 3),
    ("[activation]\nactivation=tanh\n[avgpool]\n[scale_channels]\nfrom=0\nactivation=mish\n", 3),
    ("[activation]\nactivation=logistic\n[sam]\nfrom=0\nactivation=gelu\n", 3),
])
def test_training_pass_matches_inference(write_cfg, body, c):
    net = build(write_cfg, body, c=c, h=7, w=7)
    net.enable_training()
    x = np.round(away((net.batch, c, 7, 7), seed=3), 1)  # rounded: ties for the max
    net.forward(x)
    want = [layer.output for layer in net.layers]
    assert lib.dn_net_forward_train(net._ptr, ffi.from_buffer("float[]", x), x.size, ffi.NULL, 0) == lib.DN_OK
    for layer, w in zip(net.layers, want):
        np.testing.assert_array_equal(layer.output, w)


# ---------------------------------------------------------------- dropout
def test_dropout_gradient(write_cfg):
    # the checker reseeds before every pass, so each pass draws the same mask
    body = "[activation]\nactivation=tanh\n[dropout]\nprobability=.3\n[activation]\nactivation=logistic\n"
    grad(write_cfg, body, c=3, h=6, w=6)


def test_dropout_training_pass(write_cfg):
    net = build(write_cfg, "[dropout]\nprobability=.3\n", c=4, h=32, w=32)
    net.enable_training()
    x = np.random.default_rng(0).uniform(0.5, 1.5, (net.batch, 4, 32, 32)).astype(np.float32)
    lib.dn_net_seed(net._ptr, 7)
    assert lib.dn_net_forward_train(net._ptr, ffi.from_buffer("float[]", x), x.size, ffi.NULL, 0) == lib.DN_OK
    out = net.layers[0].output
    dropped = out == 0
    assert abs(dropped.mean() - 0.3) < 0.02
    np.testing.assert_allclose(out[~dropped], x[~dropped] / 0.7, rtol=1e-6)
    net.forward(x)
    np.testing.assert_array_equal(net.layers[0].output, x)


def test_dropblock_unsupported(write_cfg):
    with pytest.raises(pydarknet.CfgError, match=r"dropblock=1 \(DropBlock\) is not supported"):
        pydarknet.load(write_cfg(NET.format(c=3, h=8, w=8) + "[dropout]\nprobability=.3\ndropblock=1\n"))
    net = ffi.new("dn_net **")
    assert lib.dn_net_create(1, 3, 8, 8, net) == lib.DN_OK
    try:
        assert lib.dn_net_add_layer(net[0], b"dropout") == lib.DN_OK
        assert lib.dn_net_set_floats(net[0], b"probability", ffi.new("float[]", [0.3]), 1) == lib.DN_OK
        assert lib.dn_net_set_ints(net[0], b"dropblock", ffi.new("int[]", [1]), 1) == lib.DN_OK
        assert lib.dn_net_end_layer(net[0]) == lib.DN_ERR_UNSUPPORTED
    finally:
        lib.dn_net_free(net[0])
