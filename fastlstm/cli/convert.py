"""``fastlstm convert IN OUT``: rewrite a weights file as safetensors or .npz.

Reads IN like 'fastlstm inspect' (a PyTorch checkpoint, safetensors, .npz or
ONNX, without PyTorch) and writes every tensor to OUT under the same keys, in the
format of OUT's extension (.safetensors or .npz) or --format.  From safetensors
to safetensors the header's metadata and the BF16 tensors are kept (a bfloat16
module's file stays one: it converts to safetensors only); other bfloat16 tensors
are written as float32.  Other dtypes are kept unless --dtype is given, which
casts the floating-point tensors but an int8 module's scales (float32 by
definition).
"""

from __future__ import annotations

import argparse
import os
from collections import OrderedDict

from fastlstm.cli import CLIError, file_error

__all__ = ["DESCRIPTION", "EPILOG", "add_arguments", "run"]

DESCRIPTION = __doc__.split("\n", 1)[1].strip()
EPILOG = """\
Exit status: 0, 1 if IN cannot be read or OUT cannot be written, 2 on a
usage error.

examples:
  fastlstm convert model.pt model.safetensors
  fastlstm convert model.pt encoder.npz --prefix encoder.rnn.
  fastlstm convert model.pt model-fp16.safetensors --dtype float16
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``fastlstm convert``."""
    parser.add_argument("input", metavar="IN", help="the weights file to read")
    parser.add_argument("output", metavar="OUT", help="the file to write")
    parser.add_argument("--format", choices=("safetensors", "npz"),
                        help="format of OUT (default: from its extension)")
    parser.add_argument("--prefix", metavar="PREFIX", default="",
                        help="keep only the keys that start with PREFIX, without it (e.g. "
                             "'encoder.rnn.' to write one LSTM's weights under torch's names)")
    parser.add_argument("--dtype", choices=("float16", "float32", "float64"),
                        help="cast floating-point tensors to this dtype")


def run(args: argparse.Namespace) -> int:
    """Convert; exit status 0, or :class:`CLIError`."""
    from fastlstm.io.files import file_bf16_keys, file_metadata
    from fastlstm.io.state_dict import normalize_prefix
    from fastlstm.serialization import detect_format, load, save

    fmt = args.format
    if fmt is None:
        ext = os.path.splitext(args.output)[1].lower()
        fmt = {".safetensors": "safetensors", ".npz": "npz"}.get(ext)
        if fmt is None:
            raise CLIError(f"fastlstm convert: error: cannot tell the format of {args.output} "
                           "from its extension: use .safetensors or .npz, or --format", 2)
    try:
        in_format = detect_format(args.input)
        arrays = load(args.input)
        metadata = file_metadata(args.input)  # {} and [] unless IN is safetensors
        bf16_keys = file_bf16_keys(args.input)
    except (OSError, ValueError) as exc:
        raise CLIError(file_error("convert", args.input, exc), 1) from None
    prefix = normalize_prefix(args.prefix)
    selected = OrderedDict((k[len(prefix):], v) for k, v in arrays.items()
                           if k.startswith(prefix) and len(k) > len(prefix))
    if not selected:
        raise CLIError(f"fastlstm convert: error: no keys start with {args.prefix!r} in "
                       f"{args.input}", 1)
    storage = metadata.get("fastlstm.weight_dtype")
    if storage == "bfloat16" and fmt != "safetensors":
        # .npz has no header for the storage type: the module read back would be float32
        raise CLIError(f"fastlstm convert: error: {args.input} holds a bfloat16 module's "
                       "weights, which convert to safetensors only", 2)
    if args.dtype:
        # An int8 pair's scales stay float32: the int8 values mean nothing without them.
        scales = {k for k in selected if k.endswith("_scale") and k[:-6] + "_int8" in selected}
        selected = OrderedDict(
            (k, v.astype(args.dtype) if v.dtype.kind == "f" and k not in scales else v)
            for k, v in selected.items())
    # To safetensors: the header's metadata and the BF16 tensors as they were (unless cast).
    bf16 = [] if args.dtype or fmt != "safetensors" else [
        k[len(prefix):] for k in bf16_keys if k.startswith(prefix) and k[len(prefix):] in selected]
    try:
        save(selected, args.output, format=fmt, metadata=metadata or None, bfloat16=bf16)
    except (OSError, TypeError, ValueError) as exc:
        raise CLIError(file_error("convert", args.output, exc, output=True), 1) from None
    print(f"wrote {args.output} ({fmt}, {len(selected)} tensors) from {args.input} "
          f"({in_format})")
    return 0
