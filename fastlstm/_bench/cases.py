"""The benchmark's cases: the default and full grids, ``--shape`` parsing, FLOP counts."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace
from typing import Dict, Iterable, List, Sequence

#: The libraries whose peak memory the benchmark measures (`report.LIBS` adds OpenVINO, timed only).
LIBS = ("fastlstm", "torch", "onnxruntime")

__all__ = ["LIBS",
    "Case",
    "DEFAULT_GRID",
    "FULL_GRID",
    "FLOPS_FORMULA",
    "parse_shape",
    "select_cases",
    "slug",
]

FLOPS_FORMULA = (
    "FLOPs per forward = sum over layers and directions of "
    "2*4H*(I_layer + R)*N*L, plus 2*R*H*N*L when proj_size > 0, where R = proj_size "
    "if proj_size > 0 else H (the size of h), I_layer = I for the first layer and "
    "D*R after it (D = 2 if bidirectional else 1); matrix products only, the gate "
    "nonlinearities are not counted"
)


@dataclass(frozen=True)
class Case:
    """One benchmark shape.

    Parameters
    ----------
    name : str
        Name shown in the table and accepted by ``--cases`` (see :func:`slug`).
    N, L, I, H : int
        Batch size, sequence length, input size and hidden size.
    layers : int, default=1
        ``num_layers``.
    bidirectional : bool, default=False
    proj_size : int, default=0
    dtype : {"float32", "float64"}, default="float32"
    kind : {"forward", "carried", "cell", "stream", "packed"}, default="forward"
        What is timed: ``forward``, a forward from zero state; ``carried``, a
        forward given ``(h, c)`` (a streaming call); ``cell``, an ``LSTMCell``
        step given ``(h, c)`` (L must be 1); ``stream``, a ``fastlstm.Stream``
        step of that cell against torch's ``LSTMCell`` step; ``packed``, a forward of a
        ``PackedSequence`` of N sequences with the lengths of
        :meth:`lengths`, in shuffled order.
    """

    name: str
    N: int
    L: int
    I: int  # noqa: E741  (torch's name for the input size)
    H: int
    layers: int = 1
    bidirectional: bool = False
    proj_size: int = 0
    dtype: str = "float32"
    kind: str = "forward"

    def lengths(self) -> List[int]:
        """Sequence lengths of a ``packed`` case: evenly spread from 44% to 100%
        of L, longest first (mean 72% of L); L for every other case."""
        if self.kind != "packed" or self.N == 1:
            return [self.L] * self.N
        return [max(1, round(self.L * (1 - 0.56 * n / (self.N - 1)))) for n in range(self.N)]

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def flops(self) -> int:
        """Floating-point operations of one forward (see :data:`FLOPS_FORMULA`)."""
        h, r, d = self.H, self.proj_size or self.H, self.directions
        steps = sum(self.lengths())
        total = 0
        for layer in range(self.layers):
            i_layer = self.I if layer == 0 else d * r
            per_dir = 2 * 4 * h * (i_layer + r) * steps
            if self.proj_size:
                per_dir += 2 * r * h * steps
            total += d * per_dir
        return total

    @property
    def shape(self) -> str:
        """``N,L,I,H``, the start of a ``--shape`` argument."""
        return f"{self.N},{self.L},{self.I},{self.H}"

    @property
    def extra(self) -> str:
        """The non-default options, briefly (``"2 layers bidir"``, ``"proj 128"``)."""
        parts = []
        if self.layers > 1:
            parts.append(f"{self.layers} layers")
        if self.bidirectional:
            parts.append("bidir")
        if self.proj_size:
            parts.append(f"proj {self.proj_size}")
        if self.dtype != "float32":
            parts.append(self.dtype)
        parts.append(_KIND_NOTES[self.kind])
        return " ".join(p for p in parts if p)

    def torch_kwargs(self) -> Dict[str, object]:
        """Constructor arguments of ``torch.nn.LSTM`` (without the dtype)."""
        return {"input_size": self.I, "hidden_size": self.H, "num_layers": self.layers,
                "bidirectional": self.bidirectional, "proj_size": self.proj_size}

    def as_dict(self) -> Dict[str, object]:
        return asdict(self)


_KIND_NOTES = {"forward": "", "carried": "carried (h, c)", "cell": "LSTMCell",
               "stream": "Stream vs LSTMCell", "packed": "packed, lengths 44-100%"}
KINDS = tuple(_KIND_NOTES)


DEFAULT_GRID: List[Case] = [
    Case("streaming step", 1, 1, 256, 256),
    Case("single sequence", 1, 100, 256, 256),
    Case("long sequence", 1, 512, 512, 512),
    Case("small batch", 16, 100, 256, 256),
    Case("batch", 64, 100, 512, 512),
    Case("large", 64, 200, 1024, 1024),
    Case("bidirectional stack", 16, 100, 256, 256, layers=2, bidirectional=True),
    Case("speech encoder", 1, 100, 80, 256, layers=3, bidirectional=True),
    Case("many short", 256, 50, 128, 128),
    Case("projection", 16, 100, 256, 512, proj_size=128),
    Case("double", 16, 100, 256, 256, dtype="float64"),
    Case("one step carried", 1, 1, 256, 256, kind="carried"),
    Case("cell step", 1, 1, 256, 256, kind="cell"),
    Case("cell step 128", 1, 1, 128, 128, kind="cell"),
    Case("stream step", 1, 1, 256, 256, kind="stream"),
    Case("stream step 128", 1, 1, 128, 128, kind="stream"),
    Case("packed batch", 16, 100, 256, 256, kind="packed"),
]

FULL_GRID: List[Case] = DEFAULT_GRID + [
    Case("streaming batch", 16, 1, 256, 256),
    Case("streaming large", 1, 1, 1024, 1024),
    Case("tiny hidden", 64, 100, 32, 32),
    Case("hidden 128", 16, 100, 128, 128),
    Case("hidden 1024 small batch", 16, 100, 1024, 1024),
    Case("very long sequence", 1, 2000, 256, 256),
    Case("batch 256", 256, 100, 512, 512),
    Case("deep stack", 16, 100, 256, 256, layers=4),
    Case("bidirectional large", 64, 100, 512, 512, layers=2, bidirectional=True),
    Case("projection large", 64, 100, 512, 1024, proj_size=256),
    Case("projection bidir", 16, 100, 256, 512, layers=2, bidirectional=True, proj_size=128),
    Case("double streaming", 1, 1, 256, 256, dtype="float64"),
    Case("double batch", 64, 100, 512, 512, dtype="float64"),
    Case("double bidirectional", 16, 100, 256, 256, layers=2, bidirectional=True,
         dtype="float64"),
    Case("cell batch", 16, 1, 256, 256, kind="cell"),
    Case("chunk carried", 1, 10, 256, 256, kind="carried"),
    Case("packed bidirectional", 16, 100, 256, 256, layers=2, bidirectional=True,
         kind="packed"),
]


def slug(name: str) -> str:
    """Normalized case name: lower case, words joined by ``-`` (``"small-batch"``)."""
    return "-".join(re.split(r"[\s_\-]+", name.strip().lower()))


def select_cases(names: Iterable[str], grid: Sequence[Case] = FULL_GRID) -> List[Case]:
    """The cases of ``grid`` named in ``names``, in the order given.

    Names match with any case and with spaces, ``-`` or ``_`` between words.

    Raises
    ------
    ValueError
        For a name that is not in the grid.
    """
    by_slug = {slug(case.name): case for case in grid}
    chosen = []
    for name in names:
        if not name.strip():
            continue
        case = by_slug.get(slug(name))
        if case is None:
            raise ValueError(f"unknown case {name.strip()!r} (fastlstm bench --list shows them)")
        if case not in chosen:
            chosen.append(case)
    return chosen


_BOOL = {"1": True, "yes": True, "y": True, "true": True, "bi": True, "bidir": True,
         "bidirectional": True, "0": False, "no": False, "n": False, "false": False,
         "uni": False}
_DTYPES = {"float32": "float32", "f32": "float32", "fp32": "float32", "single": "float32",
           "float64": "float64", "f64": "float64", "fp64": "float64", "double": "float64"}
SHAPE_SYNTAX = "N,L,I,H[,layers[,bidir[,proj[,dtype]]]]"


def parse_shape(text: str) -> Case:
    """Parse a ``--shape`` argument ``N,L,I,H[,layers[,bidir[,proj[,dtype]]]]``.

    The case is named ``shape`` and the argument (without spaces).  ``bidir``
    is one of 0/1, yes/no, true/false; ``dtype`` float32 or float64 (or
    f32/f64, single/double).

    Examples
    --------
    >>> case = parse_shape("16,100,256,256,2,yes")
    >>> case.name, case.extra
    ('shape 16,100,256,256,2,yes', '2 layers bidir')

    Raises
    ------
    ValueError
        With a one-line message, for a malformed or impossible shape.
    """
    fields = [f.strip() for f in text.split(",")]
    if not 4 <= len(fields) <= 8:
        raise ValueError(f"invalid shape {text!r}: expected {SHAPE_SYNTAX}")
    names = ("N", "L", "I", "H", "layers")
    values: Dict[str, int] = {}
    for name, field in zip(names, fields[:5]):
        try:
            values[name] = int(field)
        except ValueError:
            raise ValueError(f"invalid shape {text!r}: {name} must be an integer, "
                             f"got {field!r}") from None
        if values[name] < 1:
            raise ValueError(f"invalid shape {text!r}: {name} must be at least 1")
    bidir = False
    if len(fields) > 5:
        if fields[5].lower() not in _BOOL:
            raise ValueError(f"invalid shape {text!r}: bidir must be 0/1 or yes/no, "
                             f"got {fields[5]!r}")
        bidir = _BOOL[fields[5].lower()]
    proj = 0
    if len(fields) > 6:
        try:
            proj = int(fields[6])
        except ValueError:
            raise ValueError(f"invalid shape {text!r}: proj must be an integer, "
                             f"got {fields[6]!r}") from None
        if not 0 <= proj < values["H"]:
            raise ValueError(f"invalid shape {text!r}: proj must be in [0, H)")
    dtype = "float32"
    if len(fields) > 7:
        if fields[7].lower() not in _DTYPES:
            raise ValueError(f"invalid shape {text!r}: dtype must be float32 or float64, "
                             f"got {fields[7]!r}")
        dtype = _DTYPES[fields[7].lower()]
    case = Case("", values["N"], values["L"], values["I"], values["H"],
                layers=values.get("layers", 1), bidirectional=bidir, proj_size=proj,
                dtype=dtype)
    return replace(case, name="shape " + ",".join(fields))
