# Generated from chapters/11_pretraining.md — edit the chapter, not this file.

from __future__ import annotations

import dataclasses
import itertools
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from t5mini.config import T5Config
from t5mini.data import SpanCorruptionCollator, read_documents
from t5mini.model import T5ForConditionalGeneration
from t5mini.training import Trainer, autocast, format_stats, num_label_tokens

SIZES = ("small", "full")
SIZE_VARIABLE = "T5MINI_SIZE"  # the environment variable that picks the size


@dataclass(frozen=True)
class PretrainSettings:
    """What differs between the CPU-sized and the full-sized pre-training run."""

    size: str
    config: T5Config
    input_length: int  # corrupted inputs; the raw chunks and targets follow (chapter 9)
    batch_size: int
    num_steps: int
    warmup_steps: int  # T5: lr = base_lr * sqrt(warmup / max(step, warmup))
    base_lr: float = 0.01
    accumulation_steps: int = 1
    precision: str = "auto"  # bf16 on a GPU that has it, fp16 + scaler otherwise, fp32 on CPU
    log_every: int = 50
    eval_every: int = 100
    seed: int = 0

    def replace(self, **changes: Any) -> PretrainSettings:
        """A copy with some settings changed."""
        return dataclasses.replace(self, **changes)


def choose_size(size: str | None = None) -> str:
    """`size`, else $T5MINI_SIZE, else 'full' with a GPU and 'small' without."""
    if size is None:
        size = os.environ.get(SIZE_VARIABLE) or None
        if size is not None and size not in SIZES:
            raise ValueError(f"{SIZE_VARIABLE}={size!r}: expected one of {SIZES}")
    if size is None:
        return "full" if torch.cuda.is_available() else "small"
    if size not in SIZES:
        raise ValueError(f"size={size!r}: expected one of {SIZES} or None")
    return size


def pretrain_settings(size: str | None = None) -> PretrainSettings:
    """The settings of the 'small' (CPU, CI) or 'full' (GPU) pre-training run."""
    size = choose_size(size)
    if size == "full":  # the `tiny` preset at T5's sequence lengths
        return PretrainSettings(
            size, T5Config.preset("tiny", dropout_rate=0.0), input_length=512,
            batch_size=32, num_steps=3000, warmup_steps=1000, log_every=100, eval_every=250,
        )  # fmt: skip
    config = T5Config.preset("tiny", d_model=128, d_ff=512, num_layers=2, num_heads=4,
                             dropout_rate=0.0)  # fmt: skip
    return PretrainSettings(size, config, input_length=128, batch_size=8, num_steps=200,
                            warmup_steps=100, log_every=50, eval_every=50)  # fmt: skip


def tokenize_documents(tokenizer: Any, documents: Iterable[str] | None = None) -> list[list[int]]:
    """Token ids of each document (default: the bundled corpus), EOS-terminated."""
    documents = read_documents() if documents is None else documents
    return [tokenizer.encode(text) for text in documents]


def split_documents(
    documents: Sequence[list[int]], every: int = 20
) -> tuple[list[list[int]], list[list[int]]]:
    """(training, validation): every `every`-th document is held out."""
    if isinstance(every, bool) or not isinstance(every, int) or every < 2:
        raise ValueError(f"every={every!r}: expected an int >= 2")
    train = [doc for i, doc in enumerate(documents) if i % every != every - 1]
    validation = [doc for i, doc in enumerate(documents) if i % every == every - 1]
    return train, validation


def pretraining_batches(
    documents: Sequence[list[int]],
    collator: SpanCorruptionCollator,
    batch_size: int,
    seed: int = 0,
) -> Iterator[dict[str, torch.Tensor]]:
    """Endless span-corrupted batches; each pass shuffles the document order (seeded)."""
    if not documents:
        raise ValueError("documents is empty; expected tokenised documents")
    generator = torch.Generator().manual_seed(seed)
    for _epoch in itertools.count():
        order = torch.randperm(len(documents), generator=generator).tolist()
        batches = collator.batches((documents[i] for i in order), batch_size)
        first = next(batches, None)
        if first is None:
            raise ValueError(
                f"the documents hold fewer than batch_size * raw_length = "
                f"{batch_size * collator.raw_length} tokens: not one full batch"
            )
        yield first
        yield from batches


@torch.no_grad()
def evaluate_loss(
    model: T5ForConditionalGeneration,
    batches: Iterable[dict[str, torch.Tensor]],
    precision: str = "fp32",
) -> float:
    """Mean cross-entropy per label token over `batches` (dropout off)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total_loss, total_tokens = 0.0, 0
    for batch in batches:
        count = num_label_tokens(batch)
        if count == 0:
            continue
        batch = {key: value.to(device) for key, value in batch.items()}
        with autocast(precision, device):
            total_loss += model(**batch).loss.item() * count
        total_tokens += count
    model.train(was_training)
    if total_tokens == 0:
        raise ValueError("batches: no label tokens to evaluate on")
    return total_loss / total_tokens


@torch.no_grad()
def predict_spans(
    model: T5ForConditionalGeneration,
    tokenizer: Any,
    batch: dict[str, torch.Tensor],
    max_new_tokens: int = 32,
) -> list[str]:
    """Greedy targets for corrupted inputs, decoded with their sentinels visible."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    ids = model.generate(batch["input_ids"].to(device),
                         attention_mask=batch["attention_mask"].to(device),
                         max_new_tokens=max_new_tokens).cpu()  # fmt: skip
    model.train(was_training)
    texts = []
    for row in ids.tolist():
        row = row[1:]  # the decoder start token
        if tokenizer.eos_id in row:
            row = row[: row.index(tokenizer.eos_id)]
        texts.append(tokenizer.decode([i for i in row if i != tokenizer.pad_id]))
    return texts


def pretrain(
    trainer: Trainer,
    batches: Iterator[dict[str, torch.Tensor]],
    num_steps: int,
    validation_batches: Sequence[dict[str, torch.Tensor]] = (),
    eval_every: int = 100,
    log_every: int = 50,
    log: Callable[[str], Any] = print,
) -> list[dict[str, float]]:
    """Train `num_steps` steps, evaluating every `eval_every`; returns [{step, validation_loss}]."""
    batches = iter(batches)
    for name, value, low in (("num_steps", num_steps, 0), ("eval_every", eval_every, 1),
                             ("log_every", log_every, 0)):  # fmt: skip
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name}={value!r}: expected an int >= {low}")
    evaluations = []

    def evaluate() -> None:
        loss = evaluate_loss(trainer.model, validation_batches, trainer.precision)
        evaluations.append({"step": trainer.global_step, "validation_loss": loss})
        log(f"step {trainer.global_step:>6} | validation loss {loss:.4f}")

    if validation_batches:
        evaluate()
    for done in range(num_steps):
        stats = trainer.step(next(batches))
        if log_every and stats["step"] % log_every == 0:
            log(format_stats(stats))
        if validation_batches and ((done + 1) % eval_every == 0 or done + 1 == num_steps):
            evaluate()
    return evaluations
