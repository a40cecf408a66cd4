import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import suite_model  # noqa: E402
from sirius_local import registry  # noqa: E402

# The suite downloads nothing: models and eval data come from the cache, filled by the explicit step before it
# (README's test command: `sirius-local models fetch ...` and `sirius-local eval --fetch-only`); what is missing
# fails with that command named.
os.environ[registry.OFFLINE_ENV] = "1"


@pytest.fixture(scope="session")
def model_path() -> str:
    """The CI model (SmolLM2-135M Q4_1), from the user cache."""
    return suite_model.path()


@pytest.fixture(scope="module")
def llm(model_path):
    from sirius_local import LLM

    with LLM(model_path, n_ctx=1024, seed=0) as m:
        yield m


@pytest.fixture(scope="session")
def reference(model_path):
    """The independent NumPy forward pass (tests/reference.py) of the test model: weights dequantised once."""
    from reference import LlamaReference

    return LlamaReference(model_path)


@pytest.fixture()
def scratch_cache(tmp_path, monkeypatch):
    """A fresh SIRIUS_CACHE_DIR for models made by a test (its neuron-major down copies land there, not in the
    user's cache); models are then given by path."""
    d = tmp_path / "cache"
    monkeypatch.setenv("SIRIUS_CACHE_DIR", str(d))
    return d


@pytest.fixture()
def linked_model(model_path, tmp_path, scratch_cache):
    """The test model seen through a symlink in a fresh directory, so its sidecar lands there."""
    link = tmp_path / "model.gguf"
    os.symlink(model_path, link)
    return str(link)
