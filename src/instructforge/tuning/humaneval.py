"""HumanEval-style pass@1: build the program from a model's answer and run its tests.

A row has ``task_id``, ``prompt`` (signature + docstring), ``test`` (defines
``check(candidate)``) and ``entry_point``. Chat models answer with the whole function in a
code block, base models often continue the body; both are handled. The program is the
prompt (its imports and helper functions), then the model's code (a full definition replaces
the prompt's stub), then the tests, then ``check(entry_point)``, and it runs in the sandbox.

>>> extract_code("Sure!\\n```python\\ndef f():\\n    return 1\\n```\\nDone.", "f")
'def f():\\n    return 1\\n'
"""

from __future__ import annotations

import re

from instructforge.tuning.sandbox import ExecResult, arun_python

_FENCE_RE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL | re.I)


def extract_code(completion: str, entry_point: str) -> str:
    """The code in a model's answer: the fenced block defining ``entry_point`` (else the first
    block, else the whole text, which is then a continuation of the prompt).

    >>> extract_code("    return x + 1", "inc")
    '    return x + 1'
    """
    blocks = _FENCE_RE.findall(completion)
    for block in blocks:
        if re.search(rf"^\s*(?:async\s+)?def\s+{re.escape(entry_point)}\s*\(", block, re.M):
            return block
    return blocks[0] if blocks else completion


def build_program(prompt: str, completion: str, test: str, entry_point: str) -> str:
    """The full program that passes iff the model's function passes the row's tests.

    >>> p = build_program("def inc(x):\\n", "    return x + 1\\n",
    ...                   "def check(f):\\n    assert f(1) == 2\\n", "inc")
    >>> "check(inc)" in p
    True
    """
    code = extract_code(completion, entry_point)
    defines = re.search(rf"^\s*(?:async\s+)?def\s+{re.escape(entry_point)}\s*\(", code, re.M)
    if defines:
        # The prompt keeps its imports and helpers; its docstring-only stub is valid Python
        # and the model's definition, coming later, replaces it.
        body = prompt.rstrip() + "\n\n\n" + code
    else:
        body = prompt + code
    return f"{body}\n\n\n{test}\n\n\ncheck({entry_point})\n"


async def run_tests(
    prompt: str,
    completion: str,
    test: str,
    entry_point: str,
    *,
    timeout: float = 10.0,
    memory_mb: int = 1024,
    unsafe: bool = False,
) -> ExecResult:
    """Run one row's tests against a model's answer in the sandbox (``unsafe``: without one
    when none works here; see :func:`instructforge.tuning.sandbox.arun_python`).

    >>> # res = await run_tests(row["prompt"], answer, row["test"], row["entry_point"])
    """
    program = build_program(prompt, completion, test, entry_point)
    return await arun_python(program, timeout=timeout, memory_mb=memory_mb, unsafe=unsafe)
