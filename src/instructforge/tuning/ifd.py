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
"""

from __future__ import annotations

import json
from collections.abc import Sequence

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

