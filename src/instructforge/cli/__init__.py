"""The command line: thin wrappers that parse options into config objects and call the same
public functions a notebook user would call. One module per command."""

from instructforge.cli.common import app

__all__ = ["app"]

# Command modules register themselves on ``app`` when imported.
from instructforge.cli import (  # noqa: E402,F401
    analyze,
    auto_evol,
    decontaminate,
    eval,
    evolve,
    export,
    magpie,
    models,
    preferences,
    push,
    rerun,
    respond,
    select,
    train,
)
