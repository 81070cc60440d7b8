"""torch.nn.utils.rnn's names, from :mod:`fastlstm.rnn` (the same objects)."""

from fastlstm.rnn import *  # noqa: F403  (its __all__: torch.nn.utils.rnn's names)
from fastlstm.rnn import __all__ as __all__
