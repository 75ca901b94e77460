"""The tuning prompts: Jinja templates in ``instructforge/prompts/tuning/``.

>>> render("gsm8k", question="What is 2 + 2?").endswith("Problem: What is 2 + 2?")
True
"""

from __future__ import annotations

from typing import Any

from instructforge.prompt_files import prompt_env, prompts_dir

PROMPTS_DIR = prompts_dir("tuning")


def render(name: str, **values: Any) -> str:
    """Render ``prompts/tuning/<name>.jinja`` with ``values``."""
    return prompt_env(PROMPTS_DIR).get_template(f"{name}.jinja").render(**values)
