"""``fastlstm convert IN OUT``: rewrite a weights file as safetensors or .npz.

Reads IN like 'fastlstm inspect' (a PyTorch checkpoint, safetensors, .npz or
ONNX, without PyTorch) and writes every tensor to OUT under the same keys, in the
format of OUT's extension (.safetensors or .npz) or --format.  bfloat16
tensors are written as float32; other dtypes are kept unless --dtype is given.
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
    except (OSError, ValueError) as exc:
        raise CLIError(file_error("convert", args.input, exc), 1) from None
    prefix = normalize_prefix(args.prefix)
    selected = OrderedDict((k[len(prefix):], v) for k, v in arrays.items()
                           if k.startswith(prefix) and len(k) > len(prefix))
    if not selected:
        raise CLIError(f"fastlstm convert: error: no keys start with {args.prefix!r} in "
                       f"{args.input}", 1)
    if args.dtype:
        selected = OrderedDict((k, v.astype(args.dtype) if v.dtype.kind == "f" else v)
                               for k, v in selected.items())
    try:
        save(selected, args.output, format=fmt)
    except (OSError, TypeError, ValueError) as exc:
        raise CLIError(file_error("convert", args.output, exc, output=True), 1) from None
    print(f"wrote {args.output} ({fmt}, {len(selected)} tensors) from {args.input} "
          f"({in_format})")
    return 0
