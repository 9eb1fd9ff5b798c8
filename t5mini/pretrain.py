# Generated from chapters/12_pretraining.md — edit the chapter, not this file.

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from t5mini.checks import check_int
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
    input_length: int  # corrupted inputs; the raw chunks and targets follow (chapter 10)
    batch_size: int  # sequences per step, over all processes
    num_steps: int
    warmup_steps: int  # T5: lr = base_lr * sqrt(warmup / max(step, warmup))
    base_lr: float = 0.01
    accumulation_steps: int = 1
    precision: str = "auto"  # bf16 on a GPU that has it, fp16 + scaler otherwise, fp32 on CPU
    log_every: int = 50
    eval_every: int = 100
    save_every: int = 500
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
    """The settings of the 'small' (CPU) or 'full' (GPU) pre-training run."""
    size = choose_size(size)
    if size == "full":  # the `tiny` preset at T5's sequence lengths
        config = T5Config.preset("tiny", dropout_rate=0.0)
        return PretrainSettings(
            size,
            config,
            input_length=512,
            batch_size=32,
            num_steps=3000,
            warmup_steps=1000,
            log_every=100,
            eval_every=250,
        )
    config = T5Config.preset(
        "tiny", d_model=128, d_ff=512, num_layers=2, num_heads=4, dropout_rate=0.0
    )
    return PretrainSettings(
        size,
        config,
        input_length=128,
        batch_size=8,
        num_steps=400,
        warmup_steps=100,
        base_lr=0.02,
        log_every=100,
        eval_every=50,
    )


def tokenize_documents(
    tokenizer: Any, documents: Iterable[str] | None = None
) -> list[torch.Tensor]:
    """Token ids of each document (default: the bundled corpus), EOS-terminated, as int32."""
    documents = read_documents() if documents is None else documents
    return [torch.tensor(tokenizer.encode(text), dtype=torch.int32) for text in documents]


def split_documents(documents: Sequence[Any], every: int = 20) -> tuple[list[Any], list[Any]]:
    """(training, validation): every `every`-th document is held out."""
    check_int("every", every, 2)
    train = [doc for i, doc in enumerate(documents) if i % every != every - 1]
    validation = [doc for i, doc in enumerate(documents) if i % every == every - 1]
    return train, validation


def _check_stream_args(
    documents: Sequence[Any], batch_size: int, rank: int, world_size: int
) -> None:
    """Raise a clear error for a stream that cannot be built."""
    if len(documents) == 0:
        raise ValueError("documents is empty; expected tokenised documents")
    check_int("batch_size", batch_size, 1)
    check_int("world_size", world_size, 1)
    check_int("rank", rank, 0, world_size - 1)
    if batch_size % world_size:
        raise ValueError(
            f"batch_size={batch_size} is not a multiple of world_size={world_size}; "
            "every process must take an equal share of the batch"
        )


def _as_document(document: Any, eos_id: int) -> torch.Tensor:
    """A document's ids as a 1-D int32 tensor that ends with EOS."""
    ids = torch.as_tensor(document, dtype=torch.int32).flatten()
    if len(ids) == 0 or ids[-1] != eos_id:
        ids = torch.cat([ids, torch.tensor([eos_id], dtype=torch.int32)])
    return ids


class _BatchStream:
    """An endless stream of span-corrupted batches, the documents reshuffled every pass."""

    def __init__(
        self,
        documents: Sequence[Any],
        collator: SpanCorruptionCollator,
        batch_size: int,
        seed: int = 0,
        *,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        """Batches of `batch_size` rows from `documents`, shuffled anew each pass (seeded)."""
        _check_stream_args(documents, batch_size, rank, world_size)
        self.documents = [_as_document(doc, collator.eos_id) for doc in documents]
        self.collator, self.batch_size = collator, batch_size
        self.rank, self.world_size = rank, world_size
        self.order_generator = torch.Generator().manual_seed(seed)
        self.epoch = 0
        self._start_pass()

    def _start_pass(self) -> None:
        """Draw this pass's document order and join the documents into one token stream."""
        self.pass_state = self.order_generator.get_state()  # what rebuilds this pass
        order = torch.randperm(len(self.documents), generator=self.order_generator)
        self.tokens = torch.cat([self.documents[i] for i in order.tolist()])  # (pass_tokens,)
        self.batches_per_pass = len(self.tokens) // (self.batch_size * self.collator.raw_length)
        if self.batches_per_pass == 0:
            raise ValueError(
                f"the documents hold {len(self.tokens):,} tokens, fewer than batch_size * "
                f"raw_length = {self.batch_size * self.collator.raw_length:,}: not one batch"
            )
        self.index = 0  # batches taken from this pass

    def __iter__(self) -> _BatchStream:
        """The stream is its own iterator."""
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        """The next batch (with several processes, this process's rows of it)."""
        if self.index == self.batches_per_pass:
            self.epoch += 1
            self._start_pass()
        size = self.batch_size * self.collator.raw_length
        block = self.tokens[self.index * size : (self.index + 1) * size]
        self.index += 1
        batch = self.collator(block.view(self.batch_size, -1))  # rows of raw_length tokens
        return {key: value.tensor_split(self.world_size)[self.rank] for key, value in batch.items()}


class PretrainingBatches(_BatchStream):
    """An endless stream of span-corrupted batches that can stop and resume exactly."""

    def state_dict(self) -> dict[str, Any]:
        """Where the stream is: the pass, the batches taken from it, both generators."""
        return {
            "epoch": self.epoch,
            "index": self.index,
            "order_state": self.pass_state,
            "noise_state": self.collator.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a `state_dict`: rebuild its pass, then skip what was taken."""
        self.order_generator.set_state(state["order_state"])
        self.epoch = state["epoch"]
        self._start_pass()
        self.index = state["index"]
        self.collator.generator.set_state(state["noise_state"])


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
    input_ids, attention_mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
    ids = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens)
    model.train(was_training)
    texts = []
    for row in ids.cpu().tolist():
        row = row[1:]  # the decoder start token
        if tokenizer.eos_id in row:
            row = row[: row.index(tokenizer.eos_id)]
        texts.append(tokenizer.decode([i for i in row if 0 < i < len(tokenizer)]))
    return texts


def _check_pretrain_args(
    num_steps: int, eval_every: int, log_every: int, validation_batches: Any
) -> None:
    """Raise a clear error for arguments `pretrain` cannot use."""
    check_int("num_steps", num_steps, 0)
    check_int("eval_every", eval_every, 1)
    check_int("log_every", log_every, 0)
    if isinstance(validation_batches, Iterator):
        raise TypeError(
            "validation_batches is a one-shot iterator (a generator?); every evaluation "
            "reads the batches again, so pass a list, e.g. list(collator.batches(...))"
        )


def _next_batch(batches: Iterator[dict[str, torch.Tensor]], done: int, num_steps: int) -> dict:
    """The next training batch, or an error that says the stream ran out."""
    try:
        return next(batches)
    except StopIteration:
        raise ValueError(
            f"batches ran out after {done} of num_steps={num_steps} steps; pass an endless "
            "stream (PretrainingBatches) or at least num_steps batches"
        ) from None


def pretrain(
    trainer: Trainer,
    batches: Iterable[dict[str, torch.Tensor]],
    num_steps: int,
    validation_batches: Iterable[dict[str, torch.Tensor]] = (),
    eval_every: int = 100,
    log_every: int = 50,
    log: Callable[[str], Any] = print,
    callback: Callable[[dict[str, float]], Any] | None = None,
) -> list[dict[str, float]]:
    """Train `num_steps` more steps, evaluating every `eval_every`; returns the evaluations."""
    _check_pretrain_args(num_steps, eval_every, log_every, validation_batches)
    batches = iter(batches)
    evaluations = []

    def record(entry: dict[str, float]) -> None:
        if callback is not None:
            callback(entry)

    def evaluate() -> None:
        loss = evaluate_loss(trainer.model, validation_batches, trainer.precision)
        evaluations.append({"step": trainer.global_step, "validation_loss": loss})
        log(f"step {trainer.global_step:>6} | validation loss {loss:.4f}")
        record(evaluations[-1])

    has_validation = bool(validation_batches)
    if has_validation and trainer.global_step == 0:
        evaluate()  # the untrained model, once per run
    for done in range(num_steps):
        stats = trainer.step(_next_batch(batches, done, num_steps))
        record(stats)
        if log_every and stats["step"] % log_every == 0:
            log(format_stats(stats))
        if has_validation and (stats["step"] % eval_every == 0 or done + 1 == num_steps):
            evaluate()
    return evaluations


# A notebook runs its cells as __main__ too, but of no package: here this starts nothing.
if __name__ == "__main__" and __package__ == "t5mini":
    from t5mini.cli import main

    raise SystemExit(main())
