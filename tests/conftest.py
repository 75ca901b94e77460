"""Shared fixtures: the real embedded model (llama.cpp over HTTP) and dev servers."""

from __future__ import annotations

import os

import pytest

from instructforge.devserver import DevServer
from instructforge.llm import LLM, make_llm

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session")
def embedded_llm() -> LLM:
    """SmolLM2-135M-Instruct served by llama.cpp on 127.0.0.1 (one server for the session)."""
    return make_llm("embedded")


@pytest.fixture
def dev_server():
    """An instant-answer OpenAI-compatible server on 127.0.0.1 that logs what it serves."""
    with DevServer() as srv:
        yield srv


@pytest.fixture
def servers():
    """Three dev servers for ``preferences`` tests: a good answer ("Paris."), a bad one
    ("London.") and a judge whose verdict names answer 1 (``preference_runs.VERDICT``)."""
    from preference_runs import VERDICT

    with DevServer(answer="Paris.", model="good") as good, \
            DevServer(answer="London.", model="bad") as bad, \
            DevServer(answer=VERDICT, model="judge") as judge:
        yield good, bad, judge
