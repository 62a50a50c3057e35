"""darknet's per-layer training switches: stopbackward, onlyforward,
dont_update, burnin_update, train_only_bn and clip.

Each case trains a small classifier (four convolutions, avgpool, softmax)
with one switch set and compares every parameter with what darknet's rules
(its parser and GPU training loop) make of it, worked out here from an
independent run: the same network, seed and batches without the switch
("plain"), or a hand computation of the SGD step darknet makes without a
gradient (m = -decay*B*w, w += rate/B * m, m *= momentum). Layers the switch
cannot reach in the first iteration (those after it, whose forward pass and
backward pass are the same code on the same numbers) must equal the plain
run's to float32 rounding; the tolerance (1e-6 relative) is far below any
update (rate 0.1 moves parameters by ~1e-2)."""
import numpy as np
import pytest

import pydarknet
from pydarknet._native import check, ffi, lib
from gradcheck import param_grads

LR, MOMENTUM, DECAY, BATCH, CLASSES = 0.1, 0.9, 0.01, 4, 3

LAYERS = (
    "[convolutional]\nfilters=4\nsize=3\npad=1\nbatch_normalize={bn}\nactivation=leaky\n",
    "[convolutional]\nfilters=4\nsize=3\npad=1\nbatch_normalize={bn}\nactivation=leaky\n",
    "[convolutional]\nfilters=4\nsize=1\nbatch_normalize=1\nactivation=leaky\n",
    "[convolutional]\nfilters=3\nsize=1\nactivation=linear\n",
    "[avgpool]\n",
    "[softmax]\n",
)


def cfg(switches=None, bn=1, burn_in=0):
    """The network's cfg with `switches` {layer index: 'key=value'} added."""
    text = (f"[net]\nwidth=6\nheight=6\nchannels=2\nbatch={BATCH}\nlearning_rate={LR}\nmomentum={MOMENTUM}\n"
            f"decay={DECAY}\nburn_in={burn_in}\npower=1\n")
    for i, layer in enumerate(LAYERS):
        text += layer.format(bn=bn) + ((switches or {}).get(i, "") + "\n")
    return text


def batches(n):
    rng = np.random.default_rng(7)
    out = []
    for _ in range(n):
        x = rng.random((BATCH, 2, 6, 6), dtype=np.float32)
        t = np.eye(CLASSES, dtype=np.float32)[rng.integers(0, CLASSES, BATCH)]
        out.append((x, t))
    return out


def snapshot(net):
    return {(l.index, k): v.copy() for l in net.layers for k, v in l.params.items()}


def train(write_cfg, switches=None, iterations=1, name="net.cfg", **kw):
    """The parameters before and after each of `iterations` iterations."""
    net = pydarknet.load(write_cfg(cfg(switches, **kw), name), seed=3)
    states = [snapshot(net)]
    for x, t in batches(iterations):
        net.train_batch(x, t)
        states.append(snapshot(net))
    return net, states


def same(a, b, keys):
    for k in keys:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-6, atol=1e-7, err_msg=str(k))


def keys_of(state, layers, names=None):
    return [k for k in state if k[0] in layers and (names is None or k[1] in names)]


def decay_only(w0, steps):
    """darknet's SGD steps on a tensor without gradient: only weight decay (and the momentum it builds) moves it."""
    w, m = w0.astype(np.float64), np.zeros(w0.size)
    for _ in range(steps):
        m += -DECAY * BATCH * w
        w = w + LR / BATCH * m
        m *= MOMENTUM
    return w


TRAINED = ("biases", "scales", "weights")
STATS = ("rolling_mean", "rolling_variance")


# ---------------------------------------------------------------- stopbackward
def test_stopbackward_freezes_earlier_layers(write_cfg):
    """stopbackward=1 on layer 2: layers 0-1 frozen (nothing changes, not even
    batch-norm statistics: their convolutions run as in inference); layer 2
    runs no backward, so only decay moves its weights; layer 3 trains as in
    the plain run (layers 0-1 have no batch norm here, so their outputs do
    not depend on the training mode)."""
    _, (s0, s1, s2) = train(write_cfg, {2: "stopbackward=1"}, iterations=2, bn=0)
    _, plain = train(write_cfg, iterations=1, name="plain.cfg", bn=0)
    same(s2, s0, keys_of(s0, (0, 1)))
    np.testing.assert_allclose(s1[(2, "weights")], decay_only(s0[(2, "weights")], 1), rtol=1e-5)
    np.testing.assert_allclose(s2[(2, "weights")], decay_only(s0[(2, "weights")], 2), rtol=1e-5)
    same(s2, s0, [(2, "biases"), (2, "scales")])
    assert not np.allclose(s1[(2, "rolling_mean")], s0[(2, "rolling_mean")])
    same(s1, plain[1], keys_of(s0, (3,)))
    assert not np.allclose(s1[(3, "weights")], s0[(3, "weights")])


def test_stopbackward_frozen_batch_norm_runs_as_in_inference(write_cfg):
    """A frozen convolution with batch norm: its training-pass output is its
    inference output (rolling statistics), and the statistics stay."""
    net, (s0, s1) = train(write_cfg, {2: "stopbackward=1"}, iterations=1)
    same(s1, s0, keys_of(s0, (0, 1)))
    x, t = batches(1)[0]
    check(lib.dn_net_forward_train(net._ptr, ffi.from_buffer("float[]", x), x.size,
                                   ffi.from_buffer("float[]", t), t.size))
    trained_out = net.layers[1].output.copy()
    net.forward(x)
    np.testing.assert_allclose(trained_out, net.layers[1].output, rtol=1e-6, atol=1e-6)
    inferred = net.layers[2].output.copy()
    # layer 2 is not frozen: in a training pass it normalizes with the batch's statistics
    check(lib.dn_net_forward_train(net._ptr, ffi.from_buffer("float[]", x), x.size,
                                   ffi.from_buffer("float[]", t), t.size))
    assert not np.allclose(net.layers[2].output, inferred, atol=1e-4)


def test_stopbackward_n_stops_for_the_first_n_iterations(write_cfg):
    """stopbackward=2: iterations 1 and 2 stop before layer 2 but freeze
    nothing, so layers 0-2 move by decay alone (biases, scales stay) while
    batch norm keeps learning statistics; iteration 3 goes all the way back."""
    _, s = train(write_cfg, {2: "stopbackward=2"}, iterations=3)
    for layer in (0, 1, 2):
        np.testing.assert_allclose(s[2][(layer, "weights")], decay_only(s[0][(layer, "weights")], 2), rtol=1e-5)
        same(s[2], s[0], [(layer, "biases"), (layer, "scales")])
        assert not np.allclose(s[1][(layer, "rolling_mean")], s[0][(layer, "rolling_mean")])
        assert not np.allclose(s[3][(layer, "biases")], s[2][(layer, "biases")])


# ---------------------------------------------------------------- onlyforward
def test_onlyforward_passes_no_gradient(write_cfg):
    """onlyforward=1 on layer 2: layer 3 trains as in the plain run (same
    forward, its backward comes first); layer 2 and everything before it get
    no gradient, so only decay moves their weights; the forward pass is the
    plain one, so every batch-norm statistic matches the plain run's."""
    _, (s0, s1) = train(write_cfg, {2: "onlyforward=1"})
    _, plain = train(write_cfg, name="plain.cfg")
    same(s1, plain[1], keys_of(s0, (3,)) + keys_of(s0, (0, 1, 2), STATS))
    for layer in (0, 1, 2):
        np.testing.assert_allclose(s1[(layer, "weights")], decay_only(s0[(layer, "weights")], 1), rtol=1e-5)
        same(s1, s0, [(layer, "biases"), (layer, "scales")])


# ---------------------------------------------------------------- dont_update and burnin_update
def grads_at(write_cfg, state, x, t):
    """The gradients (no update) of the plain network with parameters `state` on one batch."""
    net = pydarknet.load(write_cfg(cfg(), "grads.cfg"), seed=3)
    for (i, name), value in state.items():
        net.layers[i].params[name][:] = value
    net.enable_training()
    check(lib.dn_net_forward_train(net._ptr, ffi.from_buffer("float[]", x), x.size,
                                   ffi.from_buffer("float[]", t), t.size))
    check(lib.dn_net_backward(net._ptr))
    return {k: g.astype(np.float64) for k, (_, g) in param_grads(net).items()}


def test_dont_update_keeps_the_layer_and_its_gradients(write_cfg):
    """dont_update=1 on layer 1: iteration 1 leaves its trained parameters
    (its statistics still move) and every other layer trains as in the plain
    run; iteration 2 updates it with the gradients of both iterations, as
    darknet's update buffer accumulates them: w2 = w0 + rate/B * (-(g1 + g2) - decay*B*w0)."""
    (x1, t1), (x2, t2) = batches(2)
    _, (s0, s1, s2) = train(write_cfg, {1: "dont_update=1"}, iterations=2)
    _, plain = train(write_cfg, name="plain.cfg")
    same(s1, s0, keys_of(s0, (1,), TRAINED))
    same(s1, plain[1], [k for k in s0 if k[0] != 1] + keys_of(s0, (1,), STATS))
    g1, g2 = grads_at(write_cfg, s0, x1, t1), grads_at(write_cfg, s1, x2, t2)
    for name in TRAINED:
        k = (1, name)
        decay = DECAY * BATCH if name == "weights" else 0.0
        want = s0[k] + LR / BATCH * (-(g1[k] + g2[k]) - decay * s0[k])
        np.testing.assert_allclose(s2[k], want, rtol=1e-4, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("burnin_update,burn_in,skipped", [(2, 1, True), (1, 1, False), (1, 2, True)])
def test_burnin_update_skips_while_in_burn_in(write_cfg, burnin_update, burn_in, skipped):
    """darknet skips the update of iteration t while burnin_update * burn_in > t."""
    _, (s0, s1) = train(write_cfg, {1: f"burnin_update={burnin_update}"}, burn_in=burn_in)
    moved = [not np.array_equal(s1[k], s0[k]) for k in keys_of(s0, (1,), TRAINED)]
    assert not any(moved) if skipped else all(moved)
    assert not np.array_equal(s1[(0, "weights")], s0[(0, "weights")])


# ---------------------------------------------------------------- train_only_bn
def test_train_only_bn_moves_only_statistics_up_to_the_layer(write_cfg):
    """train_only_bn=1 on layer 1: layers 0 and 1 compute no parameter
    gradients and are never updated (darknet's GPU loop skips their update),
    their batch-norm statistics follow the batches as in the plain run, and
    layers 2-3 train as in the plain run in the first iteration."""
    net, (s0, s1) = train(write_cfg, {1: "train_only_bn=1"})
    _, plain = train(write_cfg, name="plain.cfg")
    same(s1, s0, keys_of(s0, (0, 1), TRAINED))
    same(s1, plain[1], keys_of(s0, (0, 1), STATS) + keys_of(s0, (2, 3)))
    assert not np.allclose(s1[(0, "rolling_mean")], s0[(0, "rolling_mean")])
    assert {k[0] for k in param_grads(net)} == {2, 3}


# ---------------------------------------------------------------- clip
def test_clip_bounds_convolutional_weights_after_the_update(write_cfg):
    """clip=0.05 on layer 3: its weights are the plain run's clamped to
    [-0.05, 0.05] (the clamp follows the update); biases are not clipped."""
    _, (s0, s1) = train(write_cfg, {3: "clip=0.05"})
    _, plain = train(write_cfg, name="plain.cfg")
    assert np.abs(plain[1][(3, "weights")]).max() > 0.05
    np.testing.assert_allclose(s1[(3, "weights")], np.clip(plain[1][(3, "weights")], -0.05, 0.05), rtol=1e-6)
    same(s1, plain[1], [k for k in s0 if k != (3, "weights")])


def test_switches_reach_training_from_a_model_file(write_cfg, tmp_path):
    """A model file keeps the switches: the C loader's network trains as the cfg's."""
    from pydarknet.modelfile import load_model, write_model

    net = pydarknet.load(write_cfg(cfg({1: "dont_update=1"})), seed=3)
    path = tmp_path / "net.dnm"
    write_model(net, path)
    loaded = load_model(path)
    before = snapshot(loaded)
    x, t = batches(1)[0]
    loaded.train_batch(x, t)
    same(snapshot(loaded), before, keys_of(before, (1,), TRAINED))
