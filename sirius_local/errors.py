"""Exceptions raised by sirius-local. Every one names the problem and, where there is one, the fix."""


class SiriusError(Exception):
    """Base class of sirius-local errors."""


class ModelLoadError(SiriusError):
    """The model could not be loaded (not GGUF, truncated, unsupported architecture, ...)."""


class ModelNotFoundError(ModelLoadError, FileNotFoundError):
    """The model path does not exist and is not a known model name."""


class InvalidParameterError(SiriusError, ValueError):
    """A parameter is out of range or inconsistent."""


class ContextOverflowError(SiriusError, ValueError):
    """The tokens do not fit in the context window."""


class DecodeError(SiriusError):
    """llama.cpp failed to evaluate a batch; the session was rolled back and stays usable."""


class UnsupportedError(SiriusError):
    """The model or build does not support the request (e.g. no chat template)."""


class ModelFetchError(SiriusError):
    """Downloading or assembling a packaged model failed."""


class CalibrationMissingError(SiriusError):
    """Threshold sparsity was asked for a density this model has not been calibrated for."""
