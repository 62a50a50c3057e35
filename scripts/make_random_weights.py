#!/usr/bin/env python3
"""Writes a darknet .weights file of seeded random values for a cfg.

The values are drawn so a forward pass stays in a sensible range whatever
the depth: convolution and connected weights ~ N(0, 1/fan_in) scaled to keep
activations near unit variance, biases and batch-norm means small, scales
near 1, variances in [0.5, 1.5]. Used by the parity tests and benchmarks,
which need real weights files that other implementations can read too.

    python scripts/make_random_weights.py cfg/model.cfg out.weights --seed 1
"""
import argparse
import sys

import numpy as np


def randomize(net, seed=0):
    rng = np.random.default_rng(seed)
    for layer in net.layers:
        params = layer.params
        for name, arr in params.items():
            n = arr.size
            if name == "weights":
                if layer.type == "convolutional":
                    fan_in = n // layer.spec.attrs["filters"]
                elif layer.type == "connected":
                    fan_in = n // layer.spec.attrs["output"]
                else:  # shortcut feature weights
                    arr[:] = rng.uniform(0.5, 1.5, n)
                    continue
                arr[:] = rng.normal(0.0, np.sqrt(2.0 / fan_in), n)
            elif name == "biases":
                arr[:] = rng.normal(0.0, 0.1, n)
            elif name == "scales":
                arr[:] = rng.uniform(0.8, 1.2, n)
            elif name == "rolling_mean":
                arr[:] = rng.normal(0.0, 0.1, n)
            elif name == "rolling_variance":
                arr[:] = rng.uniform(0.5, 1.5, n)
            else:
                arr[:] = rng.normal(0.0, 0.1, n)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cfg")
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    import pydarknet

    net = pydarknet.load(args.cfg)
    randomize(net, args.seed)
    net.save_weights(args.out)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
