"""Run untrusted Python (model-written code) in an OS sandbox, never in our process.

Each program runs under bubblewrap (``bwrap``, Linux namespaces), as an unprivileged user in:

- a **mount namespace** holding only ``/usr`` (with the ``/bin``, ``/lib``... links) and the
  Python installation, read-only; a fresh ``/proc`` and minimal ``/dev``; its program files
  read-only under ``/sandbox``; and a private, size-capped tmpfs ``/tmp`` (its cwd, HOME and
  TMPDIR), gone when it ends. The rest of the host file system (home folders, ``/etc``, the
  run directory, the evaluator's sources) does not exist for it;
- a **network namespace** with no interface but its own loopback: no host, no ``127.0.0.1``
  service of ours, no internet;
- a **PID namespace** (it sees only its own processes) that dies with its first process and
  with us (``--die-with-parent``): nothing it forks, detaches or double-forks outlives it;
- an **empty environment** (only PATH, HOME, TMPDIR, LANG are set: no API keys);
- a new session (no terminal to inject keystrokes into), no capabilities, no new user
  namespaces;
- resource limits (``setrlimit``): address space, CPU seconds, file size, open files; and a
  wall-clock timeout after which the whole sandbox is killed. Its stdout and stderr go to
  files, so a process holding them open cannot stall us.

Inside, the program also runs under a Python-level guard (destructive ``os``/``shutil``/
``subprocess`` calls disabled, as OpenAI's HumanEval harness does), so a test behaves the same
with and without the sandbox. Without a working ``bwrap``, :func:`arun_python` refuses
(:class:`SandboxUnavailable`) unless called with ``unsafe=True``: then only the Python-level
guard and limits apply, which code written to escape gets around.

>>> res = run_python("print(1 + 1)")  # doctest: +SKIP
>>> res.status, res.stdout.strip(), res.isolation  # doctest: +SKIP
('passed', '2', 'bwrap')
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from instructforge.errors import InstructForgeError

RUNNER = Path(__file__).with_name("_sandbox_runner.py")
INSTALL_HINT = (
    "install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap; Fedora: dnf install "
    "bubblewrap)"
)
# What the program sees inside (bwrap also passes nothing else through: --clearenv).
SANDBOX_ENV = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "TMPDIR": "/tmp", "LANG": "C.UTF-8"}
# Top-level directories that hold the system's programs and libraries (links on merged-/usr
# systems, real directories on older ones).
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# Flags newer bwrap versions have; used when the installed one lists them.
OPTIONAL_FLAGS = ("--disable-userns", "--size")


class SandboxUnavailable(InstructForgeError, RuntimeError):
    """No working OS sandbox on this machine (the message says why and what to install)."""


@dataclass
class ExecResult:
    """How a program ended: ``passed`` (exit 0), ``failed`` (non-zero exit) or ``timeout``.
    ``isolation`` is ``bwrap`` (OS sandbox) or ``python-guard`` (``unsafe=True`` without one).
    """

    status: str
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    isolation: str = "bwrap"

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def sandbox_problem() -> str | None:
    """Why programs cannot run under ``bwrap`` here, or ``None`` when they can.

    >>> # sandbox_problem() -> None, or "bubblewrap (bwrap) is not installed; install ..."
    """
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return f"bubblewrap (bwrap) is not installed; {INSTALL_HINT}"
    return _probe(bwrap, _interpreter())


def _interpreter() -> str:
    # The base interpreter, not a virtualenv's: the sandbox holds only the standard library.
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


@functools.cache
def _probe(bwrap: str, python: str) -> str | None:
    with tempfile.TemporaryDirectory(prefix="instructforge-probe-") as tmp:
        cmd = [*_bwrap_command(bwrap, python, Path(tmp), tmpfs_mb=1), "-c", "pass"]
        try:
            res = subprocess.run(cmd, env=_bwrap_env(), stdin=subprocess.DEVNULL,
                                 capture_output=True, timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"{bwrap} does not run ({e}); {INSTALL_HINT}"
    if res.returncode != 0:
        why = res.stderr.decode("utf-8", "replace").strip()[-500:] or f"exit {res.returncode}"
        return (f"{bwrap} cannot create a sandbox on this machine ({why}); it needs user "
                "namespaces, which this system or container does not allow")
    return None


@functools.cache
def _supported_flags(bwrap: str) -> tuple[str, ...]:
    try:
        help_text = subprocess.run([bwrap, "--help"], capture_output=True, text=True,
                                   timeout=30, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ()
    return tuple(f for f in OPTIONAL_FLAGS if f in help_text)


def _bwrap_env() -> dict[str, str]:
    # bwrap's own environment is visible in the sandbox as /proc/1/environ: keep it empty
    # of anything but PATH.
    return {"PATH": "/usr/bin:/bin"}


def _bwrap_command(bwrap: str, python: str, src: Path, *, tmpfs_mb: int) -> list[str]:
    """``bwrap ... python -I -S``: the sandbox around an isolated interpreter (arguments to
    Python follow). ``src`` is mounted read-only at ``/sandbox``."""
    flags = _supported_flags(bwrap)
    cmd = [bwrap, "--unshare-all", "--unshare-user", "--uid", "65534", "--gid", "65534",
           "--hostname", "sandbox", "--die-with-parent", "--new-session", "--clearenv"]
    if "--disable-userns" in flags:
        cmd.append("--disable-userns")
    for k, v in SANDBOX_ENV.items():
        cmd += ["--setenv", k, v]
    bound: list[Path] = []
    for d in SYSTEM_DIRS:
        p = Path(d)
        if p.is_symlink():
            cmd += ["--symlink", os.readlink(p), d]
        elif p.is_dir():
            cmd += ["--ro-bind", d, d]
            bound.append(p)
    # The Python installation, wherever it lives (pyenv, uv, conda keep it outside /usr).
    for d in sorted({os.path.realpath(x) for x in
                     (sys.base_prefix, sys.base_exec_prefix, os.path.dirname(python))}):
        p = Path(d)
        if p != Path("/") and not any(p.is_relative_to(b) for b in bound):
            cmd += ["--ro-bind", d, d]
            bound.append(p)
    cmd += ["--ro-bind", str(src), "/sandbox", "--proc", "/proc", "--dev", "/dev"]
    if "--size" in flags:
        cmd += ["--size", str(tmpfs_mb * 1024 * 1024)]
    cmd += ["--tmpfs", "/tmp", "--chdir", "/tmp", "--", python, "-I", "-S"]
    return cmd


def _tail(path: Path, limit: int = 4000) -> str:
    with path.open("rb") as fh:
        fh.seek(0, os.SEEK_END)
        fh.seek(max(0, fh.tell() - limit))
        return fh.read().decode("utf-8", errors="replace")


async def arun_python(
    code: str,
    *,
    timeout: float = 10.0,
    memory_mb: int = 1024,
    max_file_mb: int = 16,
    unsafe: bool = False,
) -> ExecResult:
    """Run ``code`` in the sandbox and report how it ended (async form).

    Raises :class:`SandboxUnavailable` when ``bwrap`` cannot run here, unless ``unsafe``:
    then the program runs in a plain child process with the Python-level guard only.

    >>> # res = await arun_python("while True: pass", timeout=1)  # res.status == "timeout"
    """
    problem = sandbox_problem()
    if problem is not None and not unsafe:
        raise SandboxUnavailable(problem)
    with tempfile.TemporaryDirectory(prefix="instructforge-exec-") as tmp:
        root = Path(tmp)
        src, work = root / "src", root / "work"
        src.mkdir()
        work.mkdir()
        (src / "program.py").write_text(code, encoding="utf-8")
        shutil.copyfile(RUNNER, src / "runner.py")
        limits = [str(memory_mb), str(int(timeout) + 1), str(max_file_mb)]
        if problem is None:
            bwrap = shutil.which("bwrap") or "bwrap"
            cmd = [*_bwrap_command(bwrap, _interpreter(), src, tmpfs_mb=4 * max_file_mb),
                   "/sandbox/runner.py", "/sandbox/program.py", "/tmp", *limits]
            env, isolation = _bwrap_env(), "bwrap"
        else:
            cmd = [sys.executable, "-I", str(src / "runner.py"), str(src / "program.py"),
                   str(work), *limits]
            env = {**SANDBOX_ENV, "HOME": str(work), "TMPDIR": str(work)}
            isolation = "python-guard"
        return await _run(cmd, env, root, work, timeout, isolation)


async def _run(cmd: list[str], env: dict[str, str], root: Path, work: Path, timeout: float,
               isolation: str) -> ExecResult:
    out_path, err_path = root / "stdout", root / "stderr"
    t0 = time.perf_counter()
    # Files, not pipes: a (grand)child that keeps them open cannot make us wait for it.
    with out_path.open("wb") as out, err_path.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            *cmd, cwd=work, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=err,
            # Its own process group: on timeout we kill the group, children included.
            start_new_session=True,
        )
    status = ""
    try:
        await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        status = "timeout"
        await _stop(proc, isolation)
    finally:
        if proc.returncode is None:  # cancelled: stop it without waiting
            _kill_group(proc.pid)
    if isolation != "bwrap":
        _kill_group(proc.pid)  # anything it left running in the background
    if not status:
        status = "passed" if proc.returncode == 0 else "failed"
    return ExecResult(status, None if status == "timeout" else proc.returncode,
                      _tail(out_path), _tail(err_path), time.perf_counter() - t0, isolation)


async def _stop(proc: asyncio.subprocess.Process, isolation: str) -> None:
    """Kill the program and everything it started, and wait for it."""
    if isolation == "bwrap":
        # Killing the sandbox's first process makes the kernel kill every process in its PID
        # namespace before bwrap sees it exit: once bwrap is gone, so is all of the sandbox.
        for pid in _children(proc.pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 10)
            return
    _kill_group(proc.pid)
    await proc.wait()


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from ``/proc``)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        fields = stat.rpartition(")")[2].split()
        if len(fields) > 1 and fields[1] == str(pid):
            found.append(int(entry.name))
    return found


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def run_python(
    code: str,
    *,
    timeout: float = 10.0,
    memory_mb: int = 1024,
    max_file_mb: int = 16,
    unsafe: bool = False,
) -> ExecResult:
    """Run ``code`` in the sandbox and report how it ended (see :func:`arun_python`).

    >>> run_python("import sys; sys.exit(3)").status  # doctest: +SKIP
    'failed'
    """
    return asyncio.run(arun_python(code, timeout=timeout, memory_mb=memory_mb,
                                   max_file_mb=max_file_mb, unsafe=unsafe))
