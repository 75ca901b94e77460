"""Response losses under a student causal LM, for IFD / IC-IFD selection (``select --by ifd``).

For an (instruction, response) pair the response is tokenized once, on its own, and the
same token ids are scored after two prefixes (mean cross-entropy over the response tokens):

- *given the instruction*: the student's chat template rendered with the instruction as
  the user turn and the assistant generation header (``<|im_start|>assistant\\n`` for ChatML);
- *alone*: one start token only (the tokenizer's BOS, else its EOS as a document boundary),
  as in Li et al. 2023 where the "direct answer score" is the loss of the bare answer.

IFD = loss given the instruction / loss alone. With ``in_context=True`` (IC-IFD, the simple
variant after Hui et al. 2024) the *alone* prefix is instead a fixed in-context prefix: the
chat template rendered with the demonstration turns of ``prompts/tuning/ic_ifd_prefix.json``
followed by the assistant generation header, so both losses are taken in the chat format
and the ratio isolates what the instruction itself adds. The instruction-given loss is the
same in both modes.

Runs on CPU by default; needs the ``train`` extra (torch, transformers).

:class:`ServerIFDScorer` reads the same two losses from an OpenAI-compatible server that
returns prompt log-probabilities (vLLM's ``/v1/completions`` with ``echo`` and ``logprobs``),
with the prompts of a plain template file (``prompts/tuning/ifd_server.jinja``: the
instruction and response in the Alpaca layout, the response alone after its header) instead
of the student's chat template; it needs no extra. llama.cpp's server ignores ``echo``: it
is refused with a clear error.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jinja2

from instructforge.llm.base import LLMError
from instructforge.prompt_files import prompts_dir
from instructforge.tuning import train_extra_missing
from instructforge.tuning.train import TrainError, ensure_chat_template, resolve_base_model

IC_PREFIX_FILE = "ic_ifd_prefix.json"


def ic_prefix_messages() -> list[dict[str, str]]:
    """The demonstration turns IC-IFD conditions the response-alone loss on.

    >>> [m["role"] for m in ic_prefix_messages()][:2]
    ['user', 'assistant']
    """
    path = prompts_dir("tuning") / IC_PREFIX_FILE
    return json.loads(path.read_text(encoding="utf-8"))


class IFDScorer:
    """``scorer(pairs) -> [(loss given the instruction, loss alone), ...]``, batched.

    >>> # IFDScorer("embedded")([("Name a colour.", "Blue.")])  # [(2.1, 3.4)]
    """

    def __init__(self, model: str = "embedded", *, batch_size: int = 8, max_tokens: int = 1024,
                 in_context: bool = False, device: str = "cpu") -> None:
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as e:
            raise TrainError(train_extra_missing("select --by ifd", e)) from e
        path = resolve_base_model(model)
        self.torch = torch
        self.tok = AutoTokenizer.from_pretrained(path)
        if ensure_chat_template(self.tok):
            raise TrainError(f"{path}: the model has no chat template; IFD scores the response "
                             "after the instruction in the student's own chat format")
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        self.model.to(device).eval()
        self.device = device
        self.batch_size = batch_size
        self.max_tokens = max_tokens
        start = self.tok.bos_token_id if self.tok.bos_token_id is not None else self.tok.eos_token_id
        if in_context:
            text = self.tok.apply_chat_template(ic_prefix_messages(), tokenize=False,
                                                add_generation_prompt=True)
            self.alone_prefix = self._ids(text)
        else:
            self.alone_prefix = [start]

    def _ids(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def prompt_ids(self, instruction: str) -> list[int]:
        """The instruction rendered as a user turn plus the assistant header, as token ids."""
        text = self.tok.apply_chat_template([{"role": "user", "content": instruction}],
                                            tokenize=False, add_generation_prompt=True)
        return self._ids(text)[-self.max_tokens:]

    def response_losses(self, examples: Sequence[tuple[list[int], list[int]]]) -> list[float]:
        """Mean cross-entropy of each ``(prefix, response)`` token list's response tokens."""
        torch = self.torch
        losses: list[float] = []
        for start in range(0, len(examples), self.batch_size):
            batch = examples[start:start + self.batch_size]
            width = max(len(p) + len(r) for p, r in batch)
            pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            labels = torch.full((len(batch), width), -100, dtype=torch.long)
            for k, (p, r) in enumerate(batch):
                seq = p + r
                ids[k, :len(seq)] = torch.tensor(seq)
                mask[k, :len(seq)] = 1
                labels[k, len(p):len(seq)] = torch.tensor(r)
            with torch.no_grad():
                logits = self.model(input_ids=ids.to(self.device),
                                    attention_mask=mask.to(self.device)).logits.float()
            # Position t predicts token t+1.
            logits, target = logits[:, :-1], labels[:, 1:].to(self.device)
            ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target,
                                                   ignore_index=-100, reduction="none")
            counts = (target != -100).sum(dim=1).clamp(min=1)
            losses += (ce.sum(dim=1) / counts).tolist()
        return losses

    def __call__(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[float, float]]:
        responses = [self._ids(r)[: self.max_tokens] for _, r in pairs]
        given = self.response_losses([(self.prompt_ids(i), r)
                                      for (i, _), r in zip(pairs, responses, strict=True)])
        alone = self.response_losses([(self.alone_prefix, r) for r in responses])
        return list(zip(given, alone, strict=True))



# ---------------------------------------------------------------------------------- server
# ``select --by ifd --base-url URL``: the same two losses, read from a server's prompt
# log-probabilities (``POST /v1/completions`` with ``echo`` and ``logprobs``, as vLLM answers).

SERVER_TEMPLATE = "ifd_server.jinja"
# Requests prepared at a time; the backend's own limit (--max-concurrency) bounds those in flight.
SERVER_CHUNK = 256


def server_template(path: str | Path | None = None) -> jinja2.Template:
    """The prompt template of the server path: ``path``, or the built-in
    ``prompts/tuning/ifd_server.jinja``; a clear error for a missing or broken file."""
    from instructforge.prompt_files import prompt_env

    try:
        if path is None:
            return prompt_env("tuning").get_template(SERVER_TEMPLATE)
        return prompt_env().from_string(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TrainError(f"--prompt-template {path}: no such file") from None
    except jinja2.TemplateSyntaxError as e:
        raise TrainError(f"--prompt-template {path}: line {e.lineno}: {e.message}") from None


def render_prefix(template: jinja2.Template, instruction: str | None,
                  examples: Sequence[dict[str, str]] = ()) -> str:
    """What goes before a response: ``instruction`` None for the response-alone prompt.

    >>> t = server_template()
    >>> render_prefix(t, "Name a colour.")
    '### Instruction:\\nName a colour.\\n\\n### Response:\\n'
    >>> render_prefix(t, None)
    '### Response:\\n'
    """
    try:
        return template.render(instruction=instruction, examples=list(examples))
    except jinja2.UndefinedError as e:
        raise TrainError(f"--prompt-template: {e.message}; the template gets `instruction` "
                         "(none for the response alone) and `examples`") from None


def no_prompt_logprobs(base_url: str, detail: str) -> LLMError:
    return LLMError(f"{base_url} does not return prompt log-probabilities (echo); use a vLLM "
                    f"server or the local student (leave out --base-url). {detail}")


def span_loss(logprobs: Any, start: int, end: int, max_tokens: int, base_url: str) -> float:
    """Mean negative log-probability of the prompt tokens whose ``text_offset`` lies in
    ``[start, end)`` (the response), from ``choices[0].logprobs`` of an echo answer; the first
    ``max_tokens`` of them. Tokens without a log-probability (a prompt's first) are skipped.

    >>> lp = {"tokens": ["A", ":", " hi", "!"], "token_logprobs": [None, -1.0, -2.0, -4.0],
    ...       "text_offset": [0, 1, 2, 5]}
    >>> span_loss(lp, 2, 5, 1024, "u")
    2.0
    """
    if not isinstance(logprobs, dict):
        raise no_prompt_logprobs(base_url, "Its answer has no `logprobs` object.")
    values, offsets = logprobs.get("token_logprobs"), logprobs.get("text_offset")
    if not isinstance(values, list) or not isinstance(offsets, list) \
            or len(values) != len(offsets):
        only = (" (only `content`, the generated token's, as llama.cpp answers)"
                if "content" in logprobs else "")
        raise no_prompt_logprobs(base_url, "Its `logprobs` has no matching `token_logprobs` "
                                 f"and `text_offset` lists{only}.")
    picked = [v for v, o in zip(values, offsets, strict=True)
              if isinstance(o, int) and start <= o < end]
    if not picked:
        raise no_prompt_logprobs(base_url, "Its log-probabilities cover none of the prompt's "
                                 "response tokens (only the generated ones).")
    scored = [float(v) for v in picked if isinstance(v, int | float)][:max_tokens]
    if not scored:
        raise no_prompt_logprobs(base_url, "The prompt's response tokens have no log-probability.")
    return -sum(scored) / len(scored)


class ServerIFDScorer:
    """``scorer(pairs) -> [(loss given the instruction, loss alone), ...]`` from an
    OpenAI-compatible server's prompt log-probabilities.

    Each pair costs two ``POST /v1/completions`` requests (``echo: true``, ``logprobs: 1``,
    ``max_tokens: 1``): the template's instruction prompt followed by the response, and its
    response-alone prompt (IC-IFD: after the in-context turns) followed by the response. A
    loss is the mean negative log-probability of the tokens that start inside the response
    (a token straddling the boundary belongs to the prompt), the first ``max_tokens`` of them.
    ``llm`` is an :class:`~instructforge.llm.openai.OpenAICompatible` backend.
    """

    def __init__(self, llm: Any, *, max_tokens: int = 1024, in_context: bool = False,
                 template: str | Path | None = None) -> None:
        self.llm = llm
        self.max_tokens = max_tokens
        self.template = server_template(template)
        self.alone_prefix = render_prefix(self.template, None,
                                          ic_prefix_messages() if in_context else ())

    async def _loss(self, prefix: str, response: str) -> float:
        text = prefix + response
        answer = await self.llm.call_api("POST", "/completions", {
            "model": self.llm.model, "prompt": text, "echo": True, "logprobs": 1,
            "max_tokens": 1, "temperature": 0.0})
        choices = answer.get("choices") if isinstance(answer, dict) else None
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise LLMError(f"{self.llm.base_url}/completions answered no `choices`: "
                           f"{str(answer)[:200]}")
        return span_loss(choices[0].get("logprobs"), len(prefix), len(text), self.max_tokens,
                         self.llm.base_url)

    async def ascore(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[float, float]]:
        try:
            await self.llm.resolve_model()
            jobs = [(render_prefix(self.template, i), r) for i, r in pairs]
            jobs += [(self.alone_prefix, r) for _, r in pairs]
            losses: list[float] = []
            for k in range(0, len(jobs), SERVER_CHUNK):
                # Every request of a chunk ends before the first error is raised, so none
                # is left running on a closed session.
                done = await asyncio.gather(*(self._loss(p, r)
                                              for p, r in jobs[k:k + SERVER_CHUNK]),
                                            return_exceptions=True)
                for x in done:
                    if isinstance(x, BaseException):
                        raise x
                losses += done  # type: ignore[arg-type]
        finally:
            await self.llm.aclose()
        n = len(pairs)
        return list(zip(losses[:n], losses[n:], strict=True))

    def __call__(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[float, float]]:
        return asyncio.run(self.ascore(pairs))
