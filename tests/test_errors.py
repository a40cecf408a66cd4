"""Bad input raises a clear Python exception naming the problem, and the engine stays usable."""

import numpy as np
import pytest
from gguf import GGUFWriter

import sirius_local
from sirius_local import (ContextOverflowError, InvalidParameterError, LLM, ModelLoadError, ModelNotFoundError,
                          SiriusError)


def still_works(llm):
    out = llm.create_completion("The sky is", max_tokens=4)
    assert out["stats"]["completion_tokens"] >= 1


def test_missing_path():
    with pytest.raises(ModelNotFoundError, match="nor a known model name") as e:
        LLM("/nonexistent/model.gguf")
    assert "/nonexistent/model.gguf" in str(e.value)
    assert isinstance(e.value, FileNotFoundError)


def test_not_gguf(tmp_path):
    p = tmp_path / "notes.gguf"
    p.write_text("this is not a model\n" * 10)
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        LLM(str(p))


def test_directory(tmp_path):
    with pytest.raises(ModelLoadError, match="directory"):
        LLM(str(tmp_path))


def test_truncated_gguf(tmp_path, model_path):
    p = tmp_path / "truncated.gguf"
    with open(model_path, "rb") as src:
        p.write_bytes(src.read(4 << 20))
    with pytest.raises(ModelLoadError, match="could not load") as e:
        LLM(str(p))
    assert "truncated.gguf" in str(e.value)


def test_unsupported_architecture(tmp_path):
    p = tmp_path / "foo.gguf"
    w = GGUFWriter(str(p), "not-a-real-arch")
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ModelLoadError, match="not-a-real-arch"):
        LLM(str(p))


def test_unknown_model_name():
    with pytest.raises(ModelNotFoundError, match="smollm2-135m-instruct"):
        LLM("no-such-model")


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_ctx=0), "n_ctx"),
    (dict(n_ctx="big"), "n_ctx"),
    (dict(n_threads=0), "n_threads"),
    (dict(n_batch=0), "n_batch"),
    (dict(seed=-1), "seed"),
])
def test_bad_constructor_parameters(model_path, kwargs, match):
    with pytest.raises(InvalidParameterError, match=match):
        LLM(model_path, **kwargs)


def test_empty_prompt(llm):
    with pytest.raises(InvalidParameterError, match="prompt is empty"):
        llm.create_completion("")
    with pytest.raises(InvalidParameterError, match="prompt is empty"):
        llm.create_completion([])
    still_works(llm)


def test_prompt_longer_than_context(model_path):
    with LLM(model_path, n_ctx=64) as m:
        long = "word " * 200
        with pytest.raises(ContextOverflowError, match="context holds 64") as e:
            m.create_completion(long)
        assert "n_ctx" in str(e.value)
        with pytest.raises(ContextOverflowError):
            list(m.create_completion(long, stream=True))
        still_works(m)
        # Generation stops at the end of the context instead of overflowing it.
        out = m.create_completion("word " * 50, max_tokens=100)
        assert out["choices"][0]["finish_reason"] in ("length", "stop")
        assert out["stats"]["prompt_tokens"] + out["stats"]["completion_tokens"] <= 65


@pytest.mark.parametrize("kwargs, match", [
    (dict(temperature=-1.0), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_k=-3), "top_k"),
    (dict(min_p=1.5), "min_p"),
    (dict(max_tokens="many"), "max_tokens"),
    (dict(stop=[""]), "stop"),
    (dict(stop=[3]), "stop"),
    (dict(seed=2**40), "seed"),
    (dict(mode="bogus"), "mode 'bogus'"),
])
def test_bad_generation_parameters(llm, kwargs, match):
    with pytest.raises(InvalidParameterError, match=match):
        llm.create_completion("Hello", **kwargs)
    still_works(llm)


def test_bad_tokens_and_overflow_in_eval(llm):
    llm.reset()
    llm.eval(llm.tokenize("Hello there", add_bos=True))
    n = llm.n_tokens
    with pytest.raises(InvalidParameterError, match="outside the vocabulary"):
        llm.eval([1, llm.n_vocab() + 5])
    with pytest.raises(InvalidParameterError, match="outside the vocabulary"):
        llm.create_completion([-1, 5])
    with pytest.raises(ContextOverflowError, match="do not fit"):
        llm.eval([42] * (llm.n_ctx() + 1))
    assert llm.n_tokens == n  # nothing half-applied
    with pytest.raises(InvalidParameterError):
        llm.truncate(-1)
    still_works(llm)


def test_bad_chat_messages(llm):
    with pytest.raises(InvalidParameterError, match="messages"):
        llm.create_chat_completion([])
    with pytest.raises(InvalidParameterError, match="messages\\[0\\]"):
        llm.create_chat_completion([{"role": "user"}])
    still_works(llm)


def test_errors_share_a_base_class():
    for cls in (ModelLoadError, InvalidParameterError, ContextOverflowError):
        assert issubclass(cls, SiriusError)
    assert sirius_local.SiriusError is SiriusError
