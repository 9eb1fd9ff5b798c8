"""Tests for t5mini.pretrain: sizes, the batch stream, evaluation, the loop, overfitting."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import t5mini.pretrain as pretrain_module
from t5mini.config import T5Config
from t5mini.data import SpanCorruptionCollator
from t5mini.model import T5ForConditionalGeneration
from t5mini.pretrain import (
    SIZE_VARIABLE,
    choose_size,
    evaluate_loss,
    predict_spans,
    pretrain,
    pretrain_settings,
    pretraining_batches,
    split_documents,
    tokenize_documents,
)
from t5mini.tokenizer import Tokenizer
from t5mini.training import Schedule, Trainer, configure_optimizer


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer()


@pytest.fixture(scope="module")
def documents(tokenizer) -> list[list[int]]:
    texts = [f"Line {i}: to be, or not to be, that is the question {i}." for i in range(60)]
    return tokenize_documents(tokenizer, texts)


def small_model(tokenizer, seed: int = 0) -> T5ForConditionalGeneration:
    torch.manual_seed(seed)
    config = T5Config(vocab_size=tokenizer.vocab_size, d_model=32, d_kv=8, d_ff=64,
                      num_layers=1, num_heads=4, dropout_rate=0.0)  # fmt: skip
    return T5ForConditionalGeneration(config)


# --- sizes -------------------------------------------------------------------------------


def test_choose_size(monkeypatch):
    monkeypatch.delenv(SIZE_VARIABLE, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert choose_size() == "small"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert choose_size() == "full"
    monkeypatch.setenv(SIZE_VARIABLE, "small")
    assert choose_size() == "small"
    assert choose_size("full") == "full"  # an argument wins over the variable
    monkeypatch.setenv(SIZE_VARIABLE, "")
    assert choose_size() == "full"  # empty means unset
    monkeypatch.setenv(SIZE_VARIABLE, "huge")
    with pytest.raises(ValueError, match=SIZE_VARIABLE):
        choose_size()
    with pytest.raises(ValueError, match="size"):
        choose_size("medium")


def test_settings(tokenizer):
    full = pretrain_settings("full")
    assert full.config == T5Config.preset("tiny", dropout_rate=0.0)
    assert full.precision == "auto" and full.num_steps >= 1000
    collator = SpanCorruptionCollator.from_tokenizer(tokenizer, full.input_length)
    assert (collator.input_length, collator.target_length) == (512, 114)
    small = pretrain_settings("small")
    assert small.size == "small" and small.config.vocab_size >= tokenizer.vocab_size
    assert small.replace(num_steps=3).num_steps == 3 and small.num_steps != 3


def test_full_size_runs_one_step_on_cpu(tokenizer):
    """The GPU run's code path, one step at batch 1 (bf16 autocast, as a GPU would use)."""
    settings = pretrain_settings("full").replace(batch_size=1, precision="bf16")
    docs, _ = split_documents(tokenize_documents(tokenizer), every=20)
    collator = SpanCorruptionCollator.from_tokenizer(tokenizer, settings.input_length, seed=0)
    batches = pretraining_batches(docs, collator, settings.batch_size)
    model = T5ForConditionalGeneration(settings.config)
    trainer = Trainer(model, configure_optimizer(model, lr=settings.base_lr, scale_parameter=True),
                      Schedule("inverse_sqrt", settings.base_lr, settings.warmup_steps),
                      precision=settings.precision)  # fmt: skip
    evaluations = pretrain(trainer, batches, 1, [next(batches)], log_every=0, log=lambda _: None)
    assert [e["step"] for e in evaluations] == [0, 1]
    assert all(math.isfinite(e["validation_loss"]) for e in evaluations)
    assert trainer.history[0]["tokens"] == 512 + 114


# --- data --------------------------------------------------------------------------------


def test_split_documents():
    docs = [[i] for i in range(45)]
    train, validation = split_documents(docs, every=10)
    assert validation == [[9], [19], [29], [39]]
    assert sorted(train + validation) == docs
    with pytest.raises(ValueError, match="every"):
        split_documents(docs, every=1)


def test_pretraining_batches_are_endless_and_seeded(tokenizer, documents):
    collator = SpanCorruptionCollator.from_tokenizer(tokenizer, 32, seed=0)
    tokens = sum(map(len, documents))
    steps_per_pass = tokens // (4 * collator.raw_length)
    batches = list(itertools.islice(pretraining_batches(documents, collator, 4, seed=1),
                                    3 * steps_per_pass + 2))  # fmt: skip
    assert all(b["input_ids"].shape == (4, 32) for b in batches)
    assert all(b["labels"].shape == (4, collator.target_length) for b in batches)
    same_collator = SpanCorruptionCollator.from_tokenizer(tokenizer, 32, seed=0)
    again = list(itertools.islice(pretraining_batches(documents, same_collator, 4, seed=1), 5))
    for a, b in zip(batches, again):
        assert torch.equal(a["input_ids"], b["input_ids"])
    other = SpanCorruptionCollator.from_tokenizer(tokenizer, 32, seed=0)
    first_other = next(pretraining_batches(documents, other, 4, seed=2))
    assert not torch.equal(first_other["labels"], batches[0]["labels"])  # another order
    with pytest.raises(ValueError, match="documents"):
        next(pretraining_batches([], collator, 4))
    with pytest.raises(ValueError, match="batch_size"):
        next(pretraining_batches(documents[:1], collator, 4))


def test_tokenize_documents_default_corpus(tokenizer):
    docs = tokenize_documents(tokenizer)
    assert len(docs) > 1000 and all(doc[-1] == tokenizer.eos_id for doc in docs[:50])


# --- evaluation and the loop -------------------------------------------------------------


def test_evaluate_loss_is_token_weighted(tokenizer, documents):
    collator = SpanCorruptionCollator.from_tokenizer(tokenizer, 32, seed=0)
    batches = list(itertools.islice(pretraining_batches(documents, collator, 3), 2))
    batches[1]["labels"][:, 5:] = -100  # fewer label tokens in the second batch
    model = small_model(tokenizer).train()
    loss = evaluate_loss(model, batches)
    assert model.training
    model.eval()
    with torch.no_grad():
        parts = [(model(**b).loss.item(), int((b["labels"] != -100).sum())) for b in batches]
    expected = sum(value * count for value, count in parts) / sum(count for _, count in parts)
    assert math.isclose(loss, expected, rel_tol=1e-6)
    assert not math.isclose(loss, sum(value for value, _ in parts) / 2, rel_tol=1e-4)
    batches[0]["labels"][:] = -100
    batches[1]["labels"][:] = -100
    with pytest.raises(ValueError, match="batches"):
        evaluate_loss(model, batches)


def test_predict_spans(tokenizer, documents):
    collator = SpanCorruptionCollator.from_tokenizer(tokenizer, 32, seed=0)
    batch = next(pretraining_batches(documents, collator, 2))
    model = small_model(tokenizer).train()
    texts = predict_spans(model, tokenizer, batch, max_new_tokens=5)
    assert model.training and len(texts) == 2
    ids = model.eval().generate(batch["input_ids"], attention_mask=batch["attention_mask"],
                                max_new_tokens=5)  # fmt: skip
    row = [i for i in ids[0, 1:].tolist() if i != tokenizer.pad_id]
    if tokenizer.eos_id in row:
        row = row[: row.index(tokenizer.eos_id)]
    assert texts[0] == tokenizer.decode(row)


def test_pretrain_loop_evaluates_and_logs(tokenizer, documents):
    collator = SpanCorruptionCollator.from_tokenizer(tokenizer, 32, seed=0)
    validation = list(itertools.islice(pretraining_batches(documents, collator, 2, seed=9), 2))
    model = small_model(tokenizer)
    trainer = Trainer(model, configure_optimizer(model))
    lines = []
    batches = pretraining_batches(documents, collator, 4)
    evaluations = pretrain(trainer, batches, 5, validation, eval_every=2, log_every=2,
                           log=lines.append)  # fmt: skip
    assert [e["step"] for e in evaluations] == [0, 2, 4, 5]
    assert trainer.global_step == 5
    assert sum(line.startswith("step") and "| loss" in line for line in lines) == 2
    assert sum("validation loss" in line for line in lines) == 4
    assert evaluations[-1]["validation_loss"] < evaluations[0]["validation_loss"]
    assert pretrain(trainer, batches, 2, log=lines.append) == []  # no validation: no evaluations
    for kwargs, name in [(dict(num_steps=-1), "num_steps"), (dict(eval_every=0), "eval_every"),
                         (dict(log_every=-2), "log_every")]:  # fmt: skip
        arguments = {"num_steps": 1, **kwargs}
        with pytest.raises(ValueError, match=name):
            pretrain(trainer, batches, **arguments)


def test_one_batch_is_overfit(tokenizer, documents):
    """The sanity check of chapter 11: one batch, repeated, is memorised."""
    collator = SpanCorruptionCollator.from_tokenizer(tokenizer, 32, seed=0)
    batch = next(pretraining_batches(documents, collator, 2))
    model = small_model(tokenizer)
    trainer = Trainer(model, configure_optimizer(model, "adamw", lr=1e-2))
    losses = [s["loss"] for s in trainer.fit(itertools.repeat(batch), 120)]
    assert losses[0] > 8.0 and losses[-1] < 0.05


def test_module_exports():
    assert pretrain_module.SIZES == ("small", "full")
