"""``fastlstm.utils.rnn`` holds :mod:`fastlstm.rnn`'s functions where
``torch.nn.utils.rnn`` holds torch's, so that code written against ``torch.nn`` runs after
``import fastlstm as nn`` (``nn.utils.rnn.pack_padded_sequence(...)``,
``from fastlstm.utils.rnn import ...``)."""

from fastlstm.utils import rnn

__all__ = ["rnn"]
