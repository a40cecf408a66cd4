"""`sirius-local serve`: an OpenAI-compatible local HTTP server, N parallel sessions over one loaded model.

Needs the `server` extra (`pip install 'sirius-local[server]'`: FastAPI, uvicorn, sse-starlette).
"""

from __future__ import annotations

import ipaddress
import sys
import warnings

from .. import registry
from ..errors import UnsupportedError
from .limits import DEFAULT_HOST, DEFAULT_MAX_BODY_BYTES, DEFAULT_PORT, DEFAULT_QUEUE

__all__ = ["create_app", "serve", "DEFAULT_MAX_BODY_BYTES"]


def _app_module():
    """The server itself, which needs the `server` extra (imported on first use, so `limits` does not)."""
    try:
        from . import app
    except ImportError as e:
        raise UnsupportedError(f"the server needs the 'server' extra ({e.name} is missing): "
                               f"pip install 'sirius-local[server]'") from None
    return app


def __getattr__(name):
    if name == "create_app":
        return _app_module().create_app
    raise AttributeError(name)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(model: str | None = None, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, parallel: int = 1,
          queue: int = DEFAULT_QUEUE,
          api_key: str | None = None, alias: str | None = None, n_ctx: int = 4096, n_threads: int | None = None,
          n_gpu_layers: int = 0, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, verbose: bool = False,
          log_level: str = "info") -> None:
    """Loads `model` (a .gguf path, a registry name, or None for the default model) and serves it until
    interrupted. Each of the `parallel` slots has its own n_ctx-token KV cache."""
    from ..llm import LLM

    app_module = _app_module()
    import uvicorn

    if not is_loopback(host) and not api_key:
        warnings.warn(f"serving on {host} without --api-key: anyone who can reach this port can use the model",
                      RuntimeWarning, stacklevel=2)
    with LLM(model, n_ctx=n_ctx, n_threads=n_threads, n_gpu_layers=n_gpu_layers, verbose=verbose) as llm:
        mid = alias or app_module.model_id_for(llm.model_path, registry.DEFAULT_MODEL if model is None else str(model))
        app = app_module.create_app(llm, parallel=parallel, queue=queue, api_key=api_key, model_id=mid,
                         max_body_bytes=max_body_bytes)
        kv = llm.kv_cache_bytes() / 2**20
        print(f"sirius-local serve: {mid} on http://{host}:{port}/v1, {parallel} slot(s) x {n_ctx} tokens "
              f"({kv:.0f} MiB of KV cache each, {kv * parallel:.0f} MiB in all), {llm.n_threads} threads per slot, "
              f"queue {queue}", file=sys.stderr, flush=True)
        uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=verbose)
