"""``python -m fastlstm``: the same as the ``fastlstm`` command."""

import sys

from fastlstm.cli import main

if __name__ == "__main__":
    sys.exit(main())
