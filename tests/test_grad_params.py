"""Backward passes of the layers with parameters ([convolutional],
[connected], [batchnorm]) against central differences (tests/gradcheck.py),
for every geometry option, every activation, and batch normalization in
training mode; and the training-mode batch statistics against NumPy.

Inputs are chosen away from the activations' kinks: a twin network with the
activation replaced by `linear` (same parameters) gives the pre-activation
values, and input seeds are drawn until every one is further from a kink
than a finite-difference step can move it."""
import numpy as np
import pytest

import pydarknet
from pydarknet._native import check, ffi, lib
from conftest import randomize
from gradcheck import Checker, check_gradients, param_grads

# every case runs with the BLAS GEMM and with the portable one
pytestmark = pytest.mark.usefixtures("gemm")


NET = "[net]\nwidth={w}\nheight={h}\nchannels={c}\nbatch={b}\n"

# where each activation's derivative jumps (None: at every integer)
KINKS = {
    "relu": [0], "relu6": [0, 6], "elu": [0], "selu": [0], "relie": [0], "ramp": [0], "leaky": [0],
    "revleaky": [0], "plse": [-4, 4], "stair": None, "hardtan": [-1, 1], "lhtan": [0, 1], "hard_mish": [-2, 0],
    "normalize_channels": [0],
}
ACTIVATIONS = ["linear", "logistic", "loggy", "relu", "relu6", "elu", "selu", "gelu", "relie", "ramp", "leaky",
               "revleaky", "tanh", "plse", "stair", "hardtan", "lhtan", "swish", "mish", "hard_mish",
               "normalize_channels", "normalize_channels_softmax", "normalize_channels_softmax_maxval"]


def build(write_cfg, body, c, h, w, b=2, seed=0, prep=None, name="net.cfg"):
    net = pydarknet.load(write_cfg(NET.format(c=c, h=h, w=w, b=b) + body, name))
    randomize(net, seed)
    if prep:
        prep(net)
    return net


def kink_distance(z, kinks):
    if kinks is None:
        return np.abs(z - np.round(z)).min()
    return min(np.abs(z - k).min() for k in kinks)


def pick_input(write_cfg, body, act, c, h, w, b=2, layer=0, margin=0.05, prep=None, seeds=300):
    """An input [b, c, h, w] in -1..1 whose pre-activations at `layer`
    (body's {act} there, linear elsewhere alike) keep `margin` from the kinks."""
    shape = (b, c, h, w)
    kinks = KINKS.get(act, [])
    if not kinks and kinks is not None:
        return np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
    twin = build(write_cfg, body.format(act="linear"), c, h, w, b, prep=prep, name="twin.cfg")
    for seed in range(seeds):
        x = np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)
        Checker(twin, x).forward()
        if kink_distance(twin.layers[layer].output, kinks) > margin:
            return x
    pytest.fail(f"no input keeps {margin} away from the kinks of {act}")


# ---------------------------------------------------------------- convolutional geometry
GEOMETRY = [
    ("filters=3\nsize=3\nstride=1\npad=1", 2),
    ("filters=3\nsize=3\nstride=2\npad=1", 2),
    ("filters=3\nsize=3\nstride_x=2\nstride_y=1\npadding=1", 2),
    ("filters=3\nsize=1\nstride=1\npad=0", 3),
    ("filters=4\nsize=3\nstride=1\npad=1\ngroups=2", 4),
    ("filters=4\nsize=3\nstride=1\npad=1\ngroups=4", 4),
    ("filters=3\nsize=3\nstride=1\npad=1\ndilation=2", 2),
    ("filters=3\nsize=5\nstride=3\npadding=1", 2),
]


@pytest.mark.parametrize("opts,c", GEOMETRY)
@pytest.mark.parametrize("bn", [0, 1])
def test_convolutional(write_cfg, opts, c, bn):
    body = f"[convolutional]\n{opts}\nbatch_normalize={bn}\nactivation=logistic\n"
    b = 3 if bn else 2
    net = build(write_cfg, body, c=c, h=5, w=6, b=b)
    x = np.random.default_rng(1).uniform(-1, 1, (b, c, 5, 6)).astype(np.float32)
    check_gradients(net, x)


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_activation(write_cfg, act):
    body = "[convolutional]\nfilters=3\nsize=1\nstride=1\nactivation={act}\n"

    def prep(net):  # spread the pre-activations over every piece of the function
        net.layers[0].params["weights"][:] *= {"relu6": 5.0, "plse": 4.0, "hard_mish": 2.5}.get(act, 1.5)

    c, h, w = 2, 2, 3
    net = build(write_cfg, body.format(act=act), c, h, w, prep=prep)
    # a step of .01 in an input, weight or bias moves a pre-activation by at most .01 * max(|w|, |x|, 1)
    margin = 0.015 * max(np.abs(net.layers[0].params["weights"]).max(), 1.0)
    x = pick_input(write_cfg, body, act, c, h, w, margin=margin, prep=prep)
    check_gradients(net, x)


@pytest.mark.parametrize("act", ["leaky", "mish", "normalize_channels_softmax"])
def test_activation_after_batch_normalize(write_cfg, act):
    body = "[convolutional]\nfilters=3\nsize=3\nstride=1\npad=1\nbatch_normalize=1\nactivation={act}\n"
    x = pick_input(write_cfg, body, act, 2, 3, 3, margin=0.08)
    net = build(write_cfg, body.format(act=act), 2, 3, 3)
    check_gradients(net, x)


def test_two_layers(write_cfg):
    body = ("[convolutional]\nfilters=3\nsize=3\nstride=1\npad=1\nbatch_normalize=1\nactivation={act}\n"
            "[convolutional]\nfilters=2\nsize=3\nstride=2\npad=1\nactivation=linear\n")
    x = pick_input(write_cfg, body, "leaky", 2, 3, 3, margin=0.08)
    net = build(write_cfg, body.format(act="leaky"), 2, 3, 3)
    check_gradients(net, x)


# ---------------------------------------------------------------- connected, batchnorm
@pytest.mark.parametrize("bn", [0, 1])
@pytest.mark.parametrize("act", ["linear", "tanh", "leaky"])
def test_connected(write_cfg, bn, act):
    body = f"[connected]\noutput=5\nbatch_normalize={bn}\nactivation={{act}}\n"
    x = pick_input(write_cfg, body, act, 2, 2, 3, b=3, margin=0.08)
    net = build(write_cfg, body.format(act=act), 2, 2, 3, b=3)
    check_gradients(net, x)


def test_batchnorm(write_cfg):
    net = build(write_cfg, "[batchnorm]\n", 3, 3, 4)
    x = np.random.default_rng(1).uniform(-1, 1, (2, 3, 3, 4)).astype(np.float32)
    check_gradients(net, x)


@pytest.mark.parametrize("bias_term", [1, 0])
def test_scale(write_cfg, bias_term):
    """[scale]'s gamma and beta (and the input) against central differences, between two layers."""
    body = (f"[convolutional]\nfilters=3\nsize=3\nstride=1\npad=1\nactivation=logistic\n[scale]\n"
            f"bias_term={bias_term}\n[connected]\noutput=4\nactivation=logistic\n")
    net = build(write_cfg, body, 2, 3, 4)
    assert ("biases" in net.layers[1].params) == bool(bias_term)
    x = np.random.default_rng(1).uniform(-1, 1, (2, 2, 3, 4)).astype(np.float32)
    check_gradients(net, x)


@pytest.mark.parametrize("groups", [1, 2, 6])
def test_groupnorm(write_cfg, groups):
    """[groupnorm]'s gamma, beta and input against central differences, between two layers."""
    body = (f"[convolutional]\nfilters=6\nsize=3\nstride=1\npad=1\nactivation=logistic\n[groupnorm]\n"
            f"groups={groups}\n[connected]\noutput=4\nactivation=logistic\n")
    net = build(write_cfg, body, 2, 3, 4)
    x = np.random.default_rng(1).uniform(-1, 1, (2, 2, 3, 4)).astype(np.float32)
    check_gradients(net, x)


@pytest.mark.parametrize("opts", ["deformable_groups=2\nactivation=linear", "modulated=0\nstride=2\nactivation=linear",
                                  "batch_normalize=1\nstride_x=2\nactivation=linear",
                                  "deformable_groups=4\nactivation=logistic"])
def test_deformable(write_cfg, opts):
    """[deformable]: the input, the main weights and the offset convolution's weights and biases against central
    differences. The sample positions must stay off the integers, where the bilinear weights' derivatives jump
    (finite differences across one are wrong, not the gradient): offset biases put every sample mid-way
    between pixels (0.5) and the offset weights are small enough that the input moves it by < 0.2."""
    body = f"[deformable]\nfilters=3\nsize=3\npad=1\n{opts}\n"
    net = build(write_cfg, body, 4, 6, 5)
    p = net.layers[0].params
    rng = np.random.default_rng(6)
    p["offset_weights"][:] = rng.uniform(-0.004, 0.004, p["offset_weights"].size)
    p["offset_biases"][:] = 0.5 + rng.uniform(-0.05, 0.05, p["offset_biases"].size)
    x = np.random.default_rng(1).uniform(-1, 1, (2, 4, 6, 5)).astype(np.float32)
    check_gradients(net, x, samples=40)


def test_batchnorm_between_layers(write_cfg):
    body = ("[convolutional]\nfilters=3\nsize=3\nstride=1\npad=1\nactivation=logistic\n[batchnorm]\n"
            "[connected]\noutput=4\nactivation=logistic\n")
    net = build(write_cfg, body, 2, 3, 4)
    x = np.random.default_rng(1).uniform(-1, 1, (2, 2, 3, 4)).astype(np.float32)
    check_gradients(net, x)


# ---------------------------------------------------------------- training-mode statistics
BN_LAYERS = [
    ("[convolutional]\nfilters=3\nsize=3\nstride=1\npad=1\nbatch_normalize=1\nactivation=linear\n", "conv"),
    ("[connected]\noutput=3\nbatch_normalize=1\nactivation=linear\n", "connected"),
    ("[batchnorm]\n", "batchnorm"),
]
# how a training pass moves the rolling statistics, darknet's CPU constants:
# rolling = keep * rolling + share * batch statistic (forward_convolutional_layer and
# forward_batchnorm_layer: .9/.1; forward_connected_layer: .95/.05)
ROLLING = {"conv": (.9, .1), "connected": (.95, .05), "batchnorm": (.9, .1)}


def pre_norm(net, x):
    """What the layer normalizes: the convolution / product without bias, or the input."""
    layer = net.layers[0]
    p = layer.params
    if layer.type == "batchnorm":
        return x.astype(np.float64)
    if layer.type == "connected":
        w = p["weights"].reshape(3, -1).astype(np.float64)
        return (x.reshape(x.shape[0], -1).astype(np.float64) @ w.T)[:, :, None, None]
    # 3x3, pad 1, stride 1
    w = p["weights"].reshape(3, x.shape[1], 3, 3).astype(np.float64)
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    H, W = x.shape[2:]
    return sum(np.einsum("bchw,fc->bfhw", xp[:, :, i:i + H, j:j + W], w[:, :, i, j]) for i in range(3) for j in range(3))


@pytest.mark.parametrize("body,kind", BN_LAYERS)
def test_rolling_statistics(write_cfg, body, kind):
    net = build(write_cfg, body, 2, 3, 4, b=3)
    x = np.random.default_rng(1).uniform(-1, 1, (3, 2, 3, 4)).astype(np.float32)
    p = net.layers[0].params
    old_mean, old_var = p["rolling_mean"].astype(np.float64), p["rolling_variance"].astype(np.float64)
    net.enable_training()
    Checker(net, x).forward()
    z = pre_norm(net, x)
    mean, var = z.mean(axis=(0, 2, 3)), z.var(axis=(0, 2, 3), ddof=1)
    keep, share = ROLLING[kind]
    np.testing.assert_allclose(p["rolling_mean"], keep * old_mean + share * mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(p["rolling_variance"], keep * old_var + share * var, rtol=1e-5, atol=1e-6)
    # the training output uses the batch statistics
    want = (z - mean[None, :, None, None]) / np.sqrt(var[None, :, None, None] + 1e-5)
    want = want * p["scales"][None, :, None, None]
    if "biases" in p:
        want = want + p["biases"][None, :, None, None]
    np.testing.assert_allclose(net.layers[0].output, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("body,kind", BN_LAYERS)
def test_inference_after_training_pass_uses_rolling_statistics(write_cfg, body, kind):
    net = build(write_cfg, body, 2, 3, 4, b=3)
    x = np.random.default_rng(1).uniform(-1, 1, (3, 2, 3, 4)).astype(np.float32)
    p = net.layers[0].params
    net.enable_training()
    net.forward(x)
    before = net.layers[0].output
    Checker(net, x).forward()
    training = net.layers[0].output
    net.forward(x)
    after = net.layers[0].output
    assert not np.allclose(training, before, atol=1e-3)
    # the only change is the rolling statistics' update: undo it on `before`
    keep, share = ROLLING[kind]
    old_mean = (p["rolling_mean"] - share * pre_norm(net, x).mean(axis=(0, 2, 3))) / keep
    old_var = (p["rolling_variance"] - share * pre_norm(net, x).var(axis=(0, 2, 3), ddof=1)) / keep
    s = (np.sqrt(old_var + 1e-5) / np.sqrt(p["rolling_variance"] + 1e-5))[None, :, None, None]
    shift = (p["scales"] * (old_mean - p["rolling_mean"]) / np.sqrt(p["rolling_variance"] + 1e-5))[None, :, None, None]
    b = p["biases"][None, :, None, None] if "biases" in p else 0
    np.testing.assert_allclose(after, (before - b) * s + shift + b, rtol=1e-4, atol=1e-5)


def test_inference_unchanged_without_batch_normalize(write_cfg):
    net = build(write_cfg, "[convolutional]\nfilters=3\nsize=3\nstride=1\npad=1\nactivation=mish\n"
                           "[connected]\noutput=3\nactivation=leaky\n", 2, 3, 4, b=2)
    x = np.random.default_rng(1).uniform(-1, 1, (2, 2, 3, 4)).astype(np.float32)
    net.enable_training()
    net.forward(x)
    before = [l.output for l in net.layers]
    Checker(net, x).forward()
    net.forward(x)
    for a, l in zip(before, net.layers):
        np.testing.assert_array_equal(a, l.output)


# ---------------------------------------------------------------- parameter flags
@pytest.mark.parametrize("body,kind", BN_LAYERS)
def test_rolling_statistics_are_not_trained(write_cfg, body, kind):
    net = build(write_cfg, body, 2, 3, 4, b=2)
    net.enable_training()
    trained = {name for (_, name) in param_grads(net)}
    want = {"conv": {"biases", "scales", "weights"}, "connected": {"biases", "scales", "weights"},
            "batchnorm": {"biases", "scales"}}[kind]
    assert trained == want
    for j, name in enumerate(net.layers[0].params):
        grad = ffi.new("float **")
        check(lib.dn_layer_param_state(net._ptr, 0, j, grad, ffi.NULL, ffi.NULL))
        assert (grad[0] == ffi.NULL) == name.startswith("rolling_"), name


def test_backward_needs_a_training_pass(write_cfg):
    net = build(write_cfg, "[convolutional]\nfilters=3\nsize=3\nstride=1\npad=1\nbatch_normalize=1\n"
                           "activation=leaky\n", 2, 3, 4, b=2)
    net.enable_training()
    net.forward(np.zeros((2, 2, 3, 4), np.float32))
    assert lib.dn_net_backward(net._ptr) == lib.DN_ERR_STATE
