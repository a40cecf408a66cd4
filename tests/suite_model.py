"""The model the suite runs on (SmolLM2-135M unless SIRIUS_TEST_MODEL names another) and its shapes, read from
the GGUF, so that tests take layer counts and FFN sizes from the model instead of writing SmolLM2's down."""

from __future__ import annotations

import os
from functools import lru_cache

from gguf import GGUFReader
from gguf.constants import GGML_QUANT_SIZES

from sirius_local import registry

TEST_MODEL = os.environ.get("SIRIUS_TEST_MODEL", "smollm2-135m-instruct")


def path() -> str:
    return str(registry.resolve(TEST_MODEL))


@lru_cache(maxsize=None)
def shape(gguf: str | None = None) -> tuple[int, int, int]:
    """(layers, FFN neurons per layer, neurons per quant block of ffn_down: the group of the group paths) of a GGUF
    file, by default the suite's model."""
    r = GGUFReader(gguf or path())
    arch = bytes(r.fields["general.architecture"].parts[-1]).decode()
    n_layer = int(r.fields[f"{arch}.block_count"].parts[-1][0])
    n_ff = int(r.fields[f"{arch}.feed_forward_length"].parts[-1][0])
    down = next(t for t in r.tensors if t.name == "blk.0.ffn_down.weight")
    return n_layer, n_ff, max(32, GGML_QUANT_SIZES[down.tensor_type][0])
