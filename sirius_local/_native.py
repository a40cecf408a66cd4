"""cffi (ABI mode) binding to native/sirius.h; the declarations are read from the installed header."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from cffi import FFI

from . import errors

# A failed assertion inside ggml prints its message; without this it also attaches gdb to the host process to
# print a backtrace (tens of lines, seconds), which a library must not do to the application that loads it.
os.environ.setdefault("GGML_NO_BACKTRACE", "1")

_LIB_NAMES = {"darwin": "libsirius.dylib", "win32": "sirius.dll"}
LIB_NAME = _LIB_NAMES.get(sys.platform, "libsirius.so")


def _lib_dirs():
    """Where the built libraries may be: $SIRIUS_LOCAL_LIB_DIR; lib/ in each directory of the package (a wheel
    install, or scikit-build-core's editable install, which adds site-packages to __path__); and the installed
    distribution's lib/ (the Python sources imported from a checkout, as pytest does from the repo root)."""
    env = os.environ.get("SIRIUS_LOCAL_LIB_DIR")
    if env:
        yield Path(env)
    from . import __path__ as pkg_path

    for p in pkg_path:
        yield Path(p) / "lib"
    try:
        from importlib.metadata import PackageNotFoundError, distribution

        yield Path(distribution("sirius-local").locate_file("sirius_local/lib"))
    except PackageNotFoundError:
        pass


def _find_lib() -> Path:
    tried = []
    for d in _lib_dirs():
        if (d / LIB_NAME).is_file() and (d / "sirius.h").is_file():
            return d
        tried.append(str(d))
    raise ImportError(
        f"sirius-local's native library ({LIB_NAME}) was not found in {', '.join(tried)}: "
        "install the package with `pip install .` (it builds llama.cpp), or set SIRIUS_LOCAL_LIB_DIR"
    )


def _cdef(header: str) -> str:
    m = re.search(r"/\* CDEF-BEGIN \*/(.*)/\* CDEF-END \*/", header, re.S)
    if not m:
        raise ImportError("sirius.h has no CDEF-BEGIN/CDEF-END block")
    return m.group(1).replace("SIRIUS_API ", "")


LIB_DIR = _find_lib()
ffi = FFI()
ffi.cdef(_cdef((LIB_DIR / "sirius.h").read_text()))
lib = ffi.dlopen(str(LIB_DIR / LIB_NAME))

_ERRORS = {
    lib.SIRIUS_ERR_INVALID_ARGUMENT: errors.InvalidParameterError,
    lib.SIRIUS_ERR_IO: errors.ModelLoadError,
    lib.SIRIUS_ERR_MODEL_LOAD: errors.ModelLoadError,
    lib.SIRIUS_ERR_CONTEXT_OVERFLOW: errors.ContextOverflowError,
    lib.SIRIUS_ERR_DECODE: errors.DecodeError,
    lib.SIRIUS_ERR_UNSUPPORTED: errors.UnsupportedError,
}


def enum_names(ctype: str, prefix: str) -> dict[str, int]:
    """A sirius.h enum as {name: value} in value order, names lower-case without the prefix
    (enum_names("sirius_mode", "SIRIUS_MODE_") == {"dense": 0, "sparse": 1, "sirius": 2})."""
    items = sorted(ffi.typeof(ctype).relements.items(), key=lambda kv: kv[1])
    return {k[len(prefix):].lower(): v for k, v in items if k.startswith(prefix)}


def last_error() -> str:
    return ffi.string(lib.sirius_last_error()).decode("utf-8", "replace")


def devices() -> list[str]:
    """The devices besides the CPU that this build's backends found ("NAME: DESCRIPTION, N MiB"), [] for none."""
    return [d for d in ffi.string(lib.sirius_devices()).decode().split("\n") if d]


def check(rc: int) -> None:
    """Raises the exception that matches a sirius_status, with the native message (read on this thread)."""
    if rc != lib.SIRIUS_OK:
        raise _ERRORS.get(rc, errors.SiriusError)(last_error())


def sized_call(fn, initial: int, ctype: str = "char[]"):
    """Calls fn(buf, len, n_out) and grows buf once if the native side says it is too small.
    Returns (buf, n)."""
    n_out = ffi.new("int32_t *")
    size = max(int(initial), 1)
    for _ in range(2):
        buf = ffi.new(ctype, size)
        rc = fn(buf, size, n_out)
        if rc == lib.SIRIUS_ERR_BUFFER_TOO_SMALL:
            size = n_out[0] + 1
            continue
        check(rc)
        return buf, n_out[0]
    check(rc)
    raise errors.SiriusError("native buffer negotiation failed")
