"""What calls cost: model prices in US dollars per million tokens.

Prices come from ``data/prices.yaml`` (shipped), a user file named by the
``INSTRUCTFORGE_PRICES`` environment variable (same shape, its models win), or one price
given for a run (``--price IN,OUT``)::

    >>> Price(0.15, 0.60).cost(1_000_000, 500_000)
    0.45
    >>> parse_price("0.15,0.6")
    Price(input=0.15, output=0.6, batch=1.0)
    >>> lookup("gpt-4o-mini-2024-07-18", {"gpt-4o": Price(2.5, 10), "gpt-4o-mini": Price(0.15, 0.6)})
    Price(input=0.15, output=0.6, batch=1.0)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from instructforge.errors import InstructForgeError
from instructforge.llm.base import Message

PRICES_ENV = "INSTRUCTFORGE_PRICES"


class PriceError(InstructForgeError, ValueError):
    """A price that cannot be read (an option or a prices file), explained."""


@dataclass(frozen=True)
class Price:
    """USD per million prompt (``input``) and completion (``output``) tokens; ``batch`` is the
    factor the provider's Batch API charges (0.5: half price)."""

    input: float
    output: float
    batch: float = 1.0

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input + completion_tokens * self.output) / 1e6


FREE = Price(0.0, 0.0)  # a model that runs here (embedded, vLLM in process)


def parse_price(text: str) -> Price:
    """``"IN,OUT"`` (USD per million prompt and completion tokens) as a :class:`Price`."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 2 or any(not v >= 0 for v in values):
        raise PriceError(f"--price {text!r}: give two numbers >= 0, USD per million prompt and "
                         "completion tokens, e.g. --price 0.15,0.60")
    return Price(values[0], values[1])


def _read(path: Path | Any, shown: str) -> dict[str, Price]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise PriceError(f"{shown}: no such prices file ({PRICES_ENV})") from None
    except yaml.YAMLError as e:
        raise PriceError(f"{shown}: invalid YAML: {e}") from None
    if not isinstance(data, dict):
        raise PriceError(f"{shown}: a prices file maps model names to {{input, output}}")
    out = {}
    for name, spec in data.items():
        try:
            assert isinstance(spec, dict) and set(spec) <= {"input", "output", "batch"}
            price = Price(float(spec["input"]), float(spec["output"]),
                          float(spec.get("batch", 1.0)))
            assert price.input >= 0 and price.output >= 0 and 0 < price.batch <= 1
        except (AssertionError, KeyError, TypeError, ValueError):
            raise PriceError(f"{shown}: model {name!r}: expected {{input: USD, output: USD"
                             f"[, batch: factor in (0, 1]]}}, got {spec!r}") from None
        out[str(name)] = price
    return out


def load_prices() -> dict[str, Price]:
    """The shipped prices, overridden by the file ``INSTRUCTFORGE_PRICES`` names."""
    prices = _read(resources.files("instructforge") / "data" / "prices.yaml", "prices.yaml")
    user = os.environ.get(PRICES_ENV)
    if user:
        prices.update(_read(Path(user), user))
    return prices


def lookup(model: str, prices: dict[str, Price]) -> Price | None:
    """``model``'s price: its own entry, or the longest name it starts with followed by
    ``-`` (a dated snapshot); None when unknown."""
    if model in prices:
        return prices[model]
    matches = [k for k in prices if model.startswith(k + "-")]
    return prices[max(matches, key=len)] if matches else None


def approx_tokens(prompt: str | list[Message]) -> int:
    """Prompt tokens, roughly (4 characters a token plus a chat template's wrapping), for
    estimates made before a call: the budget's and the tokens-per-minute limit's.

    >>> approx_tokens([{"role": "user", "content": "x" * 400}])
    108
    """
    if isinstance(prompt, str):
        return len(prompt) // 4 + 1
    return sum(len(str(m.get("content") or "")) // 4 + 8 for m in prompt)


def cost_range(parts: list[tuple[Price | None, int, int, int]]) -> str:
    """A ``--dry-run``'s cost: ``parts`` are (price, calls, prompt tokens, answer tokens at
    most) per model role. From the prompts alone (answers of no length) to every answer at
    its cap, e.g. ``"$0.0030 to $0.0150"``; ``"unknown"`` when a model has no price.

    >>> cost_range([(Price(1.0, 2.0), 1000, 1000, 500)])
    '$1.0000 to $2.0000'
    """
    if any(p is None for p, *_ in parts):
        return "unknown: a model has no price (give --price IN,OUT)"
    low = sum(p.cost(calls * prompt, 0) for p, calls, prompt, _ in parts if p)
    high = sum(p.cost(calls * prompt, calls * most) for p, calls, prompt, most in parts if p)
    return f"${low:.4f} to ${high:.4f}"
