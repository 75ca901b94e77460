"""Reproduce a run from its directory: every method's config loads from the
``config.yaml`` it wrote, and :func:`rerun` runs it again (resuming, or into a new directory).

>>> job, input_path, cfg = load_run_config("runs/demo")          # doctest: +SKIP
>>> result = rerun("runs/demo", rounds=4)                         # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import yaml

from instructforge.config import ConfigError, from_dict
from instructforge.engine import RunDir
from instructforge.methods.auto_evol import AutoEvolConfig, auto_evolve
from instructforge.methods.evol_instruct import EvolConfig, evolve
from instructforge.methods.magpie import MagpieConfig, magpie
from instructforge.methods.respond import RespondConfig, respond

# job name in config.yaml -> (config class, keys config.yaml adds beside the config)
CONFIGS: dict[str, tuple[type, tuple[str, ...]]] = {
    "respond": (RespondConfig, ("job", "input")),
    "evol_instruct": (EvolConfig, ("job", "input")),
    "magpie": (MagpieConfig, ("job", "chat_template")),
    "auto_evol": (AutoEvolConfig, ("job", "input", "final_pass")),
}


def load_run_config(path: str | os.PathLike[str]) -> tuple[str, str | None, Any]:
    """``(job, input, config)`` from a run directory or its ``config.yaml``.

    Raises :class:`ConfigError` naming the file when it is missing, is not a method's
    run config, or holds an option the method does not know.
    """
    p = Path(path)
    file = RunDir(p).config if p.is_dir() else p
    if not file.is_file():
        raise ConfigError(f"{file}: no such file (is {p} a run directory?)")
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{file}: invalid YAML: {e}") from None
    job = data.get("job") if isinstance(data, dict) else None
    if job not in CONFIGS:
        raise ConfigError(f"{file}: not the config.yaml of a run of "
                          f"{', '.join(CONFIGS)} (job: {job!r})")
    cls, extra = CONFIGS[job]
    cfg = from_dict(cls, data, ignore=extra, where=str(file))
    return job, data.get("input"), cfg


def rerun(
    path: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    rounds: int | None = None,
    n: int | None = None,
    api_key: str | None = None,
    progress: bool = True,
) -> Any:
    """Run again the run that ``path`` (a run directory or its ``config.yaml``) describes:
    into ``out``, or into the run directory itself (resuming it; a finished run makes no
    call). ``rounds`` (evolve) and ``n`` (magpie) may grow a finished run: more rounds
    continue every chain, a larger ``n`` adds conversations. Returns the method's result.
    """
    p = Path(path)
    job, input_path, cfg = load_run_config(p)
    target = Path(out) if out is not None else (p if p.is_dir() else p.parent)
    if rounds is not None:
        if job != "evol_instruct":
            raise ConfigError(f"--rounds applies to evolve runs; {p} is a {job} run")
        cfg = dataclasses.replace(cfg, rounds=rounds)
    if n is not None:
        if job != "magpie":
            raise ConfigError(f"-n applies to magpie runs; {p} is a {job} run")
        cfg = dataclasses.replace(cfg, n=n)
    if job == "magpie":
        return magpie(target, cfg, api_key=api_key, progress=progress)
    if input_path is None:
        raise ConfigError(f"{p}: config.yaml names no input")
    runner = {"respond": respond, "evol_instruct": evolve, "auto_evol": auto_evolve}[job]
    return runner(input_path, target, cfg, api_key=api_key, progress=progress)
