"""One error base: every error the project raises on purpose is an ``InstructForgeError``,
which the CLI turns into ``error: MESSAGE`` and the error's exit code."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest
import typer
from typer.testing import CliRunner

import instructforge
from instructforge.analysis.dataset import DatasetError
from instructforge.cli.common import handle_errors
from instructforge.engine import JobAborted, RunDirError
from instructforge.errors import InstructForgeError
from instructforge.inputs import InputError
from instructforge.llm import LLMError
from instructforge.tuning.export import ExportError


def project_exceptions() -> list[type[BaseException]]:
    found = []
    for info in pkgutil.walk_packages(instructforge.__path__, "instructforge."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if (inspect.isclass(obj) and issubclass(obj, BaseException)
                    and obj.__module__ == info.name and not name.startswith("_")):
                found.append(obj)
    return found


def test_every_project_error_derives_from_the_one_base():
    errors = project_exceptions()
    assert len(errors) >= 15
    assert [e.__qualname__ for e in errors if not issubclass(e, InstructForgeError)] == []


def test_project_errors_keep_their_builtin_base():
    assert issubclass(InputError, ValueError) and issubclass(LLMError, RuntimeError)


def _run(error: Exception) -> tuple[int, str]:
    app = typer.Typer()

    @app.command()
    @handle_errors
    def boom() -> None:
        raise error

    res = CliRunner().invoke(app, [])
    return res.exit_code, res.output


@pytest.mark.parametrize("error,code", [
    (InputError(["seeds.jsonl:3: field 'instruction' is empty"]), 2),
    (RunDirError("runs/x: locked"), 2),
    (DatasetError("a.jsonl:2: invalid JSON"), 2),
    (ExportError("runs/x/data/records.jsonl: no such file"), 2),
    (LLMError("server unreachable"), 1),
    (JobAborted("stopped after 5 failures in a row"), 1),
])
def test_handle_errors_prints_the_message_with_the_errors_exit_code(error, code):
    exit_code, output = _run(error)
    assert exit_code == code
    assert "error:" in output and "Traceback" not in output
