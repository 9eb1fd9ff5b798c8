# Generated from chapters/10_training.md — edit the chapter, not this file.

from __future__ import annotations

import dataclasses
import math
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from t5mini.config import T5Config
from t5mini.model import T5ForConditionalGeneration


def _check_number(name: str, value: Any, low: float, high: float = math.inf,
                  low_open: bool = False) -> None:  # fmt: skip
    """Raise a ValueError naming `name` unless `value` is a real number in the given range."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        raise ValueError(f"{name}={value!r}: expected a number in {bracket}{low}, {high}]")


def _rms(tensor: torch.Tensor) -> torch.Tensor:
    """Root mean square of all elements."""
    return tensor.norm(2) / tensor.numel() ** 0.5


class Adafactor(torch.optim.Optimizer):
    """Adafactor (Shazeer and Stern, 2018) with T5's options: factored second moments, no momentum."""

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float | None = None,
        eps: tuple[float, float] = (1e-30, 1e-3),
        clip_threshold: float = 1.0,
        decay_rate: float = -0.8,
        beta1: float | None = None,
        weight_decay: float = 0.0,
        scale_parameter: bool = True,
        relative_step: bool = True,
        warmup_init: bool = False,
    ) -> None:
        """`lr=None` with `relative_step=True` gives T5's step size min(1e-2, 1/sqrt(step))."""
        if relative_step and lr is not None:
            raise ValueError(
                f"lr={lr!r} with relative_step=True: the step size then comes from the step "
                "count; pass relative_step=False to use your own lr (or a schedule)"
            )
        if not relative_step:
            if lr is None:
                raise ValueError("lr=None needs relative_step=True; give a learning rate")
            _check_number("lr", lr, 0.0, low_open=True)
        if warmup_init and not relative_step:
            raise ValueError("warmup_init=True needs relative_step=True")
        if not (isinstance(eps, (tuple, list)) and len(eps) == 2):
            raise ValueError(f"eps={eps!r}: expected a pair (eps1, eps2)")
        _check_number("eps[0]", eps[0], 0.0)
        _check_number("eps[1]", eps[1], 0.0)
        _check_number("clip_threshold", clip_threshold, 0.0, low_open=True)
        _check_number("decay_rate", decay_rate, -1.0, 0.0)
        if decay_rate == 0.0:
            raise ValueError("decay_rate=0.0: expected a number in [-1, 0)")
        if beta1 is not None:
            _check_number("beta1", beta1, 0.0, 1.0)
            if beta1 == 1.0:
                raise ValueError("beta1=1.0: expected a number in [0, 1) or None")
        _check_number("weight_decay", weight_decay, 0.0)
        defaults = dict(
            lr=lr, eps=tuple(eps), clip_threshold=clip_threshold, decay_rate=decay_rate,
            beta1=beta1, weight_decay=weight_decay, scale_parameter=scale_parameter,
            relative_step=relative_step, warmup_init=warmup_init,
        )  # fmt: skip
        super().__init__(params, defaults)

    @staticmethod
    def relative_step_size(step: int, warmup_init: bool = False) -> float:
        """rho_t = min(1e-2, 1/sqrt(t)): T5's 1/sqrt(max(t, 10^4)); (1e-6 t with warmup_init)."""
        return min(1e-6 * step if warmup_init else 1e-2, 1.0 / math.sqrt(step))

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One update of every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            eps1, eps2 = group["eps"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                if param.grad.is_sparse:
                    raise RuntimeError("Adafactor does not support sparse gradients")
                grad = param.grad.float()  # the statistics are kept in fp32
                factored = grad.dim() >= 2
                state = self.state[param]
                if not state:
                    state["step"] = 0
                    if factored:  # row and column means of g^2: (..., n) and (..., m)
                        state["exp_avg_sq_row"] = grad.new_zeros(grad.shape[:-1])
                        state["exp_avg_sq_col"] = grad.new_zeros(grad.shape[:-2] + grad.shape[-1:])
                    else:
                        state["exp_avg_sq"] = torch.zeros_like(grad)
                    if group["beta1"] is not None:
                        state["exp_avg"] = torch.zeros_like(grad)
                state["step"] += 1
                step = state["step"]
                weights = param.float() if param.dtype in (torch.float16, torch.bfloat16) else param

                # the step size: a schedule's lr, or the relative step, times RMS(W)
                lr = group["lr"]
                if group["relative_step"]:
                    lr = self.relative_step_size(step, group["warmup_init"])
                if group["scale_parameter"]:  # a 0-d tensor: no wait for the GPU
                    lr = _rms(weights).clamp(min=eps2) * lr

                beta2 = 1.0 - step ** group["decay_rate"]
                grad_sq = grad.square().add_(eps1)
                if factored:
                    row, col = state["exp_avg_sq_row"], state["exp_avg_sq_col"]
                    row.mul_(beta2).add_(grad_sq.mean(dim=-1), alpha=1.0 - beta2)
                    col.mul_(beta2).add_(grad_sq.mean(dim=-2), alpha=1.0 - beta2)
                    # 1/sqrt(v_hat) with v_hat = R C / mean(R): (..., n, 1) * (..., 1, m)
                    row_factor = (row / row.mean(dim=-1, keepdim=True)).rsqrt().unsqueeze(-1)
                    update = torch.mul(row_factor, col.unsqueeze(-2).rsqrt()).mul_(grad)
                else:
                    exp_avg_sq = state["exp_avg_sq"]
                    exp_avg_sq.mul_(beta2).add_(grad_sq, alpha=1.0 - beta2)
                    update = exp_avg_sq.rsqrt().mul_(grad)
                update.div_((_rms(update) / group["clip_threshold"]).clamp(min=1.0))
                update.mul_(lr)
                if group["beta1"] is not None:
                    exp_avg = state["exp_avg"]
                    exp_avg.mul_(group["beta1"]).add_(update, alpha=1.0 - group["beta1"])
                    update = exp_avg
                if group["weight_decay"] != 0.0:
                    weights.add_(weights * lr, alpha=-group["weight_decay"])
                weights.sub_(update)
                if weights is not param:
                    param.copy_(weights)
        return loss


OPTIMIZERS = ("adafactor", "adamw")


def configure_optimizer(
    model: nn.Module,
    name: str = "adafactor",
    lr: float | None = None,
    weight_decay: float = 0.0,
    **kwargs: Any,
) -> torch.optim.Optimizer:
    """Adafactor (lr=None: T5's relative step) or AdamW, with no weight decay on vectors."""
    if name not in OPTIMIZERS:
        raise ValueError(f"name={name!r}: expected one of {OPTIMIZERS}")
    _check_number("weight_decay", weight_decay, 0.0)
    matrices = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    vectors = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": matrices, "weight_decay": weight_decay},
              {"params": vectors, "weight_decay": 0.0}]  # fmt: skip
    if name == "adamw":
        if lr is None:
            raise ValueError("lr=None: AdamW needs a learning rate")
        _check_number("lr", lr, 0.0, low_open=True)
        return torch.optim.AdamW(groups, lr=lr, **kwargs)
    if lr is None:
        return Adafactor(groups, relative_step=True, **kwargs)
    kwargs.setdefault("scale_parameter", False)  # T5's fine-tuning: a plain constant lr
    return Adafactor(groups, lr=lr, relative_step=False, **kwargs)


SCHEDULES = ("constant", "inverse_sqrt", "linear", "cosine")


@dataclass(frozen=True)
class Schedule:
    """A learning rate as a function of the step: `Schedule("inverse_sqrt", 0.01, 10_000)(n)`."""

    name: str = "constant"
    base_lr: float = 1e-3
    warmup_steps: int = 0
    total_steps: int | None = None  # linear and cosine decay to min_lr here
    min_lr: float = 0.0
    ramp: bool = False  # inverse_sqrt: linear ramp during warm-up instead of a constant

    def __post_init__(self) -> None:
        """Raise a ValueError naming the first setting that makes no schedule."""
        if self.name not in SCHEDULES:
            raise ValueError(f"name={self.name!r}: expected one of {SCHEDULES}")
        _check_number("base_lr", self.base_lr, 0.0, low_open=True)
        _check_number("min_lr", self.min_lr, 0.0, self.base_lr)
        if (
            isinstance(self.warmup_steps, bool)
            or not isinstance(self.warmup_steps, int)
            or (self.warmup_steps < 0)
        ):
            raise ValueError(f"warmup_steps={self.warmup_steps!r}: expected an int >= 0")
        if self.name == "inverse_sqrt" and self.warmup_steps < 1:
            raise ValueError(f"warmup_steps={self.warmup_steps!r}: inverse_sqrt needs >= 1")
        if self.name in ("linear", "cosine"):
            total = self.total_steps
            if isinstance(total, bool) or not isinstance(total, int) or total <= self.warmup_steps:
                raise ValueError(
                    f"total_steps={total!r}: {self.name} needs an int > warmup_steps "
                    f"({self.warmup_steps})"
                )

    def __call__(self, step: int) -> float:
        """The learning rate of update number `step` (0 for the first update)."""
        if step < 0:
            raise ValueError(f"step={step!r}: expected an int >= 0")
        warm = self.warmup_steps
        if self.name == "inverse_sqrt":
            if step < warm:
                return self.base_lr * ((step + 1) / warm if self.ramp else 1.0)
            return self.base_lr * math.sqrt(warm / step) if step else self.base_lr
        if step < warm:  # linear warm-up to base_lr
            return self.base_lr * (step + 1) / warm
        if self.name == "constant":
            return self.base_lr
        progress = min((step - warm) / (self.total_steps - warm), 1.0)  # 0 -> 1
        if self.name == "linear":
            shape = 1.0 - progress
        else:
            shape = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.min_lr + (self.base_lr - self.min_lr) * shape

    def to_dict(self) -> dict[str, Any]:
        """The settings as a plain dict (stored in checkpoints)."""
        return dataclasses.asdict(self)


def num_label_tokens(batch: dict[str, torch.Tensor]) -> int:
    """How many positions of `batch["labels"]` count in the loss (are not -100)."""
    return int((batch["labels"] != -100).sum())


def split_batch(
    batch: dict[str, torch.Tensor], num_micro_batches: int
) -> list[dict[str, torch.Tensor]]:
    """Split every tensor of a batch along the batch dimension into `num_micro_batches` parts."""
    if (
        isinstance(num_micro_batches, bool)
        or not isinstance(num_micro_batches, int)
        or (num_micro_batches < 1)
    ):
        raise ValueError(f"num_micro_batches={num_micro_batches!r}: expected an int >= 1")
    size = len(batch["labels"])
    if num_micro_batches > size:
        raise ValueError(
            f"num_micro_batches={num_micro_batches} is more than the batch size {size}"
        )
    parts = {key: torch.tensor_split(value, num_micro_batches) for key, value in batch.items()}
    return [{key: parts[key][i] for key in batch} for i in range(num_micro_batches)]


PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """'auto' -> 'bf16' on a GPU with bfloat16, 'fp16' on an older GPU, 'fp32' on the CPU."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}: expected one of {PRECISIONS}")
    if precision != "auto":
        return precision
    if torch.device(device).type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def autocast(precision: str, device: torch.device | str) -> AbstractContextManager:
    """The `torch.autocast` context of a precision ('fp32' turns it off)."""
    precision = resolve_precision(precision, device)
    return torch.autocast(
        torch.device(device).type,
        dtype=_DTYPES.get(precision, torch.bfloat16),
        enabled=precision != "fp32",
    )


def _check_int(name: str, value: Any, low: int) -> None:
    """Raise a ValueError naming `name` unless `value` is an int >= `low`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name}={value!r}: expected an int >= {low}")


class Trainer:
    """One optimiser update per `step(batch)`: accumulation, clipping, mixed precision, logging."""

    def __init__(
        self,
        model: T5ForConditionalGeneration,
        optimizer: torch.optim.Optimizer,
        schedule: Schedule | Callable[[int], float] | None = None,
        *,
        accumulation_steps: int = 1,
        max_grad_norm: float | None = 1.0,
        precision: str = "fp32",
        gradient_checkpointing: bool | None = None,
    ) -> None:
        """`schedule=None` leaves the optimiser's lr alone; `gradient_checkpointing=None` the model's."""
        _check_int("accumulation_steps", accumulation_steps, 1)
        if max_grad_norm is not None:
            _check_number("max_grad_norm", max_grad_norm, 0.0, low_open=True)
        if schedule is not None and not callable(schedule):
            raise ValueError(f"schedule={schedule!r}: expected a Schedule, a function or None")
        if schedule is not None and any(g.get("relative_step") for g in optimizer.param_groups):
            raise ValueError(
                f"schedule={schedule!r} would be ignored: this Adafactor has relative_step=True "
                "and computes its own step size; use Adafactor(lr=..., relative_step=False) "
                "(configure_optimizer(model, lr=...)) with a schedule, or schedule=None"
            )
        self.model, self.optimizer, self.schedule = model, optimizer, schedule
        self.accumulation_steps, self.max_grad_norm = accumulation_steps, max_grad_norm
        self.device = next(model.parameters()).device
        self.precision = resolve_precision(precision, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        if gradient_checkpointing is not None:
            model.gradient_checkpointing_enable(gradient_checkpointing)
        self.global_step = 0  # updates done so far
        self.history: list[dict[str, float]] = []

    def current_lr(self) -> float:
        """The learning rate of the next update (Adafactor's relative step when lr is None)."""
        if self.schedule is not None:
            return float(self.schedule(self.global_step))
        group = self.optimizer.param_groups[0]
        if group.get("lr") is None and group.get("relative_step"):
            return Adafactor.relative_step_size(self.global_step + 1, group["warmup_init"])
        return float(group["lr"])

    def step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """One update on `batch` (input_ids, attention_mask, labels): returns its statistics."""
        start = time.perf_counter()
        lr = self.current_lr()
        if self.schedule is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = lr
        total = num_label_tokens(batch)
        if total == 0:
            raise ValueError("batch: every label is -100, there is nothing to learn from")
        self.model.train()
        loss_sum = torch.zeros((), device=self.device)
        for micro_batch in split_batch(batch, self.accumulation_steps):
            count = num_label_tokens(micro_batch)
            if count == 0:  # its mean loss would be nan; its share of the sum is 0
                continue
            micro_batch = {k: v.to(self.device, non_blocking=True) for k, v in micro_batch.items()}
            with autocast(self.precision, self.device):
                loss = self.model(**micro_batch).loss * (count / total)  # token-weighted
            self.scaler.scale(loss).backward()
            loss_sum += loss.detach()
        self.scaler.unscale_(self.optimizer)  # true gradients, for the norm and clipping
        max_norm = math.inf if self.max_grad_norm is None else self.max_grad_norm
        grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        self.scaler.step(self.optimizer)  # skipped when fp16 gradients overflowed
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.global_step += 1
        stats = {"step": self.global_step, "loss": loss_sum.item(), "lr": lr,
                 "grad_norm": grad_norm.item()}  # fmt: skip
        seconds = time.perf_counter() - start  # .item() above waited for the GPU
        inputs = batch.get("attention_mask", batch.get("input_ids"))
        tokens = (0 if inputs is None else int((inputs != 0).sum())) + total  # non-pad tokens
        stats |= {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds}
        if self.scaler.is_enabled():  # fp16: the loss scale (it halves after an overflow)
            stats["grad_scale"] = self.scaler.get_scale()
        self.history.append(stats)
        return stats

    def fit(
        self,
        batches: Iterable[dict[str, torch.Tensor]],
        num_steps: int,
        log_every: int = 0,
        log: Callable[[str], Any] = print,
    ) -> list[dict[str, float]]:
        """`num_steps` updates on the next batches; log a line every `log_every` steps (0: never)."""
        _check_int("num_steps", num_steps, 0)
        _check_int("log_every", log_every, 0)
        stats = []
        iterator = iter(batches)
        for _ in range(num_steps):
            try:
                batch = next(iterator)
            except StopIteration:
                raise ValueError(
                    f"batches ran out after {len(stats)} of {num_steps} steps"
                ) from None
            stats.append(self.step(batch))
            if log_every and (self.global_step % log_every == 0 or len(stats) == num_steps):
                log(format_stats(stats[-1]))
        return stats

    def save(self, path: str | os.PathLike, **extra: Any) -> Path:
        """Write a checkpoint of everything needed to resume (atomically)."""
        return save_checkpoint(path, self.model, self.optimizer, step=self.global_step,
                               scaler=self.scaler, schedule=self.schedule,
                               history=self.history, **extra)  # fmt: skip

    def load(self, path: str | os.PathLike) -> dict[str, Any]:
        """Restore a checkpoint written by `save`; returns it (with any `extra` entries)."""
        checkpoint = load_checkpoint(path, self.model, self.optimizer, scaler=self.scaler)
        self.global_step = checkpoint["step"]
        self.history = list(checkpoint.get("history", []))
        return checkpoint


def format_stats(stats: dict[str, float]) -> str:
    """One log line: step, loss, learning rate, gradient norm, tokens per second."""
    return (f"step {stats['step']:>6} | loss {stats['loss']:.4f} | lr {stats['lr']:.2e} | "
            f"grad-norm {stats['grad_norm']:.3f} | {stats['tokens_per_s']:>9,.0f} tokens/s")  # fmt: skip


CHECKPOINT_FORMAT = "t5mini-checkpoint-1"
# configuration fields that may differ between a checkpoint and the model it is loaded into
RUNTIME_FIELDS = ("dropout_rate", "attn_implementation", "gradient_checkpointing")


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """`torch.save` to a temporary file beside `path`, fsync it, then rename it onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)  # atomic: the old file or the new one, never half of one
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable (POSIX)
        directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    return path


def rng_state() -> dict[str, Any]:
    """The state of Python's, torch's and (when present) CUDA's random number generators."""
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` returned."""
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    path: str | os.PathLike,
    model: T5ForConditionalGeneration,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    step: int = 0,
    scaler: torch.amp.GradScaler | None = None,
    schedule: Any = None,
    **extra: Any,
) -> Path:
    """Write model, optimiser, scaler, step, RNG state and config to `path`, atomically."""
    _check_int("step", step, 0)
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "config": model.config.to_dict(),
        "model": model.state_dict(),
        "optimizer": None if optimizer is None else optimizer.state_dict(),
        "scaler": None if scaler is None else scaler.state_dict(),
        "schedule": schedule.to_dict() if isinstance(schedule, Schedule) else None,
        "step": step,
        "rng": rng_state(),
        **extra,
    }
    return atomic_save(checkpoint, path)


def check_config(saved: dict[str, Any], config: T5Config) -> None:
    """Raise a ValueError naming every field where a checkpoint's config differs from `config`."""
    current = config.to_dict()
    mismatches = [f"{name}: checkpoint {saved.get(name)!r} != model {current[name]!r}"
                  for name in current
                  if name not in RUNTIME_FIELDS and saved.get(name) != current[name]]  # fmt: skip
    if mismatches:
        raise ValueError("checkpoint config does not match the model: " + "; ".join(mismatches))


def load_checkpoint(
    path: str | os.PathLike,
    model: T5ForConditionalGeneration,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    scaler: torch.amp.GradScaler | None = None,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Load a `save_checkpoint` file into `model` (and optimiser, scaler, RNG); return it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a t5mini checkpoint ({CHECKPOINT_FORMAT})")
    check_config(checkpoint["config"], model.config)
    model.load_state_dict(checkpoint["model"])
    if optimizer is not None:
        if checkpoint["optimizer"] is None:
            raise ValueError(f"{path} holds no optimizer state; pass optimizer=None")
        optimizer.load_state_dict(checkpoint["optimizer"])
    if scaler is not None and checkpoint["scaler"] is not None:
        scaler.load_state_dict(checkpoint["scaler"])
    if restore_rng:
        set_rng_state(checkpoint["rng"])
    return checkpoint


def text_to_text_batch(
    tokenizer: Any,
    sources: Sequence[str],
    targets: Sequence[str],
    max_source_length: int | None = None,
    max_target_length: int | None = None,
) -> dict[str, torch.Tensor]:
    """Tokenise (input, target) text pairs into `input_ids`, `attention_mask`, `labels` (-100 pad)."""
    if len(sources) != len(targets):
        raise ValueError(f"sources has {len(sources)} texts but targets has {len(targets)}")
    truncate_sources = max_source_length is not None
    truncate_targets = max_target_length is not None
    batch = tokenizer(list(sources), max_length=max_source_length, truncation=truncate_sources)
    encoded = tokenizer(list(targets), max_length=max_target_length, truncation=truncate_targets)
    labels = encoded["input_ids"].masked_fill(encoded["attention_mask"] == 0, -100)
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
            "labels": labels}  # fmt: skip


@torch.no_grad()
def generate_texts(
    model: T5ForConditionalGeneration,
    tokenizer: Any,
    sources: Sequence[str],
    batch_size: int = 64,
    **generate_kwargs: Any,
) -> list[str]:
    """The model's answers to `sources` (greedy unless told otherwise), decoded to text."""
    _check_int("batch_size", batch_size, 1)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    answers = []
    for start in range(0, len(sources), batch_size):
        batch = tokenizer(list(sources[start : start + batch_size]))
        ids = model.generate(batch["input_ids"].to(device),
                             attention_mask=batch["attention_mask"].to(device), **generate_kwargs)  # fmt: skip
        answers += tokenizer.batch_decode(ids.cpu(), skip_special_tokens=True)
    model.train(was_training)
    return answers


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """The fraction of predictions equal to their reference (surrounding spaces ignored)."""
    if len(predictions) != len(references) or not references:
        raise ValueError(
            f"predictions ({len(predictions)}) and references ({len(references)}) must be "
            "non-empty and of the same length"
        )
    return sum(p.strip() == r.strip() for p, r in zip(predictions, references)) / len(references)
