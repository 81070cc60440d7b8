"""fastlstm: a fast CPU LSTM for inference, a drop-in for ``torch.nn.LSTM``.

>>> import fastlstm
>>> rnn = fastlstm.LSTM(10, 20, num_layers=2)

Parameters use torch's names and layout, so ``rnn.load_state_dict(torch_lstm.state_dict())``
or ``fastlstm.LSTM.from_torch(torch_lstm)`` gives the same numbers as PyTorch.
"""

from fastlstm import utils as utils  # nn.utils.rnn, as torch.nn has it
from fastlstm._errors import StateDictError, UnsafeFileError, WeightsFormatError
from fastlstm._info import show_config
from fastlstm._threads import (
    get_blas_sharing,
    get_dynamic_threads,
    get_num_threads,
    set_blas_sharing,
    set_dynamic_threads,
    set_num_threads,
)
from fastlstm._version import __version__
from fastlstm.accelerate import accelerate
from fastlstm.batching import forward_many
from fastlstm.cell import LSTMCell
from fastlstm.lstm import LSTM
from fastlstm.quantization import quantize
from fastlstm.rnn import (
    PackedSequence,
    pack_padded_sequence,
    pack_sequence,
    pad_packed_sequence,
    pad_sequence,
)
from fastlstm.serialization import inspect, load, save
from fastlstm.stream import Stream

__all__ = [
    "LSTM",
    "LSTMCell",
    "PackedSequence",
    "StateDictError",
    "Stream",
    "UnsafeFileError",
    "WeightsFormatError",
    "accelerate",
    "forward_many",
    "get_blas_sharing",
    "get_dynamic_threads",
    "get_num_threads",
    "inspect",
    "load",
    "pack_padded_sequence",
    "pack_sequence",
    "pad_packed_sequence",
    "pad_sequence",
    "quantize",
    "save",
    "set_blas_sharing",
    "set_dynamic_threads",
    "set_num_threads",
    "show_config",
    "__version__",
]
