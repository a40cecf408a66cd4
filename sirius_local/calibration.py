"""Threshold sparsity's calibration (CATS on neuron groups): per layer, the score above which a group of G FFN
neurons is computed, chosen so that a target fraction of groups is kept on built-in text.

A group's score for a token is sum over its neurons of |act(gate x)|, exactly what the decode kernels compare
(native/block_ffn.cpp). For density D a layer's threshold is the score ranked ceil(D * N) among its N recorded
(token, group) scores, so a fraction D of them reaches it. The first token of each passage (BOS and its
outsized activations) is left out: decoding never evaluates it.

Thresholds live in a small JSON sidecar found automatically: `<model>.sirius-thresholds.json` beside the model
if that directory is writable, else in the cache (`<cache>/calibration/<file name>-<size>.json`).
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
from .errors import CalibrationMissingError, InvalidParameterError

FORMAT = 1


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


def load(model_path: str | os.PathLike) -> tuple[dict, Path] | tuple[None, None]:
    """The calibration file of a model (its content and path), or (None, None). A file made for another model
    file (other size) is ignored."""
    size = Path(model_path).stat().st_size
    for path in sidecar_candidates(model_path):
        if path.is_file():
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError) as e:
                raise CalibrationMissingError(f"{path} is not a readable calibration file ({e}): delete it and run "
                                              f"`sirius-local calibrate` again") from None
            if data.get("format") == FORMAT and data.get("model_size") == size:
                return data, path
    return None, None


def thresholds_for(model_path: str | os.PathLike, density: float, n_layer: int) -> list[float]:
    """The per-layer thresholds calibrated for `density`. Density 1.0 needs none (every group is kept)."""
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
    data, _ = load(model_path)
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


def record_scores(llm, passages: Sequence[str]) -> list[np.ndarray | None]:
    """Per layer, the group scores of every token of every passage but its first: [n_tokens, n_groups] (None for
    a layer without a gated FFN). Each passage is one dense evaluation from an empty cache (the cache is left
    empty)."""
    n_layer = llm.n_layer()
    per_layer: list[list[np.ndarray]] = [[] for _ in range(n_layer)]
    # logits at every position: llama.cpp computes the last layer only for output rows. Passages are cut at 512
    # tokens to bound that buffer (n_tokens x n_vocab floats).
    limit = min(llm.n_ctx(), 512)
    try:
        for text in passages:
            toks = llm.tokenize(text)[:limit]
            llm.reset()
            llm.block_scores_record(True)
            llm.eval(toks, logits_all=True)
            llm.block_scores_record(False)
            for il in range(n_layer):
                sc = llm.block_scores(il)
                if sc is not None:
                    per_layer[il].append(sc[1:])  # the first token is BOS (or the passage's first word)
    finally:
        llm.block_scores_record(False)
        llm.reset()
    return [np.concatenate(x) if x else None for x in per_layer]


def thresholds_from_scores(scores: list[np.ndarray | None], density: float) -> list[float]:
    """Per layer: the ceil(density * N)-th largest score (0 for layers without groups)."""
    out = []
    for sc in scores:
        if sc is None or sc.size == 0:
            out.append(0.0)
            continue
        flat = np.sort(sc.ravel())[::-1]
        out.append(float(flat[max(0, math.ceil(density * flat.size) - 1)]))
    return out


def density_on(scores: list[np.ndarray | None], thresholds: Sequence[float]) -> float:
    """Fraction of (token, group) scores, over all sparse layers, that reach their layer's threshold."""
    kept = total = 0
    for sc, t in zip(scores, thresholds):
        if sc is None or sc.size == 0:
            continue
        kept += int(np.count_nonzero(sc >= np.float32(t)))
        total += sc.size
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
    cal = record_scores(llm, passages)
    ho = record_scores(llm, held_out) if held_out else None
    n_tokens = max((sc.shape[0] for sc in cal if sc is not None), default=0)
    results = {}
    for d in dens:
        t = thresholds_from_scores(cal, d)
        results[_key(d)] = {"thresholds": t, "calibration_density": density_on(cal, t),
                            "held_out_density": density_on(ho, t) if ho else None}
    model_path = Path(llm.model_path)
    data = {"format": FORMAT, "model": model_path.name, "model_size": model_path.stat().st_size,
            "score": "sum over a group of |act(gate x)|",
            "groups_per_layer": [int(sc.shape[1]) if sc is not None else 0 for sc in cal],
            "calibration_tokens": n_tokens, "densities": {}}
    path = None
    if save:
        old, old_path = load(model_path)
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
