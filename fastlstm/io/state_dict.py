"""Finding LSTMs in a state dict: configurations from key names and shapes.

A module's parameters sit under a *prefix* (``"encoder.rnn."``): the part of
each key up to and including its last dot.  The configuration of an
``LSTM`` comes from ``weight_ih_l0`` (``4*hidden_size x input_size``), the
layer indices, ``_reverse`` keys, ``weight_hr_l0`` and the presence of biases;
then every key of the group is checked against the shapes of the module that
configuration makes, and every problem is reported at once.

The keys and shapes come from an untrusted file, so nothing is built before
they are bounded: every layer up to the largest ``_l{k}`` must have keys, and
a module that would need far more elements than the weights hold is refused
from its expected shapes alone.
"""

from __future__ import annotations

import contextvars
import math
import operator
import re
from collections import OrderedDict
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Dict,
    List,
    Mapping,
    NamedTuple,
    Optional,
    Tuple,
    Type,
)

import numpy as np

from fastlstm._errors import StateDictError

if TYPE_CHECKING:
    from fastlstm._module import _Module

__all__ = ["INT8_SUFFIX", "SCALE_SUFFIX", "Inferred", "build_module", "find_modules",
           "infer_config", "int8_per_channel", "int8_split", "int8_values", "normalize_prefix"]

LSTM_KEY = re.compile(r"^(weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)_l(\d+)(_reverse)?$",
                      re.ASCII)
CELL_KEY = re.compile(r"^(weight_ih|weight_hh|bias_ih|bias_hh)$")

#: What a saved int8 weight's keys add to its name: its int8 values, and its scales.
INT8_SUFFIX, SCALE_SUFFIX = "_int8", "_scale"


def int8_split(params: Mapping[str, np.ndarray]) -> Tuple[Dict[str, np.ndarray],
                                                          Dict[str, Tuple[np.ndarray, np.ndarray]]]:
    """``params`` with each saved int8 weight (``name_int8`` and ``name_scale``) made the
    float32 values it stands for under ``name``, and those weights' ``(q, scale)``."""
    floats: Dict[str, np.ndarray] = {}
    given: Dict[str, Tuple[np.ndarray, np.ndarray]] = {}
    for key, value in params.items():
        if key.endswith(INT8_SUFFIX) and key[:-len(INT8_SUFFIX)] + SCALE_SUFFIX in params:
            name = key[:-len(INT8_SUFFIX)]
            q = np.asarray(value)
            scale = np.asarray(params[name + SCALE_SUFFIX])
            if (q.dtype != np.int8 or q.ndim != 2 or scale.dtype != np.float32
                    or scale.shape not in ((q.shape[0],), (1,))):
                raise StateDictError(f"{name}: int8 weights need an int8 matrix and float32 "
                                     f"scales of shape ({q.shape[0] if q.ndim else '?'},) "
                                     f"or (1,), got {q.dtype} {q.shape} and {scale.dtype} "
                                     f"{scale.shape}")
            if not np.isfinite(scale).all() or (scale < 0).any():
                raise StateDictError(f"{name}: int8 scales must be finite and not negative")
            given[name] = (np.ascontiguousarray(q), np.ascontiguousarray(scale))
            floats[name] = int8_values(q, scale)
        elif not (key.endswith(SCALE_SUFFIX)
                  and key[:-len(SCALE_SUFFIX)] + INT8_SUFFIX in params):
            floats[key] = value
    return floats, given


def int8_values(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """int8 weights as the float32 values they stand for: q * scale (per row)."""
    return (q.astype(np.float32) * np.asarray(scale, np.float32)[:, None]).astype(np.float32)


def int8_per_channel(given: Mapping[str, Tuple[np.ndarray, np.ndarray]]) -> bool:
    """Whether saved int8 weights ``{name: (q, scale)}`` have one scale per row: told by
    the matrices of more than one row (an LSTM's ``weight_ih`` always is one), as a
    one-row matrix (``weight_hr`` of ``proj_size=1``) has one scale either way."""
    return any(s.size > 1 for q, s in given.values() if q.shape[0] > 1) or not any(
        q.shape[0] > 1 for q, _ in given.values())


#: Layer indices with more digits than this are read as this many layers and
#: more (``int()`` of a 5000-digit string is slow, or refused by Python).
_MAX_LAYER_DIGITS = 18

#: How many names an error message lists before it says how many more there are.
_MAX_LISTED = 20

#: A module is built (to check its keys and shapes in full) only if it needs at
#: most this many elements more than the weights hold; beyond, the keys and
#: shapes are checked without building it.
_SLACK = 1 << 16

#: Set while a module is built only to receive loaded weights: its parameters
#: start as zeros instead of random draws (read by ``_Module._init_module``).
SKIP_INIT: "contextvars.ContextVar[bool]" = contextvars.ContextVar("fastlstm_skip_init",
                                                                  default=False)


class Inferred(NamedTuple):
    """What a state dict says of a module: constructor arguments and its keys."""

    config: Dict[str, Any]
    keys: List[str]  # names (under the prefix) that belong to this kind of module


def normalize_prefix(prefix: str) -> str:
    """``"encoder.rnn"`` and ``"encoder.rnn."`` both become ``"encoder.rnn."``."""
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a string, got {type(prefix).__name__}")
    return prefix + "." if prefix and not prefix.endswith(".") else prefix


def split_key(key: str) -> Tuple[str, str]:
    """``"encoder.rnn.weight_ih_l0"`` -> ``("encoder.rnn.", "weight_ih_l0")``."""
    cut = key.rfind(".") + 1
    return key[:cut], key[cut:]


def group_of(arrays: Mapping[str, np.ndarray], prefix: str) -> Dict[str, np.ndarray]:
    """The entries directly under ``prefix``, keyed by their last name component."""
    out = {}
    for key, value in arrays.items():
        if key.startswith(prefix) and "." not in key[len(prefix):]:
            out[key[len(prefix):]] = value
    return out


def groups(arrays: Mapping[str, np.ndarray]) -> Dict[str, Dict[str, np.ndarray]]:
    """Every prefix of ``arrays`` with :func:`group_of` it, in one pass over the keys."""
    out: Dict[str, Dict[str, np.ndarray]] = {}
    for key, value in arrays.items():
        prefix, name = split_key(key)
        out.setdefault(prefix, {})[name] = value
    return out


def _listed(names: List[str]) -> str:
    """``names`` joined with commas, at most :data:`_MAX_LISTED` of them."""
    if len(names) <= _MAX_LISTED:
        return ", ".join(names)
    return (", ".join(names[:_MAX_LISTED])
            + f", ... ({len(names) - _MAX_LISTED} more)")


def _shape(params: Mapping[str, np.ndarray], name: str, prefix: str, ndim: int) -> Tuple[int, ...]:
    shape = tuple(np.shape(params[name]))
    if len(shape) != ndim:
        raise StateDictError(f"'{prefix}{name}' has shape {shape}; a {ndim}-D array is expected")
    return shape


def _gate_rows(rows: int, name: str, prefix: str, hh: Optional[Tuple[int, ...]]) -> int:
    """hidden_size from the 4*hidden_size rows of a weight, with a hint for GRUs and RNNs."""
    if hh is not None and len(hh) == 2 and hh[1] > 0:
        if hh[0] == 3 * hh[1]:
            raise StateDictError(f"'{prefix}{name}' has 3 gate blocks of {hh[1]} rows "
                                 "(weight_hh is 3*hidden x hidden): a GRU, not an LSTM")
        if hh[0] == hh[1]:
            raise StateDictError(f"'{prefix}{name}' has 1 gate block (weight_hh is "
                                 "hidden x hidden): an RNN, not an LSTM")
    if rows % 4 or rows == 0:
        raise StateDictError(f"'{prefix}{name}' has {rows} rows, not 4*hidden_size "
                             "(gates i, f, g, o): not an LSTM weight")
    return rows // 4


def _first_weight(params: Mapping[str, np.ndarray], prefix: str, keys: List[str], kind: str,
                  name: str) -> Tuple[int, ...]:
    """The shape of ``name``, the first input weight of a ``kind`` whose parameters
    under ``prefix`` are ``keys``: it gives input_size and hidden_size."""
    if not keys:
        raise StateDictError(f"no {kind} parameters under prefix {prefix!r} (keys such as "
                             f"'{prefix}{name}')")
    if name not in params:
        raise StateDictError(f"missing '{prefix}{name}', needed to infer input_size and "
                             f"hidden_size (found {', '.join(prefix + k for k in keys)})")
    return _shape(params, name, prefix, 2)


def infer_lstm(params: Mapping[str, np.ndarray], prefix: str = "") -> Inferred:
    """The ``LSTM`` configuration of the parameters directly under ``prefix``."""
    matches = {name: LSTM_KEY.match(name) for name in params}
    keys = [name for name, m in matches.items() if m]
    rows, input_size = _first_weight(params, prefix, keys, "LSTM", "weight_ih_l0")
    proj_size = 0
    hh = None
    if "weight_hr_l0" in params:
        proj_size = _shape(params, "weight_hr_l0", prefix, 2)[0]
    elif "weight_hh_l0" in params:
        hh = tuple(np.shape(params["weight_hh_l0"]))
    hidden_size = _gate_rows(rows, "weight_ih_l0", prefix, hh)
    layers = {name: _layer_index(m.group(2)) for name, m in matches.items() if m}
    num_layers = max(layers.values()) + 1
    _check_layers(layers, num_layers, prefix)
    config = {
        "input_size": input_size,
        "hidden_size": hidden_size,
        "num_layers": num_layers,
        "bias": any(k.startswith("bias_") for k in keys),
        "bidirectional": any(m.group(3) for m in matches.values() if m),
        "proj_size": proj_size,
    }
    return Inferred(config, keys)


def _layer_index(digits: str) -> int:
    """The layer of ``_l{digits}``; an absurdly long index reads as 10**18."""
    return int(digits) if len(digits) <= _MAX_LAYER_DIGITS else 10 ** _MAX_LAYER_DIGITS


def _check_layers(layers: Mapping[str, int], num_layers: int, prefix: str) -> None:
    """Every layer from 0 to ``num_layers - 1`` must have keys (before any is built).

    ``layers`` maps each LSTM key to its layer index.  Without this check one
    key such as ``bias_ih_l100000000`` would make a module of 10**8 layers.
    """
    present = set(layers.values())
    if len(present) == num_layers:
        return
    absent: List[str] = []
    layer = 0
    while len(absent) < 5 and layer < num_layers:  # at most len(present) + 5 steps
        if layer not in present:
            absent.append(str(layer))
        layer += 1
    n_absent = num_layers - len(present)
    if n_absent > len(absent):
        absent.append("...")
    last = max(layers, key=lambda name: layers[name])
    raise StateDictError(
        f"the weights under {prefix!r} do not make a consistent LSTM: "
        f"'{prefix}{last}' makes num_layers={num_layers}, but there are no weights for "
        f"layer(s) {', '.join(absent)} ({n_absent:,} of {num_layers:,} layers); an LSTM's "
        "keys cover every layer from 0 to num_layers-1")


def infer_cell(params: Mapping[str, np.ndarray], prefix: str = "") -> Inferred:
    """The ``LSTMCell`` configuration of the parameters directly under ``prefix``."""
    keys = [name for name in params if CELL_KEY.match(name)]
    rows, input_size = _first_weight(params, prefix, keys, "LSTMCell", "weight_ih")
    hh = tuple(np.shape(params["weight_hh"])) if "weight_hh" in params else None
    hidden_size = _gate_rows(rows, "weight_ih", prefix, hh)
    config = {"input_size": input_size, "hidden_size": hidden_size,
              "bias": any(k.startswith("bias_") for k in keys)}
    return Inferred(config, keys)


def infer_config(kind: Optional[str], params: Mapping[str, np.ndarray],
                 prefix: str = "") -> Inferred:
    """Dispatch on the module kind (``cls._kind``; the default of ``_config_from_state_dict``)."""
    if kind == "LSTMCell":
        return infer_cell(params, prefix)
    if kind == "LSTM":
        return infer_lstm(params, prefix)
    raise NotImplementedError(f"a module of kind {kind!r} does not infer its configuration "
                              "from a state dict (override _config_from_state_dict)")


def _default_dtype(arrays: List[np.ndarray]) -> type:
    """float64 when every weight is float64, else float32 (half precision widens)."""
    return np.float64 if {a.dtype for a in arrays} == {np.dtype(np.float64)} else np.float32


def lstm_shapes(input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                bidirectional: bool = False, proj_size: int = 0
                ) -> "OrderedDict[str, Tuple[int, ...]]":
    """torch's parameter names and shapes of an ``LSTM``, in torch's order."""
    shapes: "OrderedDict[str, Tuple[int, ...]]" = OrderedDict()
    h4 = 4 * hidden_size
    out_size = proj_size if proj_size > 0 else hidden_size
    directions = ("", "_reverse") if bidirectional else ("",)
    for layer in range(num_layers):
        layer_in = input_size if layer == 0 else out_size * len(directions)
        for suffix in directions:
            sfx = f"_l{layer}{suffix}"
            shapes["weight_ih" + sfx] = (h4, layer_in)
            shapes["weight_hh" + sfx] = (h4, out_size)
            if bias:
                shapes["bias_ih" + sfx] = shapes["bias_hh" + sfx] = (h4,)
            if proj_size > 0:
                shapes["weight_hr" + sfx] = (proj_size, hidden_size)
    return shapes


def cell_shapes(input_size: int, hidden_size: int, bias: bool = True
                ) -> "OrderedDict[str, Tuple[int, ...]]":
    """torch's parameter names and shapes of an ``LSTMCell``, in torch's order."""
    h4 = 4 * hidden_size
    shapes: "OrderedDict[str, Tuple[int, ...]]" = OrderedDict()
    shapes["weight_ih"] = (h4, input_size)
    shapes["weight_hh"] = (h4, hidden_size)
    if bias:
        shapes["bias_ih"] = shapes["bias_hh"] = (h4,)
    return shapes


def expected_shapes(kind: Optional[str],
                    config: Mapping[str, Any]) -> Optional[Dict[str, Tuple[int, ...]]]:
    """The parameter names and shapes of a module of ``kind`` built with ``config``,
    without building it: None for another kind, and for a configuration whose types the
    constructor refuses anyway."""
    try:
        input_size = operator.index(config["input_size"])
        hidden_size = operator.index(config["hidden_size"])
        num_layers = operator.index(config.get("num_layers", 1))
        proj_size = operator.index(config.get("proj_size", 0))
    except (KeyError, TypeError):
        return None
    bias = config.get("bias", True)
    if not isinstance(bias, bool) or min(input_size, hidden_size, num_layers, proj_size) < 0:
        return None
    if kind == "LSTMCell":
        return cell_shapes(input_size, hidden_size, bias)
    if kind == "LSTM":
        return lstm_shapes(input_size, hidden_size, num_layers, bias,
                           bool(config.get("bidirectional", False)), proj_size)
    return None


def _problems(expected: Mapping[str, Tuple[int, ...]], params: Mapping[str, np.ndarray],
              keys: List[str], prefix: str) -> List[str]:
    """Missing and unexpected keys, shapes that do not fit and dtypes that are not numbers."""
    problems = []
    missing = [prefix + k for k in expected if k not in params]
    if missing:
        problems.append(f"missing {_listed(missing)}")
    unexpected = [prefix + k for k in keys if k not in expected]
    if unexpected:
        problems.append(f"unexpected {_listed(unexpected)}")
    wrong = []
    for name, shape in expected.items():
        if name not in params:
            continue
        array = np.asarray(params[name])
        if array.shape != shape:
            wrong.append(f"'{prefix}{name}' has shape {array.shape}, expected {shape}")
        elif array.dtype.kind not in "fiub":
            wrong.append(f"'{prefix}{name}' has dtype {array.dtype}, not a real number type")
    problems.extend(wrong[:_MAX_LISTED])
    if len(wrong) > _MAX_LISTED:
        problems.append(f"... ({len(wrong) - _MAX_LISTED} more shapes or dtypes that do not fit)")
    return problems


def _inconsistent(cls: type, prefix: str, config: Mapping[str, Any],
                  problems: List[str]) -> StateDictError:
    return StateDictError(f"the weights under {prefix!r} do not make a consistent "
                          f"{cls.__name__}({_format_config(config)}): " + "; ".join(problems))


def build_module(cls: "Type[_Module]", params: Mapping[str, np.ndarray], prefix: str,
                 dtype: Any, options: Mapping[str, Any]) -> Tuple["_Module", List[str]]:
    """A zero-initialised module of ``cls`` for ``params`` (the group under ``prefix``).

    Returns the module and the names of ``params`` that are its parameters;
    raises :class:`StateDictError` listing every missing key, unexpected key,
    shape mismatch and dtype that is not a real number, and when ``options``
    contradict the file.  A module that would need far more elements than
    the weights hold (one thin ``weight_ih_l0`` of 400000 rows makes a 149 GiB
    ``weight_hh_l0``) is refused before it is built.
    """
    inferred = cls._config_from_state_dict(params, prefix)
    config = dict(inferred.config)
    for name, value in options.items():
        if name in ("input_size", "hidden_size", "num_layers", "bias", "bidirectional",
                    "proj_size") and name in config and value != config[name]:
            raise StateDictError(f"{name}={value!r} was given, but the weights under "
                                 f"{prefix!r} have {name}={config[name]!r}")
        config[name] = value
    shapes = expected_shapes(cls._kind, config)
    if shapes is not None:
        needed = sum(math.prod(shape) for shape in shapes.values())
        present = sum(int(np.size(params[k])) for k in inferred.keys)
        if needed > present + _SLACK:  # then some key is missing or too small
            problems = _problems(shapes, params, inferred.keys, prefix)
            problems.append(f"that configuration has {needed:,} parameters, the weights "
                            f"hold {present:,}")
            raise _inconsistent(cls, prefix, inferred.config, problems)
    if dtype is None:
        dtype = _default_dtype([params[k] for k in inferred.keys])
    factory: Callable[..., "_Module"] = cls  # the subclass's own constructor
    token = SKIP_INIT.set(True)
    try:
        module = factory(**config, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise StateDictError(f"the weights under {prefix!r} imply {cls.__name__}("
                             f"{_format_config(config)}), which is invalid: {exc}") from None
    finally:
        SKIP_INIT.reset(token)
    expected = module._shapes
    problems = _problems(expected, params, inferred.keys, prefix)
    if problems:
        raise _inconsistent(cls, prefix, inferred.config, problems)
    return module, list(expected)


def _format_config(config: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in config.items())


class FoundModule(NamedTuple):
    """An LSTM or LSTMCell found in a state dict (see :func:`fastlstm.inspect`).

    Attributes
    ----------
    kind : {"LSTM", "LSTMCell"}
    prefix : str
        What its keys start with, e.g. ``"encoder.rnn."`` (``""`` at the top level).
    config : dict
        Constructor arguments inferred from the keys and shapes.
    dtype : str
        The dtype of its weights as read (e.g. ``"float32"``, ``"float16"``,
        ``"int8"``): the file's, except bfloat16, which reads as float32 (exactly).
    keys : list of str
        Its full keys, in torch's order (a saved int8 weight's two, its values and
        its scales, in its place).
    num_parameters : int
        Total number of elements of its parameters.

    Examples
    --------
    >>> import fastlstm
    >>> found = fastlstm.inspect(fastlstm.LSTM(4, 8, proj_size=2, rng=0).state_dict())
    >>> module = found.modules[0]
    >>> module.kind, module.prefix, module.config["proj_size"], module.num_parameters
    ('LSTM', '', 2, 272)
    """

    kind: str
    prefix: str
    config: Dict[str, Any]
    dtype: str
    keys: List[str]
    num_parameters: int


#: The key names of each kind of module.
KEY_PATTERNS = {"LSTM": LSTM_KEY, "LSTMCell": CELL_KEY}


def find_modules(arrays: Mapping[str, np.ndarray], classes: "Mapping[str, Type[_Module]]"
                 ) -> Tuple[List[FoundModule], List[str]]:
    """Every consistent module of ``classes`` (by kind: ``{"LSTM": LSTM, ...}``) in
    ``arrays``, and notes on near misses.

    Returns ``(modules, notes)``: groups of keys named like an LSTM's that do
    not make one (a GRU, a missing key, ...) are explained in ``notes``.  The
    classes are passed in: the readers never import the modules.
    """
    found: List[FoundModule] = []
    notes: List[str] = []
    for prefix, grouped in groups(arrays).items():
        try:  # saved int8 weights (name_int8 and name_scale) stand for their float names
            params, given = int8_split(grouped)
        except StateDictError as exc:
            notes.append(f"{prefix}{exc}")
            continue
        for kind, cls in classes.items():
            if not any(KEY_PATTERNS[kind].match(name) for name in params):
                continue
            try:
                module, names = build_module(cls, params, prefix, None, {})
            except StateDictError as exc:
                notes.append(str(exc))
                continue
            keys = [key for n in names for key in (
                [prefix + n + INT8_SUFFIX, prefix + n + SCALE_SUFFIX] if n in given
                else [prefix + n])]
            dtype = "int8" if names[0] in given else str(np.asarray(params[names[0]]).dtype)
            found.append(FoundModule(
                kind, prefix, _public_config(module, cls), dtype, keys,
                sum(int(np.size(params[n])) for n in names)))
    return found, notes


def _public_config(module: Any, cls: type) -> Dict[str, Any]:
    names = ("input_size", "hidden_size", "num_layers", "bias", "bidirectional", "proj_size")
    return {n: getattr(module, n) for n in names if hasattr(cls, n)}
