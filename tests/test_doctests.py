"""Every docstring example in the package runs as a test (``python -m doctest`` semantics).

Examples that need a model, the network or a run directory on disk are marked
``# doctest: +SKIP`` in the source; everything else must produce exactly what it shows.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import instructforge

MODULES = sorted(
    m.name for m in pkgutil.walk_packages(instructforge.__path__, "instructforge.")
    if not m.name.endswith("__main__")
)


def run_doctests(module_name: str) -> doctest.TestResults:
    """Run one module's doctests; the result counts failures and attempts."""
    module = importlib.import_module(module_name)
    return doctest.testmod(module, optionflags=doctest.ELLIPSIS, verbose=False)


@pytest.mark.parametrize("module_name", MODULES)
def test_docstring_examples_run(module_name: str) -> None:
    result = run_doctests(module_name)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {module_name}"


def test_a_wrong_docstring_example_fails(tmp_path, monkeypatch) -> None:
    (tmp_path / "wrong_example.py").write_text('def f():\n    """\n    >>> 1 + 1\n    3\n    """\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    assert run_doctests("wrong_example").failed == 1


def test_the_package_has_examples_that_run() -> None:
    attempted = sum(run_doctests(name).attempted for name in ("instructforge.records",
                                                                "instructforge.inputs",
                                                                "instructforge.dedup"))
    assert attempted > 0
