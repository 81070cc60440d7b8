"""Weights files: read PyTorch checkpoints, safetensors and ``.npz`` without torch; write them.

``load`` reads the files people have -- ``torch.save(model.state_dict(), path)``
in torch's zip format (the default since torch 1.6) or its legacy format,
safetensors, and NumPy's ``.npz`` -- detecting the format from the content.
It never imports torch and never runs anything from the file: PyTorch's
pickles go through a restricted unpickler (see ``docs/weights.md``, "Security
model").  ``save`` writes safetensors and ``.npz``; ``inspect`` lists the
LSTMs and LSTMCells in a file with the configuration that builds them.

The readers and writers live in :mod:`fastlstm.io`, which knows nothing of the
module classes; this module adds ``inspect``, which builds them.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Iterator, List, Mapping, Tuple, Union

import numpy as np

from fastlstm._errors import StateDictError, UnsafeFileError, WeightsFormatError
from fastlstm.cell import LSTMCell
from fastlstm.io.files import (
    FORMATS,
    OpenedSource,
    Source,
    arrays_of,
    detect_format,
    load,
    read_opened,
    save,
)
from fastlstm.io.state_dict import FoundModule, find_modules
from fastlstm.lstm import LSTM

__all__ = [
    "FORMATS",
    "FoundModule",
    "Inspection",
    "StateDictError",
    "UnsafeFileError",
    "WeightsFormatError",
    "detect_format",
    "inspect",
    "load",
    "save",
]

#: The module classes ``inspect`` looks for, by the kind it reports.
_CLASSES = {"LSTM": LSTM, "LSTMCell": LSTMCell}


class Inspection:
    """What :func:`fastlstm.inspect` found in a weights file.

    Attributes
    ----------
    path : str
        The file (``"<mapping>"`` for a state dict in memory).
    format : str
        One of :data:`FORMATS` (``"mapping"`` for a state dict in memory).
    modules : list of FoundModule
        Every LSTM and LSTMCell, with ``kind``, ``prefix``, ``config``,
        ``dtype``, ``keys`` and ``num_parameters``.
    tensors : dict of str to (shape, dtype name)
        Every other tensor.
    notes : list of str
        Groups of keys named like an LSTM's that do not make one, and why;
        for an ONNX model, also which LSTM nodes make which module.

    Examples
    --------
    >>> import numpy as np
    >>> import fastlstm
    >>> state_dict = {"head.weight": np.zeros((2, 8), np.float32)}
    >>> for key, value in fastlstm.LSTM(4, 8, num_layers=2, rng=0).state_dict().items():
    ...     state_dict["encoder." + key] = value
    >>> found = fastlstm.inspect(state_dict)
    >>> found
    <Inspection of '<mapping>': 1 module(s), 1 other tensor(s)>
    >>> print(found)
    <mapping>: mapping, 9 tensors
    LSTM at 'encoder.' (8 tensors, 1,024 float32 parameters)
        input_size=4, hidden_size=8, num_layers=2, bias=True, bidirectional=False, proj_size=0
        fastlstm.LSTM.from_state_dict(state_dict, prefix='encoder.')
    other tensors (1):
        head.weight  float32  (2, 8)
    """

    def __init__(self, path: str, format: str, modules: List[FoundModule],
                 tensors: Dict[str, Tuple[Tuple[int, ...], str]], notes: List[str]) -> None:
        self.path = path
        self.format = format
        self.modules = modules
        self.tensors = tensors
        self.notes = notes

    def __iter__(self) -> Iterator[FoundModule]:
        return iter(self.modules)

    def __len__(self) -> int:
        return len(self.modules)

    def __repr__(self) -> str:
        return (f"<Inspection of {self.path!r}: {len(self.modules)} module(s), "
                f"{len(self.tensors)} other tensor(s)>")

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-serialisable dict of everything found.

        Returns
        -------
        dict
            Keys ``path``, ``format``, ``modules`` (each a dict of ``kind``,
            ``prefix``, ``config``, ``dtype``, ``keys``, ``num_parameters``),
            ``tensors`` (name to ``{"shape": [...], "dtype": ...}``) and ``notes``.

        Examples
        --------
        >>> import fastlstm
        >>> found = fastlstm.inspect(fastlstm.LSTMCell(4, 8, rng=0).state_dict())
        >>> module = found.to_dict()["modules"][0]
        >>> module["kind"], module["config"], module["num_parameters"]
        ('LSTMCell', {'input_size': 4, 'hidden_size': 8, 'bias': True}, 448)
        """
        return {
            "path": self.path,
            "format": self.format,
            "modules": [m._asdict() for m in self.modules],
            "tensors": {k: {"shape": list(s), "dtype": d} for k, (s, d) in self.tensors.items()},
            "notes": list(self.notes),
        }

    def to_json(self) -> str:
        """:meth:`to_dict` as indented JSON (what ``fastlstm inspect --json FILE`` prints).

        Examples
        --------
        >>> import json
        >>> import fastlstm
        >>> found = fastlstm.inspect(fastlstm.LSTM(4, 8, rng=0).state_dict())
        >>> json.loads(found.to_json())["modules"][0]["keys"]
        ['weight_ih_l0', 'weight_hh_l0', 'bias_ih_l0', 'bias_hh_l0']
        """
        return json.dumps(self.to_dict(), indent=2)

    def __str__(self) -> str:
        description = FORMATS.get(self.format, self.format)
        n_tensors = len(self.tensors) + sum(len(m.keys) for m in self.modules)
        lines = [f"{_escaped(str(self.path))}: {description}, {n_tensors} tensors"]
        if not self.modules:
            lines.append("no LSTM or LSTMCell found")
        source = repr(self.path) if self.format != "mapping" else "state_dict"
        for m in self.modules:
            config = ", ".join(f"{k}={v}" for k, v in m.config.items())
            where = repr(m.prefix) if m.prefix else "(top level)"
            lines.append(f"{m.kind} at {where} ({len(m.keys)} tensors, "
                         f"{m.num_parameters:,} {_escaped(m.dtype)} parameters)")
            lines.append(f"    {config}")
            prefix_arg = f", prefix={m.prefix!r}" if m.prefix else ""
            lines.append(f"    fastlstm.{m.kind}.from_state_dict({source}{prefix_arg})")
        if self.tensors:
            lines.append(f"other tensors ({len(self.tensors)}):")
            names = {key: _name(key) for key in self.tensors}
            width = min(max(len(name) for name in names.values()), 48)
            for key, (shape, dtype) in self.tensors.items():
                lines.append(f"    {names[key]:<{width}}  {_escaped(dtype):<8} {shape}")
        for note in self.notes:
            lines.append(f"note: {_escaped(note)}")
        return "\n".join(lines)


def inspect(source: Union[Source, Mapping[str, Any]]) -> Inspection:
    """List the LSTMs and LSTMCells in a weights file, with their prefixes and configurations.

    Parameters
    ----------
    source : path, binary file or mapping of str to array-like
        Anything :func:`load` reads, or a state dict in memory.

    Returns
    -------
    Inspection
        ``str()`` of it is the report ``fastlstm inspect FILE`` prints, with
        the line that builds each module; ``.modules`` lists them (kind,
        prefix, config, dtype, keys), ``.tensors`` the other tensors,
        ``.notes`` groups of LSTM-like keys that do not make a module (a GRU,
        a missing key, ...).

    Raises
    ------
    fastlstm.UnsafeFileError, fastlstm.WeightsFormatError, OSError
        As :func:`load`.

    Examples
    --------
    >>> import numpy as np, fastlstm
    >>> weights = fastlstm.LSTM(4, 8, rng=0).state_dict()
    >>> state_dict = {"head.weight": np.zeros((2, 8))}
    >>> state_dict.update({"rnn." + k: v for k, v in weights.items()})
    >>> found = fastlstm.inspect(state_dict)
    >>> [(m.kind, m.prefix, m.config["hidden_size"]) for m in found.modules]
    [('LSTM', 'rnn.', 8)]
    >>> list(found.tensors)
    ['head.weight']
    """
    arrays: Mapping[str, np.ndarray]
    file_notes: List[str] = []  # the reader's (ONNX: which nodes make which module)
    if isinstance(source, Mapping):
        path, fmt = "<mapping>", "mapping"
        arrays = arrays_of(source)
    else:
        if hasattr(source, "read"):
            path = str(getattr(source, "name", "<file>"))
        else:
            path = os.fsdecode(source)
        with OpenedSource(source) as opened:
            fmt, arrays = read_opened(opened, file_notes)
    modules, notes = find_modules(arrays, _CLASSES)
    used = {key for m in modules for key in m.keys}
    tensors = {k: (tuple(v.shape), str(v.dtype)) for k, v in arrays.items() if k not in used}
    return Inspection(path, fmt, modules, tensors, file_notes + notes)


def _name(key: str) -> str:
    """A key for the text report: as it is, or as ``repr`` writes it if it holds
    characters a terminal would act on (escape sequences, newlines)."""
    return key if key.isprintable() else repr(key)


def _escaped(text: str) -> str:
    """``text`` with each non-printable character escaped as ``repr`` writes it
    (``\\x1b``, ``\\n``): key names in notes cannot fake lines of the report."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
