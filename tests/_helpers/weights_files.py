"""Helpers of the weights-file tests: torch models, and pickles and archives built by hand.

The hand-built pickles use raw opcodes, so that hostile and malformed files
can be written without torch and without the objects they name.
"""

import bz2
import pickle
import struct
import zipfile
import zlib

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTO2 = b"\x80\x02"
MARK, TUPLE, REDUCE, BUILD, STOP = b"(", b"t", b"R", b"b", b"."
EMPTY_DICT, EMPTY_TUPLE, SETITEM, NONE, FALSE = b"}", b")", b"s", b"N", b"\x89"
BINPERSID, TUPLE2 = b"Q", b"\x86"


def glob(module, name):
    """GLOBAL opcode: push ``module.name``."""
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def text(value):
    """BINUNICODE opcode."""
    data = value.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def integer(value):
    """LONG1 opcode (any sign and size)."""
    data = value.to_bytes((value.bit_length() + 8) // 8 or 1, "little", signed=True)
    return b"\x8a" + bytes([len(data)]) + data


def tup(values):
    return MARK + b"".join(integer(v) for v in values) + TUPLE


def storage_id(key, numel, storage="FloatStorage", legacy=False, view=None):
    """A persistent id of a storage, then BINPERSID.

    ``view``: the legacy format's ``(view_key, offset, numel)`` of a storage view.
    """
    extra = b""
    if legacy:
        extra = NONE if view is None else (MARK + text(view[0]) + integer(view[1])
                                           + integer(view[2]) + TUPLE)
    return (MARK + text("storage") + glob("torch", storage) + text(key) + text("cpu")
            + integer(numel) + extra + TUPLE + BINPERSID)


def tensor(key, numel, offset, size, stride, storage="FloatStorage", legacy=False, view=None):
    """``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())``."""
    return (glob("torch._utils", "_rebuild_tensor_v2") + MARK
            + storage_id(key, numel, storage, legacy, view) + integer(offset) + tup(size)
            + tup(stride) + FALSE + glob("collections", "OrderedDict") + EMPTY_TUPLE + REDUCE
            + TUPLE + REDUCE)


def dict_pickle(entries):
    """A pickle of a dict whose values are opcode snippets."""
    body = b"".join(text(k) + v + SETITEM for k, v in entries.items())
    return PROTO2 + EMPTY_DICT + body + STOP


def call(module, name, *args):
    """A pickle snippet calling ``module.name(*args)`` (string arguments)."""
    return glob(module, name) + MARK + b"".join(text(a) for a in args) + TUPLE + REDUCE


def torch_zip(path, data_pkl, records=(), folder="archive", byteorder=b"little"):
    """An archive laid out like torch's zip format."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(f"{folder}/data.pkl", data_pkl)
        if byteorder is not None:
            archive.writestr(f"{folder}/byteorder", byteorder)
        for key, data in dict(records).items():
            archive.writestr(f"{folder}/data/{key}", data)
        archive.writestr(f"{folder}/version", b"3\n")
    return path


def compress(data, method):
    """``data`` compressed as a zip member of ``method`` holds it (deflate: raw, no zlib header)."""
    if method == zipfile.ZIP_DEFLATED:
        packer = zlib.compressobj(9, zlib.DEFLATED, -15)
        return packer.compress(data) + packer.flush()
    if method == zipfile.ZIP_BZIP2:
        return bz2.compress(data, 9)
    assert method == zipfile.ZIP_STORED
    return data


def raw_zip(path, members):
    """A zip archive written byte by byte, so that its headers can lie.

    ``members``: ``(name, method, raw, file_size, crc)``: ``raw`` is written as
    the member's data as it is (compressed with ``method`` or not), ``file_size``
    and ``crc`` are what both headers declare of it uncompressed.
    """
    body, central = bytearray(), bytearray()
    for name, method, raw, file_size, crc in members:
        encoded = name.encode()
        fields = struct.pack("<HHHHHIII", 20, 0, method, 0, 0x21, crc, len(raw), file_size)
        offset = len(body)
        body += b"PK\x03\x04" + fields + struct.pack("<HH", len(encoded), 0) + encoded + raw
        central += (b"PK\x01\x02" + struct.pack("<H", 20) + fields
                    + struct.pack("<HHHHHII", len(encoded), 0, 0, 0, 0, 0, offset) + encoded)
    end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(members), len(members),
                      len(central), len(body), 0)
    path.write_bytes(bytes(body + central + end))
    return path


def torch_legacy(path, main_pkl, storages=()):
    """A file laid out like torch's legacy format; ``storages``: ``(key, numel, bytes)``."""
    with open(path, "wb") as file:
        file.write(pickle.dumps(MAGIC_NUMBER, protocol=2))
        file.write(pickle.dumps(1001, protocol=2))
        file.write(pickle.dumps({"protocol_version": 1001, "little_endian": True}, protocol=2))
        file.write(main_pkl)
        file.write(pickle.dumps([k for k, _, _ in storages], protocol=2))
        for _, numel, data in storages:
            file.write(struct.pack("<q", numel) + data)
    return path


def seq2seq(torch):
    """A whole model in which LSTMs are parts: embedding, encoder, decoder, head."""
    torch.manual_seed(0)
    nn = torch.nn
    return nn.ModuleDict({
        "encoder": nn.ModuleDict({
            "embedding": nn.Embedding(50, 8),
            "rnn": nn.LSTM(8, 16, num_layers=2, batch_first=True),
        }),
        "decoder": nn.ModuleDict({"rnn": nn.LSTM(16, 24, proj_size=12, batch_first=True)}),
        "head": nn.Linear(12, 50),
    }).double().float()  # float32, with the float64 round trip nobody notices


def models(torch):
    """State dicts of the models of the tests, by name."""
    torch.manual_seed(1)
    nn = torch.nn
    bidir = nn.LSTM(6, 20, num_layers=2, bidirectional=True, proj_size=5)
    cells = nn.ModuleDict({"cell": nn.LSTMCell(7, 9), "plain": nn.LSTMCell(3, 4, bias=False)})
    return {
        "seq2seq": seq2seq(torch).state_dict(),
        "bidirectional_projected": bidir.state_dict(),
        "cells": cells.state_dict(),
    }


def views_state_dict(torch):
    """Tensors that are views: offsets, strides, storages shared, and several dtypes."""
    torch.manual_seed(2)
    lstm = torch.nn.LSTM(4, 6, num_layers=2)
    # As cuDNN's flatten_parameters: every parameter a view into one flat buffer.
    flat = torch.cat([p.detach().reshape(-1) for p in lstm.parameters()])
    out, offset = {}, 0
    for name, param in lstm.named_parameters():
        out["rnn." + name] = flat[offset:offset + param.numel()].view(param.shape)
        offset += param.numel()
    base = torch.arange(60, dtype=torch.float32)
    out["tied.a"] = out["tied.b"] = base[5:17].view(3, 4)
    out["transposed"] = base.view(6, 10).t()
    out["strided"] = base.view(6, 10)[1:5:2, ::3]
    out["expanded"] = base[:3].expand(4, 3)
    out["half"] = torch.randn(3, 5).half()
    out["bfloat16"] = torch.randn(2, 7).bfloat16()[:, 1:]
    out["double"] = torch.randn(4, dtype=torch.float64)
    out["long"] = torch.tensor([1, -2, 3 << 40])
    out["bool"] = torch.tensor([True, False, True])
    out["scalar"] = torch.tensor(2.5)
    out["empty"] = torch.zeros(0, 3)
    return out
