"""fastlstm: a fast CPU LSTM for inference, a drop-in for ``torch.nn.LSTM``.

>>> import fastlstm
>>> rnn = fastlstm.LSTM(10, 20, num_layers=2)

Parameters use torch's names and layout, so ``rnn.load_state_dict(torch_lstm.state_dict())``
or ``fastlstm.LSTM.from_torch(torch_lstm)`` gives the same numbers as PyTorch.
"""

__version__ = "0.1.0"

from fastlstm._errors import StateDictError, UnsafeFileError, WeightsFormatError  # noqa: E402
from fastlstm._info import show_config  # noqa: E402
from fastlstm._threads import get_num_threads, set_num_threads  # noqa: E402
from fastlstm.cell import LSTMCell  # noqa: E402
from fastlstm.lstm import LSTM  # noqa: E402
from fastlstm.rnn import (  # noqa: E402
    PackedSequence,
    pack_padded_sequence,
    pack_sequence,
    pad_packed_sequence,
    pad_sequence,
)
from fastlstm.serialization import inspect, load, save  # noqa: E402
from fastlstm.stream import Stream  # noqa: E402

__all__ = [
    "LSTM",
    "LSTMCell",
    "PackedSequence",
    "StateDictError",
    "Stream",
    "UnsafeFileError",
    "WeightsFormatError",
    "get_num_threads",
    "inspect",
    "load",
    "pack_padded_sequence",
    "pack_sequence",
    "pad_packed_sequence",
    "pad_sequence",
    "save",
    "set_num_threads",
    "show_config",
    "__version__",
]
