"""`sirius-local serve`: a real server on 127.0.0.1 (its own process), driven by the real `openai` client and raw
HTTP. Greedy outputs are compared with the Python API's on the same model; prompts stay under 64 tokens, so a
slot's reused prefix rounds exactly as a fresh prefill does (NOTES: only batches of 64+ tokens round differently).
"""

import concurrent.futures as cf
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("sse_starlette")
pytest.importorskip("uvicorn")

KEY = "test-key-0123"
N_CTX = 1024
MAX_BODY = 65536
QUESTIONS = ["What is the capital of France?", "Name a primary colour.", "What is 2 + 3?", "Say hello.",
             "Which animal says moo?"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_path, tmp_path, *args, name="server"):
    port = free_port()
    log = open(tmp_path / f"{name}.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "sirius_local.server", model_path, "--port", str(port),
                             "--n-ctx", str(N_CTX), *args], stdout=log, stderr=subprocess.STDOUT,
                            cwd=str(Path(__file__).parent.parent))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            pytest.fail(f"the server exited with {proc.returncode}:\n{log.read()}")
        try:
            status, _h, _b = request(port, "GET", "/health")
            if status == 200:
                return proc, port, log
        except OSError:
            pass
        time.sleep(0.2)
    proc.kill()
    pytest.fail("the server did not answer /health within 120 s")


def stop_server(proc, log) -> int:
    proc.send_signal(signal.SIGINT)
    try:
        rc = proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = proc.wait()
    log.close()
    return rc


def request(port, method, path, body=None, headers=None, timeout=60):
    """(status, headers, parsed JSON or raw bytes)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        h = {"Content-Type": "application/json", **(headers or {})}
        conn.request(method, path, body=data, headers=h)
        r = conn.getresponse()
        raw = r.read()
        try:
            return r.status, {k.lower(): v for k, v in r.getheaders()}, json.loads(raw)
        except ValueError:
            return r.status, {k.lower(): v for k, v in r.getheaders()}, raw
    finally:
        conn.close()


AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def server(model_path, tmp_path_factory):
    proc, port, log = start_server(model_path, tmp_path_factory.mktemp("srv"), "--parallel", "2", "--queue", "2",
                                   "--api-key", KEY, "--max-body-bytes", str(MAX_BODY))
    yield {"proc": proc, "port": port, "log": log}
    rc = stop_server(proc, log)
    assert rc == 0, "the server did not shut down cleanly on SIGINT"


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"http://127.0.0.1:{server['port']}/v1", api_key=KEY, max_retries=0, timeout=120)


def model_id(client):
    return client.models.list().data[0].id


def ref_chat(llm, q, max_tokens=24, **kw):
    llm.reset()
    r = llm.create_chat_completion([{"role": "user", "content": q}], max_tokens=max_tokens, temperature=0, **kw)
    return r["choices"][0]["message"]["content"], r["stats"]["token_ids"]


def rss_kib(pid) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


# ----- the openai client ------------------------------------------------------------------------------------------

def test_models_and_health(client, server, model_path):
    models = client.models.list()
    assert len(models.data) == 1 and models.data[0].id == Path(model_path).stem
    assert client.models.retrieve(models.data[0].id).id == models.data[0].id
    status, _h, body = request(server["port"], "GET", "/health")  # no key needed
    assert status == 200 and body["status"] == "ok" and body["slots_idle"] + body["slots_processing"] == 2
    assert [s["n_ctx"] for s in body["slots"]] == [N_CTX, N_CTX]


def test_chat_equals_python_api(client, llm):
    for q in QUESTIONS[:3]:
        r = client.chat.completions.create(model=model_id(client), messages=[{"role": "user", "content": q}],
                                           max_tokens=24, temperature=0)
        text, ids = ref_chat(llm, q)
        assert r.choices[0].message.content == text and r.choices[0].message.role == "assistant"
        assert r.model_extra["sirius"]["token_ids"] == ids
        assert r.usage.completion_tokens == len(ids) and r.usage.total_tokens == r.usage.prompt_tokens + len(ids)
        assert r.choices[0].finish_reason in ("stop", "length")


def test_completion_equals_python_api(client, llm):
    prompt = "The three primary colours are"
    r = client.completions.create(model=model_id(client), prompt=prompt, max_tokens=20, temperature=0)
    llm.reset()
    ref = llm.create_completion(prompt, max_tokens=20, temperature=0)
    assert r.choices[0].text == ref["choices"][0]["text"] and r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 20
    # The OpenAI default for /v1/completions is 16 tokens; token-id prompts are accepted too.
    r2 = client.completions.create(model=model_id(client), prompt=llm.tokenize(prompt), temperature=0)
    assert r2.usage.completion_tokens == 16 and ref["choices"][0]["text"].startswith(r2.choices[0].text)


def test_streamed_chat_with_usage(client, llm):
    q = QUESTIONS[0]
    chunks = list(client.chat.completions.create(model=model_id(client), messages=[{"role": "user", "content": q}],
                                                 max_tokens=24, temperature=0, stream=True,
                                                 stream_options={"include_usage": True}))
    text, ids = ref_chat(llm, q)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == text
    assert chunks[0].choices[0].delta.role == "assistant"
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1 and finish[0].model_extra["sirius"]["token_ids"] == ids
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(ids)
    # Without include_usage no chunk carries usage.
    plain = list(client.chat.completions.create(model=model_id(client), messages=[{"role": "user", "content": q}],
                                                max_tokens=8, temperature=0, stream=True))
    assert all(c.choices and c.usage is None for c in plain)


def test_sirius_extra_body(client, llm):
    q = QUESTIONS[1]
    _text, dense_ids = ref_chat(llm, q, max_tokens=30)
    r = client.chat.completions.create(model=model_id(client), messages=[{"role": "user", "content": q}],
                                       max_tokens=30, temperature=0,
                                       extra_body={"mode": "sirius", "acceptance": "strict", "density": 0.8,
                                                   "period": 4})
    st = r.model_extra["sirius"]
    assert st["mode"] == "sirius" and st["period"] == 4 and st["periods"] > 0 and st["aal"] is not None
    assert st["token_ids"] == dense_ids  # strict Sirius is dense greedy, through the server too
    text, ids = ref_chat(llm, q, max_tokens=30, mode="sirius", acceptance="strict", density=0.8, period=4)
    assert r.choices[0].message.content == text
    # The sparse model alone, streamed, with its stats on the finishing chunk.
    chunks = list(client.completions.create(model=model_id(client), prompt="Once upon a time", max_tokens=12,
                                            temperature=0, stream=True, extra_body={"mode": "sparse", "density": 0.5}))
    st = next(c for c in chunks if c.choices and c.choices[0].finish_reason).model_extra["sirius"]
    assert st["mode"] == "sparse" and st["density"] == 0.5 and st["completion_tokens"] == 12


def test_openai_client_errors(client, server):
    mid = model_id(client)
    msgs = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(model=mid, messages=msgs, temperature=-1)
    with pytest.raises(openai.BadRequestError, match="density"):
        client.chat.completions.create(model=mid, messages=msgs, extra_body={"mode": "sirius", "density": 2})
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="gpt-4o", messages=msgs)
    bad = openai.OpenAI(base_url=client.base_url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model=mid, messages=msgs)


# ----- raw HTTP: every error class, and nothing kills the server ---------------------------------------------------

@pytest.mark.parametrize("path, body, headers, status, code", [
    ("/v1/chat/completions", b"{not json", AUTH, 400, "invalid_request"),
    ("/v1/chat/completions", {"messages": "hi"}, AUTH, 400, "invalid_request"),
    ("/v1/chat/completions", {"messages": []}, AUTH, 400, "invalid_parameter"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4.5}, AUTH, 400,
     "invalid_request"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "n": 3}, AUTH, 400, "invalid_parameter"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "period": 1, "mode": "sirius"}, AUTH,
     400, "invalid_parameter"),
    ("/v1/completions", {"prompt": "hello " * 1100}, AUTH, 400, "context_length_exceeded"),
    ("/v1/completions", {"prompt": [10**9]}, AUTH, 400, "invalid_parameter"),
    ("/v1/completions", {"prompt": ["a", "b"]}, AUTH, 400, "invalid_parameter"),
    ("/v1/completions", {"prompt": "hi"}, {}, 401, "invalid_api_key"),
    ("/v1/completions", {"prompt": "hi"}, {"Authorization": "Bearer nope"}, 401, "invalid_api_key"),
    ("/v1/completions", {"prompt": "hi", "model": "llama-70b"}, AUTH, 404, "model_not_found"),
    ("/v1/nowhere", {"prompt": "hi"}, AUTH, 404, "not_found"),
    ("/v1/completions", {"prompt": "x" * (MAX_BODY + 10)}, AUTH, 413, "request_too_large"),
])
def test_errors_are_openai_shaped(server, path, body, headers, status, code):
    got, _h, out = request(server["port"], "POST", path, body, headers)
    assert got == status, out
    assert set(out) == {"error"} and out["error"]["code"] == code and out["error"]["message"]
    assert set(out["error"]) == {"message", "type", "param", "code"}
    assert server["proc"].poll() is None
    assert request(server["port"], "GET", "/health")[0] == 200


def test_chunked_oversized_body_is_413(server):
    conn = http.client.HTTPConnection("127.0.0.1", server["port"], timeout=30)
    try:
        chunks = (b"x" * 8192 for _ in range(MAX_BODY // 8192 + 4))
        conn.request("POST", "/v1/completions", body=chunks, headers={**AUTH, "Content-Type": "application/json"},
                     encode_chunked=True)
        r = conn.getresponse()
        assert r.status == 413 and json.loads(r.read())["error"]["code"] == "request_too_large"
    finally:
        conn.close()


def test_error_inside_a_stream_keeps_the_server(server):
    # A parameter error in a streamed request is still a 400 before any event: parameters are checked first.
    got, _h, out = request(server["port"], "POST", "/v1/chat/completions",
                           {"messages": [{"role": "user", "content": "hi"}], "stream": True, "top_p": 0}, AUTH)
    assert got == 400 and "top_p" in out["error"]["message"]
    # So is a prompt that cannot fit (the engine's own check, made before the stream starts).
    got, _h, out = request(server["port"], "POST", "/v1/completions", {"prompt": "hello " * 1100, "stream": True},
                           AUTH)
    assert got == 400 and out["error"]["code"] == "context_length_exceeded"


# ----- slots: disconnects, the queue, load ------------------------------------------------------------------------

def open_stream(port, body):
    """A streamed request held open: (connection, response), after its first event."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("POST", "/v1/chat/completions", body=json.dumps({**body, "stream": True}).encode(),
                 headers={**AUTH, "Content-Type": "application/json"})
    r = conn.getresponse()
    assert r.status == 200
    assert r.readline().startswith(b"data: ")
    return conn, r


def health(port):
    return request(port, "GET", "/health")[2]


def wait_for(cond, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


LONG = {"messages": [{"role": "user", "content": "Tell me a long story."}], "max_tokens": 900, "temperature": 0,
        "ignore_eos": True}


def test_disconnect_frees_the_slot_and_the_queue_is_bounded(server, client):
    port = server["port"]
    a = open_stream(port, LONG)
    b = open_stream(port, LONG)
    b_events = []  # b's events as they arrive (a reader thread), to see how far b had got at any moment

    def read_b():
        try:
            for line in iter(b[1].readline, b""):
                if line.startswith(b"data: {"):
                    b_events.append(line)
        except (OSError, ValueError):  # closed at the end of the test
            pass

    reader = None
    try:
        assert health(port)["slots_processing"] == 2
        # Both slots busy: two requests may wait (--queue 2), the next is refused with Retry-After.
        with cf.ThreadPoolExecutor(2) as ex:
            waiting = [ex.submit(request, port, "POST", "/v1/completions",
                                 {"prompt": "Hello", "max_tokens": 4, "temperature": 0}, AUTH) for _ in range(2)]
            assert wait_for(lambda: health(port)["requests_waiting"] == 2, 10)
            got, headers, out = request(port, "POST", "/v1/completions", {"prompt": "Hello", "max_tokens": 4}, AUTH)
            assert got == 503 and out["error"]["code"] == "server_busy" and int(headers["retry-after"]) >= 1
            # A client that goes away mid-stream cancels its generation: its slot serves the waiting requests
            # while b, started with a on the same 900-token request and decoding beside it, is far from done
            # (had a run on, a slot would have come free only when a or b ended, 900 tokens each).
            reader = cf.ThreadPoolExecutor(1)
            reader.submit(read_b)
            a[0].close()
            assert all(f.result(timeout=60)[0] == 200 for f in waiting)
            b_at_served = len(b_events)
        assert b_at_served < 450, f"the queue was served only after b had streamed {b_at_served} of 900 tokens"
        # The other stream runs on.
        assert wait_for(lambda: len(b_events) > b_at_served, 10)
        assert health(port)["slots_processing"] == 1
    finally:
        if b[0].sock:  # wakes the reader (a blocked recv; its socket's timeout bounds it otherwise)
            b[0].sock.shutdown(socket.SHUT_RDWR)
        b[0].close()
        if reader:
            reader.shutdown(wait=True)
    assert wait_for(lambda: health(port)["slots_idle"] == 2, 10)
    r = client.chat.completions.create(model=model_id(client), messages=[{"role": "user", "content": "hi"}],
                                       max_tokens=4, temperature=0)
    assert r.choices[0].finish_reason in ("stop", "length")


def _load_request(client, mid, i):
    q = QUESTIONS[i % len(QUESTIONS)]
    mode = ["dense", "sirius"][(i // 2) % 2]
    extra = {"mode": mode, "acceptance": "strict", "density": 0.8} if mode == "sirius" else {}
    kw = dict(model=mid, messages=[{"role": "user", "content": q}], max_tokens=12, temperature=0, extra_body=extra)
    if i % 2:
        chunks = list(client.chat.completions.create(stream=True, **kw))
        return (q, mode), "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return (q, mode), client.chat.completions.create(**kw).choices[0].message.content


def test_load_four_clients(server, client):
    mid = model_id(client)
    # Sequential first: every (question, mode) once, which is also the warm-up.
    expected = {}
    for i in range(2 * 2 * len(QUESTIONS)):
        key, text = _load_request(client, mid, i)
        expected.setdefault(key, text)
        assert expected[key] == text

    def concurrently(n):  # 4 clients x n requests
        with cf.ThreadPoolExecutor(4) as ex:
            futs = [ex.submit(lambda c: [_load_request(client, mid, n * c + j) for j in range(n)], c) for c in range(4)]
            return [r for f in futs for r in f.result(timeout=600)]

    # The warm-up also runs concurrently once: its first concurrent requests start threads (and their malloc
    # arenas) and the slots' shared-thread pools, which then stay.
    warm = concurrently(3)
    rss0 = rss_kib(server["proc"].pid)
    results = concurrently(25)
    assert len(results) == 100
    results += warm
    bad = [(k, t, expected[k]) for k, t in results if t != expected[k]]
    assert not bad, bad[:3]
    rss1 = rss_kib(server["proc"].pid)
    if rss0 is not None:
        assert rss1 <= 1.10 * rss0, f"RSS grew from {rss0} KiB to {rss1} KiB over 100 requests"
    assert server["proc"].poll() is None


# ----- the command line ------------------------------------------------------------------------------------------

def test_binding_beyond_loopback_without_a_key_warns(model_path, tmp_path):
    proc, port, log = start_server(model_path, tmp_path, "--host", "0.0.0.0", name="open")
    try:
        status, _h, out = request(port, "POST", "/v1/completions", {"prompt": "Hi", "max_tokens": 2})
        assert status == 200  # no key configured: no key needed
    finally:
        rc = stop_server(proc, log)
    text = (tmp_path / "open.log").read_text()
    assert "without --api-key" in text and rc == 0


@pytest.mark.parametrize("args, match", [
    (["--port", "70000"], "TCP port"),
    (["--parallel", "0"], "from 1 to 256"),
    (["--queue", "-1"], "from 0 to"),
])
def test_serve_refuses_bad_options(args, match):
    r = subprocess.run([sys.executable, "-m", "sirius_local.server", "--n-ctx", "64", *args], capture_output=True,
                       text=True, timeout=60, env={**os.environ})
    assert r.returncode == 2 and match in r.stderr and "Traceback" not in r.stderr


def test_every_generation_option_is_a_request_field():
    # The server passes LLM's generation options through by name (schema.PASSED, derived from GenerationOptions):
    # an option added to the LLM without a request field would be dropped silently.
    from sirius_local.server import schema

    for cls in (schema.CompletionRequest, schema.ChatRequest):
        assert set(schema._Generation.PASSED) | {"temperature", "max_tokens"} <= set(cls.model_fields), cls
