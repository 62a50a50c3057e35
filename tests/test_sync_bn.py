"""Synchronized batch norm in the C core, without MPI: a reduce hook that
doubles every sum makes a mini-batch x behave as if another process held the
very same images, so one network on x with sync_bn must compute what a
network on [x; x] (twice the mini-batch, plain batch norm) computes: the same
outputs on x's rows, the same input gradient there, and half its parameter
gradients (the doubled network sums them over both copies). Also: without a
hook sync_bn changes nothing, and a failing hook stops the pass with a clear
error. (tests/test_distributed.py runs the same over MPI with 2 ranks.)"""
import numpy as np
import pytest

import pydarknet
from pydarknet._native import DarknetError, check, ffi, lib
from conftest import randomize, random_input
from helpers import conv, section

BODY = (conv(6, bn=True) + conv(8, stride=2, bn=True, activation="mish")
        + section("convolutional", batch_normalize=1, filters=5, size=1, stride=1, activation="linear")
        + conv(4, size=3, bn=True, activation="logistic"))


def _net(write_cfg, batch, sync, speed, name, body=BODY):
    text = section("net", width=12, height=12, channels=3, batch=batch, sync_bn=sync) + body
    net = pydarknet.load(write_cfg(text, name), batch=batch)
    check(lib.dn_net_set_speed(net._ptr, speed))
    randomize(net, 3)
    net.enable_training()
    return net


def _pass(net, x, R):
    """One training pass with loss sum(R * last output): (outputs, input delta, parameter gradients)."""
    check(lib.dn_net_forward_train(net._ptr, ffi.from_buffer("float[]", x), x.size, ffi.NULL, 0))
    outs = [layer.output.copy() for layer in net.layers]
    data, count = ffi.new("float **"), ffi.new("size_t *")
    check(lib.dn_layer_delta(net._ptr, len(net.layers) - 1, data, count))
    np.frombuffer(ffi.buffer(data[0], count[0] * 4), np.float32)[:] = R.reshape(-1)
    check(lib.dn_net_backward(net._ptr))
    check(lib.dn_net_input_delta(net._ptr, data, count))
    din = np.frombuffer(ffi.buffer(data[0], count[0] * 4), np.float32).copy()
    grads = {}
    for layer in net.layers:
        for j, (name, values) in enumerate(layer.params.items()):
            grad = ffi.new("float **")
            check(lib.dn_layer_param_state(net._ptr, layer.index, j, grad, ffi.NULL, ffi.NULL))
            if grad[0] != ffi.NULL:
                grads[(layer.index, name)] = np.frombuffer(ffi.buffer(grad[0], values.size * 4), np.float32).copy()
        for name in ("rolling_mean", "rolling_variance"):
            if name in layer.params:
                grads[(layer.index, name, "value")] = layer.params[name].copy()
    return outs, din, grads


def close(got, want, tol=1e-5):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    err = np.abs(got - want).max() / max(np.abs(want).max(), 1e-6)
    assert err < tol, f"relative error {err:.2e}"


@pytest.mark.parametrize("speed", [0, lib.DN_SPEED_ALL], ids=["plain", "threads"])
def test_a_doubling_hook_equals_the_duplicated_mini_batch(write_cfg, speed):
    calls = []

    @ffi.callback("dn_status(dn_net *, void *, double *, size_t)")
    def doubling(net, user, values, count):
        calls.append(int(count))
        for i in range(count):
            values[i] *= 2.0
        return lib.DN_OK

    m = 3
    x = random_input((m, 3, 12, 12), 1) * 2 - 1
    R = np.random.default_rng(2).standard_normal((m, 4, 6, 6)).astype(np.float32)
    synced = _net(write_cfg, m, 1, speed, "sync.cfg")
    check(lib.dn_net_set_reduce_hook(synced._ptr, doubling, ffi.NULL))
    whole = _net(write_cfg, 2 * m, 0, speed, "whole.cfg")
    so, sd, sg = _pass(synced, x, R)
    wo, wd, wg = _pass(whole, np.concatenate([x, x]), np.concatenate([R, R]))
    # per layer two sums forward (the first with the value count: C + 1), one backward (2 per channel)
    assert sorted(calls) == sorted([6 + 1, 6, 12, 8 + 1, 8, 16, 5 + 1, 5, 10, 4 + 1, 4, 8])
    for a, b in zip(so, wo):
        close(a, b[:m])
    close(sd, wd.reshape(2 * m, -1)[:m].reshape(-1))
    for k in wg:
        if len(k) == 3:   # rolling statistics: moved by the same (whole-batch) statistics
            close(sg[k], wg[k])
        else:
            close(2 * sg[k], wg[k], 1e-4)


@pytest.mark.parametrize("net_sync,layers,synced", [(1, (-1, 0, 1), (6, 4)), (0, (-1, 0, 1), (4,)),
                                                    (0, (-1, -1, -1), ())])
def test_a_layers_sync_bn_overrides_the_nets(write_cfg, net_sync, layers, synced):
    """sync_bn per [convolutional] layer: 1 or 0, or -1 (unset) for [net]'s; layers without batch norm never sync."""
    calls = []

    @ffi.callback("dn_status(dn_net *, void *, double *, size_t)")
    def record(net, user, values, count):
        calls.append(int(count))
        return lib.DN_OK

    body = "".join(section("convolutional", batch_normalize=1, filters=f, size=1, activation="linear",
                           **({} if v < 0 else {"sync_bn": v})) for f, v in zip((6, 5, 4), layers))
    body += section("convolutional", filters=3, size=1, activation="linear", sync_bn=1)   # no batch norm
    net = _net(write_cfg, 2, net_sync, lib.DN_SPEED_ALL, "o.cfg", body)
    check(lib.dn_net_set_reduce_hook(net._ptr, record, ffi.NULL))
    x = random_input((2, 3, 12, 12), 1)
    check(lib.dn_net_forward_train(net._ptr, ffi.from_buffer("float[]", x), x.size, ffi.NULL, 0))
    assert calls == [n for c in synced for n in (c + 1, c)]
    net.forward(x)   # inference never syncs
    assert len(calls) == 2 * len(synced)


def test_without_a_hook_sync_bn_is_plain_batch_norm(write_cfg):
    x = random_input((2, 3, 12, 12), 1)
    R = np.ones((2, 4, 6, 6), np.float32)
    a, b = _net(write_cfg, 2, 1, lib.DN_SPEED_ALL, "a.cfg"), _net(write_cfg, 2, 0, lib.DN_SPEED_ALL, "b.cfg")
    (ao, ad, ag), (bo, bd, bg) = _pass(a, x, R), _pass(b, x, R)
    assert all(np.array_equal(p, q) for p, q in zip(ao, bo)) and np.array_equal(ad, bd)
    assert all(np.array_equal(ag[k], bg[k]) for k in ag)


def test_a_failing_hook_stops_the_pass_naming_the_layer(write_cfg):
    @ffi.callback("dn_status(dn_net *, void *, double *, size_t)")
    def failing(net, user, values, count):
        return lib.DN_ERR_STATE

    net = _net(write_cfg, 2, 1, lib.DN_SPEED_ALL, "f.cfg")
    check(lib.dn_net_set_reduce_hook(net._ptr, failing, ffi.NULL))
    x = random_input((2, 3, 12, 12), 1)
    with pytest.raises(DarknetError, match=r"layer 0 \[convolutional\].*synchronized batch norm"):
        check(lib.dn_net_forward_train(net._ptr, ffi.from_buffer("float[]", x), x.size, ffi.NULL, 0))
