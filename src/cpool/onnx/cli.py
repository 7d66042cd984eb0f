"""``cpool export`` and ``cpool verify``: the exporter on the command line.

    cpool export MODEL.npz -o model.onnx [--opset N] [--input-shape C,H,W] [--input-dtype T]
    cpool verify MODEL.npz model.onnx

A saved model (cpool.load) carries no input shape. ``export`` takes it from
``--input-shape`` (one sample, without the batch axis, in the model's layout: H,W,C for
a channels_last model), or else infers it: the channel count from the first layer that
has ``in_channels`` (or ``in_features`` for a model that starts with Linear), the layout
from the first layer that has ``channels_last`` or ``in_channels``, and the smallest
square (cube, length) spatial size that the model accepts, which is the size a
Flatten -> Linear head was built for. A fully convolutional model accepts every size;
then ``--input-shape`` is required. ``--input-dtype`` (default float32) is the graph
input's dtype; an integer one (uint8 images) is kept where cpool keeps it (see
cpool.onnx.export).
"""
import sys

import numpy as np

MAX_INFERRED_SIZE = 256


def register(subparsers):
    p = subparsers.add_parser("export", help="export a saved model (.npz) to ONNX",
                              description="Export a model saved by cpool (Sequential.save) "
                                          "to an ONNX file, exactly (see cpool.onnx).")
    p.add_argument("model", metavar="MODEL.npz", help="the saved model")
    p.add_argument("-o", "--output", required=True, metavar="model.onnx",
                   help="the ONNX file to write")
    p.add_argument("--opset", type=int, default=None,
                   help="target opset (default: the highest supported and tested)")
    p.add_argument("--input-shape", default=None, metavar="C,H,W",
                   help="shape of one input sample, without the batch axis "
                        "(default: inferred, see `cpool export --help`)")
    p.add_argument("--input-dtype", default="float32", metavar="DTYPE",
                   help="dtype of the graph input, e.g. uint8 (default: float32)")
    p.add_argument("--static-batch", action="store_true",
                   help="fix the batch size to 1 instead of a symbolic batch axis")
    p.set_defaults(run=run_export)

    p = subparsers.add_parser("verify", help="check an ONNX file against the saved model",
                              description="Run onnx's checker and strict shape inference, then "
                                          "compare onnxruntime with cpool on generated inputs "
                                          "(batch 1, 2, 7 and all-negative values).")
    p.add_argument("model", metavar="MODEL.npz", help="the saved model")
    p.add_argument("onnx_file", metavar="model.onnx", help="the exported ONNX file")
    p.add_argument("--atol", type=float, default=1e-5)
    p.add_argument("--rtol", type=float, default=1e-4)
    p.set_defaults(run=run_verify)


def _parse_shape(text):
    try:
        shape = tuple(int(s) for s in text.replace("x", ",").split(",") if s.strip())
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise SystemExit(f"cpool export: --input-shape must be positive ints like 1,8,8; "
                         f"got {text!r}")
    return shape


def _parse_dtype(text):
    try:
        dtype = np.dtype(text)
    except TypeError:
        dtype = None
    if dtype is None or dtype.kind not in "iuf":
        raise SystemExit(f"cpool export: --input-dtype must be a float or integer dtype like "
                         f"float32 or uint8; got {text!r}")
    return dtype


def infer_input_shape(model):
    """One sample's shape (no batch axis) that `model` accepts; see the module docstring."""
    layers = list(model)
    nd = next((layer.nd for layer in layers if getattr(layer, "nd", None)), None)
    if nd is None and layers and hasattr(layers[0], "in_features"):
        return (int(layers[0].in_features),)
    channels = next((int(layer.in_channels) for layer in layers
                     if hasattr(layer, "in_channels")), 1)
    if nd is None:
        raise ValueError("cannot infer the input shape of this model; pass --input-shape")
    first = next((layer for layer in layers
                  if hasattr(layer, "channels_last") or hasattr(layer, "in_channels")), None)
    channels_last = bool(getattr(first, "channels_last", False))

    def sample(size):
        spatial = (size,) * nd
        return spatial + (channels,) if channels_last else (channels,) + spatial

    fits = []
    for size in range(1, MAX_INFERRED_SIZE + 1):
        try:
            model.output_shape((1,) + sample(size))
        except (ValueError, TypeError):
            continue
        fits.append(size)
        if len(fits) > 1 and fits[-1] != fits[-2] + 1:
            break
    if not fits:
        raise ValueError(f"no square input of 1..{MAX_INFERRED_SIZE} fits this model; pass "
                         f"--input-shape")
    if fits[-1] == MAX_INFERRED_SIZE:
        raise ValueError("this model accepts inputs of any size; pass --input-shape to choose "
                         "the one to export for")
    return sample(fits[0])


def run_export(args):
    from ..serialization import load
    from . import export

    model = load(args.model)
    if args.input_shape is not None:
        shape = _parse_shape(args.input_shape)
    else:
        try:
            shape = infer_input_shape(model)
        except ValueError as exc:
            print(f"cpool export: {exc}", file=sys.stderr)
            return 2
        print(f"input shape (inferred): (N, {', '.join(map(str, shape))})")
    example = np.zeros((1,) + shape, dtype=_parse_dtype(args.input_dtype))
    proto = export(model, example, args.output, opset=args.opset,
                   dynamic_batch=not args.static_batch)
    opset = proto.opset_import[0].version
    print(f"wrote {args.output} (opset {opset}, IR version {proto.ir_version}, "
          f"{len(proto.graph.node)} nodes)")
    return 0


def run_verify(args):
    from ..serialization import load
    from . import VerificationError, verify

    model = load(args.model)
    try:
        report = verify(model, args.onnx_file, rtol=args.rtol, atol=args.atol)
    except VerificationError as exc:
        print(f"cpool verify: FAILED: {exc}", file=sys.stderr)
        return 1
    for name, diff in report.items():
        print(f"{name}: max abs difference {diff:.3g}")
    print("verified: onnxruntime matches cpool")
    return 0
