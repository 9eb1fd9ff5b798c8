"""Tests for t5mini.training: Adafactor against transformers, schedules, accumulation,
clipping, precision, checkpoints (atomicity, round trip, resume) and fine-tuning helpers."""

from __future__ import annotations

import dataclasses
import math
import os
import stat
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers.optimization import Adafactor as ReferenceAdafactor

import t5mini.training as training
from t5mini.config import T5Config
from t5mini.model import T5ForConditionalGeneration
from t5mini.tokenizer import Tokenizer
from t5mini.training import (
    Adafactor,
    Schedule,
    Trainer,
    configure_optimizer,
    exact_match,
    generate_texts,
    load_checkpoint,
    num_label_tokens,
    resolve_precision,
    save_checkpoint,
    split_batch,
    text_to_text_batch,
)

VOCAB = 96


def small_config(**changes) -> T5Config:
    base = dict(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                dropout_rate=0.0)  # fmt: skip
    return T5Config(**{**base, **changes})


def make_model(seed: int = 0, **changes) -> T5ForConditionalGeneration:
    torch.manual_seed(seed)
    return T5ForConditionalGeneration(small_config(**changes))


def make_batch(seed: int = 0, batch_size: int = 6) -> dict[str, torch.Tensor]:
    """Random inputs with padding, and labels of different lengths (-100 padded)."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, VOCAB, (batch_size, 9), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    labels = torch.randint(3, VOCAB, (batch_size, 7), generator=generator)
    for row in range(batch_size):
        attention_mask[row, 9 - row % 4 :] = 0
        labels[row, 1 + (row * row) % 6 :] = -100
    input_ids = input_ids.masked_fill(attention_mask == 0, 0)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def flat_weights(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


# --- Adafactor ---------------------------------------------------------------------------

ADAFACTOR_SETTINGS = [
    dict(),  # T5 pre-training: relative step, parameter scale
    dict(lr=1e-3, relative_step=False, scale_parameter=False),  # T5 fine-tuning
    dict(lr=3e-2, relative_step=False, scale_parameter=True, clip_threshold=0.5),
    dict(beta1=0.9, weight_decay=0.01),
    dict(warmup_init=True, decay_rate=-0.5),
]


@pytest.mark.parametrize("settings", ADAFACTOR_SETTINGS)
def test_adafactor_matches_transformers_on_a_model(settings):
    """Eight updates of a small T5 land on the reference's weights, every step."""
    batch = make_batch()
    trajectories = []
    for optimizer_class in (Adafactor, ReferenceAdafactor):
        model = make_model()
        optimizer = optimizer_class(model.parameters(), **settings)
        weights = []
        for _ in range(8):
            model(**batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            weights.append(flat_weights(model))
        trajectories.append(weights)
    start = flat_weights(make_model())
    assert (trajectories[0][-1] - start).abs().max() > 1e-4  # it really moved
    for ours, reference in zip(*trajectories):
        torch.testing.assert_close(ours, reference, rtol=1e-6, atol=1e-7)


def test_adafactor_matches_transformers_on_3d_tensors_and_vectors():
    """Factoring over the last two dimensions of a 3-D tensor; full second moment for vectors."""
    generator = torch.Generator().manual_seed(1)
    shapes = [(3, 5, 7), (11,), (4, 6)]
    initial = [torch.randn(shape, generator=generator) for shape in shapes]
    grads = [[torch.randn(shape, generator=generator) for shape in shapes] for _ in range(6)]
    results = []
    for optimizer_class in (Adafactor, ReferenceAdafactor):
        params = [torch.nn.Parameter(w.clone()) for w in initial]
        optimizer = optimizer_class(params, beta1=0.5)
        for step_grads in grads:
            for param, grad in zip(params, step_grads):
                param.grad = grad.clone()
            optimizer.step()
        results.append(params)
    for ours, reference in zip(*results):
        torch.testing.assert_close(ours, reference, rtol=1e-6, atol=1e-7)


def test_adafactor_state_is_factored():
    matrix, vector = torch.nn.Parameter(torch.randn(8, 5)), torch.nn.Parameter(torch.randn(5))
    optimizer = Adafactor([matrix, vector])
    matrix.grad, vector.grad = torch.randn(8, 5), torch.randn(5)
    optimizer.step()
    assert optimizer.state[matrix]["exp_avg_sq_row"].shape == (8,)
    assert optimizer.state[matrix]["exp_avg_sq_col"].shape == (5,)
    assert "exp_avg_sq" not in optimizer.state[matrix] and "exp_avg" not in optimizer.state[matrix]
    assert optimizer.state[vector]["exp_avg_sq"].shape == (5,)
    assert optimizer.state[matrix]["step"] == 1


def test_adafactor_relative_step_is_t5_schedule():
    for step in [1, 100, 10_000, 10_001, 250_000]:
        expected = 1 / math.sqrt(max(step, 10_000))
        assert math.isclose(Adafactor.relative_step_size(step), expected, rel_tol=1e-12)


def test_adafactor_bf16_parameters_match_fp32_statistics():
    """bf16 weights are updated through an fp32 copy, as in the reference."""
    results = []
    for optimizer_class in (Adafactor, ReferenceAdafactor):
        torch.manual_seed(0)
        param = torch.nn.Parameter(torch.randn(6, 4).bfloat16())
        optimizer = optimizer_class([param])
        for _ in range(3):
            param.grad = torch.ones(6, 4, dtype=torch.bfloat16)
            optimizer.step()
        results.append(param.detach().clone())
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=0)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(lr=1e-3), "lr"),  # with relative_step=True
        (dict(lr=-1e-3, relative_step=False), "lr"),
        (dict(lr=None, relative_step=False), "lr"),
        (dict(lr=float("nan"), relative_step=False), "lr"),
        (dict(clip_threshold=0.0), "clip_threshold"),
        (dict(decay_rate=0.5), "decay_rate"),
        (dict(decay_rate=0.0), "decay_rate"),
        (dict(beta1=1.0), "beta1"),
        (dict(beta1=-0.1), "beta1"),
        (dict(weight_decay=-1.0), "weight_decay"),
        (dict(eps=(1e-30,)), "eps"),
        (dict(eps=(-1.0, 1e-3)), "eps[0]"),
        (dict(warmup_init=True, relative_step=False, lr=1e-3), "warmup_init"),
    ],
)
def test_adafactor_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=re_name(name)):
        Adafactor([torch.nn.Parameter(torch.zeros(2, 2))], **kwargs)


def re_name(name: str) -> str:
    return name.replace("[", r"\[").replace("]", r"\]")


def test_adafactor_rejects_sparse_gradients():
    param = torch.nn.Parameter(torch.zeros(3, 3))
    optimizer = Adafactor([param])
    param.grad = torch.zeros(3, 3).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        optimizer.step()


def test_configure_optimizer():
    model = make_model()
    adamw = configure_optimizer(model, "adamw", lr=1e-3, weight_decay=0.1)
    assert isinstance(adamw, torch.optim.AdamW)
    decay, no_decay = adamw.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(
        p.dim() == 1 for p in no_decay["params"]
    )
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    relative = configure_optimizer(model)
    assert isinstance(relative, Adafactor) and relative.param_groups[0]["relative_step"]
    constant = configure_optimizer(model, lr=1e-3)
    group = constant.param_groups[0]
    assert group["lr"] == 1e-3 and not group["relative_step"] and not group["scale_parameter"]
    with pytest.raises(ValueError, match="name"):
        configure_optimizer(model, "sgd")
    with pytest.raises(ValueError, match="lr"):
        configure_optimizer(model, "adamw")
    with pytest.raises(ValueError, match="lr"):
        configure_optimizer(model, "adamw", lr=-1.0)
    with pytest.raises(ValueError, match="weight_decay"):
        configure_optimizer(model, "adamw", lr=1e-3, weight_decay=-0.1)


# --- schedules ---------------------------------------------------------------------------


def test_inverse_sqrt_schedule_is_t5s():
    schedule = Schedule("inverse_sqrt", base_lr=0.01, warmup_steps=10_000)
    for step in [0, 1, 9_999, 10_000, 10_001, 40_000, 2**19]:
        assert math.isclose(schedule(step), 1 / math.sqrt(max(step, 10_000)), rel_tol=1e-12)
    ramp = Schedule("inverse_sqrt", base_lr=0.01, warmup_steps=100, ramp=True)
    assert math.isclose(ramp(0), 1e-4) and math.isclose(ramp(49), 5e-3)
    assert math.isclose(ramp(100), 0.01) and math.isclose(ramp(400), 5e-3)


def test_linear_cosine_constant_schedules():
    linear = Schedule("linear", base_lr=1.0, warmup_steps=10, total_steps=110, min_lr=0.1)
    assert math.isclose(linear(0), 0.1) and math.isclose(linear(9), 1.0)
    assert math.isclose(linear(10), 1.0) and math.isclose(linear(60), 0.55)
    assert math.isclose(linear(110), 0.1) and math.isclose(linear(10_000), 0.1)
    cosine = Schedule("cosine", base_lr=1.0, warmup_steps=0, total_steps=100, min_lr=0.2)
    assert math.isclose(cosine(0), 1.0) and math.isclose(cosine(50), 0.6)
    assert math.isclose(cosine(100), 0.2) and math.isclose(cosine(500), 0.2)
    values = [cosine(n) for n in range(101)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    constant = Schedule("constant", base_lr=1e-3, warmup_steps=4)
    assert [constant(n) for n in range(6)] == pytest.approx(
        [2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3]
    )
    assert Schedule("constant", 1e-3)(123_456) == 1e-3
    assert Schedule("cosine", 1.0, 2, total_steps=10).to_dict()["total_steps"] == 10


@pytest.mark.parametrize(
    "kwargs, error, name",
    [
        (dict(name="step"), ValueError, "name"),
        (dict(base_lr=-1.0), ValueError, "base_lr"),
        (dict(base_lr=0.0), ValueError, "base_lr"),
        (dict(base_lr="0.1"), TypeError, "base_lr"),
        (dict(warmup_steps=-1), ValueError, "warmup_steps"),
        (dict(warmup_steps=1.5), TypeError, "warmup_steps"),
        (dict(name="inverse_sqrt", warmup_steps=0), ValueError, "warmup_steps"),
        (dict(name="linear", warmup_steps=10, total_steps=10), ValueError, "total_steps"),
        (dict(name="cosine", total_steps=None), ValueError, "total_steps"),
        (dict(min_lr=1.0, base_lr=0.1), ValueError, "min_lr"),
        (dict(ramp=1), TypeError, "ramp"),
    ],
)
def test_schedule_bad_arguments(kwargs, error, name):
    with pytest.raises(error, match=name):
        Schedule(**kwargs)


def test_schedule_negative_step():
    with pytest.raises(ValueError, match="step"):
        Schedule()(-1)


# --- accumulation, clipping, precision ---------------------------------------------------


class GradRecorder(torch.optim.Optimizer):
    """An "optimiser" that keeps the gradients it is given (as clipped by the Trainer)."""

    def __init__(self, params):
        super().__init__(params, {"lr": 0.0})
        self.recorded = None

    def step(self, closure=None):
        grads = [p.grad.flatten() for g in self.param_groups for p in g["params"]]
        self.recorded = torch.cat(grads).clone()


def sgd_step(accumulation_steps: int, batch, max_grad_norm=None, **kwargs):
    """One Trainer step; returns the gradient the optimiser received, and the statistics."""
    model = make_model()
    optimizer = GradRecorder(model.parameters())
    trainer = Trainer(model, optimizer, accumulation_steps=accumulation_steps,
                      max_grad_norm=max_grad_norm, **kwargs)  # fmt: skip
    stats = trainer.step(batch)
    return optimizer.recorded, stats


def test_accumulation_equals_the_big_batch():
    """Token-weighted micro-batches give the big batch's loss and gradient."""
    batch = make_batch()
    counts = [num_label_tokens(mb) for mb in split_batch(batch, 3)]
    assert len(set(counts)) > 1  # the micro-batches hold different numbers of label tokens
    reference_loss = make_model()(**batch).loss.item()
    grad_1, stats_1 = sgd_step(1, batch)
    for steps in (2, 3, 6):
        grad_n, stats_n = sgd_step(steps, batch)
        torch.testing.assert_close(grad_n, grad_1, rtol=1e-5, atol=1e-7)
        assert math.isclose(stats_n["loss"], reference_loss, rel_tol=1e-6)
        assert math.isclose(stats_n["grad_norm"], stats_1["grad_norm"], rel_tol=1e-5)
    # a naive mean of micro-batch means would be a different loss
    model = make_model()
    naive = sum(model(**mb).loss.item() for mb in split_batch(batch, 3)) / 3
    assert abs(naive - reference_loss) > 1e-3


def test_micro_batch_without_labels_is_skipped():
    batch = make_batch()
    batch["labels"][:2] = -100  # the first micro-batch of three has no label tokens
    grad_1, stats_1 = sgd_step(1, batch)
    grad_3, stats_3 = sgd_step(3, batch)
    assert math.isfinite(stats_3["loss"])
    torch.testing.assert_close(grad_3, grad_1, rtol=1e-5, atol=1e-7)
    batch["labels"][:] = -100
    with pytest.raises(ValueError, match="batch"):
        sgd_step(1, batch)


def test_gradient_clipping_reports_the_norm_and_clips():
    batch = make_batch()
    grad, stats = sgd_step(1, batch)  # unclipped: the change is the gradient
    assert math.isclose(grad.norm().item(), stats["grad_norm"], rel_tol=1e-5)
    clipped, clipped_stats = sgd_step(1, batch, max_grad_norm=stats["grad_norm"] / 4)
    assert math.isclose(clipped_stats["grad_norm"], stats["grad_norm"], rel_tol=1e-6)  # before
    assert math.isclose(clipped.norm().item(), stats["grad_norm"] / 4, rel_tol=1e-4)
    torch.testing.assert_close(clipped * 4, grad, rtol=1e-4, atol=1e-7)


def test_split_batch():
    batch = make_batch(batch_size=5)
    parts = split_batch(batch, 2)
    assert [len(p["labels"]) for p in parts] == [3, 2]
    for key in batch:
        torch.testing.assert_close(torch.cat([p[key] for p in parts]), batch[key])
    with pytest.raises(ValueError, match="num_micro_batches"):
        split_batch(batch, 0)
    with pytest.raises(ValueError, match="num_micro_batches"):
        split_batch(batch, 6)


def test_precision():
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp8", "cpu")
    batch = make_batch()
    _, fp32 = sgd_step(1, batch)
    _, bf16 = sgd_step(1, batch, precision="bf16")
    assert bf16["loss"] != fp32["loss"]  # the matmuls really ran in bf16
    assert math.isclose(bf16["loss"], fp32["loss"], rel_tol=2e-2)
    model = make_model()
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), precision="fp16")
    assert trainer.scaler.is_enabled()
    stats = trainer.step(batch)
    assert math.isfinite(stats["loss"]) and stats["grad_scale"] == 2.0**16
    assert fp32["grad_scale"] == 1.0  # no scaling without fp16


def test_gradient_checkpointing_gives_the_same_gradients():
    batch = make_batch()
    grad, stats = sgd_step(1, batch)
    grad_ckpt, stats_ckpt = sgd_step(1, batch, gradient_checkpointing=True)
    torch.testing.assert_close(grad_ckpt, grad, rtol=1e-5, atol=1e-7)
    model = make_model()
    Trainer(model, torch.optim.SGD(model.parameters(), lr=1.0), gradient_checkpointing=True)
    assert model.encoder.gradient_checkpointing and model.decoder.gradient_checkpointing


@pytest.mark.parametrize(
    "kwargs, error, name",
    [
        (dict(accumulation_steps=0), ValueError, "accumulation_steps"),
        (dict(accumulation_steps=1.5), TypeError, "accumulation_steps"),
        (dict(max_grad_norm=-1.0), ValueError, "max_grad_norm"),
        (dict(max_grad_norm=0.0), ValueError, "max_grad_norm"),
        (dict(max_grad_norm="1"), TypeError, "max_grad_norm"),
        (dict(precision="half"), ValueError, "precision"),
        (dict(schedule=0.01), TypeError, "schedule"),
        (dict(compile="yes"), TypeError, "compile"),
        (dict(max_skipped_steps=-1), ValueError, "max_skipped_steps"),
    ],
)
def test_trainer_bad_arguments(kwargs, error, name):
    model = make_model()
    with pytest.raises(error, match=name):
        Trainer(model, torch.optim.SGD(model.parameters(), lr=1.0), **kwargs)
    with pytest.raises(TypeError, match="optimizer"):
        Trainer(model, "adafactor")


def test_fit_logs_and_schedules():
    model = make_model()
    schedule = Schedule("linear", 1e-2, 2, total_steps=10)
    trainer = Trainer(model, configure_optimizer(model, "adamw", lr=1e-2), schedule)
    lines = []
    stats = trainer.fit([make_batch(i) for i in range(4)], 4, log_every=2, log=lines.append)
    assert [s["step"] for s in stats] == [1, 2, 3, 4] and trainer.global_step == 4
    assert [s["lr"] for s in stats] == [schedule(n) for n in range(4)]
    assert len(lines) == 2 and lines[0].startswith("step      2 | loss")
    assert all(s["tokens"] > 0 and s["tokens_per_s"] > 0 for s in stats)
    with pytest.raises(ValueError, match="batches ran out"):
        trainer.fit([make_batch()], 2)
    with pytest.raises(ValueError, match="num_steps"):
        trainer.fit([], -1)
    with pytest.raises(ValueError, match="log_every"):
        trainer.fit([], 0, log_every=-1)
    relative = Trainer(model, configure_optimizer(model))
    assert math.isclose(relative.current_lr(), 1e-2)


# --- checkpoints -------------------------------------------------------------------------


def trained_trainer(seed: int = 0, steps: int = 2, **changes) -> Trainer:
    model = make_model(seed, **changes)
    optimizer = configure_optimizer(model, lr=0.01, scale_parameter=True)
    trainer = Trainer(model, optimizer, Schedule("inverse_sqrt", 0.01, 5))
    trainer.fit([make_batch(i) for i in range(steps)], steps)
    return trainer


def test_checkpoint_round_trip(tmp_path):
    trainer = trained_trainer()
    path = trainer.save(tmp_path / "run" / "ckpt.pt", data_position=17)
    assert path == tmp_path / "run" / "ckpt.pt" and path.is_file()
    fresh_model = make_model(seed=5)
    fresh = Trainer(fresh_model, configure_optimizer(fresh_model))
    checkpoint = fresh.load(path)
    assert fresh.global_step == 2 and checkpoint["data_position"] == 17
    assert checkpoint["schedule"] == Schedule("inverse_sqrt", 0.01, 5).to_dict()
    assert checkpoint["config"] == trainer.model.config.to_dict()
    assert len(fresh.history) == 2
    torch.testing.assert_close(
        flat_weights(fresh_model), flat_weights(trainer.model), rtol=0, atol=0
    )
    ours, theirs = fresh.optimizer.state_dict(), trainer.optimizer.state_dict()
    assert ours["state"].keys() == theirs["state"].keys()
    for key in ours["state"]:
        for name, value in theirs["state"][key].items():
            assert torch.equal(torch.as_tensor(ours["state"][key][name]), torch.as_tensor(value))


def test_checkpoint_restores_rng(tmp_path):
    model = make_model()
    torch.manual_seed(3)
    save_checkpoint(tmp_path / "ckpt.pt", model)
    expected = torch.rand(4)
    torch.manual_seed(99)
    load_checkpoint(tmp_path / "ckpt.pt", model)
    torch.testing.assert_close(torch.rand(4), expected, rtol=0, atol=0)


def test_checkpoint_config_mismatch_names_the_fields(tmp_path):
    save_checkpoint(tmp_path / "ckpt.pt", make_model())
    with pytest.raises(ValueError, match=r"d_ff: checkpoint 64 != model 128"):
        load_checkpoint(tmp_path / "ckpt.pt", make_model(d_ff=128))
    with pytest.raises(ValueError, match="feed_forward_proj"):
        load_checkpoint(tmp_path / "ckpt.pt", make_model(feed_forward_proj="gated-gelu"))
    # dropout and the attention kernel are run-time choices: they may differ
    load_checkpoint(tmp_path / "ckpt.pt", make_model(dropout_rate=0.3, attn_implementation="eager"))


def test_checkpoint_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt", make_model())
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a t5mini checkpoint"):
        load_checkpoint(tmp_path / "other.pt", make_model())
    save_checkpoint(tmp_path / "weights_only.pt", make_model())
    model = make_model()
    with pytest.raises(ValueError, match="optimizer"):
        load_checkpoint(tmp_path / "weights_only.pt", model, configure_optimizer(model))
    with pytest.raises(ValueError, match="step"):
        save_checkpoint(tmp_path / "x.pt", model, step=-1)


def test_a_crash_mid_write_leaves_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    old = trained_trainer(steps=1)
    old.save(path)
    old_bytes = path.read_bytes()

    real_save = torch.save

    def crashing_save(obj, file, *args, **kwargs):
        real_save(obj, file, *args, **kwargs)  # a full write ...
        file.seek(len(old_bytes) // 2)
        file.truncate()  # ... cut in half, then the process "dies"
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(training.torch, "save", crashing_save)
    new = trained_trainer(seed=1, steps=3)
    with pytest.raises(KeyboardInterrupt):
        new.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == old_bytes  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]  # no temporary left over
    model = make_model(seed=7)
    assert load_checkpoint(path, model)["step"] == 1
    torch.testing.assert_close(flat_weights(model), flat_weights(old.model), rtol=0, atol=0)
    new.save(path)  # and a normal save still replaces it
    assert load_checkpoint(path, make_model())["step"] == 3


def test_resume_gives_the_same_losses(tmp_path):
    """2N steps straight == N steps, save, fresh objects, load, N steps (fp32, dropout on)."""
    n = 3
    batches = [make_batch(i) for i in range(2 * n)]

    def new_trainer() -> Trainer:
        model = T5ForConditionalGeneration(small_config(dropout_rate=0.2))
        return Trainer(model, configure_optimizer(model, lr=1e-2, beta1=0.9),
                       Schedule("cosine", 1e-2, 2, total_steps=2 * n), accumulation_steps=2)  # fmt: skip

    torch.manual_seed(0)
    straight = new_trainer()
    losses = [s["loss"] for s in straight.fit(batches, 2 * n)]

    torch.manual_seed(0)
    first = new_trainer()
    resumed_losses = [s["loss"] for s in first.fit(batches[:n], n)]
    first.save(tmp_path / "ckpt.pt")
    torch.manual_seed(1234)
    second = new_trainer()
    second.load(tmp_path / "ckpt.pt")
    resumed_losses += [s["loss"] for s in second.fit(batches[second.global_step :], n)]

    assert resumed_losses == losses
    torch.testing.assert_close(
        flat_weights(second.model), flat_weights(straight.model), rtol=0, atol=0
    )
    assert [s["step"] for s in second.history] == list(range(1, 2 * n + 1))
    # without restoring the RNG, dropout draws differently and the losses differ
    torch.manual_seed(0)
    third = new_trainer()
    load_checkpoint(tmp_path / "ckpt.pt", third.model, third.optimizer, restore_rng=False)
    third.global_step = n
    torch.manual_seed(1234)
    other = [s["loss"] for s in third.fit(batches[n:], n)]
    assert other != losses[n:]


# --- text-to-text helpers ----------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer()


def test_text_to_text_batch(tokenizer):
    batch = text_to_text_batch(tokenizer, ["first word: To be", "first word: a b c d e"],
                               ["To", "a longer target here"])  # fmt: skip
    assert batch["labels"].shape[0] == 2
    assert (batch["labels"][0] == -100).any() and not (batch["labels"][1] == -100).any()
    short = tokenizer("To")["input_ids"][0].tolist()
    assert batch["labels"][0][: len(short)].tolist() == short
    assert num_label_tokens(batch) == len(short) + len(tokenizer.encode("a longer target here"))
    truncated = text_to_text_batch(tokenizer, ["x y z w v u"], ["a b c d e f g"], 4, 3)
    assert truncated["input_ids"].shape == (1, 4) and truncated["labels"].shape == (1, 3)
    assert truncated["labels"][0, -1] == tokenizer.eos_id
    with pytest.raises(ValueError, match="sources"):
        text_to_text_batch(tokenizer, ["a"], ["b", "c"])


def test_generate_texts_and_exact_match(tokenizer):
    model = T5ForConditionalGeneration(small_config(vocab_size=tokenizer.vocab_size)).train()
    texts = generate_texts(model, tokenizer, ["a", "b c", "d"], batch_size=2, max_new_tokens=3)
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
    assert model.training  # put back as it was
    direct = model.eval().generate(**tokenizer(["b c"]), max_new_tokens=3)
    assert texts[1] == tokenizer.decode(direct[0], skip_special_tokens=True)
    assert exact_match(["To", " be ", "or"], ["To", "be", "not"]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="predictions"):
        exact_match(["a"], ["a", "b"])
    with pytest.raises(ValueError, match="predictions"):
        exact_match([], [])
    with pytest.raises(ValueError, match="batch_size"):
        generate_texts(model, tokenizer, ["a"], batch_size=0)


def test_atomic_save_creates_parents(tmp_path):
    path = training.atomic_save({"x": torch.ones(2)}, tmp_path / "a" / "b" / "obj.pt")
    assert isinstance(path, Path) and torch.load(path)["x"].sum() == 2


def test_trainer_leaves_checkpointing_alone_by_default():
    model = make_model()
    model.gradient_checkpointing_enable(True)
    Trainer(model, torch.optim.SGD(model.parameters(), lr=1.0))
    assert model.encoder.gradient_checkpointing and model.config.gradient_checkpointing
    Trainer(model, torch.optim.SGD(model.parameters(), lr=1.0), gradient_checkpointing=False)
    assert not model.decoder.gradient_checkpointing


def test_a_schedule_with_relative_step_adafactor_is_refused():
    """Adafactor's relative step would silently override the schedule (and the logged lr)."""
    model = make_model()
    with pytest.raises(ValueError, match="schedule"):
        Trainer(model, configure_optimizer(model), Schedule("constant", 1e-3))
    trainer = Trainer(
        model, configure_optimizer(model, lr=0.01), Schedule("linear", 0.01, 0, total_steps=4)
    )
    stats = trainer.fit([make_batch(i) for i in range(3)], 3)
    assert [s["lr"] for s in stats] == [0.01, 0.0075, 0.005]
    assert trainer.optimizer.param_groups[0]["lr"] == 0.005  # the schedule really drove it


# --- steps that are not finite -----------------------------------------------------------


def poison_embedding(model: torch.nn.Module):
    """A forward hook that turns the embedding's output into nan (remove() undoes it)."""
    embedding = next(m for m in model.modules() if isinstance(m, torch.nn.Embedding))
    return embedding.register_forward_hook(lambda module, inputs, output: output * math.nan)


def test_a_nan_loss_skips_the_step_and_leaves_the_weights():
    model = make_model()
    trainer = Trainer(model, configure_optimizer(model, lr=1e-2, beta1=0.9), max_grad_norm=1.0)
    trainer.step(make_batch(0))
    weights = flat_weights(model)
    state = {k: {n: torch.as_tensor(v).clone() for n, v in s.items()}
             for k, s in trainer.optimizer.state_dict()["state"].items()}  # fmt: skip
    hook = poison_embedding(model)
    stats = trainer.step(make_batch(1))
    hook.remove()
    assert math.isnan(stats["loss"]) and stats["skipped_steps"] == 1 == trainer.skipped_steps
    assert torch.equal(flat_weights(model), weights)  # untouched, not nan
    assert all(p.grad is None for p in model.parameters())  # the gradients were dropped
    for key, entry in trainer.optimizer.state_dict()["state"].items():
        for name, value in entry.items():  # the optimiser did not step (its count neither)
            assert torch.equal(torch.as_tensor(value), state[key][name])
    good = trainer.step(make_batch(2))
    assert math.isfinite(good["loss"]) and good["skipped_steps"] == 1
    assert (
        not torch.equal(flat_weights(model), weights) and torch.isfinite(flat_weights(model)).all()
    )
    assert "1 skipped" in training.format_stats(good)


def test_an_infinite_gradient_norm_skips_the_step():
    model = make_model()
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), max_grad_norm=None)
    weights = flat_weights(model)
    first = next(model.parameters())
    hook = first.register_hook(lambda grad: grad * math.inf)
    stats = trainer.step(make_batch())
    hook.remove()
    assert math.isfinite(stats["loss"]) and not math.isfinite(stats["grad_norm"])
    assert stats["skipped_steps"] == 1 and torch.equal(flat_weights(model), weights)


def test_too_many_skipped_steps_in_a_row_stop_training():
    model = make_model()
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), max_skipped_steps=2)
    poison_embedding(model)
    trainer.step(make_batch())
    trainer.step(make_batch())
    with pytest.raises(FloatingPointError, match="max_skipped_steps=2"):
        trainer.step(make_batch())
    assert torch.isfinite(flat_weights(model)).all()


def test_fp16_grad_scaler_still_skips_and_halves_its_scale():
    model = make_model()
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), precision="fp16")
    weights = flat_weights(model)
    hook = next(model.parameters()).register_hook(lambda grad: grad * math.inf)
    stats = trainer.step(make_batch())
    hook.remove()
    assert stats["grad_scale"] == 2.0**15 and stats["skipped_steps"] == 1  # halved from 2**16
    assert torch.equal(flat_weights(model), weights)
    stats = trainer.step(make_batch())
    assert math.isfinite(stats["loss"]) and stats["grad_scale"] == 2.0**15
    assert not torch.equal(flat_weights(model), weights)


def test_half_precision_weights_with_adamw_stop_at_once(tmp_path):
    """AdamW's eps=1e-8 is 0 in float16: its first update divides by zero."""
    model = make_model()
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.01))
    trainer.step(make_batch())
    good = trainer.save(tmp_path / "ckpt.pt")
    good_bytes = good.read_bytes()
    half = make_model().half()
    half_trainer = Trainer(half, torch.optim.AdamW(half.parameters(), lr=1e-3))
    with pytest.raises(FloatingPointError, match="float32"):
        half_trainer.step(make_batch())
    with pytest.raises(ValueError, match="not finite"):  # and it cannot replace the good file
        half_trainer.save(tmp_path / "ckpt.pt")
    assert good.read_bytes() == good_bytes


def test_save_refuses_weights_that_are_not_finite(tmp_path):
    trainer = trained_trainer(steps=1)
    path = trainer.save(tmp_path / "ckpt.pt")
    before = path.read_bytes()
    with torch.no_grad():
        next(trainer.model.parameters())[0, 0] = math.inf
    with pytest.raises(ValueError, match=r"model: its weights are not finite"):
        trainer.save(path)
    with pytest.raises(ValueError, match="not finite"):
        save_checkpoint(path, trainer.model)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]


# --- what a checkpoint may carry -----------------------------------------------------------


def test_extra_entries_for_an_exact_resume_come_back(tmp_path):
    generator = torch.Generator().manual_seed(3)
    torch.rand(5, generator=generator)  # a generator part way through its stream
    data = {
        "epoch": 2,
        "index": 17,
        "order": [3, 1, 2],
        "generators": {"order": generator.get_state(), "noise": torch.Generator().get_state()},
        "nested": {"lengths": (1, 2.5, None, True), "name": "c4", "raw": b"\x00\x01"},
        "tensor": torch.arange(4),
    }
    trainer = trained_trainer(steps=1)
    trainer.save(tmp_path / "ckpt.pt", data=data, position=5)
    fresh = trained_trainer(seed=3, steps=0)
    checkpoint = fresh.load(tmp_path / "ckpt.pt")
    assert checkpoint["position"] == 5
    loaded = checkpoint["data"]
    assert loaded["epoch"] == 2 and loaded["index"] == 17 and loaded["order"] == [3, 1, 2]
    assert loaded["nested"] == {"lengths": (1, 2.5, None, True), "name": "c4", "raw": b"\x00\x01"}
    assert torch.equal(loaded["tensor"], torch.arange(4))
    restored = torch.Generator()
    restored.set_state(loaded["generators"]["order"])
    assert torch.equal(torch.rand(3, generator=restored), torch.rand(3, generator=generator))
    # read the file as anyone would: weights only
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["data"]["index"] == 17


@dataclasses.dataclass
class Position:
    index: int


@pytest.mark.parametrize(
    "value, where",
    [
        (Path("data.txt"), "extra entry 'value'"),
        (Position(3), "extra entry 'value'"),
        (np.float64(1.5), "extra entry 'value'"),
        (np.int64(3), "extra entry 'value'"),
        ({"inner": [1, np.int32(2)]}, r"extra entry 'value'\['inner'\]\[1\]"),
        ({1.5: "float key"}, "extra entry 'value' has a key"),
        ({"a", "set"}, "extra entry 'value'"),
    ],
)
def test_save_refuses_what_a_weights_only_load_cannot_read(tmp_path, value, where):
    trainer = trained_trainer(steps=1)
    with pytest.raises(TypeError, match=where):
        trainer.save(tmp_path / "ckpt.pt", value=value)
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize(
    "key", ["format", "config", "model", "optimizer", "step", "rng", "trainer"]
)
def test_save_refuses_reserved_keys(tmp_path, key):
    trainer = trained_trainer(steps=1)
    with pytest.raises(ValueError, match=f"extra entry '{key}' is reserved"):
        trainer.save(tmp_path / "ckpt.pt", **{key: 1})
    if key in ("format", "config", "rng"):  # the others are save_checkpoint's own arguments
        with pytest.raises(ValueError, match="reserved"):
            save_checkpoint(tmp_path / "ckpt.pt", trainer.model, **{key: 1})


# --- loading is all or nothing -------------------------------------------------------------


def snapshot(trainer: Trainer) -> dict:
    """Everything a load may change, copied."""
    state = trainer.optimizer.state_dict()
    return {
        "weights": [t.clone() for t in trainer.model.state_dict().values()],
        "optimizer": [
            (key, name, torch.as_tensor(value).clone())
            for key, entry in sorted(state["state"].items())
            for name, value in sorted(entry.items())
        ],
        "groups": [dict(g, params=list(g["params"])) for g in state["param_groups"]],
        "scaler": trainer.scaler.state_dict(),
        "step": trainer.global_step,
        "history": list(trainer.history),
        "skipped": trainer.skipped_steps,
        "rng": torch.get_rng_state(),
    }


def assert_unchanged(trainer: Trainer, before: dict) -> None:
    after = snapshot(trainer)
    assert len(after["weights"]) == len(before["weights"])
    assert all(torch.equal(a, b) for a, b in zip(after["weights"], before["weights"]))
    assert [(k, n) for k, n, _ in after["optimizer"]] == [(k, n) for k, n, _ in before["optimizer"]]
    assert all(torch.equal(a[2], b[2]) for a, b in zip(after["optimizer"], before["optimizer"]))
    assert after["groups"] == before["groups"] and after["scaler"] == before["scaler"]
    assert after["step"] == before["step"] and after["history"] == before["history"]
    assert after["skipped"] == before["skipped"] and torch.equal(after["rng"], before["rng"])


def adafactor_trainer(seed: int = 0, steps: int = 1, **kwargs) -> Trainer:
    model = make_model(seed)
    trainer = Trainer(model, configure_optimizer(model, lr=1e-2), **kwargs)
    trainer.fit([make_batch(i) for i in range(steps)], steps)
    return trainer


def test_an_adamw_checkpoint_does_not_load_into_an_adafactor_trainer(tmp_path):
    model = make_model(1)
    adamw = Trainer(model, configure_optimizer(model, "adamw", lr=1e-3))
    adamw.fit([make_batch(0)], 1)
    adamw.save(tmp_path / "adamw.pt")
    trainer = adafactor_trainer(steps=2)
    before = snapshot(trainer)
    with pytest.raises(ValueError, match="AdamW optimizer, not of a Adafactor"):
        trainer.load(tmp_path / "adamw.pt")
    assert_unchanged(trainer, before)
    trainer.step(make_batch(3))  # and it still trains


def test_an_fp32_checkpoint_does_not_load_into_an_fp16_trainer(tmp_path):
    adafactor_trainer(seed=1, steps=2).save(tmp_path / "fp32.pt")
    trainer = adafactor_trainer(steps=1, precision="fp16")
    before = snapshot(trainer)
    with pytest.raises(ValueError, match="gradient-scaler state"):
        trainer.load(tmp_path / "fp32.pt")
    assert_unchanged(trainer, before)
    # the other way round is fine: an fp32 trainer has no scaler state to restore
    trainer.save(tmp_path / "fp16.pt")
    adafactor_trainer(seed=2).load(tmp_path / "fp16.pt")


def edited_checkpoint(tmp_path: Path, edit) -> Path:
    """A checkpoint of a trained Adafactor trainer, edited by `edit(checkpoint)`."""
    path = adafactor_trainer(seed=1, steps=2).save(tmp_path / "ckpt.pt")
    checkpoint = torch.load(path, weights_only=True)
    edit(checkpoint)
    torch.save(checkpoint, path)
    return path


def drop_last_weight(checkpoint):
    checkpoint["model"].popitem()


def widen_first_weight(checkpoint):
    name = next(iter(checkpoint["model"]))
    checkpoint["model"][name] = torch.zeros(3, 3)


def integer_weight(checkpoint):
    name = next(iter(checkpoint["model"]))
    checkpoint["model"][name] = checkpoint["model"][name].long()


def wrong_state_shape(checkpoint):
    entry = checkpoint["optimizer"]["state"][len(checkpoint["optimizer"]["state"]) - 1]
    entry["exp_avg_sq"] = torch.zeros(1000)


def damaged_rng(checkpoint):
    checkpoint["rng"]["torch"] = torch.zeros(3, dtype=torch.uint8)


def wrong_history(checkpoint):
    checkpoint["trainer"]["history"] = "not a list"


@pytest.mark.parametrize(
    "edit, message",
    [
        (drop_last_weight, "weights do not fit the model: missing"),
        (widen_first_weight, r"is \(3, 3\) torch.float32 in the checkpoint"),
        (integer_weight, "torch.int64 in the checkpoint"),
        (wrong_state_shape, "optimizer state 'exp_avg_sq'"),
        (damaged_rng, "random-generator state is damaged"),
        (wrong_history, "trainer entry is damaged"),
    ],
)
def test_a_failed_load_changes_nothing(tmp_path, edit, message):
    path = edited_checkpoint(tmp_path, edit)
    trainer = adafactor_trainer(steps=3)
    before = snapshot(trainer)
    with pytest.raises(ValueError, match=message):
        trainer.load(path)
    assert_unchanged(trainer, before)


def test_a_checkpoint_with_other_parameter_groups_does_not_load(tmp_path):
    model = make_model(1)
    one_group = Trainer(model, Adafactor(model.parameters(), lr=1e-2, relative_step=False))
    one_group.fit([make_batch(0)], 1)
    one_group.save(tmp_path / "ckpt.pt")
    trainer = adafactor_trainer(steps=1)  # configure_optimizer: two groups
    before = snapshot(trainer)
    with pytest.raises(ValueError, match="parameter groups"):
        trainer.load(tmp_path / "ckpt.pt")
    assert_unchanged(trainer, before)


# --- damaged files -------------------------------------------------------------------------


def member_data_offsets(path: Path) -> dict[str, tuple[int, int]]:
    """Where each member's bytes lie in a zip archive: {name: (start, size)}."""
    data = path.read_bytes()
    offsets = {}
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            # a local header: 30 bytes, then the name and the extra field, then the data
            name_length, extra_length = struct.unpack(
                "<HH", data[info.header_offset + 26 : info.header_offset + 30]
            )
            start = info.header_offset + 30 + name_length + extra_length
            offsets[info.filename] = (start, info.compress_size)
    return offsets


def damaged_copies(path: Path, tmp_path: Path) -> dict[str, Path]:
    """Empty, cut and byte-flipped copies of a checkpoint (flips inside the pickled
    dictionary and inside the three largest tensors, where a flip changes what loads)."""
    data = path.read_bytes()
    copies = {"empty": b"", "truncated": data[: len(data) // 2], "cut short": data[:-10]}
    members = member_data_offsets(path)
    pickle = next(name for name in members if name.endswith("data.pkl"))
    largest = sorted(members, key=lambda name: members[name][1])[-3:]
    for name in [pickle, *largest]:
        start, size = members[name]
        flipped = bytearray(data)
        flipped[start + size // 2] ^= 0x01
        copies[f"flipped in {name.split('/')[-1]}"] = bytes(flipped)
    written = {}
    for index, (name, content) in enumerate(copies.items()):
        written[name] = tmp_path / f"damaged_{index}.pt"
        written[name].write_bytes(content)
    return written


def test_damaged_checkpoints_are_refused_by_name(tmp_path):
    path = adafactor_trainer(seed=1, steps=2).save(tmp_path / "ckpt.pt")
    trainer = adafactor_trainer(steps=1)
    before = snapshot(trainer)
    for name, damaged in damaged_copies(path, tmp_path).items():
        with pytest.raises(ValueError) as error:
            trainer.load(damaged)
        message = str(error.value)
        assert str(damaged) in message and "not a readable t5mini checkpoint" in message, name
        assert "weights_only" not in message, name
        assert_unchanged(trainer, before)
    with pytest.raises(ValueError, match="the file is empty"):
        load_checkpoint(tmp_path / "damaged_0.pt", make_model())


# --- checkpoint files on disk --------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_checkpoint_files_get_the_umask_mode(tmp_path, umask):
    old = os.umask(umask)
    try:
        path = trained_trainer(steps=1).save(tmp_path / "ckpt.pt")
        (tmp_path / "plain").write_bytes(b"")  # any new file, for comparison
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE((tmp_path / "plain").stat().st_mode)


def test_stale_temporary_files_are_removed_by_the_next_save(tmp_path):
    stale = [tmp_path / ".ckpt.pt.1a2b3c4d5e6f.tmp", tmp_path / ".ckpt.pt.0123456789ab.tmp"]
    kept = [tmp_path / ".ckpt.pt.notes.tmp", tmp_path / ".other.pt.1a2b3c4d5e6f.tmp"]
    for path in stale + kept:
        path.write_bytes(b"half a checkpoint")
    trained_trainer(steps=1).save(tmp_path / "ckpt.pt")
    assert not any(path.exists() for path in stale)
    assert all(path.exists() for path in kept)
    assert load_checkpoint(tmp_path / "ckpt.pt", make_model())["step"] == 1


# --- strings are not sequences of texts ----------------------------------------------------


def test_a_bare_string_is_not_a_list_of_texts(tokenizer):
    model = T5ForConditionalGeneration(small_config(vocab_size=tokenizer.vocab_size))
    with pytest.raises(TypeError, match="sources"):
        text_to_text_batch(tokenizer, "abc", "xyz")
    with pytest.raises(TypeError, match="targets"):
        text_to_text_batch(tokenizer, ["abc"], "x")
    with pytest.raises(TypeError, match="predictions"):
        exact_match("abc", "abd")
    with pytest.raises(TypeError, match="references"):
        exact_match(["abc"], "a")
    with pytest.raises(TypeError, match="sources"):
        generate_texts(model, tokenizer, "hello world")
    with pytest.raises(TypeError, match=r"sources\[1\]"):
        generate_texts(model, tokenizer, ["hello", 5])
    with pytest.raises(ValueError, match="sources"):
        text_to_text_batch(tokenizer, [], [])


# --- a compiled step -----------------------------------------------------------------------


def test_the_compiled_step_gives_the_eager_losses():
    """torch.compile (inductor on the CPU) on one small shape: the eager losses and weights,
    up to float32 rounding (fused kernels add in another order)."""
    generator = torch.Generator().manual_seed(0)
    batch = {
        "input_ids": torch.randint(3, 32, (2, 6), generator=generator),
        "labels": torch.randint(3, 32, (2, 4), generator=generator),
    }
    results = {}
    for compile in (False, True):
        model = make_model(vocab_size=32, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        trainer = Trainer(model, optimizer, max_grad_norm=None, compile=compile)
        losses = [trainer.step(batch)["loss"] for _ in range(3)]
        results[compile] = losses, flat_weights(model), trainer
    (eager, eager_weights, _), (compiled, compiled_weights, trainer) = results[False], results[True]
    assert trainer.forward is not trainer.model  # it really ran the compiled module
    assert eager[-1] < eager[0]  # and training moved the loss
    for a, b in zip(eager, compiled):
        assert math.isclose(a, b, rel_tol=1e-5)
    torch.testing.assert_close(compiled_weights, eager_weights, rtol=1e-5, atol=1e-6)
    # ids are still checked (eagerly, outside the graph) and the weights are left alone
    bad = dict(batch, labels=batch["labels"].clone().fill_(32))
    with pytest.raises(ValueError, match="labels contains 32"):
        trainer.step(bad)
    torch.testing.assert_close(flat_weights(trainer.model), compiled_weights, rtol=0, atol=0)


def test_the_compiled_cpu_step_traces_the_gelu_in_its_sigmoid_form():
    """On the CPU the compiled step's graph holds sigmoid and no gelu (the same function,
    cheaper under inductor); eager calls of the model keep the tanh form."""
    from t5mini.scale import compile_forward

    graphs = []

    def record(graph_module: torch.fx.GraphModule, example_inputs: list) -> object:
        graphs.append(graph_module)
        return graph_module.forward

    model = make_model(feed_forward_proj="gated-gelu")
    batch = make_batch()
    torch.compiler.reset()
    try:
        loss = compile_forward(model, model, torch.device("cpu"), backend=record)(**batch).loss
    finally:
        torch.compiler.reset()
    calls = [n.target for g in graphs for n in g.graph.nodes if n.op == "call_function"]
    assert calls.count(torch.sigmoid) == 2 * model.config.num_layers
    assert torch.nn.functional.gelu not in calls
    assert {m.activation for m in model.modules() if hasattr(m, "activation")} == {"gelu_tanh"}
    torch.testing.assert_close(loss, model(**batch).loss)


def test_inductor_computes_the_sigmoid_gelu_within_fp32_rounding():
    from t5mini.feedforward import gelu_tanh_as_sigmoid

    x = torch.linspace(-8, 8, 4001)
    torch.compiler.reset()
    try:
        compiled = torch.compile(gelu_tanh_as_sigmoid, fullgraph=True)(x)  # inductor
    finally:
        torch.compiler.reset()
    xd = x.double()
    truth = 0.5 * xd * (1 + torch.tanh(math.sqrt(2 / math.pi) * (xd + 0.044715 * xd**3)))
    error = ((compiled.double() - truth).abs() / xd.abs().clamp(min=1.0)).max()
    assert error <= 2 * torch.finfo(torch.float32).eps, error


def test_training_step_alone_trains_and_skips():
    """Chapter 11's TrainingStep: one process, no DDP, no compile; skips a nan step."""
    from t5mini.training import TrainingStep

    model = make_model()
    step = TrainingStep(model, torch.optim.SGD(model.parameters(), lr=0.1))
    batch = make_batch()
    first = step.step(batch)["loss"]
    hook = model.embedding.register_forward_hook(lambda m, i, o: o * math.nan)
    bad = step.step(batch)
    hook.remove()
    assert math.isnan(bad["loss"]) and step.skipped_steps == 1
    assert step.step(batch)["loss"] < first and step.global_step == 3
    assert not hasattr(step, "save") and not hasattr(step, "ddp")


def test_old_import_paths_resolve_to_t5mini_scale():
    import t5mini.scale as scale

    for name in (
        "Trainer",
        "save_checkpoint",
        "load_checkpoint",
        "read_checkpoint",
        "restore_checkpoint",
        "atomic_save",
        "format_stats",
        "NonFiniteSteps",
    ):
        assert getattr(training, name) is getattr(scale, name)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        training.nothing  # noqa: B018
    assert issubclass(scale.Trainer, training.TrainingStep)
