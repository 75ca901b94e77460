"""Fine-tuning on a run: supervised (``sft``) on its chat ``messages`` with TRL's
``SFTTrainer``, or preference tuning (``dpo``) on the chosen/rejected pairs of an
``instructforge preferences`` run with TRL's ``DPOTrainer``.

The loss is on assistant tokens only: we render each conversation with the base model's own
chat template (or a default ChatML one for a base model without a template), find each
assistant turn by rendering the conversation prefix before it, and label only those tokens.
Doing the masking ourselves works with any prefix-preserving template; TRL's built-in
``assistant_only_loss`` needs ``{% generation %}`` markers that most templates (SmolLM2's
included) lack, and TRL can patch only a fixed list of known templates.

Checkpoints go to ``MODEL_DIR/checkpoints`` and a rerun resumes from the last complete one;
the final model (LoRA adapters merged) is a plain Hugging Face folder that ``eval`` and
``transformers`` load directly, whole once ``instructforge_train.json`` is written (last).

>>> # res = train("runs/demo", TrainConfig(base_model="embedded", output_dir="models/demo"))
>>> # print(res.losses[0], res.losses[-1])
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from instructforge.errors import InstructForgeError
from instructforge.files import write_atomic
from instructforge.tuning import train_extra_missing
from instructforge.tuning.export import read_records, records_path, to_dpo, training_messages

CHATML_TEMPLATE = Path(__file__).parent.parent / "prompts" / "tuning" / "chatml.jinja"
# Written last, when the final model is whole: a model folder without it is unfinished.
TRAIN_META = "instructforge_train.json"
FINAL_STAGING = ".final.partial"  # the final model is saved here, then moved into place
CHATML_TOKENS = ("<|im_start|>", "<|im_end|>")
IGNORE_INDEX = -100  # the label value PyTorch's cross-entropy skips


class TrainError(InstructForgeError, ValueError):
    """Training cannot start: a bad base model, run directory or chat template."""


# ---------------------------------------------------------------------------- base models


def cache_dir() -> Path:
    """Where converted models are cached: ``$INSTRUCTFORGE_CACHE`` or ``~/.cache/instructforge``.

    >>> cache_dir().name in {"instructforge"} or "INSTRUCTFORGE_CACHE" in os.environ
    True
    """
    env = os.environ.get("INSTRUCTFORGE_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "instructforge"


def hf_from_gguf(gguf_path: str | Path, out_dir: str | Path | None = None) -> Path:
    """Convert a GGUF model to a Hugging Face folder (float32), once; later calls reuse it.

    transformers de-quantizes the GGUF on load but refuses to save a model it still marks as
    GGUF-quantized, so the weights are copied into a fresh model built from the same config.
    The default folder is keyed by the file's name, size and mtime under :func:`cache_dir`.

    >>> # path = hf_from_gguf("SmolLM2-135M-Instruct.Q4_1.gguf")  # ~30 s the first time
    """
    gguf = Path(gguf_path).resolve()
    if not gguf.is_file():
        raise TrainError(f"{gguf}: no such GGUF file")
    if out_dir is None:
        st = gguf.stat()
        key = hashlib.sha256(f"{gguf}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:10]
        out_dir = cache_dir() / "models" / f"{gguf.stem}-{key}"
    out = Path(out_dir)
    if (out / "config.json").exists() and (out / "model.safetensors").exists():
        return out

    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except ImportError as e:  # transformers names no module when gguf is missing
        raise TrainError(train_extra_missing("reading a GGUF model", e)) from None
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = type(loaded.config).from_dict(config_dict)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    # Write beside the target and rename, so a crash never leaves a half-written cache entry.
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        tmp.rename(out)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def resolve_base_model(spec: str | Path) -> Path:
    """A Hugging Face model folder for ``spec``: a folder, a ``.gguf`` file, or ``embedded``.

    >>> # resolve_base_model("embedded")  # SmolLM2-135M-Instruct, converted from its GGUF
    """
    spec_s = str(spec)
    if spec_s == "embedded":
        from instructforge.llm.embedded import default_model_path

        return hf_from_gguf(default_model_path())
    path = Path(spec_s).expanduser()
    if path.suffix == ".gguf":
        return hf_from_gguf(path)
    if path.is_dir():
        if not (path / "config.json").exists():
            raise TrainError(f"{path}: not a Hugging Face model folder (no config.json)")
        return path
    raise TrainError(
        f"{spec_s}: base model not found; give a Hugging Face model folder, a .gguf file "
        "or 'embedded' (models load from local paths only)"
    )


# ---------------------------------------------------------------------------- chat formatting


def ensure_chat_template(tokenizer: Any) -> bool:
    """Give ``tokenizer`` the default ChatML template when it has none; True if it changed.

    Missing ``<|im_start|>``/``<|im_end|>`` tokens are added as special tokens and
    ``<|im_end|>`` becomes the end-of-sequence token, so the tuned model learns to stop.
    The caller must resize the model's embeddings when tokens were added.
    """
    if tokenizer.chat_template:
        return False
    tokenizer.chat_template = CHATML_TEMPLATE.read_text(encoding="utf-8")
    vocab = tokenizer.get_vocab()
    missing = [t for t in CHATML_TOKENS if t not in vocab]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing})
    tokenizer.eos_token = "<|im_end|>"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return True


def _render(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=generation_prompt
    )


def assistant_spans(
    tokenizer: Any, messages: list[dict[str, str]]
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of each assistant turn.

    An assistant turn at index k spans from the end of ``messages[:k]`` rendered with the
    generation prompt to the end of ``messages[:k+1]`` rendered without, so it covers the
    answer and its end-of-turn token but never the role header the model is given.

    >>> # text, spans = assistant_spans(tok, [{"role": "user", "content": "Hi"},
    >>> #                                     {"role": "assistant", "content": "Yo"}])
    >>> # text[spans[0][0]:spans[0][1]] == "Yo<|im_end|>\\n"
    """
    full = _render(tokenizer, messages, False)
    spans = []
    for k, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt = _render(tokenizer, messages[:k], True)
        upto = _render(tokenizer, messages[: k + 1], False)
        if not (upto.startswith(prompt) and full.startswith(upto)):
            raise TrainError(
                "the chat template does not render conversation prefixes consistently "
                f"(turn {k}), so assistant tokens cannot be located for the loss mask; "
                "use a prefix-preserving template (give the model folder a chat_template.jinja)"
            )
        spans.append((len(prompt), len(upto)))
    return full, spans


def tokenize_conversation(tokenizer: Any, messages: list[dict[str, str]]) -> dict[str, list[int]]:
    """``input_ids`` for the rendered chat and ``labels`` that train on assistant tokens only.

    Every token that starts inside an assistant span keeps its id as label; all others get
    -100 (ignored by the loss).

    >>> # ex = tokenize_conversation(tok, msgs)
    >>> # tok.decode([t for t in ex["labels"] if t != -100])  # the answers only
    """
    text, spans = assistant_spans(tokenizer, messages)
    # The template already wrote any BOS it wants; adding special tokens would double it.
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    labels = []
    for tok_id, (start, _end) in zip(enc["input_ids"], enc["offset_mapping"], strict=True):
        inside = any(a <= start < b for a, b in spans)
        labels.append(tok_id if inside else IGNORE_INDEX)
    return {"input_ids": list(enc["input_ids"]), "labels": labels}


def load_conversations(run: str | Path, limit: int | None = None) -> list[list[dict[str, str]]]:
    """The trainable chats of a run (kept records with an answer), in file order.

    >>> # chats = load_conversations("runs/demo", limit=32)
    """
    chats = []
    for _, rec in read_records(records_path(run)):
        if rec.get("status", "kept") != "kept":
            continue
        msgs = training_messages(rec)
        if msgs is not None:
            chats.append(msgs)
        if limit is not None and len(chats) >= limit:
            break
    if not chats:
        raise TrainError(f"{records_path(run)}: no kept record with an assistant answer to train on")
    return chats


def load_pairs(run: str | Path, limit: int | None = None) -> list[dict[str, Any]]:
    """The preference pairs of a run (kept records of ``instructforge preferences``) as TRL's
    conversational ``prompt``/``chosen``/``rejected`` rows, in file order.

    >>> # pairs = load_pairs("runs/prefs", limit=32)
    """
    pairs = []
    for _, rec in read_records(records_path(run)):
        if rec.get("status", "kept") != "kept":
            continue
        row = to_dpo(rec)
        if row is not None:
            pairs.append({k: row[k] for k in ("prompt", "chosen", "rejected")})
        if limit is not None and len(pairs) >= limit:
            break
    if not pairs:
        raise TrainError(f"{records_path(run)}: no kept record with a chosen/rejected pair to "
                         "train on (--method dpo needs a run made by `instructforge "
                         "preferences`)")
    return pairs


def load_examples(run: str | Path, method: str, limit: int | None = None) -> list[Any]:
    """What ``method`` trains on: chats (``sft``) or preference pairs (``dpo``)."""
    if method not in METHODS:
        raise TrainError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    return load_pairs(run, limit) if method == "dpo" else load_conversations(run, limit)


# ---------------------------------------------------------------------------- saving


def last_checkpoint(ckpt_dir: Path) -> str | None:
    """The newest complete checkpoint in ``ckpt_dir`` (None when there is none).

    The Trainer writes ``trainer_state.json`` last; a checkpoint without it was cut by a
    kill, and resuming from it would restart the step count (training past ``max_steps``),
    so it is removed.

    >>> last_checkpoint(Path("no-such-folder")) is None
    True
    """
    if not ckpt_dir.is_dir():
        return None
    complete: list[tuple[int, Path]] = []
    for p in ckpt_dir.iterdir():
        m = re.fullmatch(r"checkpoint-(\d+)", p.name)
        if m is None or not p.is_dir():
            continue
        if (p / "trainer_state.json").is_file():
            complete.append((int(m[1]), p))
        else:
            shutil.rmtree(p)
    return str(max(complete)[1]) if complete else None


def save_final(out: Path, write: Callable[[Path], None], meta: dict[str, Any]) -> None:
    """Save the final model into ``out`` so that it is whole or visibly unfinished.

    ``write(folder)`` writes the model files into a staging folder inside ``out``; they are
    moved into place, then :data:`TRAIN_META` is written last (atomically). Until then
    ``out`` has no :data:`TRAIN_META` and ``eval`` refuses it (:func:`unfinished_model`).
    """
    out.mkdir(parents=True, exist_ok=True)
    (out / TRAIN_META).unlink(missing_ok=True)
    staging = out / FINAL_STAGING
    shutil.rmtree(staging, ignore_errors=True)
    write(staging)
    for f in staging.iterdir():
        dest = out / f.name
        if dest.is_dir():
            shutil.rmtree(dest)
        os.replace(f, dest)
    staging.rmdir()
    write_atomic(out / TRAIN_META, meta)


def unfinished_model(path: str | Path) -> str | None:
    """Why ``path`` is an unfinished ``train`` output, or None (also for any model folder
    that ``train`` did not write).

    >>> unfinished_model("no-such-folder") is None
    True
    """
    p = Path(path).expanduser()
    if not p.is_dir() or (p / TRAIN_META).exists():
        return None
    if (p / "checkpoints").is_dir() or (p / FINAL_STAGING).exists():
        return (f"{p}: an unfinished `train` output (no {TRAIN_META}: training or its final "
                "save was stopped); rerun the same train command to finish it")
    return None


# ---------------------------------------------------------------------------- training


METHODS = ("sft", "dpo")


@dataclass
class TrainConfig:
    """Fine-tuning options; the defaults suit a small model on one GPU or a CPU.

    ``learning_rate`` None means 2e-5 for full fine-tuning and 2e-4 with LoRA (``sft``),
    5e-7 and 5e-6 (``dpo``). ``beta`` is DPO's KL weight (``dpo`` only).
    """

    base_model: str = "embedded"
    method: str = "sft"
    beta: float = 0.1
    output_dir: str = "model"
    epochs: float = 3.0
    max_steps: int = -1
    learning_rate: float | None = None
    batch_size: int = 4
    grad_accum: int = 1
    max_length: int = 1024
    warmup: float = 0.03
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    save_steps: int = 100
    save_total_limit: int = 2
    logging_steps: int = 5
    seed: int = 42
    max_records: int | None = None
    resume: bool = True
    device: str = "auto"  # auto | cpu | cuda
    progress: bool = True


@dataclass
class TrainResult:
    """What a training run did: where the model is, its steps and its loss curve."""

    model_dir: Path
    steps: int
    examples: int
    losses: list[tuple[int, float]] = field(default_factory=list)
    resumed_from: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["model_dir"] = str(self.model_dir)
        return d


def _device(choice: str) -> str:
    import torch

    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise TrainError("--device cuda asked for, but no CUDA GPU is visible")
    return choice


def train(run: str | Path, config: TrainConfig) -> TrainResult:
    """Fine-tune ``config.base_model`` on the run's chats and save it to ``config.output_dir``.

    Reruns with the same output folder resume from the last checkpoint (``config.resume``).
    The result folder holds the model, its tokenizer and chat template, and
    ``instructforge_train.json`` (config, loss curve, data source).

    >>> # train("runs/demo", TrainConfig(base_model="embedded", output_dir="m", lora=True))
    """
    try:
        import torch
        from datasets import Dataset
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

        if config.lora:
            from peft import LoraConfig
    except ImportError as e:
        raise TrainError(train_extra_missing("train", e)) from None

    started = time.monotonic()
    examples = load_examples(run, config.method, config.max_records)
    base = resolve_base_model(config.base_model)
    device = _device(config.device)
    out = Path(config.output_dir)
    ckpt_dir = out / "checkpoints"
    # The folder is being rewritten: until the final save completes it is not a model.
    (out / TRAIN_META).unlink(missing_ok=True)

    tokenizer = AutoTokenizer.from_pretrained(base)
    added_template = ensure_chat_template(tokenizer)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    dpo = config.method == "dpo"
    # DPO: TRL renders the conversational pairs with the chat template itself.
    rows = examples if dpo else [tokenize_conversation(tokenizer, msgs) for msgs in examples]
    dataset = Dataset.from_list(rows)

    bf16 = device == "cuda" and torch.cuda.is_bf16_supported()
    model = AutoModelForCausalLM.from_pretrained(
        base, dtype=torch.bfloat16 if bf16 else torch.float32
    )
    if added_template and len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    if added_template:
        model.generation_config.eos_token_id = tokenizer.eos_token_id

    peft_config = None
    if config.lora:
        peft_config = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        )
    lr = config.learning_rate or (
        (5e-6 if config.lora else 5e-7) if dpo else (2e-4 if config.lora else 2e-5))
    common: dict[str, Any] = dict(
        output_dir=str(ckpt_dir),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=lr,
        lr_scheduler_type="cosine",
        warmup_steps=config.warmup,
        logging_steps=config.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        seed=config.seed,
        max_length=config.max_length,
        use_cpu=device == "cpu",
        bf16=bf16,
        report_to="none",
        disable_tqdm=not config.progress,
        dataloader_num_workers=0,
        # TRL turns gradient checkpointing on to save GPU memory; on CPU memory is plentiful
        # and the recomputation only slows a small model down.
        gradient_checkpointing=device == "cuda",
    )
    if dpo:  # the reference model: a frozen copy (or, with LoRA, the adapters switched off)
        trainer: Any = DPOTrainer(model=model, ref_model=None,
                                  args=DPOConfig(**common, beta=config.beta),
                                  train_dataset=dataset, processing_class=tokenizer,
                                  peft_config=peft_config)
    else:
        trainer = SFTTrainer(model=model, args=SFTConfig(**common), train_dataset=dataset,
                             processing_class=tokenizer, peft_config=peft_config)
    last = last_checkpoint(ckpt_dir) if config.resume else None
    trainer.train(resume_from_checkpoint=last)

    final = trainer.model
    if config.lora:
        # Merge the adapters so the result is a plain model every loader understands.
        final = final.merge_and_unload()

    def write(folder: Path) -> None:
        final.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    losses = [
        (int(e["step"]), float(e["loss"])) for e in trainer.state.log_history if "loss" in e
    ]
    result = TrainResult(
        model_dir=out,
        steps=int(trainer.state.global_step),
        examples=len(dataset),
        losses=losses,
        resumed_from=last,
        seconds=round(time.monotonic() - started, 2),
    )
    meta = {
        "run": str(run),
        "records": str(records_path(run)),
        "base_model": str(config.base_model),
        "base_model_path": str(base),
        "default_chat_template": added_template,
        "learning_rate": lr,
        "device": device,
        "config": asdict(config),
        **result.to_dict(),
    }
    save_final(out, write, meta)
    return result
