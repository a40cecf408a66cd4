"""sirius-local: Sirius (contextual sparsity with correction) on llama.cpp for local GGUF models."""

__version__ = "0.1.0"

from .errors import (  # noqa: E402
    CalibrationMissingError,
    ContextOverflowError,
    DecodeError,
    InvalidParameterError,
    ModelFetchError,
    ModelLoadError,
    ModelNotFoundError,
    SiriusError,
    UnsupportedError,
)


def __getattr__(name):
    # The native library is loaded on first use, so `sirius-local models ...` works without it.
    if name == "LLM":
        from .llm import LLM

        return LLM
    raise AttributeError(name)


__all__ = [
    "LLM",
    "SiriusError",
    "ModelLoadError",
    "ModelNotFoundError",
    "InvalidParameterError",
    "ContextOverflowError",
    "DecodeError",
    "UnsupportedError",
    "ModelFetchError",
    "CalibrationMissingError",
]
