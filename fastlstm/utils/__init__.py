"""``fastlstm.utils.rnn`` is :mod:`fastlstm.rnn`, where ``torch.nn.utils.rnn`` is, so that
code written against ``torch.nn`` runs after ``import fastlstm as nn``
(``nn.utils.rnn.pack_padded_sequence(...)``, ``from fastlstm.utils.rnn import ...``)."""

import sys

from fastlstm import rnn

sys.modules[__name__ + ".rnn"] = rnn  # importable by that name, not only an attribute

__all__ = ["rnn"]
