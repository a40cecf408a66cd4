"""Test and measurement hooks on an LLM: what the engine chose (neurons, groups, the draft head's tokens) and
Griffin's statistic, read through sirius.h's sirius_test_* exports. Not part of the application API: tests and
benchmarks hold the engine's choices against the NumPy reference with them."""

from __future__ import annotations

import numpy as np

from ._native import check, ffi, lib


def _layer(layer) -> int:
    from .llm import _int_in, INT32_MAX

    return _int_in("layer", layer, 0, INT32_MAX)


def griffin_scores(llm, layer: int) -> np.ndarray:
    """Griffin's per-neuron statistic of a layer (L2 norm over tokens of the unit-normalised FFN activation)."""
    il = _layer(layer)
    with llm._use() as ss:
        n = lib.sirius_test_griffin_scores(ss, il, ffi.NULL, 0)
        out = np.zeros(max(n, 0), dtype=np.float32)
        if n > 0:
            lib.sirius_test_griffin_scores(ss, il, ffi.cast("float *", out.ctypes.data), n)
    return out


def sparse_groups(llm, layer: int) -> tuple[list[int], int]:
    """The neurons (group_size > 1: groups) a layer's compact FFN keeps, and the group size ([] if dense)."""
    il = _layer(layer)
    gs = ffi.new("int32_t *")
    with llm._use() as ss:
        n = lib.sirius_test_sparse_groups(ss, il, ffi.NULL, 0, gs)
        if n < 0:
            return [], 0
        buf = ffi.new("int32_t[]", max(n, 1))
        lib.sirius_test_sparse_groups(ss, il, buf, n, gs)
    return list(buf[0:n]), int(gs[0])


def topk_record(llm, on: bool = True) -> None:
    """Top-k and threshold: record which neurons (on group layers: groups) each layer keeps in the following
    single-token sparse decodes."""
    with llm._use() as ss:
        check(lib.sirius_test_topk_record(ss, bool(on)))


def topk_kept(llm, layer: int) -> list[int]:
    """The neurons (group layers: groups; see stats' group_size) a layer kept in the last recorded top-k or
    threshold decode, ascending ([] if none)."""
    il = _layer(layer)
    with llm._use() as ss:
        n = lib.sirius_test_topk_kept(ss, il, ffi.NULL, 0)
        if n <= 0:
            return []
        buf = ffi.new("int32_t[]", n)
        lib.sirius_test_topk_kept(ss, il, buf, n)
    return list(buf[0:n])


def threshold_kept(llm) -> tuple[int, int]:
    """Per-token decodes so far on the current sparse FFN: (neurons computed, neurons considered)."""
    k, n = ffi.new("int64_t *"), ffi.new("int64_t *")
    with llm._use() as ss:
        check(lib.sirius_threshold_kept(ss, k, n))
    return int(k[0]), int(n[0])


def draft_head_tokens(llm) -> list[int]:
    """The token ids the trimmed draft head keeps, ascending (empty: full head)."""
    with llm._use() as ss:
        n = lib.sirius_test_draft_head_tokens(ss, ffi.NULL, 0)
        out = ffi.new("int32_t[]", max(n, 1))
        lib.sirius_test_draft_head_tokens(ss, out, n)
    return list(out[0:n])


def scale_cost_curve(llm, factor: float) -> None:
    """Multiply the session's measured dense cost curve by factor: the curve a busier (> 1) or idler machine would
    have measured."""
    with llm._use() as ss:
        check(lib.sirius_test_scale_cost_curve(ss, float(factor)))
