# Type stub of the compiled kernel module (fastlstm/_ext/kernels.pyx).
#
# The kernel entry points take NumPy arrays of one floating dtype (float32 or
# float64 throughout a call), checked in the kernels; a layer's weights come as
# its packed layer (fastlstm._module._PackedLayer).
from typing import Any, List, Optional, Tuple

import numpy as np

def simd_available() -> List[str]: ...
def simd_level() -> str: ...
def set_simd_level(name: Optional[str] = None) -> None: ...
L2_BYTES: int

def panel_width(dtype: str) -> int: ...
def _mxcsr_for_tests() -> int: ...
def _activation_for_tests(x: np.ndarray, y: np.ndarray, sigmoid: bool) -> None: ...
def _matmul_for_tests(a: np.ndarray, bp: np.ndarray, g: np.ndarray, beta: bool) -> None: ...
def input_projection(x: np.ndarray, w_ih: np.ndarray, w_ih_p: np.ndarray, gates: np.ndarray,
                     num_threads: int, blas_min_rows: int) -> None: ...

class Tuning:
    def __init__(self, *, l2_bytes: Optional[int] = None, serial_bytes: int = ...,
                 gate_buffer_bytes: int = ..., min_chunk_rows: int = ...,
                 split: Optional[bool] = None, dirs_in_turn: Optional[bool] = None,
                 step_counters: Optional[bool] = None,
                 blas_min_rows: Optional[int] = None) -> None: ...

DEFAULT_TUNING: Tuning

# (threads, n_chunks, t_chunk, blas_min_rows, dirs_in_turn, step_counters)
Plan = Tuple[int, int, int, int, bool, int]
# A plan and the panel order of a one-timestep call.
Schedule = Tuple[int, int, int, int, bool, int, bool]

def schedule(w: Any, batch: int, seq_len: int, hidden: int, threads: int,
             packed: bool = False, tuning: Optional[Tuning] = None) -> Plan: ...

def layer(w: Any, x: np.ndarray, out: np.ndarray,
          state: Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, bool],
          gates: np.ndarray, seq_len: int, batch_first: bool, schedule: Schedule,
          packed: Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]] = None) -> None: ...


class CellStack:
    call_layout: int
    call_needs_eval: bool
    def __init__(self, layers: List[Any], hidden: int, call_layout: int = ...,
                 call_needs_eval: bool = ..., zero_state_skips: bool = ...,
                 tuning: Optional[Tuning] = None) -> None: ...
    def next_order(self) -> bool: ...
    def step(self, x: Any, hx: Any, num_threads: int, layout: int) -> Any: ...

def set_call_threads(n: int) -> None: ...
def module_call(self: Any, input: Any, hx: Any = None) -> Any: ...

def cell_step(w: CellStack, k: int, x: np.ndarray, h0: np.ndarray, c: np.ndarray, h: np.ndarray,
              num_threads: int, h0_zero: bool, backward_order: bool) -> None: ...

class StepPlan:
    def __init__(self, layers: List[Any], x: np.ndarray, h: np.ndarray, c: np.ndarray,
                 hcell: np.ndarray, outs: List[np.ndarray], gates: np.ndarray,
                 tuning: Optional[Tuning] = None) -> None: ...
    def step(self, frame: Optional[np.ndarray], num_threads: int) -> bool: ...
