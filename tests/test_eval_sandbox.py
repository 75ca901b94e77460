"""Model-written code runs in an OS sandbox (bubblewrap): it cannot read, write, connect to
or outlive anything outside it. Where no sandbox works, code eval refuses unless told
``--unsafe-exec``, and then the Python-level guard still contains careless code."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from instructforge.cli import app
from instructforge.devserver import DevServer
from instructforge.tuning.eval import EvalConfig, EvalError, evaluate
from instructforge.tuning.humaneval import build_program, extract_code, run_tests
from instructforge.tuning.sandbox import SandboxUnavailable, run_python, sandbox_problem

NO_SANDBOX = sandbox_problem()
needs_bwrap = pytest.mark.skipif(
    NO_SANDBOX is not None, reason=f"no bubblewrap sandbox here: {NO_SANDBOX}"
)


def hide_bwrap(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Make this machine look like one without bubblewrap."""
    empty = tmp_path / "empty-path"
    empty.mkdir(exist_ok=True)
    monkeypatch.setenv("PATH", str(empty))


@pytest.fixture(params=["bwrap", "python-guard"])
def run(request, monkeypatch, tmp_path):
    """``run_python`` in the sandbox, and with ``unsafe=True`` on a machine without one."""
    if request.param == "bwrap":
        if NO_SANDBOX:
            pytest.skip(f"no bubblewrap sandbox here: {NO_SANDBOX}")
        fn = run_python
    else:
        hide_bwrap(monkeypatch, tmp_path)
        fn = functools.partial(run_python, unsafe=True)

    def go(code: str, **kw):
        res = fn(code, **kw)
        assert res.isolation == request.param
        return res

    return go


@pytest.fixture
def victim(tmp_path):
    """A file outside the sandbox's temporary directory that programs try to harm."""
    f = tmp_path / "precious.txt"
    f.write_text("keep me")
    return f


# ---------------------------------------------------------------- both modes: limits and guard


def test_a_normal_program_passes_and_its_output_comes_back(run):
    res = run("print(6 * 7)")
    assert res.passed and res.stdout.strip() == "42"


def test_infinite_loop_is_killed_at_the_timeout(run):
    res = run("while True:\n    pass\n", timeout=1.5)
    assert res.status == "timeout"


def test_huge_allocation_fails_inside_the_child(run):
    res = run("x = bytearray(16 * 1024 ** 3)\nprint('allocated')", memory_mb=256)
    assert res.status == "failed"
    assert "MemoryError" in res.stderr


@pytest.mark.parametrize(
    "snippet",
    [
        "import os\nos.remove({path!r})",
        "import pathlib\npathlib.Path({path!r}).unlink()",
        "import shutil\nshutil.rmtree({dir!r})",
        "import os\nos.system('rm -f ' + {path!r})",
        "import subprocess\nsubprocess.run(['rm', '-f', {path!r}])",
        "open({path!r}, 'w').write('overwritten')",
        "import os\nos.rename({path!r}, {path!r} + '.bak')",
    ],
)
def test_deleting_or_overwriting_a_file_outside_the_temp_dir_is_contained(run, victim, snippet):
    res = run(snippet.format(path=str(victim), dir=str(victim.parent)))
    assert res.status == "failed"
    # Refused by the guard, or (in the sandbox) the file is not even there.
    assert "PermissionError" in res.stderr or "FileNotFoundError" in res.stderr
    assert victim.read_text() == "keep me"


def test_writing_inside_its_own_temp_dir_is_allowed(run):
    res = run("open('scratch.txt', 'w').write('ok')\nprint(open('scratch.txt').read())")
    assert res.passed and res.stdout.strip() == "ok"


def test_ctypes_cannot_be_imported_to_undo_the_guard(run):
    res = run("import ctypes")
    assert res.status == "failed"


def test_runaway_output_to_a_file_is_capped(run):
    res = run("open('big', 'w').write('x' * (64 * 1024 * 1024))", timeout=5)
    assert res.status == "failed"


# ---------------------------------------------------------------- escapes the sandbox stops

# Undo the Python-level guard the way code written to escape does: drop the poisoned module
# entries and import the real modules afresh.
UNGUARD = """
import sys
for _m in ("os", "posix", "subprocess", "_posixsubprocess", "ctypes", "_ctypes", "shutil",
           "io", "_io", "resource"):
    sys.modules.pop(_m, None)
import builtins, importlib, os, subprocess, io, _io
builtins.open = _io.open
"""


def host_processes_with(marker: str) -> list[str]:
    """Command lines of processes on this machine that contain ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if marker in cmdline:
                found.append(cmdline)
    return found


@needs_bwrap
def test_unguarding_really_restores_the_os_module():
    # The escapes below are real attempts: with the guard undone, fork and exec work.
    res = run_python(UNGUARD + "print(subprocess.run(['echo', 'spawned'], "
                     "capture_output=True, text=True).stdout)")
    assert res.passed and "spawned" in res.stdout


@needs_bwrap
@pytest.mark.parametrize("which", ["test file", "/etc/passwd", "evaluator source"])
def test_files_outside_the_sandbox_cannot_be_read(tmp_path, which):
    if which == "test file":
        target = tmp_path / "secret.txt"
        target.write_text("TOPSECRET-CONTENT")
    elif which == "evaluator source":
        target = Path(__file__)
    else:
        target = Path("/etc/passwd")
    assert target.read_bytes()  # the host can read it
    code = UNGUARD + f"data = _io.open({str(target)!r}, 'rb').read()\nprint('READ', len(data))"
    res = run_python(code)
    assert res.status == "failed" and "READ" not in res.stdout
    assert "FileNotFoundError" in res.stderr or "PermissionError" in res.stderr


@needs_bwrap
def test_the_parents_environment_is_not_visible(monkeypatch):
    secret = "sk-PLANTED-SECRET-KEY"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    # A process started with the key, whose /proc/PID/environ holds it from the start.
    bystander = subprocess.Popen(["sleep", "120"], env={**os.environ})
    code = UNGUARD + """
print(dict(os.environ))
for pid in os.listdir("/proc"):
    if pid.isdigit():
        for f in ("environ", "cmdline"):
            try:
                print(pid, f, open(f"/proc/{pid}/{f}", "rb").read())
            except OSError as e:
                print(pid, f, e)
"""
    try:
        res = run_python(code)
    finally:
        bystander.kill()
        bystander.wait()
    assert res.passed
    assert "PLANTED" not in res.stdout + res.stderr
    assert "OPENAI_API_KEY" not in res.stdout


@needs_bwrap
def test_a_local_socket_cannot_be_reached():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        res = run_python(f"""
import socket
s = socket.create_connection(("127.0.0.1", {port}), timeout=5)
s.sendall(b"exfiltrated")
print("CONNECTED")
""")
        server.setblocking(False)
        with pytest.raises(BlockingIOError):
            server.accept()  # nobody connected
    assert res.status == "failed" and "CONNECTED" not in res.stdout


WRITES = {
    "io.FileIO": "io.FileIO({path!r}, 'w').write(b'escaped')",
    "_io.open": "_io.open({path!r}, 'w').write('escaped')",
    "sqlite3": "import sqlite3\nc = sqlite3.connect({path!r})\n"
               "c.execute('create table t (x)')\nc.commit()",
    "os.mkdir": "os.mkdir({path!r})",
}


@needs_bwrap
@pytest.mark.parametrize("how", list(WRITES))
@pytest.mark.parametrize("where", ["test dir", "python install"])
def test_nothing_can_be_written_outside_the_sandbox(tmp_path, how, where):
    parent = tmp_path if where == "test dir" else Path(sys.base_prefix)
    target = parent / f"escaped-{uuid.uuid4().hex}"
    try:
        res = run_python(UNGUARD + WRITES[how].format(path=str(target)))
        assert not target.exists()
    finally:
        if target.is_dir():
            target.rmdir()
        elif target.exists():
            target.unlink()
    assert res.status == "failed"  # the directory is read-only or absent inside


@needs_bwrap
def test_a_reimported_subprocess_cannot_touch_the_host(victim):
    code = UNGUARD + f"""
r = subprocess.run(["/bin/sh", "-c", "rm -f {victim}; echo pwned > {victim}.new; cat {victim}"],
                   capture_output=True, text=True)
print(r.returncode, r.stdout, r.stderr)
os.system("rm -rf {victim.parent}")
"""
    res = run_python(code)
    assert victim.read_text() == "keep me"
    assert not Path(f"{victim}.new").exists()
    assert "keep me" not in res.stdout


@needs_bwrap
def test_ctypes_reaches_no_host_file_or_process(victim):
    bystander = subprocess.Popen(["sleep", "120"])
    try:
        code = UNGUARD + f"""
import ctypes, signal
libc = ctypes.CDLL(None, use_errno=True)
print("unlink", libc.unlink({str(victim).encode()!r}), ctypes.get_errno())
print("kill", libc.kill({bystander.pid}, signal.SIGKILL), ctypes.get_errno())
os.kill({bystander.pid}, signal.SIGKILL)
"""
        res = run_python(code)
        assert bystander.poll() is None  # still alive
        assert victim.read_text() == "keep me"
        assert "unlink -1" in res.stdout and "kill -1" in res.stdout
        assert res.status == "failed" and "ProcessLookupError" in res.stderr
    finally:
        bystander.kill()
        bystander.wait()


def detached_sleeper(marker: str, then: str) -> str:
    """A program that starts a setsid + double-forked grandchild which keeps stdout and stderr
    open and would print late, waits until it runs, then does ``then``."""
    return UNGUARD + f"""
import time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        open("/tmp/started", "w").close()
        os.execv(sys.executable, [sys.executable, "-c",
                 "import time; time.sleep(20); print('LATE {marker}', flush=True)"])
    os._exit(0)
while not os.path.exists("/tmp/started"):
    time.sleep(0.05)
time.sleep(0.5)  # let it exec
print("STARTED", flush=True)
{then}
"""


@needs_bwrap
@pytest.mark.parametrize("then", ["while True: pass", "pass"], ids=["timeout", "exit"])
def test_a_detached_grandchild_does_not_outlive_the_program(then):
    marker = f"instructforge-escape-{uuid.uuid4().hex}"
    res = run_python(detached_sleeper(marker, then), timeout=3)
    assert "STARTED" in res.stdout  # the grandchild was running
    assert res.status == ("timeout" if then.startswith("while") else "passed")
    # The call returned without waiting for the grandchild (which held stdout open and would
    # have printed), and nothing of it is left running.
    assert "LATE" not in res.stdout
    assert host_processes_with(marker) == []


# ---------------------------------------------------------------- no sandbox: refuse by default


def test_without_bwrap_running_code_is_refused(monkeypatch, tmp_path):
    hide_bwrap(monkeypatch, tmp_path)
    assert "bubblewrap" in (sandbox_problem() or "")
    with pytest.raises(SandboxUnavailable, match="bubblewrap"):
        run_python("print(1)")
    res = run_python("print(1)", unsafe=True)
    assert res.passed and res.isolation == "python-guard"


def test_a_bwrap_that_cannot_create_namespaces_counts_as_no_sandbox(monkeypatch, tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\n"
                    "exit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:/usr/bin:/bin")
    assert "No permissions to create new namespace" in (sandbox_problem() or "")


CODE_ANSWER = "```python\ndef add(a, b):\n    return a + b\n```"


def test_code_eval_without_a_sandbox_refuses_with_a_clear_message(monkeypatch, tmp_path):
    hide_bwrap(monkeypatch, tmp_path)
    with pytest.raises(EvalError, match="--unsafe-exec"):
        evaluate(EvalConfig(task="code", limit=1, progress=False), tmp_path / "ev",
                 llms={"model": object()})  # refused before any model is used
    with DevServer(answer=CODE_ANSWER) as srv:
        res = CliRunner().invoke(app, [
            "eval", "--task", "code", "--model", f"openai:dev@{srv.url}", "--limit", "1",
            "-o", str(tmp_path / "cli"), "--no-progress"])
        assert res.exit_code == 2, res.output
        assert "bubblewrap" in res.output and "--unsafe-exec" in res.output
        assert "Traceback" not in res.output
        assert srv.served == 0


def test_unsafe_exec_runs_code_eval_without_a_sandbox_with_a_warning(monkeypatch, tmp_path):
    hide_bwrap(monkeypatch, tmp_path)
    out = tmp_path / "cli"
    with DevServer(answer=CODE_ANSWER) as srv:
        res = CliRunner().invoke(app, [
            "eval", "--task", "code", "--model", f"openai:dev@{srv.url}", "--limit", "1",
            "-o", str(out), "--no-progress", "--unsafe-exec"])
    assert res.exit_code == 0, res.output
    assert "warning" in res.output and "without an OS sandbox" in res.output
    rec = json.loads((out / "data" / "records.jsonl").read_text().splitlines()[0])
    assert rec["metadata"]["scores"]["model"]["isolation"] == "python-guard"


@needs_bwrap
def test_code_eval_records_that_it_ran_in_the_sandbox(tmp_path):
    with DevServer(answer=CODE_ANSWER) as srv:
        res = CliRunner().invoke(app, [
            "eval", "--task", "code", "--model", f"openai:dev@{srv.url}", "--limit", "1",
            "-o", str(tmp_path / "ev"), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "warning" not in res.output
    rec = json.loads((tmp_path / "ev" / "data" / "records.jsonl").read_text().splitlines()[0])
    assert rec["metadata"]["scores"]["model"]["isolation"] == "bwrap"


# ---------------------------------------------------------------- building the program


def test_code_block_defining_the_entry_point_is_chosen():
    answer = (
        "Helper:\n```python\ndef helper():\n    pass\n```\n"
        "Solution:\n```python\ndef add(a, b):\n    return a + b\n```"
    )
    assert extract_code(answer, "add") == "def add(a, b):\n    return a + b\n"


def test_unclosed_code_block_is_still_read():
    assert "return 1" in extract_code("```python\ndef f():\n    return 1\n", "f")


PROMPT = 'def add(a, b):\n    """Return a + b."""\n'
TEST = "def check(candidate):\n    assert candidate(2, 3) == 5\n"


@pytest.fixture
def unsafe() -> bool:
    """Run program tests in the sandbox where there is one, else without (python guard)."""
    return NO_SANDBOX is not None


def test_full_function_answer_replaces_the_prompt_stub(unsafe):
    res = asyncio.run(run_tests(PROMPT, "```python\ndef add(a, b):\n    return a + b\n```",
                                TEST, "add", unsafe=unsafe))
    assert res.passed


def test_body_continuation_answer_is_appended_to_the_prompt(unsafe):
    res = asyncio.run(run_tests(PROMPT, "    return a + b\n", TEST, "add", unsafe=unsafe))
    assert res.passed


def test_wrong_answer_fails_its_tests(unsafe):
    res = asyncio.run(run_tests(PROMPT, "    return a - b\n", TEST, "add", unsafe=unsafe))
    assert res.status == "failed" and "AssertionError" in res.stderr


def test_program_ends_by_calling_check_on_the_entry_point():
    assert build_program(PROMPT, "    return 0\n", TEST, "add").rstrip().endswith("check(add)")


def test_canonical_solutions_of_the_builtin_code_set_pass(unsafe):
    from instructforge.tuning.eval import load_items

    async def all_pass() -> list[bool]:
        out = []
        for it in load_items("code"):
            r = it["row"]
            res = await run_tests(r["prompt"], r["canonical_solution"], r["test"],
                                  r["entry_point"], unsafe=unsafe)
            out.append(res.passed)
        return out

    assert all(asyncio.run(all_pass()))
