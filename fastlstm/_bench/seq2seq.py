"""``fastlstm bench --seq2seq``: a greedy seq2seq decode, torch against fastlstm + NumPy.

The model: an embedding (vocabulary 1000, size 256), a 2-layer encoder and a
2-layer decoder LSTM (256 -> 256) and a linear head (256 -> 1000), random
weights from a seeded torch generator.  A decode encodes 30 source tokens, then
runs 29 greedy decoder steps from token 0, each feeding the argmax of the head
back in.  torch runs it all in torch under ``torch.inference_mode()``; fastlstm
runs the encoder and decoder as ``fastlstm.LSTM.from_torch(...)`` and the
embedding lookup (``E[tokens]``) and the head (``y @ W.T + b``, argmax) in
NumPy, carrying the decoder's ``(h, c)`` from step to step.  The same torch decode
also runs on ``fastlstm.accelerate`` of the torch modules (the LSTMs swapped in one
line, everything else torch's): the end-to-end gain without a rewrite.

Both decodes must give the same tokens (a mismatch is an error row, not
timed).  Then they are timed in alternating blocks (``timing.time_interleaved``)
and the ratio torch time / fastlstm time is reported, against targets of 5x at
batch 1 and 1x at larger batches.  For the largest batch, a decoder step and
the head's matrix product are also timed each alone (back to back) and right
after the other: a step slowed by the product before it (or the reverse) shows
two thread pools (fastlstm's OpenMP team, NumPy's BLAS) getting in each other's
way.  Target for both ratios: <= 1.2.
"""

from __future__ import annotations

import statistics
import time
from functools import partial
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from threadpoolctl import threadpool_limits

import fastlstm
from fastlstm import _threads
from fastlstm._bench.contention import error_row, ratio_row
from fastlstm._bench.timing import gc_paused, rotation, settle, time_interleaved

__all__ = ["ACCELERATE_TARGET", "DECODE_TARGETS", "MIX_TARGET", "Seq2Seq", "header_line",
           "measure_seq2seq", "tokens_mismatch"]

#: Target of torch time / fastlstm time of a decode: (batch 1, larger batches).
DECODE_TARGETS = (5.0, 1.0)
#: Target of torch time / time of the torch decode with ``fastlstm.accelerate``.
ACCELERATE_TARGET = 1.0
#: Target of a step (or head product) after the other over alone.
MIX_TARGET = 1.2
_SAMPLES = 20  # timed calls of each kind per block of the step/head mix
_SETTLE_PAUSE_S = 0.05  # before each block of the mix, then until the process is idle


class Seq2Seq:
    """The benchmark's seq2seq model, in torch and in fastlstm + NumPy, same weights.

    Parameters
    ----------
    torch : module
    seed : int, default=0
        Seed of torch's generator for the weights (the global generator is
        left as it was).
    vocab, embed, hidden, layers : int
        Vocabulary, embedding size, LSTM hidden size and layers (1000, 256,
        256, 2).
    source_length, steps : int
        Source tokens (30) and greedy decoder steps (29).

    Attributes
    ----------
    encoder, decoder : torch.nn.LSTM
    embedding : torch.nn.Embedding
    head : torch.nn.Linear
    fast_encoder, fast_decoder : fastlstm.LSTM
        From ``fastlstm.LSTM.from_torch``.
    E, W, b : ndarray
        The embedding table, the head's weight and bias (float32 copies).
    """

    def __init__(self, torch: Any, *, seed: int = 0, vocab: int = 1000, embed: int = 256,
                 hidden: int = 256, layers: int = 2, source_length: int = 30,
                 steps: int = 29) -> None:
        self.torch = torch
        self.vocab, self.source_length, self.steps = vocab, source_length, steps
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.embedding = torch.nn.Embedding(vocab, embed)
            self.encoder = torch.nn.LSTM(embed, hidden, layers).eval()
            self.decoder = torch.nn.LSTM(embed, hidden, layers).eval()
            self.head = torch.nn.Linear(hidden, vocab)
        self.E = self.embedding.weight.detach().numpy().copy()
        self.W = self.head.weight.detach().numpy().copy()
        self.b = self.head.bias.detach().numpy().copy()
        self.fast_encoder = fastlstm.LSTM.from_torch(self.encoder)
        self.fast_decoder = fastlstm.LSTM.from_torch(self.decoder)
        self.accelerated = fastlstm.accelerate(torch.nn.ModuleDict(dict(
            embedding=self.embedding, encoder=self.encoder, decoder=self.decoder,
            head=self.head)).eval())

    def source(self, batch: int, seed: int = 0) -> np.ndarray:
        """Random source tokens, ``(source_length, batch)`` int64."""
        rng = np.random.default_rng(seed)
        return rng.integers(0, self.vocab, (self.source_length, batch), dtype=np.int64)

    def torch_decode(self, src: np.ndarray, accelerated: bool = False) -> np.ndarray:
        """The greedy decode in torch (with ``accelerated``, on the modules of
        ``fastlstm.accelerate``): tokens ``(steps, batch)``."""
        torch = self.torch
        m = self.accelerated if accelerated else dict(
            embedding=self.embedding, encoder=self.encoder, decoder=self.decoder,
            head=self.head)
        src_t = torch.from_numpy(src)
        with torch.inference_mode():
            _, state = m["encoder"](m["embedding"](src_t))
            token = torch.zeros(1, src.shape[1], dtype=torch.long)
            out = []
            for _ in range(self.steps):
                y, state = m["decoder"](m["embedding"](token), state)
                token = m["head"](y).argmax(-1)
                out.append(token)
            return torch.cat(out).numpy()

    def fastlstm_decode(self, src: np.ndarray) -> np.ndarray:
        """The greedy decode with fastlstm's LSTMs and NumPy: tokens ``(steps, batch)``."""
        _, state = self.fast_encoder(self.E[src])
        token = np.zeros((1, src.shape[1]), dtype=np.int64)
        out = []
        for _ in range(self.steps):
            y, state = self.fast_decoder(self.E[token], state)
            token = (y @ self.W.T + self.b).argmax(-1)
            out.append(token)
        return np.concatenate(out)


def tokens_mismatch(expected: np.ndarray, got: np.ndarray) -> Optional[str]:
    """None if the token arrays are equal, else where they first differ, in one line."""
    if expected.shape == got.shape and np.array_equal(expected, got):
        return None
    if expected.shape != got.shape:
        return f"tokens shaped {got.shape}, expected {expected.shape}"
    wrong = np.argwhere(expected != got)
    step, n = (int(k) for k in wrong[0])
    return (f"tokens differ from torch's at {len(wrong)} of {expected.size} positions "
            f"(first: step {step}, sequence {n})")


def _median_of_blocks(samples: List[List[float]]) -> List[float]:
    return [statistics.median(block) for block in samples]


def _mix(model: Seq2Seq, src: np.ndarray, blocks: int) -> Dict[str, List[float]]:
    """Per block, the median time of a decoder step and of the head's product, each
    alone (after another of its kind) and right after the other."""
    dec, W, b = model.fast_decoder, model.W, model.b
    _, state = model.fast_encoder(model.E[src])
    x = model.E[np.zeros((1, src.shape[1]), dtype=np.int64)]
    y = dec(x, state)[0][0]  # (N, H): the head's input at the first step

    def step() -> object:
        return dec(x, state)

    def head() -> object:
        return y @ W.T + b

    def timed(fn: Callable[[], object]) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    def alone(fn: Callable[[], object]) -> Callable[[], float]:
        return lambda: timed(fn)

    def after(first: Callable[[], object], fn: Callable[[], object]) -> Callable[[], float]:
        def run() -> float:
            first()
            return timed(fn)
        return run

    kinds: Dict[str, Callable[[], float]] = {
        "step_alone": alone(step), "step_after_head": after(head, step),
        "head_alone": alone(head), "head_after_step": after(step, head)}
    for fn in (step, head, step, head):  # warm-up: packing, thread pools
        fn()
    samples: Dict[str, List[List[float]]] = {kind: [] for kind in kinds}
    names = list(kinds)
    with gc_paused():
        for block in range(blocks):
            for name in rotation(names, block):
                # Every block starts with both thread pools asleep (NumPy's BLAS threads
                # spin for about 0.1 s after a matmul), so that "alone" is alone; the
                # first sample follows the previous kind's call: not kept.
                settle(_SETTLE_PAUSE_S, limit=1.0)
                samples[name].append([kinds[name]() for _ in range(_SAMPLES + 1)][1:])
    return {name: _median_of_blocks(s) for name, s in samples.items()}


def measure_seq2seq(torch: Any, *, batches: Sequence[int] = (1, 300), blocks: int = 5,
                    seed: int = 0, threads: Optional[int] = None, budget: float = 2.0,
                    on_progress: Optional[Callable[[float, str], None]] = None
                    ) -> Dict[str, Any]:
    """The greedy decode of :class:`Seq2Seq` in torch and in fastlstm + NumPy.

    Parameters
    ----------
    torch : module
    batches : sequence of int, default=(1, 300)
        Batch sizes decoded; the step/head mix is measured at the largest.
    blocks : int, default=5
        Alternating blocks per batch size (and of the mix); medians are reported.
    seed : int, default=0
        Seed of the weights and the source tokens.
    threads : int, optional
        Threads of fastlstm, torch and NumPy's BLAS (the fastlstm decode's head product)
        (``fastlstm.get_num_threads()`` if None).
    budget : float, default=2.0
        Seconds of timed decodes per batch size, both libraries together (a
        slow decode still runs once per block).
    on_progress : callable, optional
        Called as ``on_progress(fraction_done, stage)``.

    Returns
    -------
    dict
        ``model`` (its sizes), ``threads``, ``blocks``, ``seed``, ``batches``,
        ``blas_sharing`` (:func:`fastlstm._threads.blas_sharing_state`),
        ``tokens_match`` (batch -> bool), ``rows`` (see
        :func:`~fastlstm._bench.contention.ratio_row`: one decode row per
        batch, figures in seconds, A = torch, B = fastlstm; then the two
        mix rows, A = after the other, B = alone; a mismatch gives an error
        row and no timing), ``failed`` (the error rows' cases) and ``wall_s``.
    """
    started = time.perf_counter()
    progress = on_progress or (lambda frac, stage: None)
    threads = threads or fastlstm.get_num_threads()
    model = Seq2Seq(torch, seed=seed)
    result: Dict[str, Any] = {
        "model": {"vocab": model.vocab, "embed": model.E.shape[1],
                  "hidden": model.fast_decoder.hidden_size,
                  "layers": model.fast_decoder.num_layers,
                  "source_length": model.source_length, "steps": model.steps},
        "threads": threads, "blocks": blocks, "seed": seed, "batches": list(batches),
        "blas_sharing": _threads.blas_sharing_state(),
        "tokens_match": {}, "rows": [], "failed": [], "wall_s": None,
    }
    saved_fast = _threads._num_threads
    saved_torch = torch.get_num_threads()
    stages = len(batches) + 1
    # NumPy's head product on as many threads as torch's own (its default is every core).
    blas_limit = threadpool_limits(threads, user_api="blas")
    try:
        fastlstm.set_num_threads(threads)
        torch.set_num_threads(threads)
        sources = {}
        for k, batch in enumerate(batches):
            case = f"N={batch}"
            progress(k / stages, f"seq2seq {case}: checking")
            src = sources[batch] = model.source(batch, seed)
            first: Dict[str, float] = {}
            start = time.perf_counter()
            expected = model.torch_decode(src)
            first["torch"] = time.perf_counter() - start
            start = time.perf_counter()
            got = model.fastlstm_decode(src)
            first["fastlstm"] = time.perf_counter() - start
            start = time.perf_counter()
            got_accelerated = model.torch_decode(src, accelerated=True)
            first["accelerate"] = time.perf_counter() - start
            note = tokens_mismatch(expected, got)
            compared = "torch / fastlstm"
            if note is None:  # the row names the decode that differs
                note = tokens_mismatch(expected, got_accelerated)
                compared = "torch / torch + accelerate"
            result["tokens_match"][batch] = note is None
            if note is not None:
                result["rows"].append(error_row("seq2seq decode", compared, case,
                                                f"NOT TIMED: {note}"))
                result["failed"].append(case)
                continue
            progress(k / stages, f"seq2seq {case}: timing")
            runners: Dict[str, Callable[[], object]] = {
                "torch": partial(model.torch_decode, src),
                "fastlstm": partial(model.fastlstm_decode, src),
                "accelerate": partial(model.torch_decode, src, True)}
            timings = time_interleaved(runners, budget=budget, blocks=blocks,
                                       min_blocks=blocks, first_call_s=first)
            target = DECODE_TARGETS[0] if batch == 1 else DECODE_TARGETS[1]
            result["rows"].append(ratio_row(
                "seq2seq decode", "torch / fastlstm", case, "torch", "fastlstm",
                timings["torch"].block_s, timings["fastlstm"].block_s, "s", (">=", target)))
            result["rows"].append(ratio_row(
                "seq2seq decode", "torch / torch + accelerate", case, "torch", "accelerate",
                timings["torch"].block_s, timings["accelerate"].block_s, "s",
                (">=", ACCELERATE_TARGET)))
        biggest = max(batches)
        if result["tokens_match"].get(biggest):
            progress((stages - 1) / stages, f"seq2seq N={biggest}: step and head mix")
            mix = _mix(model, sources[biggest], blocks)
            mix_rows: List[Tuple[str, str, str]] = [
                ("decoder step", "step_after_head", "step_alone"),
                ("head matmul", "head_after_step", "head_alone")]
            for what, after, alone in mix_rows:
                result["rows"].append(ratio_row(
                    "seq2seq step mix", "fastlstm + NumPy", f"{what} N={biggest}",
                    "after the other", "alone", mix[after], mix[alone], "s",
                    ("<=", MIX_TARGET)))
    finally:
        fastlstm.set_num_threads(saved_fast)
        torch.set_num_threads(saved_torch)
        blas_limit.restore_original_limits()
    result["wall_s"] = time.perf_counter() - started
    return result


def header_line(result: Dict[str, Any]) -> str:
    """What the seq2seq rows measure, in one line."""
    m = result["model"]
    return (f"seq2seq greedy decode: vocabulary {m['vocab']}, embedding {m['embed']}, "
            f"{m['layers']}-layer encoder and decoder LSTM H={m['hidden']}, "
            f"{m['source_length']} source tokens, {m['steps']} decoder steps; "
            f"{result['threads']} threads (fastlstm, torch and NumPy's BLAS); "
            f"{result['blocks']} alternating blocks, medians; "
            "decode A/B = torch time / fastlstm (or torch + accelerate) time, mix A/B = "
            "after the other / alone; NumPy's OpenBLAS on fastlstm's pool: "
            f"{result.get('blas_sharing', 'not recorded')}")
