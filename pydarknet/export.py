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
                        help="ONNX opset of an .onnx export (default 17, or 19 with [deformable] layers)")
    export.add_argument("--dynamic-batch", action="store_true",
                        help="an .onnx export takes any batch size (else the batch is 1)")
    export.add_argument("--decode", action="store_true",
                        help=".onnx: one output 'detections', the heads' boxes decoded in input pixels (see --layout)")
    export.add_argument("--layout", choices=("yolov5", "yolov8"), default="yolov5",
                        help="with --decode: yolov5 = [B, N, 5+C] (cx cy w h objectness class-probabilities), "
                             "yolov8 = [B, 4+C, N] (cx cy w h, objectness x class probability)")
    export.add_argument("--nms", action="store_true",
                        help="with --decode: ONNX NonMaxSuppression in the graph, output 'selected' [K, 3] "
                             "(batch, class, box) per class, as net.detect suppresses")
    export.add_argument("--iou", type=float, default=.45, help="--nms IoU threshold (default .45)")
    export.add_argument("--thresh", type=float, default=.25,
                        help="--nms confidence threshold, objectness x class probability (default .25)")
    export.add_argument("--max-per-class", type=int, default=100, help="--nms boxes kept per class (default 100)")
    export.add_argument("--half", action="store_true",
                        help=".onnx: float16 weights and arithmetic (float32 input and outputs)")
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
    from .onnx_export import OnnxExportError, export_onnx

    opset = args.opset
    if opset is not None and opset < 13:
        raise CliError(f"--opset {opset}: the export needs opset 13 or newer")
    if net.batch != 1:
        net.resize(batch=1)
    if (args.nms or args.layout != "yolov5") and not args.decode:
        raise CliError("--nms and --layout need --decode")
    for name in ("iou", "thresh"):
        if not 0 <= getattr(args, name) <= 1:
            raise CliError(f"--{name} {getattr(args, name)}: give a number from 0 to 1")
    if args.max_per_class < 1:
        raise CliError(f"--max-per-class {args.max_per_class}: give a positive number")
    nms = (args.iou, args.thresh, args.max_per_class) if args.nms else None
    try:
        export_onnx(net, output, opset=opset, dynamic_batch=args.dynamic_batch, decode=args.decode,
                    layout=args.layout, nms=nms, half=args.half)
    except OnnxExportError as e:
        raise CliError(f"{args.cfg}: {e}") from None
    except OSError as e:
        raise CliError(f"{output}: cannot write the ONNX model: {e.strerror or e}") from None
    heads = [layer for layer in net.layers if layer.type in ("yolo", "region")] or [net.layers[-1]]
    outputs = (f"'detections' ({args.layout} layout)" + (", 'selected' (NMS)" if nms else "") if args.decode else
               ", ".join(f"layer {l.index} [{l.type}] {'x'.join(map(str, l.output_shape))}" for l in heads))
    from .onnx_export import _onnx

    opset = _onnx()[0].load(output, load_external_data=False).opset_import[0].version
    note(f"wrote {output}: ONNX opset {opset}, input 'input' [{'batch' if args.dynamic_batch else 1}, "
         f"{net.channels}, {net.height}, {net.width}], outputs {outputs}")
    return EXIT_OK
