"""Tests for t5mini.training: Adafactor against transformers, schedules, accumulation,
clipping, precision, checkpoints (atomicity, round trip, resume) and fine-tuning helpers."""

from __future__ import annotations

import math
from pathlib import Path

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
    "kwargs, name",
    [
        (dict(name="step"), "name"),
        (dict(base_lr=-1.0), "base_lr"),
        (dict(base_lr=0.0), "base_lr"),
        (dict(warmup_steps=-1), "warmup_steps"),
        (dict(warmup_steps=1.5), "warmup_steps"),
        (dict(name="inverse_sqrt", warmup_steps=0), "warmup_steps"),
        (dict(name="linear", warmup_steps=10, total_steps=10), "total_steps"),
        (dict(name="cosine", total_steps=None), "total_steps"),
        (dict(min_lr=1.0, base_lr=0.1), "min_lr"),
    ],
)
def test_schedule_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
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
    assert "grad_scale" not in fp32


def test_gradient_checkpointing_gives_the_same_gradients():
    batch = make_batch()
    grad, stats = sgd_step(1, batch)
    grad_ckpt, stats_ckpt = sgd_step(1, batch, gradient_checkpointing=True)
    torch.testing.assert_close(grad_ckpt, grad, rtol=1e-5, atol=1e-7)
    model = make_model()
    Trainer(model, torch.optim.SGD(model.parameters(), lr=1.0), gradient_checkpointing=True)
    assert model.encoder.gradient_checkpointing and model.decoder.gradient_checkpointing


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(accumulation_steps=0), "accumulation_steps"),
        (dict(accumulation_steps=1.5), "accumulation_steps"),
        (dict(max_grad_norm=-1.0), "max_grad_norm"),
        (dict(max_grad_norm=0.0), "max_grad_norm"),
        (dict(precision="half"), "precision"),
        (dict(schedule=0.01), "schedule"),
    ],
)
def test_trainer_bad_arguments(kwargs, name):
    model = make_model()
    with pytest.raises(ValueError, match=name):
        Trainer(model, torch.optim.SGD(model.parameters(), lr=1.0), **kwargs)


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
