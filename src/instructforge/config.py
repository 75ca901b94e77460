"""Method configs back from the plain data they were saved as (``config.yaml``).

Every method's config is a dataclass (nested dataclasses for models, elimination, filters);
a run saves it as YAML, and :func:`from_dict` builds it again, so a run can be reproduced
from its directory (``instructforge rerun``)::

    cfg = from_dict(EvolConfig, yaml.safe_load(open("runs/demo/config.yaml")),
                    ignore=("job", "input"))
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar

from instructforge.errors import InstructForgeError

T = TypeVar("T")


class ConfigError(InstructForgeError, ValueError):
    """Saved options that do not make the config (an unknown key, a wrong kind of value)."""


def from_dict(cls: type[T], data: dict[str, Any], *, ignore: tuple[str, ...] = (),
              where: str = "") -> T:
    """``cls`` (a dataclass) built from ``data``: nested dataclasses from nested mappings,
    tuples from lists; keys in ``ignore`` are skipped, any other unknown key is an error
    naming it (``where`` says where the data came from).

    >>> @dataclasses.dataclass
    ... class Sampling:
    ...     temperature: float = 0.7
    ...     stop: tuple[str, ...] = ()
    >>> from_dict(Sampling, {"temperature": 0.1, "stop": ["###"]})
    Sampling(temperature=0.1, stop=('###',))
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got "
                          f"{type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    unknown = [k for k in data if k not in fields and k not in ignore]
    if unknown:
        raise ConfigError(f"{where or cls.__name__}: unknown option(s) {', '.join(unknown)} "
                          f"(known: {', '.join(fields)})")
    values = {k: _value(hints[k], v, f"{where}{'.' if where else ''}{k}")
              for k, v in data.items() if k in fields}
    return cls(**values)


def _value(hint: Any, value: Any, where: str) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        dataclass_options = [a for a in options if dataclasses.is_dataclass(a)]
        if dataclass_options and isinstance(value, dict):
            return from_dict(dataclass_options[0], value, where=where)
        hint = options[0] if len(options) == 1 else Any
        origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return from_dict(hint, value, where=where)
    if origin is tuple and isinstance(value, list):
        return tuple(value)
    return value
