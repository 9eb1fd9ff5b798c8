# Generated from chapters/11_training.md — edit the chapter, not this file.

from __future__ import annotations

import dataclasses
import importlib
import math
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from t5mini.checks import check_bool, check_choice, check_float, check_int, check_texts
from t5mini.model import T5ForConditionalGeneration


def _rms(tensor: torch.Tensor) -> torch.Tensor:
    """Root mean square of all elements."""
    return tensor.norm(2) / tensor.numel() ** 0.5


def factored_update(
    grad: torch.Tensor, state: dict[str, Any], beta2: float, eps1: float
) -> torch.Tensor:
    """g / sqrt(v_hat), v_hat a running mean of g^2, factored for matrices; updates `state`."""
    grad_sq = grad.square().add_(eps1)
    if grad.dim() < 2:  # vectors keep the full second moment
        exp_avg_sq = state["exp_avg_sq"].mul_(beta2).add_(grad_sq, alpha=1.0 - beta2)
        return exp_avg_sq.rsqrt().mul_(grad)
    row = state["exp_avg_sq_row"].mul_(beta2).add_(grad_sq.mean(dim=-1), alpha=1.0 - beta2)
    col = state["exp_avg_sq_col"].mul_(beta2).add_(grad_sq.mean(dim=-2), alpha=1.0 - beta2)
    # 1/sqrt(v_hat) with v_hat = R C / mean(R): (..., n, 1) * (..., 1, m)
    row_factor = (row / row.mean(dim=-1, keepdim=True)).rsqrt().unsqueeze(-1)
    return torch.mul(row_factor, col.unsqueeze(-2).rsqrt()).mul_(grad)


def initial_state(grad: torch.Tensor, momentum: bool) -> dict[str, Any]:
    """Adafactor's empty state for a parameter: row and column statistics for a matrix."""
    if grad.dim() >= 2:  # (..., n) and (..., m)
        state = {
            "exp_avg_sq_row": grad.new_zeros(grad.shape[:-1]),
            "exp_avg_sq_col": grad.new_zeros(grad.shape[:-2] + grad.shape[-1:]),
        }
    else:
        state = {"exp_avg_sq": torch.zeros_like(grad)}
    if momentum:
        state["exp_avg"] = torch.zeros_like(grad)
    return {"step": 0, **state}


def relative_step_size(step: int, warmup_init: bool = False) -> float:
    """rho_t = min(1e-2, 1/sqrt(t)): T5's 1/sqrt(max(t, 10^4)); (1e-6 t with warmup_init)."""
    return min(1e-6 * step if warmup_init else 1e-2, 1.0 / math.sqrt(step))


@torch.no_grad()
def adafactor_step(param: torch.Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
    """One Adafactor update of `param` from `param.grad`, with the settings of its group."""
    grad = param.grad.float()  # the statistics are kept in fp32
    if not state:
        state.update(initial_state(grad, momentum=group["beta1"] is not None))
    state["step"] += 1
    weights = param.float() if param.dtype in (torch.float16, torch.bfloat16) else param
    lr = group["lr"]  # a schedule's, or T5's relative step
    if group["relative_step"]:
        lr = relative_step_size(state["step"], group["warmup_init"])
    if group["scale_parameter"]:  # relative to the parameter's size (a 0-d tensor: no sync)
        lr = _rms(weights).clamp(min=group["eps"][1]) * lr
    beta2 = 1.0 - state["step"] ** group["decay_rate"]
    update = factored_update(grad, state, beta2, group["eps"][0])
    update.div_((_rms(update) / group["clip_threshold"]).clamp(min=1.0)).mul_(lr)  # clipping
    if group["beta1"] is not None:
        update = state["exp_avg"].mul_(group["beta1"]).add_(update, alpha=1.0 - group["beta1"])
    if group["weight_decay"] != 0.0:
        weights.add_(weights * lr, alpha=-group["weight_decay"])
    weights.sub_(update)
    if weights is not param:  # half-precision weights: rounded back once
        param.copy_(weights)


def _check_adafactor_args(
    lr: float | None,
    eps: Any,
    clip_threshold: float,
    decay_rate: float,
    beta1: float | None,
    weight_decay: float,
    scale_parameter: bool,
    relative_step: bool,
    warmup_init: bool,
) -> None:
    """Raise an error naming the first Adafactor setting that is out of range."""
    for name, value in (
        ("scale_parameter", scale_parameter),
        ("relative_step", relative_step),
        ("warmup_init", warmup_init),
    ):
        check_bool(name, value)
    if relative_step and lr is not None:
        raise ValueError(
            f"lr={lr!r} with relative_step=True: the step size then comes from the step "
            "count; pass relative_step=False to use your own lr (or a schedule)"
        )
    if not relative_step:
        if lr is None:
            raise ValueError("lr=None needs relative_step=True; give a learning rate")
        check_float("lr", lr, 0.0, low_open=True)
    if warmup_init and not relative_step:
        raise ValueError("warmup_init=True needs relative_step=True")
    if not (isinstance(eps, (tuple, list)) and len(eps) == 2):
        raise ValueError(f"eps={eps!r}: expected a pair (eps1, eps2)")
    check_float("eps[0]", eps[0], 0.0), check_float("eps[1]", eps[1], 0.0)
    check_float("clip_threshold", clip_threshold, 0.0, low_open=True)
    check_float("decay_rate", decay_rate, -1.0, 0.0, high_open=True)
    if beta1 is not None:
        check_float("beta1", beta1, 0.0, 1.0, high_open=True)
    check_float("weight_decay", weight_decay, 0.0)


class Adafactor(torch.optim.Optimizer):
    """Adafactor (Shazeer and Stern, 2018) with T5's options: factored, no momentum."""

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
        defaults = dict(
            lr=lr,
            eps=eps,
            clip_threshold=clip_threshold,
            decay_rate=decay_rate,
            beta1=beta1,
            weight_decay=weight_decay,
            scale_parameter=scale_parameter,
            relative_step=relative_step,
            warmup_init=warmup_init,
        )
        _check_adafactor_args(**defaults)
        super().__init__(params, {**defaults, "eps": tuple(eps)})

    relative_step_size = staticmethod(relative_step_size)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One update of every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    if param.grad.is_sparse:
                        raise RuntimeError("Adafactor does not support sparse gradients")
                    adafactor_step(param, self.state[param], group)
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
    check_choice("name", name, OPTIMIZERS)
    check_float("weight_decay", weight_decay, 0.0)
    matrices = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    vectors = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [
        {"params": matrices, "weight_decay": weight_decay},
        {"params": vectors, "weight_decay": 0.0},
    ]
    if name == "adamw":
        if lr is None:
            raise ValueError("lr=None: AdamW needs a learning rate")
        return torch.optim.AdamW(groups, lr=check_float("lr", lr, 0.0, low_open=True), **kwargs)
    if lr is None:
        return Adafactor(groups, relative_step=True, **kwargs)
    kwargs.setdefault("scale_parameter", False)  # transformers' recipe; True is T5's
    return Adafactor(groups, lr=lr, relative_step=False, **kwargs)


def _check_schedule(schedule: Any) -> None:
    """Raise an error naming the first setting of a Schedule that makes no schedule."""
    check_choice("name", schedule.name, SCHEDULES)
    check_float("base_lr", schedule.base_lr, 0.0, low_open=True)
    check_float("min_lr", schedule.min_lr, 0.0, schedule.base_lr)
    check_int("warmup_steps", schedule.warmup_steps, 1 if schedule.name == "inverse_sqrt" else 0)
    check_bool("ramp", schedule.ramp)
    if schedule.name in ("linear", "cosine"):
        if schedule.total_steps is None:
            raise ValueError(f"total_steps=None: {schedule.name} needs total_steps > warmup_steps")
        check_int("total_steps", schedule.total_steps, schedule.warmup_steps + 1)


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
        """Raise an error naming the first setting that makes no schedule."""
        _check_schedule(self)

    def __call__(self, step: int) -> float:
        """The learning rate of update number `step` (0 for the first update)."""
        check_int("step", step, 0)
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


def learning_rate(
    schedule: Callable[[int], float] | None, optimizer: torch.optim.Optimizer, step: int
) -> float:
    """The lr of update `step`: the schedule's, else the optimiser's (or the relative step)."""
    if schedule is not None:
        return float(schedule(step))
    group = optimizer.param_groups[0]
    if group.get("lr") is None and group.get("relative_step"):
        return relative_step_size(step + 1, group["warmup_init"])
    return float(group["lr"])


def num_label_tokens(batch: dict[str, torch.Tensor]) -> int:
    """How many positions of `batch["labels"]` count in the loss (are not -100)."""
    return int((batch["labels"] != -100).sum())


def num_tokens(batch: dict[str, torch.Tensor]) -> int:
    """The tokens a batch holds: its non-padding inputs and its label tokens."""
    inputs = batch.get("attention_mask", batch.get("input_ids"))
    return (0 if inputs is None else int((inputs != 0).sum())) + num_label_tokens(batch)


def split_batch(
    batch: dict[str, torch.Tensor], num_micro_batches: int
) -> list[dict[str, torch.Tensor]]:
    """Split every tensor of a batch along the batch dimension into `num_micro_batches` parts."""
    check_int("num_micro_batches", num_micro_batches, 1, len(batch["labels"]))
    parts = {key: torch.tensor_split(value, num_micro_batches) for key, value in batch.items()}
    return [{key: parts[key][i] for key in batch} for i in range(num_micro_batches)]


PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """'auto' -> 'bf16' on a GPU with bfloat16, 'fp16' on an older GPU, 'fp32' on the CPU."""
    check_choice("precision", precision, PRECISIONS)
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


def clip_and_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    max_grad_norm: float | None,
    loss: float,
) -> tuple[float, bool]:
    """Measure (and clip) the gradient norm; step unless it or the loss is not finite."""
    scaler.unscale_(optimizer)  # the true gradients (fp16 scales them; otherwise a no-op)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    grad_norm = nn.utils.get_total_norm(grads)  # before clipping
    if max_grad_norm is not None:
        nn.utils.clip_grads_with_norm_(model.parameters(), max_grad_norm, grad_norm)
    grad_norm = grad_norm.item()
    finite = math.isfinite(loss) and math.isfinite(grad_norm)
    if finite:
        scaler.step(optimizer)  # without fp16, simply optimizer.step()
    scaler.update()  # fp16: a smaller scale after an overflow
    optimizer.zero_grad(set_to_none=True)
    return grad_norm, finite


def _check_step_args(
    optimizer: Any, schedule: Any, accumulation_steps: int, max_grad_norm: float | None
) -> None:
    """Raise an error naming the first TrainingStep argument that is out of range."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer)}")
    if schedule is not None and not callable(schedule):
        raise TypeError(
            f"schedule must be a Schedule, a function of the step or None, got {schedule!r}"
        )
    if schedule is not None and any(g.get("relative_step") for g in optimizer.param_groups):
        raise ValueError(
            f"schedule={schedule!r} would be ignored: this Adafactor has "
            "relative_step=True and computes its own step size; use "
            "configure_optimizer(model, lr=...) with a schedule, or schedule=None"
        )
    check_int("accumulation_steps", accumulation_steps, 1)
    if max_grad_norm is not None:
        check_float("max_grad_norm", max_grad_norm, 0.0, low_open=True)


class TrainingStep:
    """One optimiser update per `step(batch)`: accumulation, precision, clipping, skips."""

    def __init__(
        self,
        model: T5ForConditionalGeneration,
        optimizer: torch.optim.Optimizer,
        schedule: Callable[[int], float] | None = None,
        *,
        accumulation_steps: int = 1,
        max_grad_norm: float | None = 1.0,
        precision: str = "fp32",
        gradient_checkpointing: bool | None = None,
    ) -> None:
        """`schedule=None` keeps the optimiser's lr; `gradient_checkpointing=None` the model's."""
        _check_step_args(optimizer, schedule, accumulation_steps, max_grad_norm)
        self.model, self.optimizer, self.schedule = model, optimizer, schedule
        self.accumulation_steps, self.max_grad_norm = accumulation_steps, max_grad_norm
        self.device = next(model.parameters()).device
        self.precision = resolve_precision(precision, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        if gradient_checkpointing is not None:
            model.gradient_checkpointing_enable(gradient_checkpointing)
        self.forward: Callable[..., Any] = model  # what computes the loss
        self.world_size = 1  # the processes that share each batch
        self.global_step, self.skipped_steps, self.history = 0, 0, []

    def sum_over_processes(self, values: Sequence[float]) -> list[float]:
        """`values` summed over the processes that share the batch: here, this one."""
        return [float(value) for value in values]

    def gradient_sync(self, last: bool) -> AbstractContextManager:
        """The context of a micro-batch's backward pass (`last`: the batch's last one)."""
        return nullcontext()

    def record_step(self, stepped: bool) -> None:
        """Count a step skipped because its loss or gradient norm was not finite."""
        self.skipped_steps += not stepped

    def current_lr(self) -> float:
        """The learning rate of the next update."""
        return learning_rate(self.schedule, self.optimizer, self.global_step)


def _step(self: TrainingStep, batch: dict[str, torch.Tensor]) -> dict[str, float]:
    """One update on `batch` (with several processes, this one's part); its statistics."""
    start, lr = time.perf_counter(), self.current_lr()
    for group in self.optimizer.param_groups if self.schedule is not None else ():
        group["lr"] = lr
    (total,) = self.sum_over_processes([num_label_tokens(batch)])
    if total == 0:
        raise ValueError("batch: every label is -100, there is nothing to learn from")
    self.model.train()
    parts = split_batch(batch, self.accumulation_steps)
    loss = sum(self._backward(part, total, i == len(parts) - 1) for i, part in enumerate(parts))
    loss, tokens = self.sum_over_processes([loss, num_tokens(batch)])
    grad_norm, stepped = clip_and_step(
        self.model, self.optimizer, self.scaler, self.max_grad_norm, loss
    )
    self.record_step(stepped)
    self.global_step += 1
    seconds = time.perf_counter() - start  # .item() above waited for the GPU
    stats = dict(
        step=self.global_step,
        loss=loss,
        lr=lr,
        grad_norm=grad_norm,
        tokens=int(tokens),
        seconds=seconds,
        tokens_per_s=tokens / seconds,
        skipped_steps=self.skipped_steps,
        grad_scale=self.scaler.get_scale(),
    )
    self.history.append(stats)
    return stats


def _backward(
    self: TrainingStep, part: dict[str, torch.Tensor], total: float, last: bool
) -> torch.Tensor:
    """Backward of a micro-batch's mean loss, weighted by its share of all label tokens."""
    count = num_label_tokens(part)
    if count == 0 and self.world_size == 1:  # its mean loss would be nan; its share is 0
        return torch.zeros((), device=self.device)
    part = {key: value.to(self.device, non_blocking=True) for key, value in part.items()}
    with self.gradient_sync(last):
        with autocast(self.precision, self.device):
            output = self.forward(**part)  # (a part without labels still joins the others)
            loss = output.loss * (count / total) if count else output.logits.sum() * 0.0
        self.scaler.scale(loss * self.world_size).backward()  # processes average: undo it
    return loss.detach()


TrainingStep.step, TrainingStep._backward = _step, _backward


_AT_SCALE = {
    "Trainer",
    "NonFiniteSteps",
    "weights_are_finite",
    "process_group",
    "wrap_model",
    "format_stats",
    "atomic_save",
    "save_checkpoint",
    "read_checkpoint",
    "restore_checkpoint",
    "load_checkpoint",
    "check_config",
    "rng_state",
    "set_rng_state",
    "CHECKPOINT_FORMAT",
    "RESERVED_KEYS",
    "RUNTIME_FIELDS",
}


def __getattr__(name: str) -> Any:
    """`t5mini.training.Trainer` and the checkpoint functions, from `t5mini.scale`."""
    if name in _AT_SCALE:
        return getattr(importlib.import_module("t5mini.scale"), name)
    raise AttributeError(f"module 't5mini.training' has no attribute {name!r}")


def text_to_text_batch(
    tokenizer: Any,
    sources: Sequence[str],
    targets: Sequence[str],
    max_source_length: int | None = None,
    max_target_length: int | None = None,
) -> dict[str, torch.Tensor]:
    """Tokenise (input, target) text pairs: `input_ids`, `attention_mask`, `labels` (-100 pad)."""
    sources, targets = check_texts("sources", sources), check_texts("targets", targets)
    if len(sources) != len(targets) or not sources:
        raise ValueError(
            f"sources has {len(sources)} texts and targets {len(targets)}: "
            "expected the same number, at least one"
        )
    batch = tokenizer(
        sources, max_length=max_source_length, truncation=max_source_length is not None
    )
    encoded = tokenizer(
        targets, max_length=max_target_length, truncation=max_target_length is not None
    )
    labels = encoded["input_ids"].masked_fill(encoded["attention_mask"] == 0, -100)
    return {
        "input_ids": batch["input_ids"],
        "attention_mask": batch["attention_mask"],
        "labels": labels,
    }


@torch.no_grad()
def generate_texts(
    model: T5ForConditionalGeneration,
    tokenizer: Any,
    sources: Sequence[str],
    batch_size: int = 64,
    **generate_kwargs: Any,
) -> list[str]:
    """The model's answers to `sources` (greedy unless told otherwise), decoded to text."""
    sources = check_texts("sources", sources)
    check_int("batch_size", batch_size, 1)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    answers = []
    for start in range(0, len(sources), batch_size):
        batch = tokenizer(sources[start : start + batch_size])
        ids = model.generate(
            batch["input_ids"].to(device),
            attention_mask=batch["attention_mask"].to(device),
            **generate_kwargs,
        )
        answers += tokenizer.batch_decode(ids.cpu(), skip_special_tokens=True)
    model.train(was_training)
    return answers


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """The fraction of predictions equal to their reference (surrounding spaces ignored)."""
    predictions = check_texts("predictions", predictions)
    references = check_texts("references", references)
    if len(predictions) != len(references) or not references:
        raise ValueError(
            f"predictions ({len(predictions)}) and references ({len(references)}) must be "
            "non-empty and of the same length"
        )
    return sum(p.strip() == r.strip() for p, r in zip(predictions, references)) / len(references)
