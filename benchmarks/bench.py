"""Time fastlstm against torch.nn.LSTM and ONNX Runtime: the same as ``fastlstm bench``.

    python benchmarks/bench.py [options]        # e.g. --full --json bench.json

The implementation is the package's (``fastlstm/_bench/command.py``); see
``benchmarks/README.md`` or ``python benchmarks/bench.py --help``.
"""

import sys

from fastlstm.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
