"""``pydarknet export <cfg> <weights> -o model.pdn`` (a model file for C
programs) or ``-o model.onnx`` (an ONNX model for deployment runtimes).

The cfg is parsed and its weights loaded exactly as ``detector test`` does
(errors name the file and line or byte offset). ``.pdn`` (the default): the
network as one model file (pydarknet.modelfile) that the C library loads
with ``dn_net_load`` (examples/detect.c), class names from ``-names``.
``.onnx``: the graph of pydarknet.onnx_export (the outputs of
``net.predict``), with ``--opset`` and ``--dynamic-batch``.
"""
from __future__ import annotations

import os

from .commands import EXIT_OK, CliError, flag, load_network, note, read_head
from .datafiles import read_names
from .modelfile import ModelFileError, write_model


def add_parser(commands):
    """Adds the ``export`` command to the top-level subparsers."""
    export = commands.add_parser(
        "export", help="write a model file (.pdn) that C programs load, or an ONNX model (.onnx)",
        description="Writes the cfg's network with its weights as one model file: the resolved layers, the "
                    "[net] options, the class names (-names) and every parameter tensor. The C library "
                    "loads it with dn_net_load (see examples/detect.c); Python with pydarknet.load_model.")
    export.intermixed = True
    export.add_argument("cfg", help="the network's .cfg file")
    export.add_argument("weights", help="the .weights file")
    export.add_argument("-o", "--output", metavar="FILE",
                        help="the model file to write, .pdn or .onnx by its extension (default: <cfg-name>.pdn in "
                             "the current folder)")
    export.add_argument("--opset", type=int, default=None, metavar="N",
                        help="ONNX opset of an .onnx export (default 17)")
    export.add_argument("--dynamic-batch", action="store_true",
                        help="an .onnx export takes any batch size (else the batch is 1)")
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
    if output.lower().endswith(".onnx"):
        return _export_onnx(args, net, output)
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


def _export_onnx(args, net, output) -> int:
    from .onnx_export import DEFAULT_OPSET, OnnxExportError, export_onnx

    opset = args.opset or DEFAULT_OPSET
    if opset < 13:
        raise CliError(f"--opset {opset}: the export needs opset 13 or newer")
    if net.batch != 1:
        net.resize(batch=1)
    try:
        export_onnx(net, output, opset=opset, dynamic_batch=args.dynamic_batch)
    except OnnxExportError as e:
        raise CliError(f"{args.cfg}: {e}") from None
    except OSError as e:
        raise CliError(f"{output}: cannot write the ONNX model: {e.strerror or e}") from None
    heads = [layer for layer in net.layers if layer.type in ("yolo", "region")] or [net.layers[-1]]
    note(f"wrote {output}: ONNX opset {opset}, input 'input' [{'batch' if args.dynamic_batch else 1}, "
         f"{net.channels}, {net.height}, {net.width}], outputs " +
         ", ".join(f"layer {l.index} [{l.type}] {'x'.join(map(str, l.output_shape))}" for l in heads))
    return EXIT_OK
