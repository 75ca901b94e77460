"""The one base of every error the project raises on purpose.

Each error says what is wrong in words a user acts on (which file, line, field or option);
the CLI's ``handle_errors`` prints any :class:`InstructForgeError` as ``error: MESSAGE`` and
exits with its :attr:`~InstructForgeError.exit_code`, never with a traceback. Each concrete
error also keeps the built-in base it always had (``ValueError`` for bad input,
``RuntimeError`` for a failed call), so ``except ValueError`` still catches it.

>>> class SeedError(InstructForgeError, ValueError):
...     '''A seed file that cannot be used.'''
>>> issubclass(SeedError, ValueError), SeedError("x").exit_code
(True, 2)
"""

from __future__ import annotations

EXIT_USAGE = 2  # bad input, options or run directory: nothing was called
EXIT_FAILED = 1  # an LLM or a job failed on the way


class InstructForgeError(Exception):
    """Base of the project's errors; :attr:`exit_code` is the CLI's exit status for it."""

    exit_code: int = EXIT_USAGE
