"""Chat-template families for raw text completion: what Magpie sends instead of a chat request.

A chat model was trained on text laid out by its chat template.  Magpie sends that layout only
up to where a user message would start (the **pre-query template**), so the model writes a
plausible user query; the **post-query template** closes the user turn and opens the
assistant's.  This module knows those pieces for the common families, the end-of-turn stops,
and the default system prompt each family's own template inserts (Qwen2.5 and SmolLM2 write
fragments or code without it).  A model not in the registry needs no code: :func:`from_jinja`
reads the pieces off the model's own Jinja chat template (a GGUF's
``tokenizer.chat_template``, a Hugging Face ``tokenizer_config.json``, or the llama.cpp
server's ``/props``).

>>> t = get_template("smollm2")
>>> t.pre_query_template()
'<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n<|im_start|>user\\n'
>>> t.query_stop
('<|im_end|>',)
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from instructforge.errors import InstructForgeError
from instructforge.llm.base import LLM, Message

__all__ = [
    "ChatTemplate",
    "TemplateError",
    "TEMPLATES",
    "get_template",
    "template_names",
    "from_jinja",
    "from_gguf",
    "from_hf_tokenizer",
    "resolve_template",
    "load_template",
    "render_jinja",
    "special_tokens_in",
]


class TemplateError(InstructForgeError, ValueError):
    """A chat template is unknown or cannot be read; the message says what to do."""


# Text that looks like a control token of some family: <|im_start|>, <｜User｜>, <start_of_turn>,
# </s>, [INST].  Used to pick stop strings out of templates and to spot template leakage.
_SPECIAL = re.compile(
    r"<\|[^|<>\s]{1,40}\|>"  # <|im_end|> <|eot_id|> <|user|>
    r"|<｜[^｜<>]{1,40}｜>"  # DeepSeek's full-width bars
    r"|</?s>"  # Llama-2 / Mistral BOS/EOS
    r"|<(?:start|end)_of_turn>|<bos>|<eos>"  # Gemma
    r"|\[/?INST\]|<<SYS>>|<</SYS>>"  # Mistral / Llama-2
    r"|\[/?SYSTEM_PROMPT\]"
)


def special_tokens_in(text: str) -> list[str]:
    """Control-token-looking substrings of ``text``, in order, without repeats.

    >>> special_tokens_in("<|im_end|>\\n<|im_start|>assistant\\n")
    ['<|im_end|>', '<|im_start|>']
    """
    seen: list[str] = []
    for m in _SPECIAL.finditer(text):
        if m.group(0) not in seen:
            seen.append(m.group(0))
    return seen


def _first_stop(text: str) -> str:
    """The stop string a generation must end at before ``text`` begins."""
    toks = special_tokens_in(text)
    return toks[0] if toks else text.strip()


@dataclass(frozen=True)
class ChatTemplate:
    """One chat layout, cut at the places Magpie needs.

    A conversation renders as::

        bos + [system_open + SYSTEM + system_close]
            + pre_query + [SYSTEM + system_separator, first turn only, when system_open is None]
            + QUERY + post_query + ANSWER + end_of_turn
            + pre_query + QUERY2 + post_query ...

    ``default_system`` is what the family's own template inserts when no system message is
    given (None: nothing).  ``trim_content`` mirrors templates that ``| trim`` every message.
    """

    name: str
    pre_query: str
    post_query: str
    end_of_turn: str
    bos: str = ""
    system_open: str | None = None
    system_close: str = ""
    system_separator: str = "\n\n"
    default_system: str | None = None
    trim_content: bool = False
    models: tuple[str, ...] = ()
    extra_special_tokens: tuple[str, ...] = field(default=(), compare=False)

    # -- derived facts ------------------------------------------------------------------------
    @property
    def query_stop(self) -> tuple[str, ...]:
        """Stops for query synthesis: where the user turn ends (the post-query's first token)."""
        stops = [_first_stop(self.post_query)]
        eot = _first_stop(self.end_of_turn)
        if eot and eot not in stops:
            stops.append(eot)
        return tuple(s for s in stops if s)

    @property
    def response_stop(self) -> tuple[str, ...]:
        """Stops for response synthesis: end of the assistant turn, or a new user turn."""
        stops = [_first_stop(self.end_of_turn)]
        pre = special_tokens_in(self.pre_query)
        if pre and pre[0] not in stops:
            stops.append(pre[0])
        return tuple(s for s in stops if s)

    @property
    def special_tokens(self) -> tuple[str, ...]:
        """Every control token the layout uses: if one shows up in generated text, it leaked."""
        parts = [self.bos, self.system_open or "", self.system_close, self.pre_query,
                 self.post_query, self.end_of_turn]
        toks = special_tokens_in("".join(parts))
        return tuple(dict.fromkeys([*toks, *self.extra_special_tokens]))

    # -- rendering ------------------------------------------------------------------------------
    def render(self, messages: list[Message], *, use_default_system: bool = True,
               bos: bool = True) -> str:
        """The conversation as the model's chat template lays it out.

        A conversation that ends with a user message ends with the post-query template (the
        generation prompt), one that ends with an assistant message with ``end_of_turn``.

        >>> get_template("chatml").render([{"role": "user", "content": "Hi"}])
        '<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n'
        """
        msgs = list(messages)
        system: str | None = None
        if msgs and msgs[0].get("role") == "system":
            system = msgs.pop(0)["content"]
        elif use_default_system:
            system = self.default_system
        out = self.bos if bos else ""
        first_user_prefix = ""
        if system is not None:
            if self.system_open is not None:
                out += self.system_open + self._content(system) + self.system_close
            elif system:
                first_user_prefix = system + self.system_separator
        seen_user = False
        for m in msgs:
            role, content = m.get("role"), self._content(m.get("content") or "")
            if role == "user":
                prefix = "" if seen_user else first_user_prefix
                out += self.pre_query + prefix + content + self.post_query
                seen_user = True
            elif role == "assistant":
                out += content + self.end_of_turn
            else:
                raise TemplateError(f"template {self.name!r}: unsupported message role {role!r}")
        return out

    def _content(self, text: str) -> str:
        return text.strip() if self.trim_content else text

    def pre_query_template(self, system: str | None = None, *, use_default_system: bool = True,
                           bos: bool = True) -> str:
        """The text before a conversation's first user query (what Magpie sends for turn 1).

        ``system`` replaces the family's default system prompt; with ``use_default_system``
        False and no ``system``, the bare pre-query is returned.

        >>> get_template("llama3").pre_query_template()
        '<|begin_of_text|><|start_header_id|>user<|end_header_id|>\\n\\n'
        """
        return self.query_prompt([], system=system, use_default_system=use_default_system,
                                 bos=bos)

    def query_prompt(self, history: list[Message], *, system: str | None = None,
                     use_default_system: bool = True, bos: bool = True) -> str:
        """``history`` (ending with an answer, or empty) plus the pre-query template.

        The model continues it with the next user query; this is how multi-turn Magpie gets
        follow-ups.
        """
        msgs = ([{"role": "system", "content": system}] if system is not None else []) + list(
            history
        )
        text = self.render(msgs, use_default_system=use_default_system, bos=bos)
        text += self.pre_query
        if not any(m.get("role") == "user" for m in history):
            if system is None and use_default_system:
                system = self.default_system
            if system and self.system_open is None:
                text += self._content(system) + self.system_separator
        return text

    def response_prompt(self, history: list[Message], *, system: str | None = None,
                        use_default_system: bool = True, bos: bool = True) -> str:
        """``history`` (ending with a user query) rendered up to the assistant's answer."""
        if not history or history[-1].get("role") != "user":
            raise TemplateError("response_prompt needs a conversation that ends with a user turn")
        msgs = ([{"role": "system", "content": system}] if system is not None else []) + list(
            history
        )
        return self.render(msgs, use_default_system=use_default_system, bos=bos)

    def describe(self) -> dict[str, Any]:
        """Plain-data description (for config.yaml and docs)."""
        d = asdict(self)
        d["query_stop"] = list(self.query_stop)
        d["response_stop"] = list(self.response_stop)
        d.pop("extra_special_tokens", None)
        d["models"] = list(self.models)
        return d


# --------------------------------------------------------------------------------------------
# The registry.  Each entry is checked in tests/test_templates.py against the family's real
# Jinja chat template (tests/fixtures/chat_templates/) rendered with jinja2.
# --------------------------------------------------------------------------------------------

_CHATML = dict(
    pre_query="<|im_start|>user\n",
    post_query="<|im_end|>\n<|im_start|>assistant\n",
    end_of_turn="<|im_end|>\n",
    system_open="<|im_start|>system\n",
    system_close="<|im_end|>\n",
)
_LLAMA3 = dict(
    bos="<|begin_of_text|>",
    pre_query="<|start_header_id|>user<|end_header_id|>\n\n",
    post_query="<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
    end_of_turn="<|eot_id|>",
    system_close="<|eot_id|>",
    trim_content=True,
)

TEMPLATES: dict[str, ChatTemplate] = {
    t.name: t
    for t in [
        ChatTemplate(name="chatml", models=("ChatML models", "Qwen3", "OpenHermes"), **_CHATML),
        ChatTemplate(name="qwen2", default_system="You are a helpful assistant.",
                     models=("Qwen2-*-Instruct",), **_CHATML),
        ChatTemplate(
            name="qwen2.5",
            default_system="You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
            models=("Qwen2.5-*-Instruct", "Qwen2.5-Coder-*-Instruct"),
            **_CHATML,
        ),
        ChatTemplate(name="qwen3", models=("Qwen3-*",), **_CHATML),
        ChatTemplate(
            name="smollm2",
            default_system="You are a helpful AI assistant named SmolLM, trained by Hugging Face",
            models=("SmolLM2-*-Instruct",),
            **_CHATML,
        ),
        ChatTemplate(
            name="llama3",
            system_open="<|start_header_id|>system<|end_header_id|>\n\n",
            models=("Meta-Llama-3-*-Instruct",),
            **_LLAMA3,
        ),
        ChatTemplate(
            name="llama3.1",
            # Llama 3.1+ always writes a system turn with a knowledge-cutoff header.
            system_open="<|start_header_id|>system<|end_header_id|>\n\n"
            "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n",
            default_system="",
            models=("Llama-3.1-*-Instruct", "Llama-3.3-70B-Instruct"),
            **_LLAMA3,
        ),
        ChatTemplate(
            name="gemma",
            bos="<bos>",
            pre_query="<start_of_turn>user\n",
            post_query="<end_of_turn>\n<start_of_turn>model\n",
            end_of_turn="<end_of_turn>\n",
            # No system role: Gemma 3's template puts system text at the top of turn one.
            system_open=None,
            system_separator="\n\n",
            trim_content=True,
            models=("gemma-2-*-it", "gemma-3-*-it"),
        ),
        ChatTemplate(
            name="mistral",
            bos="<s>",
            pre_query="[INST] ",
            post_query=" [/INST]",
            end_of_turn="</s>",
            system_open=None,
            system_separator="\n\n",
            models=("Mistral-7B-Instruct-v0.1/v0.2", "Mixtral-8x7B-Instruct-v0.1"),
        ),
        ChatTemplate(
            name="phi3",
            pre_query="<|user|>\n",
            post_query="<|end|>\n<|assistant|>\n",
            end_of_turn="<|end|>\n",
            system_open="<|system|>\n",
            system_close="<|end|>\n",
            models=("Phi-3-mini-*-instruct", "Phi-3.5-mini-instruct"),
            extra_special_tokens=("<|endoftext|>",),
        ),
        ChatTemplate(
            name="deepseek-v3",
            bos="<｜begin▁of▁sentence｜>",
            pre_query="<｜User｜>",
            post_query="<｜Assistant｜>",
            end_of_turn="<｜end▁of▁sentence｜>",
            system_open="",
            system_close="",
            models=("DeepSeek-V3", "DeepSeek-R1 (non-thinking layout)"),
        ),
    ]
}

_ALIASES = {
    "qwen": "qwen2.5",
    "qwen2.5-instruct": "qwen2.5",
    "smollm": "smollm2",
    "llama-3": "llama3",
    "llama-3.1": "llama3.1",
    "llama3.2": "llama3.1",
    "llama3.3": "llama3.1",
    "gemma2": "gemma",
    "gemma3": "gemma",
    "mixtral": "mistral",
    "phi3.5": "phi3",
    "phi-3": "phi3",
    "deepseek": "deepseek-v3",
    "deepseek-r1": "deepseek-v3",
}


def template_names() -> list[str]:
    """Names the registry knows (aliases not included)."""
    return list(TEMPLATES)


def get_template(name: str) -> ChatTemplate:
    """A registry entry by name or alias (case-insensitive).

    >>> get_template("Mixtral").name
    'mistral'
    """
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in TEMPLATES:
        raise TemplateError(
            f"unknown chat template {name!r}; known: {', '.join(TEMPLATES)} "
            "(or give a .gguf, tokenizer_config.json, tokenizer directory or .jinja file)"
        )
    return TEMPLATES[key]


# --------------------------------------------------------------------------------------------
# Reading the pieces off a model's own Jinja chat template.
# --------------------------------------------------------------------------------------------

# Markers that no template rewrites (no whitespace to trim, no special characters).
_U1, _A1, _U2, _SYS = "QQUSERONEQQ", "QQASSISTANTONEQQ", "QQUSERTWOQQ", "QQSYSTEMQQ"
# BOS/EOS render as markers too, so a BOS token text that also opens turns (SmolLM2's BOS is
# <|im_start|>) is not mistaken for a BOS the template writes.
_BOS, _EOS = "QQBOSQQ", "QQEOSQQ"


def _jinja_env() -> ImmutableSandboxedEnvironment:
    # The same environment transformers uses for apply_chat_template.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[loopcontrols])

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None,
               separators: Any = None, sort_keys: bool = False) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


def render_jinja(template_text: str, messages: list[Message], *, add_generation_prompt: bool,
                 bos_token: str = "", eos_token: str = "", **extra: Any) -> str:
    """Render a Hugging Face style chat template the way ``apply_chat_template`` does."""
    tmpl = _jinja_env().from_string(template_text)
    return tmpl.render(messages=messages, add_generation_prompt=add_generation_prompt,
                       bos_token=bos_token, eos_token=eos_token, **extra)


def _common_prefix(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    out = a[:n]
    # Never cut inside a control token: "<|end|>\n<|" -> "<|end|>\n".
    for opener, closer in (("<", ">"), ("[", "]")):
        i = out.rfind(opener)
        if i != -1 and closer not in out[i:]:
            out = out[:i]
    return out


def from_jinja(template_text: str, *, bos_token: str = "", eos_token: str = "",
               name: str = "custom") -> ChatTemplate:
    """Derive a :class:`ChatTemplate` from a model's own Jinja chat template.

    Renders a few marker conversations and cuts the text around the markers, so any model
    whose template lays out plain user/assistant turns works without code.  The result gets
    a registry name when it equals a registry entry.

    >>> t = from_jinja("{% for m in messages %}<|im_start|>{{ m['role'] }}\\n{{ m['content'] }}"
    ...                "<|im_end|>\\n{% endfor %}{% if add_generation_prompt %}"
    ...                "<|im_start|>assistant\\n{% endif %}")
    >>> t.name, t.pre_query
    ('chatml', '<|im_start|>user\\n')
    """

    def render(msgs: list[Message], gen: bool) -> str:
        try:
            return render_jinja(template_text, msgs, add_generation_prompt=gen,
                                bos_token=_BOS, eos_token=_EOS)
        except jinja2.exceptions.TemplateError as e:
            raise TemplateError(f"chat template {name!r} failed to render: {e}") from e

    user = lambda c: {"role": "user", "content": c}  # noqa: E731
    one = render([user(_U1)], True)
    if _U1 not in one:
        raise TemplateError(f"chat template {name!r} does not write the user's message")
    head, post_query = one.split(_U1, 1)
    trim = f" {_U1} " not in render([user(f" {_U1} ")], True)

    three = render([user(_U1), {"role": "assistant", "content": _A1}, user(_U2)], True)
    if _A1 not in three or _U2 not in three:
        raise TemplateError(f"chat template {name!r} does not lay out a multi-turn conversation")
    between = three[three.index(_A1) + len(_A1): three.index(_U2)]
    closed = render([user(_U1), {"role": "assistant", "content": _A1}], False)
    after_answer = closed[closed.index(_A1) + len(_A1):]
    end_of_turn = _common_prefix(after_answer, between) if after_answer else ""
    pre_query = between[len(end_of_turn):]
    if not head.endswith(pre_query):
        raise TemplateError(
            f"chat template {name!r}: the first user turn opens with {head!r}, later ones with "
            f"{pre_query!r}; give --template NAME instead"
        )
    before_first = head[: len(head) - len(pre_query)]
    bos = _BOS if before_first.startswith(_BOS) else ""
    default_block = before_first[len(bos):]

    system_open: str | None = None
    system_close = ""
    separator = "\n\n"
    try:
        sys_text = render([{"role": "system", "content": _SYS}, user(_U1)], True)
    except TemplateError:
        sys_text = ""  # e.g. Gemma 2: "System role not supported"
    if _SYS in sys_text and _U1 in sys_text:
        before_sys, rest = sys_text.split(_SYS, 1)
        mid = rest[: rest.index(_U1)]
        if mid.endswith(pre_query) and before_sys.startswith(bos):
            system_open = before_sys[len(bos):]
            system_close = mid[: len(mid) - len(pre_query)]
        elif before_sys == bos + pre_query:
            separator = mid  # the system text opens the first user turn (Gemma 3, Mistral v1)

    default_system: str | None = None
    if default_block:
        if (system_open is not None and default_block.startswith(system_open)
                and default_block.endswith(system_close)):
            default_system = default_block[len(system_open): len(default_block) - len(system_close)]
        else:
            raise TemplateError(
                f"chat template {name!r} writes {default_block!r} before the first user turn "
                "and it is not a system turn; give --template NAME instead"
            )
    marked = ChatTemplate(
        name=name, pre_query=pre_query, post_query=post_query, end_of_turn=end_of_turn, bos=bos,
        system_open=system_open, system_close=system_close, system_separator=separator,
        default_system=default_system, trim_content=trim,
    )
    # Self-check: the cut pieces must give back what the model's own template writes.
    convo = [user(_U1), {"role": "assistant", "content": _A1}, user(_U2)]
    if marked.render(convo) != three:
        raise TemplateError(
            f"chat template {name!r} lays out turns in a way the pieces cannot reproduce "
            f"(it writes {three!r}); give --template NAME instead"
        )

    def real(text: str | None) -> Any:
        return None if text is None else text.replace(_BOS, bos_token).replace(_EOS, eos_token)

    derived = replace(
        marked, pre_query=real(pre_query), post_query=real(post_query),
        end_of_turn=real(end_of_turn), bos=real(bos), system_open=real(system_open),
        system_close=real(system_close), system_separator=real(separator),
        default_system=real(default_system),
        extra_special_tokens=tuple(t for t in (bos_token, eos_token) if t),
    )
    for known in TEMPLATES.values():
        if replace(derived, name=known.name, models=known.models) == known:
            return replace(derived, name=known.name, models=known.models)
    return derived


def from_gguf(path: str | Path) -> ChatTemplate:
    """The chat template stored in a GGUF file's metadata (``tokenizer.chat_template``).

    Reading a GGUF's metadata takes seconds (the reader indexes the whole vocabulary), so the
    result is kept per file for the life of the process.
    """
    path = Path(path).resolve()
    return _from_gguf_cached(str(path), path.stat().st_mtime_ns)


@lru_cache(maxsize=8)
def _from_gguf_cached(path_text: str, mtime_ns: int) -> ChatTemplate:
    from gguf import GGUFReader  # only needed here

    path = Path(path_text)
    try:
        reader = GGUFReader(str(path))
    except (OSError, ValueError) as e:
        raise TemplateError(f"{path}: not a readable GGUF file ({e})") from e

    def field_str(key: str) -> str | None:
        f = reader.fields.get(key)
        return bytes(f.parts[f.data[0]]).decode("utf-8") if f is not None else None

    def token(key: str) -> str:
        f = reader.fields.get(key)
        tokens = reader.fields.get("tokenizer.ggml.tokens")
        if f is None or tokens is None:
            return ""
        idx = int(f.parts[f.data[0]][0])
        return bytes(tokens.parts[tokens.data[idx]]).decode("utf-8", "replace")

    text = field_str("tokenizer.chat_template")
    if not text:
        raise TemplateError(f"{path}: the GGUF has no tokenizer.chat_template; give --template")
    return from_jinja(text, bos_token=token("tokenizer.ggml.bos_token_id"),
                      eos_token=token("tokenizer.ggml.eos_token_id"), name=path.stem)


def _token_text(v: Any) -> str:
    if isinstance(v, dict):
        return str(v.get("content") or "")
    return str(v or "")


def from_hf_tokenizer(path: str | Path) -> ChatTemplate:
    """The chat template of a Hugging Face tokenizer: a directory or its tokenizer_config.json.

    Reads ``chat_template`` (a string, a list of named templates, or a ``chat_template.jinja``
    file beside the config) and the ``bos_token`` / ``eos_token``; transformers is not needed.
    """
    path = Path(path)
    cfg_path = path / "tokenizer_config.json" if path.is_dir() else path
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise TemplateError(f"{cfg_path}: cannot read the tokenizer config ({e})") from e
    text = cfg.get("chat_template")
    if isinstance(text, list):  # [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in text if isinstance(t, dict)}
        text = named.get("default") or next(iter(named.values()), None)
    jinja_file = cfg_path.parent / "chat_template.jinja"
    if not text and jinja_file.exists():
        text = jinja_file.read_text(encoding="utf-8")
    if not text:
        raise TemplateError(f"{cfg_path}: no chat_template field; give --template NAME")
    return from_jinja(text, bos_token=_token_text(cfg.get("bos_token")),
                      eos_token=_token_text(cfg.get("eos_token")),
                      name=cfg_path.parent.name or "custom")


def load_template(spec: str) -> ChatTemplate:
    """A template from a registry name or a file: ``.gguf``, ``tokenizer_config.json``, a
    tokenizer directory, or a ``.jinja`` file with the chat template itself.

    >>> load_template("qwen2.5").default_system
    'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.'
    """
    p = Path(spec).expanduser()
    if p.exists():
        if p.suffix == ".gguf":
            return from_gguf(p)
        if p.is_dir() or p.suffix == ".json":
            return from_hf_tokenizer(p)
        return from_jinja(p.read_text(encoding="utf-8"), name=p.stem)
    return get_template(spec)


# Model-name fragments -> family, most specific first (for servers that do not report their
# template, e.g. vLLM's OpenAI server).
_NAME_HINTS = [
    ("qwen2.5", "qwen2.5"), ("qwen2_5", "qwen2.5"), ("qwen3", "qwen3"), ("qwen2", "qwen2"),
    ("smollm2", "smollm2"), ("llama-3.1", "llama3.1"), ("llama-3.2", "llama3.1"),
    ("llama-3.3", "llama3.1"), ("llama3.1", "llama3.1"), ("llama3.2", "llama3.1"),
    ("llama3.3", "llama3.1"), ("llama-3", "llama3"), ("llama3", "llama3"), ("gemma-2", "gemma"),
    ("gemma-3", "gemma"), ("gemma2", "gemma"), ("gemma3", "gemma"), ("mixtral", "mistral"),
    ("mistral", "mistral"), ("phi-3", "phi3"), ("phi3", "phi3"), ("deepseek-v3", "deepseek-v3"),
    ("deepseek-r1", "deepseek-v3"),
]


def guess_from_model_name(model_name: str) -> ChatTemplate | None:
    """The registry family a model name points to, if any (a fallback, not a reading).

    >>> guess_from_model_name("Qwen/Qwen2.5-7B-Instruct").name
    'qwen2.5'
    """
    low = model_name.lower()
    for hint, family in _NAME_HINTS:
        if hint in low:
            return TEMPLATES[family]
    return None


async def resolve_template(spec: str | None, llm: LLM) -> ChatTemplate:
    """The template to use with ``llm``: ``spec`` when given (name or file), else the model's
    own chat template as its server reports it (llama.cpp ``/props``), else the family its
    model name points to."""
    if spec and spec != "auto":
        return load_template(spec)
    text = await llm.chat_template()
    if not text:
        guess = guess_from_model_name(llm.model or llm.model_id or "")
        if guess is not None:
            return guess
        raise TemplateError(
            f"cannot tell the chat template of {llm.model_id or 'this model'} (its server does not "
            f"report one); give --template with one of: {', '.join(TEMPLATES)}, or a path to the "
            "model's .gguf / tokenizer_config.json"
        )
    return from_jinja(text, name=llm.model_id or "model")
