"""Finite-difference gradient checks for the C core, one shared helper.

    check_gradients(net, x, truth=None)

runs the network's training forward pass on x, takes as loss either what its
loss heads compute (when `truth` is given) or a fixed random
projection of the last layer's output, L = sum(R * output), and compares the
backward pass's dL/d(input) and dL/d(parameter) with central differences
(L(p + h) - L(p - h)) / 2h at sampled coordinates.

Precision: the core computes in float32, so each L carries rounding of about
1e-7 relative per term; L itself is summed in float64 here. With h = 1e-2 the
rounding contributes about 1e-7 * |L| * sqrt(n) / h to a difference quotient,
and the truncation error of central differences is O(h^2 * f''') ~ 1e-4 for
the smooth functions used: a coordinate passes when
    |analytic - numeric| <= atol + rtol * max(|analytic|, |numeric|)
with rtol = 2e-2 and atol = 2e-3 * (largest |gradient| in the tensor): the
absolute floor keeps tiny gradients, whose quotient is dominated by rounding,
from failing on noise, while a wrong formula (off by a factor, a sign, a
missing term) misses by far more. Inputs should keep away from kinks (relu
at 0, max ties) by more than h; the helpers in the tests choose them so.
"""
import numpy as np

from pydarknet._native import check, ffi, lib

H = 1e-2
RTOL = 2e-2
ATOL_FRAC = 2e-3


def _view(ptr, count):
    return np.frombuffer(ffi.buffer(ptr, count * 4), dtype=np.float32)


def delta(net, i):
    data, count = ffi.new("float **"), ffi.new("size_t *")
    check(lib.dn_layer_delta(net._ptr, i, data, count))
    return _view(data[0], count[0])


def input_delta(net):
    data, count = ffi.new("float **"), ffi.new("size_t *")
    check(lib.dn_net_input_delta(net._ptr, data, count))
    return _view(data[0], count[0])


def param_grads(net):
    """{(layer, name): (data view, grad view)} for every trained parameter."""
    out = {}
    for layer in net.layers:
        for j, (name, data) in enumerate(layer.params.items()):
            grad = ffi.new("float **")
            check(lib.dn_layer_param_state(net._ptr, layer.index, j, grad, ffi.NULL, ffi.NULL))
            if grad[0] != ffi.NULL:
                out[(layer.index, name)] = (data, _view(grad[0], data.size))
    return out


class Checker:
    def __init__(self, net, x, truth=None, seed=0, loss_head=None):
        self.net = net
        net.enable_training()
        if net.batch != x.shape[0]:
            net.resize(batch=x.shape[0])
        self.x = np.ascontiguousarray(x, dtype=np.float32)
        self.truth = None if truth is None else np.ascontiguousarray(truth, dtype=np.float32).reshape(-1)
        # with truths the network's loss heads give the loss; without, a random projection
        self.loss_head = truth is not None if loss_head is None else loss_head
        last = net.layers[-1]
        self.R = np.random.default_rng(seed).standard_normal(x.shape[0] * int(np.prod(last.shape)))
        self.seed = seed

    def forward(self):
        lib.dn_net_seed(self.net._ptr, self.seed)  # dropout draws the same mask every pass
        t = self.truth
        check(lib.dn_net_forward_train(self.net._ptr, ffi.from_buffer("float[]", self.x), self.x.size,
                                       ffi.NULL if t is None else ffi.from_buffer("float[]", t),
                                       0 if t is None else t.size))
        if self.loss_head:
            return float(lib.dn_net_loss(self.net._ptr))
        return float(np.dot(self.R, self.net.layers[-1].output.reshape(-1).astype(np.float64)))

    def analytic(self):
        grads = param_grads(self.net)
        for _, g in grads.values():
            g[:] = 0
        self.forward()
        if not self.loss_head:
            delta(self.net, len(self.net.layers) - 1)[:] = self.R.astype(np.float32)
        check(lib.dn_net_backward(self.net._ptr))
        return input_delta(self.net).copy(), {k: g.copy() for k, (_, g) in grads.items()}

    def numeric(self, arr, idx):
        old = arr[idx]
        arr[idx] = old + H
        up = self.forward()
        arr[idx] = old - H
        down = self.forward()
        arr[idx] = old
        return (up - down) / (2 * H)


def _compare(what, analytic, numeric_at, idx):
    num = np.array([numeric_at(i) for i in idx])
    ana = analytic[idx].astype(np.float64)
    scale = max(np.abs(analytic).max(), np.abs(num).max(), 1e-12)
    bad = np.abs(ana - num) > ATOL_FRAC * scale + RTOL * np.maximum(np.abs(ana), np.abs(num))
    assert not bad.any(), (f"{what}: analytic and numeric gradients differ at {list(idx[bad][:5])}: "
                           f"analytic {ana[bad][:5]}, numeric {num[bad][:5]}")
    return num


def check_gradients(net, x, truth=None, samples=24, seed=0, inputs=True, params=True, loss_head=None):
    """Asserts the backward pass of `net` matches central differences for
    the input and every trained parameter, at `samples` coordinates each."""
    c = Checker(net, x, truth, seed, loss_head)
    rng = np.random.default_rng(seed + 1)
    dx, dparams = c.analytic()
    pick = lambda n: rng.choice(n, size=min(samples, n), replace=False)
    checked = 0
    if inputs:
        flat = c.x.reshape(-1)
        _compare("input", dx, lambda i: c.numeric(flat, i), pick(flat.size))
        checked += 1
    if params:
        for (layer, name), (data, _) in param_grads(net).items():
            _compare(f"layer {layer} {name}", dparams[(layer, name)], lambda i: c.numeric(data, i), pick(data.size))
            checked += 1
    assert checked, "nothing was checked"
    return dx, dparams
