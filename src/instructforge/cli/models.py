"""``instructforge models``: what the embedded engine and a server offer."""

from __future__ import annotations

import asyncio

from rich.table import Table

from instructforge.cli.common import ApiKeyOpt, BaseUrlOpt, app, handle_errors, out
from instructforge.llm import OpenAICompatible, local_models


@app.command("models")
@handle_errors
def models_cmd(base_url: BaseUrlOpt = None, api_key: ApiKeyOpt = None) -> None:
    """List the named embedded models (spec embedded:NAME) with whether each is installed,
    and, with --base-url, the server's models."""
    t = Table("spec", "model", "status")
    t.columns[0].no_wrap = True  # specs are copied onto command lines: never cut
    for c in t.columns[1:]:
        c.overflow = "fold"  # names and paths fold on narrow terminals, never cut with "…"
    for m in local_models.MODELS.values():
        default = m.name == local_models.DEFAULT_MODEL
        state, where = local_models.status(m)
        t.add_row(f"embedded:{m.name}" + ("\n(default: embedded)" if default else ""),
                  f"{m.alias}\n{m.description}", f"{state}\n{where}")
    if base_url:
        llm = OpenAICompatible(base_url, None, api_key, max_retries=1)
        for name in asyncio.run(_served(llm)):
            t.add_row(f"openai:{name}", name, f"served\n{llm.base_url}")
    out.print(t)


async def _served(llm: OpenAICompatible) -> list[str]:
    """The server's model names, its HTTP session closed in the same event loop (else
    aiohttp warns "Unclosed client session" at exit)."""
    try:
        return await llm.list_models()
    finally:
        await llm.aclose()
