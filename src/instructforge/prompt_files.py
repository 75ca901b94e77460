"""Prompt templates: the one Jinja set-up for every prompt file the project renders.

Prompts are data (``src/instructforge/prompts/<folder>/*.jinja``). Every method renders them
the same way: a missing variable is an error (``StrictUndefined``), never an empty string in
a prompt, and nothing is HTML-escaped (prompts are plain text).

>>> prompt_env().from_string("Rewrite: {{ instruction }}").render(instruction="Add 2 and 3.")
'Rewrite: Add 2 and 3.'
>>> "Equal" in render_prompt("evol", "equality_judge.jinja", first="Add 2 and 3.", second="Sum 2, 3.")
True
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2


def prompts_dir(folder: str = "") -> Path:
    """The built-in ``prompts/FOLDER`` directory."""
    return Path(str(resources.files("instructforge") / "prompts")) / folder


@lru_cache(maxsize=32)
def prompt_env(*folders: str | Path) -> jinja2.Environment:
    """A Jinja environment over ``folders`` (searched in order; a relative name is a folder of
    the built-in prompts), or for ``from_string`` templates when none is given."""
    paths = [str(f if Path(f).is_absolute() else prompts_dir(str(f))) for f in folders]
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(paths) if paths else None,
        undefined=jinja2.StrictUndefined,
        autoescape=False,
    )


def render_prompt(folder: str, name: str, **variables: Any) -> str:
    """Render the built-in ``prompts/FOLDER/NAME`` with ``variables``, stripped."""
    return prompt_env(folder).get_template(name).render(**variables).strip()
