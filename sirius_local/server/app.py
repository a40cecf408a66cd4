"""The OpenAI-compatible HTTP API over a SlotPool: routes, streaming, and OpenAI-shaped errors.

Generation runs in worker threads (the LLM's calls block); the event loop only routes, queues and streams. Every
failure of a request is answered as OpenAI's {"error": {...}} with its status, and leaves the server serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import json
import threading
import time
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import anyio
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse
from starlette.exceptions import HTTPException

from .. import __version__
from ..errors import (CalibrationMissingError, ContextOverflowError, InvalidParameterError, SiriusError,
                      UnsupportedError)
from ..llm import LLM
from .limits import DEFAULT_MAX_BODY_BYTES, DEFAULT_QUEUE, MAX_PARALLEL, MAX_QUEUE, MIN_MAX_BODY_BYTES
from .schema import DEFAULT_COMPLETION_MAX_TOKENS, ChatRequest, CompletionRequest
from .slots import QueueFull, SlotPool

RETRY_AFTER_S = 1

_STATUS_TYPE = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
                405: "invalid_request_error", 413: "invalid_request_error", 503: "unavailable_error",
                500: "server_error"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.headers = status, message, code, param, headers


def error_body(status: int, message: str, code: str | None = None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": _STATUS_TYPE.get(status, "server_error"), "param": param,
                      "code": code}}


def _error_response(e: ApiError) -> JSONResponse:
    return JSONResponse(error_body(e.status, e.message, e.code, e.param), status_code=e.status, headers=e.headers)


def api_error(e: BaseException) -> ApiError:
    """The HTTP answer to an exception raised by a request."""
    if isinstance(e, ApiError):
        return e
    if isinstance(e, ContextOverflowError):
        return ApiError(400, str(e), "context_length_exceeded")
    if isinstance(e, (InvalidParameterError, UnsupportedError, CalibrationMissingError)):
        return ApiError(400, str(e), "invalid_parameter")
    if isinstance(e, QueueFull):
        return ApiError(503, f"{e}: retry later", "server_busy", headers={"Retry-After": str(RETRY_AFTER_S)})
    if isinstance(e, SiriusError):
        return ApiError(500, str(e), "engine_error")
    return ApiError(500, f"internal error: {type(e).__name__}: {e}", "internal_error")


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes is a 413, by its Content-Length or as it arrives."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await _error_response(self._too_large())(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:
                    raise HTTPException(413, self._too_large().message)
            return msg

        await self.app(scope, counted, send)

    def _too_large(self) -> ApiError:
        return ApiError(413, f"the request body is over this server's limit of {self.limit} bytes "
                             f"(--max-body-bytes)", "request_too_large")


def model_id_for(model_path: str, name: str | None) -> str:
    """The id clients name the model by: the registry name they served it under, else the file's stem."""
    if name and not name.endswith(".gguf") and "/" not in name:
        return name
    return Path(model_path).stem


def create_app(llm: LLM, *, parallel: int = 1, queue: int = DEFAULT_QUEUE, api_key: str | None = None,
               model_id: str | None = None, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> FastAPI:
    """The ASGI app serving `llm`'s model through `parallel` slots: `llm` itself and parallel - 1 sessions over
    its weights (LLM.session), which the app closes on shutdown (the caller closes `llm`)."""
    if not (isinstance(parallel, int) and 1 <= parallel <= MAX_PARALLEL):
        raise InvalidParameterError(f"parallel must be an integer from 1 to {MAX_PARALLEL}, got {parallel!r}")
    if not (isinstance(queue, int) and 0 <= queue <= MAX_QUEUE):
        raise InvalidParameterError(f"queue must be an integer from 0 to {MAX_QUEUE} (0: refuse when every slot is "
                                    f"busy), got {queue!r}")
    if not (isinstance(max_body_bytes, int) and max_body_bytes >= MIN_MAX_BODY_BYTES):
        raise InvalidParameterError(f"max_body_bytes must be an integer >= {MIN_MAX_BODY_BYTES}, got {max_body_bytes!r}")
    extra: list[LLM] = []
    try:
        for _ in range(parallel - 1):
            extra.append(llm.session())
    except BaseException:
        for s in extra:
            s.close()
        raise
    pool = SlotPool([llm, *extra], queue)
    mid = model_id or model_id_for(llm.model_path, None)
    names = {mid, llm.model_path, Path(llm.model_path).name, Path(llm.model_path).stem}
    created = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        try:
            yield
        finally:
            for s in extra:  # cancels any generation still running (at its next token)
                s.close()

    app = FastAPI(title="sirius-local", version=__version__, lifespan=lifespan)
    app.add_middleware(BodyLimit, limit=max_body_bytes)

    @app.exception_handler(ApiError)
    async def _api(_req, e: ApiError):
        return _error_response(e)

    @app.exception_handler(HTTPException)
    async def _http(_req, e: HTTPException):
        msg = e.detail if isinstance(e.detail, str) else json.dumps(e.detail)
        if e.status_code in (404, 405):
            what = "no such endpoint" if e.status_code == 404 else "wrong method"
            msg = (f"{what}: {_req.method} {_req.url.path} (this server has GET /v1/models, POST /v1/chat/completions, "
                   f"POST /v1/completions, GET /health)")
        code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(e.status_code)
        return JSONResponse(error_body(e.status_code, msg, code), status_code=e.status_code, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_req, e: RequestValidationError):
        parts = []
        for err in e.errors()[:5]:
            loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
            if err.get("type") == "json_invalid":
                parts.append(f"the body is not valid JSON ({err.get('ctx', {}).get('error', err.get('msg'))})")
            else:
                parts.append(f"{loc or 'body'}: {err.get('msg')}")
        return JSONResponse(error_body(400, "; ".join(parts) or "invalid request", "invalid_request"), status_code=400)

    async def _mapped(_req, e: Exception):
        return _error_response(api_error(e))

    # A request's own failure (bad parameter, full queue, engine error) is answered, not logged as a crash.
    for cls in (SiriusError, QueueFull):
        app.add_exception_handler(cls, _mapped)
    app.add_exception_handler(Exception, _mapped)  # anything else: a 500 (with the traceback in the log)

    async def auth(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise ApiError(401, "missing or wrong API key: send 'Authorization: Bearer <key>' with the key the "
                                "server was started with (--api-key)", "invalid_api_key")

    def check_model(name: str | None) -> None:
        if name is not None and name not in names:
            raise ApiError(404, f"the model {name!r} does not exist: this server serves {mid!r} (GET /v1/models)",
                           "model_not_found", "model")

    def model_card() -> dict:
        return {"id": mid, "object": "model", "created": created, "owned_by": "sirius-local",
                "meta": {"path": llm.model_path, "architecture": llm.architecture, "n_ctx": llm.n_ctx(),
                         "n_vocab": llm.n_vocab(), "slots": len(pool.slots)}}

    @app.get("/health")
    async def health():
        slots = pool.describe()
        busy = sum(s["state"] == "processing" for s in slots)
        return {"status": "ok", "slots_idle": len(slots) - busy, "slots_processing": busy,
                "requests_waiting": pool.waiting, "queue": pool.queue, "slots": slots}

    @app.get("/v1/models", dependencies=[Depends(auth)])
    async def models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name:path}", dependencies=[Depends(auth)])
    async def model(name: str):
        check_model(name)
        return model_card()

    def reshape(obj: dict) -> dict:
        """The LLM's chunk or response as OpenAI's: our model id; the engine's stats under `sirius`."""
        obj["model"] = mid
        stats = obj.pop("stats", None)
        if stats is not None:
            obj["sirius"] = stats
        return obj

    async def generate(req, tokens: list[int], call: Callable[..., Any]):
        """Runs call(slot_llm, stream=...) on the best slot: the response dict, or an SSE stream of chunks."""
        slot = await pool.acquire(tokens)
        if not req.stream:
            try:
                out = await anyio.to_thread.run_sync(functools.partial(call, slot.llm, stream=False))
            finally:
                await pool.release(slot)
            return reshape(out)
        try:
            # Parameters (and whether the prompt fits) are checked here, before the response starts: still a 400.
            it = await anyio.to_thread.run_sync(functools.partial(call, slot.llm, stream=True))
        except BaseException:
            await pool.release(slot)
            raise
        return EventSourceResponse(events(it, slot, req.include_usage), ping=15)

    async def events(it, slot, include_usage: bool) -> AsyncIterator[dict]:
        # One thread per stream pumps the LLM's chunks into the event loop (a hop per token, not a thread-pool
        # round trip per token); it stops and closes the stream, cancelling the generation at its next token,
        # when this task ends early (a client that went away).
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()

        def put(item) -> None:
            try:
                loop.call_soon_threadsafe(chunks.put_nowait, item)
            except RuntimeError:  # the event loop is gone (shutdown)
                stop.set()

        def pump() -> None:
            try:
                with contextlib.closing(it):
                    for chunk in it:
                        put(("chunk", chunk))
                        if stop.is_set():
                            break
                put(("end", None))
            except BaseException as e:  # noqa: BLE001 - handed to the stream, which answers it
                put(("error", e))

        worker = threading.Thread(target=pump, name=f"sirius-slot-{slot.id}", daemon=True)
        worker.start()
        released = False

        async def hand_back() -> None:
            nonlocal released
            if not released:
                released = True
                stop.set()
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(worker.join)
                    await pool.release(slot)

        try:
            while True:
                kind, val = await chunks.get()
                if kind == "end":
                    break
                if kind == "error":
                    raise val
                if val["choices"] and val["choices"][0].get("finish_reason"):
                    # The generation is over: the slot is free before the client hears of it, so the client's
                    # next request finds it idle.
                    await hand_back()
                usage = val.pop("usage", None)
                last = reshape(val)
                yield {"data": json.dumps(last, separators=(",", ":"))}
                if usage is not None and include_usage:
                    tail = {k: last[k] for k in ("id", "object", "created", "model")}
                    yield {"data": json.dumps({**tail, "choices": [], "usage": usage}, separators=(",", ":"))}
            yield {"data": "[DONE]"}
        except Exception as e:  # the response has started: the error goes in the stream, as llama.cpp's server does
            err = api_error(e)
            yield {"data": json.dumps(error_body(err.status, err.message, err.code))}
        finally:
            await hand_back()

    @app.post("/v1/completions", dependencies=[Depends(auth)])
    async def completions(req: CompletionRequest):
        check_model(req.model)
        kw = req.generation_kwargs(DEFAULT_COMPLETION_MAX_TOKENS)
        tokens = await anyio.to_thread.run_sync(llm.prompt_tokens, req.prompt_value())
        return await generate(req, tokens, lambda s, stream: s.create_completion(tokens, stream=stream, **kw))

    @app.post("/v1/chat/completions", dependencies=[Depends(auth)])
    async def chat_completions(req: ChatRequest):
        check_model(req.model)
        kw = req.generation_kwargs(None)
        messages = req.message_dicts()
        tokens = await anyio.to_thread.run_sync(llm.chat_tokens, messages)
        return await generate(req, tokens, lambda s, stream: s.create_chat_completion(messages, stream=stream, **kw))

    return app
