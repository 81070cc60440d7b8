"""``fastlstm info``: what this build of fastlstm runs with.

Prints what fastlstm.show_config() prints: the version, the SIMD level the
kernels use and the levels this CPU has, whether the build has OpenMP and how
many threads the kernels use, scipy's BLAS and its threads, and the numpy,
scipy and Python versions.
"""

from __future__ import annotations

import argparse
import json

__all__ = ["DESCRIPTION", "add_arguments", "run"]

DESCRIPTION = __doc__.split("\n", 1)[1].strip()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``fastlstm info``."""
    parser.add_argument("--json", action="store_true",
                        help="print the same information as a JSON object")


def run(args: argparse.Namespace) -> int:
    """Print the configuration; exit status 0."""
    from fastlstm import show_config

    if args.json:
        print(json.dumps(show_config(as_dict=True), indent=2))
    else:
        show_config()
    return 0
