"""Backward passes of the layers without weights of their own (and the
shortcut's feature weights) against central differences, one short case per
option: the rows of tests/layer_cases.py with a `grad` input kind; plus
dropout's training-mode statistics. Inputs keep away from kinks:
values at least 0.2 from 0 for relu-like activations, and for max pooling
distinct values 0.05 apart, far more than the difference step."""
import numpy as np
import pytest

import pydarknet
from conftest import randomize
from gradcheck import check_gradients
from pydarknet._native import ffi, lib
from layer_cases import NET, select


def away(shape, seed=0):
    """Values of random sign with magnitudes in [0.2, 1.2]."""
    rng = np.random.default_rng(seed)
    return (rng.choice([-1.0, 1.0], size=shape) * rng.uniform(0.2, 1.2, shape)).astype(np.float32)


def spaced(shape, seed=0):
    """Distinct values 0.05 apart, shuffled, centred on 0."""
    n = int(np.prod(shape))
    return ((np.random.default_rng(seed).permutation(n) - n / 2) * 0.05).reshape(shape).astype(np.float32)


INPUTS = {"away": away, "spaced": spaced}


def build(write_cfg, case, seed=0):
    net = pydarknet.load(write_cfg(case.cfg))
    randomize(net, seed)
    return net


# ---------------------------------------------------------------- every layer case without weights of its own
@pytest.mark.parametrize("case", select(grad=("away", "spaced")))
def test_gradients(write_cfg, case):
    check_gradients(build(write_cfg, case), INPUTS[case.grad]((2,) + case.shape))


# ---------------------------------------------------------------- shortcut with weights
@pytest.mark.parametrize("case", select(grad="weights"))
def test_shortcut_weighted(write_cfg, case):
    net = build(write_cfg, case)
    layer = net.layers[-1]
    weights = layer.params["weights"]
    rng = np.random.default_rng(5)
    # magnitudes away from relu's kink; the input's weights positive so no group is all zero
    weights[:] = rng.uniform(0.5, 1.5, weights.size) * rng.choice([-1, 1], weights.size)
    sources = 1 + len(layer.spec.attrs["from"])
    weights[:weights.size // sources] = np.abs(weights[:weights.size // sources])
    _, grads = check_gradients(net, away((2,) + case.shape))
    g = grads[(layer.index, "weights")]
    if layer.spec.attrs["weights_normalization"] == "relu":
        assert np.all(g[weights < 0] == 0) and np.any(g[weights > 0] != 0)


# ---------------------------------------------------------------- training and inference passes agree
@pytest.mark.parametrize("case", select(train_pass=True))
def test_training_pass_matches_inference(write_cfg, case):
    net = build(write_cfg, case)
    net.enable_training()
    x = np.round(away((net.batch,) + case.shape, seed=3), 1)  # rounded: ties for the max
    net.forward(x)
    want = [layer.output for layer in net.layers]
    assert lib.dn_net_forward_train(net._ptr, ffi.from_buffer("float[]", x), x.size, ffi.NULL, 0) == lib.DN_OK
    for layer, w in zip(net.layers, want):
        np.testing.assert_array_equal(layer.output, w)


# ---------------------------------------------------------------- dropout
def test_dropout_training_pass(write_cfg):
    net = pydarknet.load(write_cfg(NET.format(c=4, h=32, w=32) + "[dropout]\nprobability=.3\n"))
    randomize(net, 0)
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
