"""Requantising a GGUF model with llama.cpp's own quantizer (through the native core)."""

from __future__ import annotations

import os

from .errors import InvalidParameterError

# llama.cpp's llama_ftype numbering (include/llama.h).
FTYPES = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9, "Q4_K_S": 14, "Q4_K_M": 15,
          "Q5_K_S": 16, "Q5_K_M": 17, "Q6_K": 18}


def quantize(src: str | os.PathLike, dst: str | os.PathLike, ftype: str, n_threads: int = 0) -> None:
    """Writes dst, a copy of the GGUF model src quantised to ftype (requantising if needed)."""
    from ._native import check, lib

    if ftype not in FTYPES:
        raise InvalidParameterError(f"unknown ftype {ftype!r} (known: {', '.join(FTYPES)})")
    check(lib.sirius_quantize(os.fspath(src).encode(), os.fspath(dst).encode(), FTYPES[ftype], int(n_threads)))
