"""scripts/install-torch.sh (run by scripts/install.sh for the analysis and train extras) takes
the CPU build of torch on a machine without an NVIDIA GPU: the default index's Linux torch is
the CUDA build with about 20 nvidia-* packages (several GB). Checked with ``pip install
--dry-run --report`` against local stand-in indexes (offline: a default index whose
``torch==2.13.0`` needs an nvidia-* package, a CPU index with ``2.13.0+cpu``), and against
PyTorch's real CPU index where it can be reached."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "install-torch.sh"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def _wheel(folder: Path, name: str, version: str, requires: tuple[str, ...] = ()) -> Path:
    """A minimal installable wheel: just enough metadata for pip to resolve it."""
    dist = f"{name.replace('-', '_')}-{version}"
    path = folder / f"{dist}-py3-none-any.whl"
    meta = "".join([f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
                    *(f"Requires-Dist: {r}\n" for r in requires)])
    files = {f"{dist}.dist-info/METADATA": meta,
             f"{dist}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\n"
                                        "Root-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{dist}.dist-info/RECORD"] = "".join(f"{f},,\n" for f in files) + \
        f"{dist}.dist-info/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as z:
        for f, text in files.items():
            z.writestr(f, text)
    return path


def _index(root: Path, wheels: dict[str, list[tuple[str, tuple[str, ...]]]]) -> str:
    """A PEP 503 simple index under ``root``: project name -> [(version, requires)]."""
    (root / "files").mkdir(parents=True)
    for name, versions in wheels.items():
        page = root / "simple" / name
        page.mkdir(parents=True)
        links = [_wheel(root / "files", name, v, req).name for v, req in versions]
        page.joinpath("index.html").write_text("<html><body>" + "".join(
            f'<a href="../../files/{w}">{w}</a>' for w in links) + "</body></html>")
    return (root / "simple").as_uri()


def _env(tmp_path: Path, *, gpu: bool, default_index: str) -> dict[str, str]:
    """pip without this machine's configuration (indexes, wheel folders, constraints), and an
    ``nvidia-smi`` that finds a GPU or fails as on a machine without one."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\n" + ("echo 'GPU 0: NVIDIA H100'\n" if gpu else "exit 9\n"))
    smi.chmod(0o755)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PIP_", "INSTRUCTFORGE_TORCH", "TORCH_CPU_INDEX"))}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", PIP_CONFIG_FILE=os.devnull,
               PIP_INDEX_URL=default_index, PIP_NO_INPUT="1", PIP_RETRIES="0",
               PIP_TIMEOUT="15")
    return env


def _plan(tmp_path: Path, env: dict[str, str]) -> tuple[subprocess.CompletedProcess, dict]:
    """Run the script in ``pip install --dry-run --report`` form: {name: version} it would
    install (ignoring the torch already in this environment)."""
    report = tmp_path / "report.json"
    proc = subprocess.run(
        ["bash", str(SCRIPT), sys.executable, "--dry-run", "--ignore-installed", "--quiet",
         "--report", str(report)], env=env, capture_output=True, text=True, timeout=300)
    plan = {}
    if report.exists():
        plan = {i["metadata"]["name"]: i["metadata"]["version"]
                for i in json.loads(report.read_text())["install"]}
    return proc, plan


@pytest.fixture
def indexes(tmp_path: Path) -> tuple[str, str]:
    """(default index, CPU index): the default one's torch 2.13.0 is the CUDA look-alike."""
    default = _index(tmp_path / "default", {
        "torch": [("2.13.0", ("nvidia-cublas-cu12",))],
        "nvidia-cublas-cu12": [("12.9.1", ())],
    })
    cpu = _index(tmp_path / "cpu", {"torch": [("2.13.0+cpu", ())]})
    return default, cpu


def test_without_a_gpu_the_cpu_build_is_chosen(tmp_path, indexes):
    default, cpu = indexes
    env = _env(tmp_path, gpu=False, default_index=default) | {"TORCH_CPU_INDEX": cpu}
    proc, plan = _plan(tmp_path, env)
    assert proc.returncode == 0, proc.stderr
    assert plan == {"torch": "2.13.0+cpu"}
    assert "INSTRUCTFORGE_TORCH=cuda" in proc.stderr  # says how to get the GPU build


def test_with_a_gpu_the_default_index_cuda_build_is_chosen(tmp_path, indexes):
    default, cpu = indexes
    env = _env(tmp_path, gpu=True, default_index=default) | {"TORCH_CPU_INDEX": cpu}
    proc, plan = _plan(tmp_path, env)
    assert proc.returncode == 0, proc.stderr
    assert plan == {"torch": "2.13.0", "nvidia-cublas-cu12": "12.9.1"}


def test_instructforge_torch_cpu_overrides_a_gpu(tmp_path, indexes):
    default, cpu = indexes
    env = _env(tmp_path, gpu=True, default_index=default) | {"TORCH_CPU_INDEX": cpu,
                                                             "INSTRUCTFORGE_TORCH": "cpu"}
    assert _plan(tmp_path, env)[1] == {"torch": "2.13.0+cpu"}


def test_an_unreachable_cpu_index_never_falls_back_to_the_cuda_build(tmp_path, indexes):
    default, _ = indexes
    env = _env(tmp_path, gpu=False, default_index=default) | {
        "TORCH_CPU_INDEX": (tmp_path / "nowhere").as_uri()}
    proc, plan = _plan(tmp_path, env)
    assert proc.returncode != 0
    assert plan == {}
    assert "could not install the CPU build" in proc.stderr


def test_an_unreachable_cpu_index_takes_a_cpu_build_from_the_default_index(tmp_path):
    # A mirror or wheel folder that carries the CPU build (+cpu) beside the CUDA one.
    default = _index(tmp_path / "mirror", {
        "torch": [("2.13.0", ("nvidia-cublas-cu12",)), ("2.13.0+cpu", ())],
        "nvidia-cublas-cu12": [("12.9.1", ())],
    })
    env = _env(tmp_path, gpu=False, default_index=default) | {
        "TORCH_CPU_INDEX": (tmp_path / "nowhere").as_uri()}
    proc, plan = _plan(tmp_path, env)
    assert proc.returncode == 0, proc.stderr
    assert plan == {"torch": "2.13.0+cpu"}


def _reachable(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/torch/", timeout=5) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.mark.slow
def test_pytorch_cpu_index_resolves_torch_without_nvidia_packages(tmp_path):
    if not _reachable(CPU_INDEX):
        pytest.skip(f"{CPU_INDEX} cannot be reached from here")
    env = _env(tmp_path, gpu=False, default_index="https://pypi.org/simple")
    proc, plan = _plan(tmp_path, env)
    assert proc.returncode == 0, proc.stderr
    assert plan["torch"].endswith("+cpu") or sys.platform == "darwin"
    assert not [n for n in plan if n.startswith("nvidia-")]
