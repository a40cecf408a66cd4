"""Threshold sparsity's calibration (CATS on single neurons): per layer, the value of |act(gate x)| from which a
neuron is computed, chosen so that a target fraction of (token, neuron) pairs is kept on built-in text.

A neuron's score for a token is |act(gate x)|, exactly what the decode kernels compare (native/neuron_ffn.cpp).
The engine adds every recorded score to a per-layer histogram (bins 0.4% wide, ordered as the values: see
sirius_score_bin), so a calibration over thousands of tokens costs 512 KiB per layer, not a float per token and
neuron. For density D a layer's threshold is the lowest value of the highest bin at which at least ceil(D * N)
of its N scores lie at or above it: the kept fraction is then D plus at most that bin's share. The first token of
each passage (BOS and its outsized activations) is left out: decoding never evaluates it.

Thresholds live in a small JSON sidecar found automatically: `<model>.sirius-thresholds.json` beside the model
if that directory is writable, else in the cache (`<cache>/calibration/<file name>-<size>.json`). Format 1
files (thresholds on 32- or 256-neuron groups, before single neurons) are refused with the command that
replaces them.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from . import calibration_text, registry
from ._native import lib
from .errors import CalibrationMissingError, InvalidParameterError

FORMAT = 2
_GROUP_FORMAT = 1  # group-granular thresholds: meaningless for single neurons


def _key(density: float) -> str:
    return f"{float(density):.4g}"


def sidecar_candidates(model_path: str | os.PathLike) -> list[Path]:
    """Where a model's thresholds are looked for, in order."""
    p = Path(model_path)
    size = p.stat().st_size if p.exists() else 0
    return [p.with_name(p.name + ".sirius-thresholds.json"),
            registry.cache_dir() / "calibration" / f"{p.name}-{size}.json"]


def sidecar_for_writing(model_path: str | os.PathLike) -> Path:
    beside, cached = sidecar_candidates(model_path)
    return beside if os.access(beside.parent, os.W_OK) else cached


def load(model_path: str | os.PathLike, *, replacing: bool = False) -> tuple[dict, Path] | tuple[None, None]:
    """The calibration file of a model (its content and path), or (None, None). A file made for another model
    file (other size) is ignored; one of the group-granular format is an error (replacing=True: ignored, as
    calibrate() overwrites it)."""
    size = Path(model_path).stat().st_size
    for path in sidecar_candidates(model_path):
        if path.is_file():
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError) as e:
                raise CalibrationMissingError(f"{path} is not a readable calibration file ({e}): delete it and run "
                                              f"`sirius-local calibrate` again") from None
            if data.get("model_size") != size:
                continue
            if data.get("format") == FORMAT:
                return data, path
            if replacing:
                continue
            again = " ".join(f"--density {d}" for d in sorted(data.get("densities", {}), key=float)) or "--density 0.5"
            if data.get("format") == _GROUP_FORMAT:
                raise CalibrationMissingError(
                    f"{path} holds thresholds for groups of neurons (calibration format 1), and threshold sparsity "
                    f"now selects single neurons: run `sirius-local calibrate {model_path} {again}` to replace it")
            raise CalibrationMissingError(f"{path} has calibration format {data.get('format')!r}, which this "
                                          f"version does not read (it reads {FORMAT}): run "
                                          f"`sirius-local calibrate {model_path} {again}` to replace it")
    return None, None


def thresholds_for(model_path: str | os.PathLike, density: float, n_layer: int) -> list[float]:
    """The per-layer thresholds calibrated for `density`. Density 1.0 needs none (every neuron is kept)."""
    if density >= 1.0:
        return [0.0] * n_layer
    data, path = load(model_path)
    name = Path(model_path).name
    if data is None:
        raise CalibrationMissingError(
            f"sparsity 'threshold' needs a calibration of {name}, and none was found "
            f"(looked for {', '.join(str(p) for p in sidecar_candidates(model_path))}): "
            f"run `sirius-local calibrate {model_path} --density {_key(density)}`")
    entry = data["densities"].get(_key(density))
    if entry is None:
        have = ", ".join(sorted(data["densities"], key=float)) or "none"
        raise CalibrationMissingError(
            f"{path} has no thresholds for density {_key(density)} (it has: {have}): "
            f"run `sirius-local calibrate {model_path} --density {_key(density)}`")
    t = entry["thresholds"]
    if len(t) != n_layer:
        raise CalibrationMissingError(f"{path} holds {len(t)} layers but the model has {n_layer}: calibrate again")
    return [float(x) for x in t]


def uncalibrated(model_path: str | os.PathLike, densities: Sequence[float]) -> list[float]:
    """The densities below 1.0 that the model's calibration file (if any) has no thresholds for."""
    data, _ = load(model_path, replacing=True)
    have = set(data["densities"]) if data else set()
    return [d for d in densities if d < 1.0 and _key(d) not in have]


def _check_densities(densities: Sequence[float]) -> list[float]:
    out = []
    for d in densities:
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not (0 < d < 1):
            raise InvalidParameterError(f"calibration densities must be in (0, 1) (1.0 needs no calibration), got {d!r}")
        out.append(float(d))
    if not out:
        raise InvalidParameterError("give at least one density to calibrate")
    return out


def bin_floor(b: int) -> float:
    """The lowest score in histogram bin b (the engine's rule: |v| >= bin_floor(b) exactly when bin(v) >= b)."""
    return float(lib.sirius_score_bin_floor(int(b)))


def score_bin(v: float) -> int:
    return int(lib.sirius_score_bin(float(v)))


def record_scores(llm, passages: Sequence[str]) -> tuple[list[np.ndarray | None], int]:
    """(per layer, the histogram of |act(gate x)| over every neuron of every token of every passage but its first
    (None for a layer without a gated FFN); the number of tokens recorded). Each passage is one dense evaluation from an empty cache (the cache
    is left empty)."""
    n_layer = llm.n_layer()
    hists: list[np.ndarray | None] = [None] * n_layer
    n_tokens = 0
    # logits at every position: llama.cpp computes the last layer only for output rows. Passages are cut at 512
    # tokens to bound that buffer (n_tokens x n_vocab floats).
    limit = min(llm.n_ctx(), 512)
    try:
        for text in passages:
            toks = llm.tokenize(text)[:limit]
            if len(toks) < 2:
                continue
            llm.reset()
            llm.eval(toks[:1], logits_all=True)  # the first token (BOS, or the passage's first word): not recorded
            llm.neuron_scores_record(True)
            llm.eval(toks[1:], logits_all=True)
            llm.neuron_scores_record(False)
            n_tokens += len(toks) - 1
            for il in range(n_layer):
                h = llm.neuron_score_hist(il)
                if h is not None and h.any():
                    hists[il] = h if hists[il] is None else hists[il] + h
    finally:
        llm.neuron_scores_record(False)
        llm.reset()
    return hists, n_tokens


def threshold_at(hist: np.ndarray | None, density: float) -> float:
    """The floor of the highest bin at which at least ceil(density * N) of the histogram's N scores lie at or
    above it (0 for an empty one)."""
    if hist is None or not hist.any():
        return 0.0
    need = math.ceil(density * int(hist.sum()))
    from_top = np.cumsum(hist[::-1])
    b = len(hist) - 1 - int(np.searchsorted(from_top, max(need, 1)))
    return bin_floor(max(b, 0))


def thresholds_from_scores(hists: list[np.ndarray | None], density: float) -> list[float]:
    """Per layer: threshold_at (0 for layers without a gated FFN)."""
    return [threshold_at(h, density) for h in hists]


def density_on(hists: list[np.ndarray | None], thresholds: Sequence[float]) -> float:
    """Fraction of (token, neuron) scores, over all sparse layers, at or above their layer's threshold (exact
    for thresholds that are bin floors, as calibrated ones are)."""
    kept = total = 0
    for h, t in zip(hists, thresholds):
        if h is None or not h.any():
            continue
        kept += int(h[score_bin(t):].sum())
        total += int(h.sum())
    return kept / total if total else 1.0


def calibrate(llm, densities: Sequence[float], *, passages: Sequence[str] | None = None,
              held_out: Sequence[str] | None = None, save: bool = True) -> dict:
    """Calibrates thresholds for each density on `passages` (default: the built-in text), measures the density
    they give on `held_out` text, and (save=True) merges them into the model's sidecar file. Returns
    {"path", "densities": {key: {"thresholds", "calibration_density", "held_out_density"}}, ...}."""
    dens = _check_densities(densities)
    passages = list(passages if passages is not None else calibration_text.CALIBRATION)
    held_out = list(held_out if held_out is not None else calibration_text.HELD_OUT_PASSAGES)
    if not passages:
        raise InvalidParameterError("calibration needs at least one passage of text")
    t0 = time.perf_counter()
    cal, n_tokens = record_scores(llm, passages)
    ho = record_scores(llm, held_out)[0] if held_out else None
    results = {}
    for d in dens:
        t = thresholds_from_scores(cal, d)
        results[_key(d)] = {"thresholds": t, "calibration_density": density_on(cal, t),
                            "held_out_density": density_on(ho, t) if ho else None}
    model_path = Path(llm.model_path)
    data = {"format": FORMAT, "model": model_path.name, "model_size": model_path.stat().st_size,
            "score": "|act(gate x)| of a neuron",
            "sparse_layers": [il for il, h in enumerate(cal) if h is not None],
            "calibration_tokens": n_tokens, "densities": {}}
    path = None
    if save:
        old, old_path = load(model_path, replacing=True)
        if old is not None:
            data["densities"].update(old["densities"])
        data["densities"].update(results)
        path = old_path or sidecar_for_writing(model_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, path)
    return {"path": str(path) if path else None, "model": model_path.name, "calibration_tokens": n_tokens,
            "seconds": time.perf_counter() - t0, "densities": results}
