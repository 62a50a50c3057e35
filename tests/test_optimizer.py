"""The learning-rate schedule and the optimizer step, against darknet's
formulas written out here in plain Python/NumPy (get_current_rate and
update_convolutional_layer / adam_update_cpu of darknet)."""
import math

import numpy as np
import pytest

import pydarknet
from pydarknet._native import check, ffi, lib
from gradcheck import param_grads

NET = "[net]\nwidth=4\nheight=4\nchannels=2\nbatch=4\n{opts}\n[convolutional]\nfilters=3\nsize=1\nbatch_normalize=1\nactivation=linear\n"


def rate(t, lr=0.01, policy="constant", burn_in=0, power=4.0, steps=(), scales=(), step=1, scale=1.0, gamma=1.0,
         max_batches=0, sgdr_cycle=None, sgdr_mult=2, lr_min=1e-5):
    if t < burn_in:
        return lr * (t / burn_in) ** power
    if policy == "constant":
        return lr
    if policy == "step":
        return lr * scale ** (t // step)
    if policy == "steps":
        r = lr
        for s, k in zip(steps, scales):
            if s > t:
                return r
            r *= k
        return r
    if policy == "exp":
        return lr * gamma ** t
    if policy == "poly":
        return lr * (1 - t / max_batches) ** power
    if policy == "sigmoid":
        return lr / (1 + math.exp(gamma * (t - step)))
    if policy == "sgdr":
        start, cycle = 0, sgdr_cycle or max_batches
        while start + cycle < t:
            start += cycle
            cycle *= sgdr_mult
        return lr_min + 0.5 * (lr - lr_min) * (1 + math.cos((t - start) * 3.14159265 / cycle))
    raise ValueError(policy)


CASES = [
    ("policy=constant", {}),
    ("policy=constant\nburn_in=10", dict(burn_in=10)),
    ("policy=constant\nburn_in=10\npower=2", dict(burn_in=10, power=2.0)),
    ("policy=steps\nsteps=5,12,20\nscales=.1,.5,2", dict(policy="steps", steps=(5, 12, 20), scales=(.1, .5, 2))),
    ("policy=step\nstep=4\nscale=.5", dict(policy="step", step=4, scale=.5)),
    ("policy=exp\ngamma=.9", dict(policy="exp", gamma=.9)),
    ("policy=poly\npower=2\nmax_batches=40", dict(policy="poly", power=2.0, max_batches=40)),
    ("policy=sigmoid\ngamma=.5\nstep=10", dict(policy="sigmoid", gamma=.5, step=10)),
    ("policy=sgdr\nmax_batches=40\nsgdr_cycle=5\nsgdr_mult=2\nlearning_rate_min=.001",
     dict(policy="sgdr", sgdr_cycle=5, sgdr_mult=2, lr_min=.001, max_batches=40)),
    ("policy=steps\nsteps=5,12\nscales=.1,.1\nburn_in=3", dict(policy="steps", steps=(5, 12), scales=(.1, .1), burn_in=3)),
]


@pytest.mark.parametrize("opts,kw", CASES)
def test_learning_rate_schedule(write_cfg, opts, kw):
    net = pydarknet.load(write_cfg(NET.format(opts="learning_rate=.01\n" + opts)))
    for t in range(0, 40):
        assert net.learning_rate(t) == pytest.approx(rate(t, **kw), rel=1e-5, abs=1e-9), t


def test_random_policy_draws_below_the_rate(write_cfg):
    # a query draws from a copy of the network's generator: asking does not change training
    net = pydarknet.load(write_cfg(NET.format(opts="learning_rate=.01\npolicy=random\npower=1")))
    draws = [net.learning_rate(t) for t in range(5)]
    assert 0 <= draws[0] <= .01 and len(set(draws)) == 1
    lib.dn_net_seed(net._ptr, 12345)
    assert net.learning_rate() != draws[0]


def step_with(net, grads):
    """Sets every trained parameter's gradient, runs one update."""
    for key, (_, g) in param_grads(net).items():
        g[:] = grads[key]
    check(lib.dn_net_update(net._ptr))


@pytest.mark.parametrize("adam", [0, 1])
def test_update_matches_darknet(write_cfg, adam):
    opts = f"learning_rate=.1\nmomentum=.9\ndecay=.01\nadam={adam}\nB1=.8\nB2=.95\neps=.001\nburn_in=2"
    net = pydarknet.load(write_cfg(NET.format(opts=opts)))
    net.enable_training()
    rng = np.random.default_rng(0)
    state = {k: [d.astype(np.float64), np.zeros(d.size), np.zeros(d.size)] for k, (d, _) in param_grads(net).items()}
    for k, (d, _) in param_grads(net).items():
        d[:] = rng.standard_normal(d.size)
        state[k][0] = d.astype(np.float64)
    B = net.batch  # no images trained: the update divides by the mini-batch
    for t in range(1, 5):
        grads = {k: rng.standard_normal(s[0].size).astype(np.float32) for k, s in state.items()}
        step_with(net, grads)
        lr = rate(t, lr=.1, burn_in=2)
        for k, (w, m, v) in state.items():
            decay = .01 * B if k[1] == "weights" else 0.0
            if adam:
                d = -grads[k] - decay * w
                m[:] = .8 * m + .2 * d
                v[:] = .95 * v + .05 * d * d
                w += lr * (m / (1 - .8 ** t)) / (np.sqrt(v / (1 - .95 ** t)) + .001)
            else:
                m[:] = m - grads[k] - decay * w
                w += lr / B * m
                m *= .9
        for k, (d, g) in param_grads(net).items():
            np.testing.assert_allclose(d, state[k][0], rtol=1e-4, atol=1e-5, err_msg=f"{k} at iteration {t}")
            assert not g.any(), "gradients are zeroed after the update"
    assert net.iteration == 4
    assert "rolling_mean" not in {k[1] for k in param_grads(net)}
