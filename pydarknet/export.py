"""``pydarknet export <cfg> <weights> -o model.pdn``: a model file for C programs.

The cfg is parsed and its weights loaded exactly as ``detector test`` does
(errors name the file and line or byte offset), then the network is written
as one model file (pydarknet.modelfile) that the C library loads with
``dn_net_load`` (examples/detect.c). Class names come from ``-names``.
"""
from __future__ import annotations

import os

from .commands import EXIT_OK, CliError, flag, load_network, note, read_head
from .datafiles import read_names
from .modelfile import ModelFileError, write_model


def add_parser(commands):
    """Adds the ``export`` command to the top-level subparsers."""
    export = commands.add_parser(
        "export", help="write a model file (.pdn) that C programs load",
        description="Writes the cfg's network with its weights as one model file: the resolved layers, the "
                    "[net] options, the class names (-names) and every parameter tensor. The C library "
                    "loads it with dn_net_load (see examples/detect.c); Python with pydarknet.load_model.")
    export.intermixed = True
    export.add_argument("cfg", help="the network's .cfg file")
    export.add_argument("weights", help="the .weights file")
    export.add_argument("-o", "--output", metavar="FILE",
                        help="the model file to write (default: <cfg-name>.pdn in the current folder)")
    flag(export, "names", metavar="FILE", help="class names file, one name per line, stored in the model")
    export.set_defaults(func=_cmd_export)
    return export


def _cmd_export(args) -> int:
    names = None
    if args.names is not None:
        read_head(args.names, "names", 1)
        names = read_names(args.names)
    output = args.output or os.path.splitext(os.path.basename(args.cfg))[0] + ".pdn"
    net = load_network(args.cfg, args.weights, names)
    try:
        write_model(net, output)
    except ModelFileError as e:
        raise CliError(f"{args.cfg}: {e}") from None
    except OSError as e:
        raise CliError(f"{output}: cannot write model file: {e.strerror or e}") from None
    params = sum(arr.size for layer in net.layers for arr in layer.params.values())
    note(f"wrote {output}: {len(net.layers)} layers, {params} parameters, input "
         f"{net.width}x{net.height}x{net.channels}, {len(names or [])} class names")
    return EXIT_OK
