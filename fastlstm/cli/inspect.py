"""``fastlstm inspect FILE``: the LSTMs and LSTMCells in a weights file.

Reads a PyTorch checkpoint (torch.save, zip or legacy format), a safetensors
file, an .npz archive or an ONNX model (with the onnx package) without
PyTorch and without running anything from the file, and lists every LSTM
and LSTMCell in it -- its prefix, the configuration inferred from its keys
and shapes, and the line of Python that builds it -- then every other tensor
with its dtype and shape.
"""

from __future__ import annotations

import argparse

from fastlstm.cli import CLIError, file_error

__all__ = ["DESCRIPTION", "EPILOG", "add_arguments", "run"]

DESCRIPTION = __doc__.split("\n", 1)[1].strip()
EPILOG = """\
Exit status: 0, or 1 if the file cannot be read (missing, corrupt, or a
pickle that asks for a global outside fastlstm's allow-list: see
docs/weights.md).

examples:
  fastlstm inspect model.pt
  fastlstm inspect model.safetensors --json
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``fastlstm inspect``."""
    parser.add_argument("file", metavar="FILE", help="the weights file to read")
    parser.add_argument("--json", action="store_true",
                        help="print the findings as a JSON object")


def run(args: argparse.Namespace) -> int:
    """Print the report; exit status 0, or :class:`CLIError` (status 1)."""
    from fastlstm.serialization import inspect

    try:
        found = inspect(args.file)
    except (OSError, ValueError) as exc:
        raise CLIError(file_error("inspect", args.file, exc), 1) from None
    print(found.to_json() if args.json else found)
    return 0
