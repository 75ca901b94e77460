"""Child side of the sandbox: set limits, disarm destructive calls, run the program.

Run as ``python -I _sandbox_runner.py PROGRAM WORKDIR MEMORY_MB CPU_SECONDS FILE_MB`` (inside
bwrap, or alone with ``--unsafe-exec``); standard library only, since it runs in a bare
isolated interpreter. Files may be written only under WORKDIR.
"""

import builtins
import faulthandler
import io
import os
import resource
import shutil
import subprocess
import sys


def set_limits(memory_mb: int, cpu_seconds: int, file_mb: int) -> None:
    mb = 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (memory_mb * mb, memory_mb * mb))
    resource.setrlimit(resource.RLIMIT_DATA, (memory_mb * mb, memory_mb * mb))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
    resource.setrlimit(resource.RLIMIT_FSIZE, (file_mb * mb, file_mb * mb))
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _refused(*_args, **_kwargs):
    raise PermissionError("disabled in the instructforge sandbox")


WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC


def _confine_writes(root: str) -> None:
    """Let files be written only inside ``root`` (the program's temporary directory)."""
    real_open, real_os_open, realpath = builtins.open, os.open, os.path.realpath

    def inside(path) -> bool:
        if isinstance(path, int):  # an already-open descriptor
            return True
        full = realpath(os.fspath(path))
        return full == root or full.startswith(root + os.sep)

    def guarded_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and not inside(file):
            raise PermissionError(f"writing outside the sandbox directory: {file!r}")
        return real_open(file, mode, *args, **kwargs)

    def guarded_os_open(path, flags, *args, **kwargs):
        if flags & WRITE_FLAGS and not inside(path):
            raise PermissionError(f"writing outside the sandbox directory: {path!r}")
        return real_os_open(path, flags, *args, **kwargs)

    builtins.open = io.open = guarded_open
    os.open = guarded_os_open


def reliability_guard(root: str) -> None:
    """Disable the calls a program needs to harm files or processes outside its own run."""
    faulthandler.disable()
    _confine_writes(root)
    for name in (
        "kill", "killpg", "system", "putenv", "remove", "removedirs", "rmdir", "unlink",
        "rename", "renames", "replace", "truncate", "fchdir", "chdir", "chmod", "chown",
        "fchmod", "fchown", "lchown", "lchmod", "link", "symlink", "fork", "forkpty",
        "setuid", "setgid", "execv", "execve", "execvp", "execvpe", "execl", "execle",
        "execlp", "execlpe", "spawnv", "spawnve", "spawnl", "spawnle", "spawnvp", "spawnvpe",
        "spawnlp", "spawnlpe", "posix_spawn", "posix_spawnp", "popen",
    ):
        if hasattr(os, name):
            setattr(os, name, _refused)
    shutil.rmtree = _refused
    shutil.move = _refused
    shutil.chown = _refused
    subprocess.Popen = _refused
    subprocess.run = _refused
    subprocess.call = _refused
    subprocess.check_call = _refused
    subprocess.check_output = _refused
    builtins.exit = None
    builtins.quit = None
    # Modules a program could use to get the real functions back.
    for mod in ("ctypes", "_ctypes", "posix", "nt", "resource", "psutil", "_posixsubprocess"):
        sys.modules[mod] = None  # type: ignore[assignment]


def main() -> None:
    program, workdir = sys.argv[1:3]
    memory_mb, cpu_s, file_mb = map(int, sys.argv[3:6])
    with open(program, encoding="utf-8") as fh:
        source = fh.read()
    code = compile(source, program, "exec")
    root = os.path.realpath(workdir)
    set_limits(memory_mb, cpu_s, file_mb)
    reliability_guard(root)
    sys.argv = [program]
    exec(code, {"__name__": "__main__", "__file__": program, "__builtins__": builtins})


if __name__ == "__main__":
    main()
