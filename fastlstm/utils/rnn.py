"""torch.nn.utils.rnn's names, from :mod:`fastlstm.rnn` (the same objects)."""

from fastlstm.rnn import (
    PackedSequence,
    from_torch_packed,
    invert_permutation,
    is_packed_sequence,
    pack_padded_sequence,
    pack_sequence,
    pad_packed_sequence,
    pad_sequence,
    to_torch_packed,
    unpack_sequence,
    unpad_sequence,
)

__all__ = [
    "PackedSequence",
    "from_torch_packed",
    "invert_permutation",
    "is_packed_sequence",
    "pack_padded_sequence",
    "pack_sequence",
    "pad_packed_sequence",
    "pad_sequence",
    "to_torch_packed",
    "unpack_sequence",
    "unpad_sequence",
]
