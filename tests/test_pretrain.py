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
    PretrainingBatches,
    choose_size,
    evaluate_loss,
    predict_spans,
    pretrain,
    pretrain_settings,
    split_documents,
    tokenize_documents,
)
from t5mini.tokenizer import Tokenizer
from t5mini.training import Schedule, Trainer, configure_optimizer


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer()


@pytest.fixture(scope="module")
def documents(tokenizer) -> list[torch.Tensor]:
    texts = [f"Line {i}: to be, or not to be, that is the question {i}." for i in range(60)]
    return tokenize_documents(tokenizer, texts)


def small_model(tokenizer, seed: int = 0) -> T5ForConditionalGeneration:
    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=tokenizer.vocab_size,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=1,
        num_heads=4,
        dropout_rate=0.0,
    )
    return T5ForConditionalGeneration(config)


def equal_batches(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


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


@pytest.mark.parametrize("precision", ["bf16", "fp16"])  # fp16 + scaler: a T4's run
def test_full_size_runs_one_step_on_cpu(tokenizer, precision):
    """The GPU run's code path, one step at batch 1 in 16-bit autocast."""
    settings = pretrain_settings("full").replace(batch_size=1, precision=precision)
    docs, _ = split_documents(tokenize_documents(tokenizer), every=20)
    collator = SpanCorruptionCollator.from_tokenizer(tokenizer, settings.input_length, seed=0)
    batches = PretrainingBatches(docs, collator, settings.batch_size)
    model = T5ForConditionalGeneration(settings.config)
    trainer = Trainer(
        model,
        configure_optimizer(model, lr=settings.base_lr, scale_parameter=True),
        Schedule("inverse_sqrt", settings.base_lr, settings.warmup_steps),
        precision=settings.precision,
    )
    evaluations = pretrain(trainer, batches, 1, [next(batches)], log_every=0, log=lambda _: None)
    assert [e["step"] for e in evaluations] == [0, 1]
    assert all(math.isfinite(e["validation_loss"]) for e in evaluations)
    assert trainer.history[0]["tokens"] == 512 + 114
    assert trainer.scaler.is_enabled() == (precision == "fp16")


# --- data --------------------------------------------------------------------------------


def test_split_documents():
    docs = [[i] for i in range(45)]
    train, validation = split_documents(docs, every=10)
    assert validation == [[9], [19], [29], [39]]
    assert sorted(train + validation) == docs
    with pytest.raises(ValueError, match="every"):
        split_documents(docs, every=1)


def test_tokenize_documents_default_corpus(tokenizer):
    docs = tokenize_documents(tokenizer)
    assert len(docs) > 1000 and all(int(doc[-1]) == tokenizer.eos_id for doc in docs[:50])
    assert docs[0].dtype == torch.int32 and docs[0].dim() == 1


def test_batches_are_endless_and_seeded(tokenizer, documents):
    collator = SpanCorruptionCollator.from_tokenizer(tokenizer, 32, seed=0)
    stream = PretrainingBatches(documents, collator, 4, seed=1)
    assert stream.batches_per_pass == sum(map(len, documents)) // (4 * collator.raw_length)
    batches = list(itertools.islice(stream, 3 * stream.batches_per_pass + 2))
    assert stream.epoch == 3
    assert all(b["input_ids"].shape == (4, 32) for b in batches)
    assert all(b["labels"].shape == (4, collator.target_length) for b in batches)
    same = SpanCorruptionCollator.from_tokenizer(tokenizer, 32, seed=0)
    again = list(itertools.islice(PretrainingBatches(documents, same, 4, seed=1), 5))
    assert all(equal_batches(a, b) for a, b in zip(batches, again))
    other = SpanCorruptionCollator.from_tokenizer(tokenizer, 32, seed=0)
    first_other = next(PretrainingBatches(documents, other, 4, seed=2))
    assert not torch.equal(first_other["labels"], batches[0]["labels"])  # another order


def test_batches_pack_documents_in_their_shuffled_order(tokenizer, documents):
    """Uncorrupted, a pass's rows are the documents joined with EOS in the drawn order."""
    collator = SpanCorruptionCollator.from_tokenizer(tokenizer, 32, seed=0)
    stream = PretrainingBatches(documents, collator, 2, seed=5)
    order = torch.randperm(len(documents), generator=torch.Generator().manual_seed(5)).tolist()
    joined = torch.cat([documents[i] for i in order])
    assert torch.equal(stream.tokens, joined)
    size = 2 * collator.raw_length
    assert stream.batches_per_pass == len(joined) // size


@pytest.mark.parametrize("taken", [0, 1, 8, 9])  # 9 = one pass exactly
def test_batches_resume_exactly(tokenizer, documents, taken):
    collator = SpanCorruptionCollator.from_tokenizer(tokenizer, 32, seed=0)
    stream = PretrainingBatches(documents, collator, 4, seed=1)
    assert stream.batches_per_pass == 9
    for _ in range(taken):
        next(stream)
    state = stream.state_dict()
    expected = list(itertools.islice(stream, 9))  # crosses into the next pass
    other = SpanCorruptionCollator.from_tokenizer(tokenizer, 32, seed=123)
    resumed = PretrainingBatches(documents, other, 4, seed=99)  # seeds replaced by the state
    resumed.load_state_dict(state)
    assert all(equal_batches(a, b) for a, b in zip(expected, itertools.islice(resumed, 9)))
    assert resumed.epoch == stream.epoch and resumed.index == stream.index


def test_batches_shared_between_processes(tokenizer, documents):
    """Each rank keeps its rows of the one global batch: together they are that batch."""

    def stream(rank: int, world_size: int) -> PretrainingBatches:
        collator = SpanCorruptionCollator.from_tokenizer(tokenizer, 32, seed=0)
        return PretrainingBatches(documents, collator, 4, seed=1, rank=rank, world_size=world_size)

    whole = list(itertools.islice(stream(0, 1), 9))
    parts = [list(itertools.islice(stream(rank, 2), 9)) for rank in range(2)]
    for step, batch in enumerate(whole):
        for key, value in batch.items():
            assert parts[0][step][key].shape[0] == 2
            assert torch.equal(torch.cat([parts[0][step][key], parts[1][step][key]]), value)


def test_batches_errors(tokenizer, documents):
    collator = SpanCorruptionCollator.from_tokenizer(tokenizer, 32, seed=0)
    with pytest.raises(ValueError, match="documents"):
        PretrainingBatches([], collator, 4)
    with pytest.raises(ValueError, match="batch_size"):
        PretrainingBatches(documents[:1], collator, 4)  # not one full batch
    with pytest.raises(ValueError, match="batch_size"):
        PretrainingBatches(documents, collator, 0)
    with pytest.raises(TypeError, match="batch_size"):
        PretrainingBatches(documents, collator, 2.0)
    with pytest.raises(ValueError, match="world_size"):
        PretrainingBatches(documents, collator, 3, world_size=2)
    with pytest.raises(ValueError, match="rank"):
        PretrainingBatches(documents, collator, 4, rank=2, world_size=2)


def test_batches_add_eos_to_documents_without_it(tokenizer):
    collator = SpanCorruptionCollator.from_tokenizer(tokenizer, 16, seed=0)
    stream = PretrainingBatches([[5, 6, 7]] * 40, collator, 1)
    assert stream.tokens[:8].tolist() == [5, 6, 7, 1, 5, 6, 7, 1]


# --- evaluation and the loop -------------------------------------------------------------


def test_evaluate_loss_is_token_weighted(tokenizer, documents):
    collator = SpanCorruptionCollator.from_tokenizer(tokenizer, 32, seed=0)
    batches = list(itertools.islice(PretrainingBatches(documents, collator, 3), 2))
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
    batch = next(PretrainingBatches(documents, collator, 2))
    model = small_model(tokenizer).train()
    texts = predict_spans(model, tokenizer, batch, max_new_tokens=5)
    assert model.training and len(texts) == 2
    ids = model.eval().generate(
        batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=5
    )
    row = [i for i in ids[0, 1:].tolist() if i != tokenizer.pad_id]
    if tokenizer.eos_id in row:
        row = row[: row.index(tokenizer.eos_id)]
    assert texts[0] == tokenizer.decode(row)


def test_pretrain_loop_evaluates_logs_and_calls_back(tokenizer, documents):
    collator = SpanCorruptionCollator.from_tokenizer(tokenizer, 32, seed=0)
    validation = list(itertools.islice(PretrainingBatches(documents, collator, 2, seed=9), 2))
    model = small_model(tokenizer)
    trainer = Trainer(model, configure_optimizer(model))
    lines, records = [], []
    batches = PretrainingBatches(documents, collator, 4)
    evaluations = pretrain(
        trainer, batches, 5, validation, eval_every=2, log_every=2, log=lines.append,
        callback=records.append,
    )  # fmt: skip
    assert [e["step"] for e in evaluations] == [0, 2, 4, 5]
    assert trainer.global_step == 5
    assert sum(line.startswith("step") and "| loss" in line for line in lines) == 2
    assert sum("validation loss" in line for line in lines) == 4
    assert evaluations[-1]["validation_loss"] < evaluations[0]["validation_loss"]
    kinds = ["eval" if "validation_loss" in r else "train" for r in records]
    assert kinds == ["eval", "train", "train", "eval", "train", "train", "eval", "train", "eval"]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4, 5]
    # a later call continues the run: no evaluation of step 5 again, the same grid of steps
    more = pretrain(trainer, batches, 3, validation, eval_every=2, log=lines.append)
    assert [e["step"] for e in more] == [6, 8]
    assert pretrain(trainer, batches, 2, log=lines.append) == []  # no validation: none


def test_pretrain_argument_errors(tokenizer, documents):
    collator = SpanCorruptionCollator.from_tokenizer(tokenizer, 32, seed=0)
    model = small_model(tokenizer)
    trainer = Trainer(model, configure_optimizer(model))
    batches = PretrainingBatches(documents, collator, 4)
    for kwargs, error, name in [
        (dict(num_steps=-1), ValueError, "num_steps"),
        (dict(eval_every=0), ValueError, "eval_every"),
        (dict(log_every=-2), ValueError, "log_every"),
        (dict(num_steps=1.5), TypeError, "num_steps"),
    ]:
        arguments = {"num_steps": 1, **kwargs}
        with pytest.raises(error, match=name):
            pretrain(trainer, batches, **arguments)
    assert trainer.global_step == 0


def test_pretrain_finite_batches_that_run_out(tokenizer, documents):
    """A finite iterable that runs out is a clear error naming `batches`, not StopIteration."""
    collator = SpanCorruptionCollator.from_tokenizer(tokenizer, 32, seed=0)
    three = list(itertools.islice(PretrainingBatches(documents, collator, 4), 3))
    model = small_model(tokenizer)
    trainer = Trainer(model, configure_optimizer(model))
    with pytest.raises(ValueError, match=r"batches ran out after 3 of num_steps=5"):
        pretrain(trainer, iter(three), 5, log_every=0)
    assert trainer.global_step == 3


def test_pretrain_refuses_one_shot_validation(tokenizer, documents):
    """A generator would be empty at the second evaluation: refused before any step."""
    collator = SpanCorruptionCollator.from_tokenizer(tokenizer, 32, seed=0)
    validation = list(itertools.islice(PretrainingBatches(documents, collator, 2, seed=9), 2))
    model = small_model(tokenizer)
    trainer = Trainer(model, configure_optimizer(model))
    batches = PretrainingBatches(documents, collator, 4)
    with pytest.raises(TypeError, match="validation_batches"):
        pretrain(trainer, batches, 4, (b for b in validation), eval_every=2)
    assert trainer.global_step == 0
    evaluations = pretrain(trainer, batches, 4, tuple(validation), eval_every=2, log_every=0)
    assert [e["step"] for e in evaluations] == [0, 2, 4]  # a tuple is read every time


def test_one_batch_is_overfit(tokenizer, documents):
    """The sanity check of chapter 12: one batch, repeated, is memorised."""
    collator = SpanCorruptionCollator.from_tokenizer(tokenizer, 32, seed=0)
    batch = next(PretrainingBatches(documents, collator, 2))
    model = small_model(tokenizer)
    trainer = Trainer(model, configure_optimizer(model, "adamw", lr=1e-2))
    losses = [s["loss"] for s in trainer.fit(itertools.repeat(batch), 120)]
    assert losses[0] > 8.0 and losses[-1] < 0.05


def test_module_exports():
    assert pretrain_module.SIZES == ("small", "full")
