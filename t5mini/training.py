# Generated from chapters/10_training.md — edit the chapter, not this file.

from __future__ import annotations

import dataclasses
import io
import math
import os
import random
import re
import secrets
import time
import zipfile
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch
import torch.distributed as dist
from torch import nn

from t5mini.checks import check_bool, check_choice, check_float, check_ids, check_int, check_texts
from t5mini.config import T5Config
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
    check_bool("scale_parameter", scale_parameter)
    check_bool("relative_step", relative_step)
    check_bool("warmup_init", warmup_init)
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
    check_float("eps[0]", eps[0], 0.0)
    check_float("eps[1]", eps[1], 0.0)
    check_float("clip_threshold", clip_threshold, 0.0, low_open=True)
    check_float("decay_rate", decay_rate, -1.0, 0.0, high_open=True)
    if beta1 is not None:
        check_float("beta1", beta1, 0.0, 1.0, high_open=True)
    check_float("weight_decay", weight_decay, 0.0)


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
        _check_adafactor_args(
            lr,
            eps,
            clip_threshold,
            decay_rate,
            beta1,
            weight_decay,
            scale_parameter,
            relative_step,
            warmup_init,
        )
        defaults = dict(
            lr=lr,
            eps=tuple(eps),
            clip_threshold=clip_threshold,
            decay_rate=decay_rate,
            beta1=beta1,
            weight_decay=weight_decay,
            scale_parameter=scale_parameter,
            relative_step=relative_step,
            warmup_init=warmup_init,
        )
        super().__init__(params, defaults)

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
    """The lr of update `step`: the schedule's, else the optimiser's (or Adafactor's relative step)."""
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


def process_group() -> tuple[int, int]:
    """(rank, world_size) of this process: (0, 1) unless torch.distributed is initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def sum_over_processes(values: Sequence[float], device: torch.device) -> list[float]:
    """`values` summed over all processes (as they are, in a single process)."""
    if process_group()[1] == 1:
        return [float(v) for v in values]
    total = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(total)  # a sum, by default
    return total.tolist()


def wrap_model(
    model: nn.Module, device: torch.device, compile: bool = False
) -> tuple[nn.parallel.DistributedDataParallel | None, nn.Module]:
    """(the model in DDP when several processes train it, else None; what computes the loss)."""
    ddp = None
    if process_group()[1] > 1:
        device_ids = [device.index] if device.type == "cuda" else None  # gloo on the CPU: none
        ddp = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    forward = ddp or model
    if not compile:
        return ddp, forward
    # On the CPU, a value read twice is stored rather than recomputed in each reader (the
    # position bias, shared by every layer); measured in benchmarks/training.py.
    options = {"realize_reads_threshold": 2} if device.type == "cpu" else None
    compiled = torch.compile(forward, options=options)

    def checked(**batch: torch.Tensor) -> Any:
        """Check the ids eagerly (inside the compiled graph the model skips that host sync)."""
        for name in ("input_ids", "decoder_input_ids", "labels"):
            if batch.get(name) is not None:
                check_ids(name, batch[name], model.config.vocab_size, name == "labels")
        return compiled(**batch)

    return ddp, checked


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


def weights_are_finite(model: nn.Module) -> bool:
    """True when no floating-point parameter or buffer of `model` holds nan or inf."""
    tensors = [t for t in model.state_dict().values() if t.is_floating_point()]
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


class NonFiniteSteps:
    """Counts skipped steps; raises when too many come in a row or the weights are not finite."""

    def __init__(self, max_in_a_row: int, model: nn.Module) -> None:
        """Allow `max_in_a_row` skipped steps in a row; watch `model`'s weights."""
        self.max_in_a_row, self.model = max_in_a_row, model
        self.skipped = self.in_a_row = 0
        half = (torch.float16, torch.bfloat16)
        self.half_precision = any(p.dtype in half for p in model.parameters())

    def record(self, stepped: bool) -> None:
        """Note a step (taken or skipped); raise FloatingPointError when training cannot go on."""
        if stepped:
            self.in_a_row = 0
        else:
            self.skipped, self.in_a_row = self.skipped + 1, self.in_a_row + 1
        if (not stepped or self.half_precision) and not weights_are_finite(self.model):
            raise FloatingPointError(
                "the model's weights are not finite (nan or inf); an optimiser step made them "
                "so. Half-precision weights with an optimiser that computes in half precision "
                "do this: keep the weights in float32 and use precision='bf16' or 'fp16'"
            )
        if self.in_a_row > self.max_in_a_row:
            raise FloatingPointError(
                f"{self.in_a_row} steps in a row had a loss or gradient norm that is not finite "
                f"(max_skipped_steps={self.max_in_a_row}): training has diverged; lower the "
                "learning rate, clip the gradients (max_grad_norm) or check the data"
            )


def _check_trainer_args(
    optimizer: Any,
    schedule: Any,
    accumulation_steps: int,
    max_grad_norm: float | None,
    compile: bool,
    max_skipped_steps: int,
) -> None:
    """Raise an error naming the first Trainer argument that is out of range."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
        )
    if schedule is not None and not callable(schedule):
        raise TypeError(
            f"schedule must be a Schedule, a function of the step or None, got {schedule!r}"
        )
    if schedule is not None and any(g.get("relative_step") for g in optimizer.param_groups):
        raise ValueError(
            f"schedule={schedule!r} would be ignored: this Adafactor has relative_step=True "
            "and computes its own step size; use Adafactor(lr=..., relative_step=False) "
            "(configure_optimizer(model, lr=...)) with a schedule, or schedule=None"
        )
    check_int("accumulation_steps", accumulation_steps, 1)
    if max_grad_norm is not None:
        check_float("max_grad_norm", max_grad_norm, 0.0, low_open=True)
    check_bool("compile", compile)
    check_int("max_skipped_steps", max_skipped_steps, 0)


class TrainingStep:
    """One optimiser update per `step(batch)`: accumulation, precision, clipping, processes."""

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
        compile: bool = False,
        max_skipped_steps: int = 20,
    ) -> None:
        """`schedule=None` leaves the optimiser's lr alone; `gradient_checkpointing=None` the model's."""
        _check_trainer_args(
            optimizer, schedule, accumulation_steps, max_grad_norm, compile, max_skipped_steps
        )
        self.model, self.optimizer, self.schedule = model, optimizer, schedule
        self.accumulation_steps, self.max_grad_norm = accumulation_steps, max_grad_norm
        self.device = next(model.parameters()).device
        self.precision = resolve_precision(precision, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        if gradient_checkpointing is not None:
            model.gradient_checkpointing_enable(gradient_checkpointing)
        self.rank, self.world_size = process_group()
        self.ddp, self.forward = wrap_model(model, self.device, compile)  # DDP: None in one process
        self.non_finite = NonFiniteSteps(max_skipped_steps, model)
        self.global_step, self.history = 0, []  # updates taken or skipped so far

    def step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """One update on `batch` (under DDP, this process's part of it); returns its statistics."""
        start, lr = (
            time.perf_counter(),
            learning_rate(self.schedule, self.optimizer, self.global_step),
        )
        for group in self.optimizer.param_groups if self.schedule is not None else ():
            group["lr"] = lr
        (total,) = sum_over_processes([num_label_tokens(batch)], self.device)
        if total == 0:
            raise ValueError("batch: every label is -100, there is nothing to learn from")
        self.model.train()
        parts = split_batch(batch, self.accumulation_steps)
        loss = sum(
            self._backward(part, total, last=i == len(parts) - 1) for i, part in enumerate(parts)
        )
        loss, tokens = sum_over_processes([loss, num_tokens(batch)], self.device)
        grad_norm, stepped = clip_and_step(
            self.model, self.optimizer, self.scaler, self.max_grad_norm, loss
        )
        self.non_finite.record(stepped)
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
            skipped_steps=self.non_finite.skipped,
            grad_scale=self.scaler.get_scale(),
        )  # fp16's loss scale (1.0 without fp16)
        self.history.append(stats)
        return stats

    def _backward(self, part: dict[str, torch.Tensor], total: float, last: bool) -> torch.Tensor:
        """Backward of a micro-batch's mean loss, weighted by its share of all label tokens."""
        count = num_label_tokens(part)
        if count == 0 and self.ddp is None:  # its mean loss would be nan; its share is 0
            return torch.zeros((), device=self.device)
        part = {key: value.to(self.device, non_blocking=True) for key, value in part.items()}
        with nullcontext() if last or self.ddp is None else self.ddp.no_sync():
            with autocast(self.precision, self.device):
                output = self.forward(**part)  # (a part without labels still joins DDP's sync)
                loss = output.loss * (count / total) if count else output.logits.sum() * 0.0
            self.scaler.scale(loss * self.world_size).backward()  # DDP averages: undo it
        return loss.detach()


class Trainer(TrainingStep):
    """T5's training loop: `step` (see TrainingStep), `fit`, `save` and `load`.

    Under torchrun (torch.distributed initialised, world size > 1) the model is wrapped in
    DistributedDataParallel (device_ids=[its GPU]; none on the CPU) and `step(batch)` takes
    `batch` as this process's part of the global batch: losses are weighted by the label
    tokens of all processes, so the gradient is the one-process gradient of the whole batch,
    and the logged loss and tokens are the whole batch's. `trainer.model` stays the plain
    module, the one `save` writes; save and print where `is_main_process`. `compile=True`
    runs the forward pass and the loss (of the model or its DDP wrapper) through torch.compile.
    """

    @property
    def is_main_process(self) -> bool:
        """True in a single process, and on rank 0 of several."""
        return self.rank == 0

    @property
    def skipped_steps(self) -> int:
        """How many steps were skipped because their loss or gradient norm was not finite."""
        return self.non_finite.skipped

    def current_lr(self) -> float:
        """The learning rate of the next update."""
        return learning_rate(self.schedule, self.optimizer, self.global_step)

    def fit(
        self,
        batches: Iterable[dict[str, torch.Tensor]],
        num_steps: int,
        log_every: int = 0,
        log: Callable[[str], Any] = print,
    ) -> list[dict[str, float]]:
        """`num_steps` updates on the next batches; log a line every `log_every` steps (0: never)."""
        check_int("num_steps", num_steps, 0)
        check_int("log_every", log_every, 0)
        stats, iterator = [], iter(batches)
        for _ in range(num_steps):
            batch = next(iterator, None)
            if batch is None:
                raise ValueError(f"batches ran out after {len(stats)} of {num_steps} steps")
            stats.append(self.step(batch))
            if log_every and (self.global_step % log_every == 0 or len(stats) == num_steps):
                log(format_stats(stats[-1]))
        return stats

    def save(self, path: str | os.PathLike, **extra: Any) -> Path:
        """Write everything needed to resume, atomically; `extra` entries come back from `load`."""
        _check_extra(extra)  # before its names meet those of save_checkpoint's arguments
        trainer = dict(
            precision=self.precision, history=self.history, skipped_steps=self.skipped_steps
        )
        return save_checkpoint(
            path,
            self.model,
            self.optimizer,
            step=self.global_step,
            scaler=self.scaler,
            schedule=self.schedule,
            trainer=trainer,
            **extra,
        )

    def load(self, path: str | os.PathLike) -> dict[str, Any]:
        """Restore a `save` checkpoint, all or nothing; return it (with the `extra` entries)."""
        checkpoint = read_checkpoint(path)
        restore_checkpoint(checkpoint, self.model, self.optimizer, scaler=self.scaler, path=path)
        saved = checkpoint["trainer"] or {}
        self.global_step = checkpoint["step"]
        self.history = list(saved.get("history", []))
        self.non_finite.skipped = saved.get("skipped_steps", 0)
        return checkpoint


def format_stats(stats: dict[str, float]) -> str:
    """One log line: step, loss, learning rate, gradient norm, tokens per second (and skips)."""
    line = (
        f"step {stats['step']:>6} | loss {stats['loss']:.4f} | lr {stats['lr']:.2e} | "
        f"grad-norm {stats['grad_norm']:.3f} | {stats['tokens_per_s']:>9,.0f} tokens/s"
    )
    skipped = stats.get("skipped_steps", 0)
    return line + (f" | {skipped} skipped" if skipped else "")


def _new_temporary(path: Path) -> tuple[Path, BinaryIO]:
    """A new, empty `.NAME.XXXXXXXX.tmp` beside `path`, with the umask's permissions."""
    while True:
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:  # 0o666 minus the umask, as for any new file (mkstemp would give 0o600)
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        return temporary, os.fdopen(descriptor, "wb")


def _fsync_directory(directory: Path) -> None:
    """Make a rename in `directory` durable (POSIX; elsewhere nothing to do)."""
    if hasattr(os, "O_DIRECTORY"):
        descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def _remove_stale_temporaries(path: Path) -> None:
    """Delete the temporary files of `path` that an interrupted save left behind."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.[0-9a-z_]{{8}}\.tmp")
    for stale in path.parent.iterdir():
        if pattern.fullmatch(stale.name):
            stale.unlink(missing_ok=True)


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """`torch.save` to a temporary file beside `path`, fsync it, then rename it onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary, file = _new_temporary(path)
    try:
        with file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)  # atomic: the old file or the new one, never half of one
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)
    _remove_stale_temporaries(path)
    return path


CHECKPOINT_FORMAT = "t5mini-checkpoint-2"
RESERVED_KEYS = (
    "format",
    "config",
    "model",
    "optimizer",
    "optimizer_class",
    "scaler",
    "schedule",
    "step",
    "rng",
    "trainer",
)
_PLAIN = (
    type(None),
    bool,
    int,
    float,
    str,
    bytes,
    torch.Tensor,
    nn.Parameter,
    torch.dtype,
    torch.Size,
)


def _check_loadable(value: Any, where: str) -> None:
    """Raise a TypeError naming `where` unless a weights-only load can read `value` back."""
    if type(value) in _PLAIN:
        return
    if type(value) in (list, tuple):
        for index, item in enumerate(value):
            _check_loadable(item, f"{where}[{index}]")
    elif type(value) is dict:
        for key, item in value.items():
            if type(key) not in (str, int):
                raise TypeError(
                    f"{where} has a key {key!r} ({type(key).__name__}): keys must be str or int"
                )
            _check_loadable(item, f"{where}[{key!r}]")
    else:
        raise TypeError(
            f"{where} is a {type(value).__module__}.{type(value).__qualname__}, which a "
            "weights-only load cannot read back; use None, bool, int, float, str, tensors, "
            "and lists, tuples or dicts of them"
        )


def _check_extra(extra: dict[str, Any]) -> None:
    """Raise unless the extra entries of a checkpoint can be saved and loaded back."""
    for key, value in extra.items():
        if key in RESERVED_KEYS:
            raise ValueError(
                f"extra entry {key!r} is reserved for the checkpoint's own {RESERVED_KEYS}"
            )
        _check_loadable(value, f"extra entry {key!r}")
    if extra:  # and the proof: a dry round trip
        buffer = io.BytesIO()
        torch.save(extra, buffer)
        buffer.seek(0)
        torch.load(buffer, weights_only=True)


RUNTIME_FIELDS = ("dropout_rate", "attn_implementation", "gradient_checkpointing")  # may differ


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
    trainer: dict[str, Any] | None = None,
    **extra: Any,
) -> Path:
    """Write model, optimiser, scaler, step, RNG state and config to `path`, atomically."""
    check_int("step", step, 0)
    _check_extra(extra)
    if not weights_are_finite(model):  # never replace a good checkpoint by a diverged model
        raise ValueError(f"model: its weights are not finite (nan or inf); {path} was not written")
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "config": model.config.to_dict(),
        "model": model.state_dict(),
        "optimizer": None if optimizer is None else optimizer.state_dict(),
        "optimizer_class": None if optimizer is None else type(optimizer).__name__,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "schedule": schedule.to_dict() if hasattr(schedule, "to_dict") else None,
        "step": step,
        "rng": rng_state(),
        "trainer": trainer,
        **extra,
    }
    return atomic_save(checkpoint, path)


_ENTRY_TYPES = {
    "config": dict,
    "model": dict,
    "optimizer": (dict, type(None)),
    "optimizer_class": (str, type(None)),
    "scaler": (dict, type(None)),
    "schedule": (dict, type(None)),
    "step": int,
    "rng": dict,
    "trainer": (dict, type(None)),
}


def _check_entries(checkpoint: Any, path: Path) -> None:
    """Raise unless `checkpoint` has every entry of a t5mini checkpoint, of the right type."""
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a t5mini checkpoint ({CHECKPOINT_FORMAT})")
    for key, types in _ENTRY_TYPES.items():
        if not isinstance(checkpoint.get(key), types):
            raise ValueError(
                f"{path} is not a readable t5mini checkpoint: its {key!r} entry is "
                f"{type(checkpoint.get(key)).__name__}"
            )
    trainer = checkpoint["trainer"] or {}
    if not isinstance(trainer.get("history", []), list) or not isinstance(
        trainer.get("skipped_steps", 0), int
    ):
        raise ValueError(
            f"{path} is not a readable t5mini checkpoint: its trainer entry is damaged"
        )


def _check_weights(saved: dict[str, Any], model: nn.Module, path: Path) -> None:
    """Raise naming the first weight of `saved` that does not fit `model` (name, shape, kind)."""
    expected = model.state_dict()
    missing, unexpected = (
        sorted(expected.keys() - saved.keys()),
        sorted(saved.keys() - expected.keys()),
    )
    if missing or unexpected:
        raise ValueError(
            f"{path}: its weights do not fit the model: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}"
        )
    for name, tensor in expected.items():
        other = saved[name]
        if (
            not isinstance(other, torch.Tensor)
            or other.shape != tensor.shape
            or other.is_floating_point() != tensor.is_floating_point()
        ):
            got = (
                f"{tuple(other.shape)} {other.dtype}"
                if isinstance(other, torch.Tensor)
                else type(other).__name__
            )
            raise ValueError(
                f"{path}: {name} is {got} in the checkpoint but "
                f"{tuple(tensor.shape)} {tensor.dtype} in the model"
            )


def _check_optimizer(
    saved: Any, saved_class: Any, optimizer: torch.optim.Optimizer, path: Path
) -> None:
    """Raise unless `saved` is the state of an optimiser like `optimizer`, for the same parameters."""
    if saved is None:
        raise ValueError(
            f"{path} holds no optimizer state; pass optimizer=None to load the weights"
        )
    if saved_class != type(optimizer).__name__:
        raise ValueError(
            f"{path} holds the state of a {saved_class} optimizer, not of a "
            f"{type(optimizer).__name__}; build the same optimizer to resume, or pass "
            "optimizer=None to load the weights only"
        )
    sizes = [len(group.get("params", ())) for group in saved.get("param_groups", [])]
    if sizes != [len(group["params"]) for group in optimizer.param_groups]:
        raise ValueError(
            f"{path}: its optimizer has parameter groups of {sizes} parameters, this "
            f"one {[len(group['params']) for group in optimizer.param_groups]}"
        )
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for index, state in saved.get("state", {}).items():
        for key, value in state.items():
            param = params[index] if isinstance(index, int) and 0 <= index < len(params) else None
            if param is None or (
                isinstance(value, torch.Tensor)
                and value.dim() == param.dim()
                and value.shape != param.shape
            ):
                raise ValueError(
                    f"{path}: optimizer state {key!r} of parameter {index} does not fit"
                )


def _check_rng(state: dict[str, Any], path: Path) -> None:
    """Raise unless the generator states can be restored (tried on throwaway generators)."""
    try:
        random.Random().setstate(state["python"])
        torch.Generator().set_state(state["torch"])
    except Exception:  # a missing entry, a wrong type or size: all mean the state is damaged
        raise ValueError(f"{path}: its random-generator state is damaged") from None


def check_config(saved: dict[str, Any], config: T5Config) -> None:
    """Raise a ValueError naming every field where a checkpoint's config differs from `config`."""
    current = config.to_dict()
    mismatches = [
        f"{name}: checkpoint {saved.get(name)!r} != model {current[name]!r}"
        for name in current
        if name not in RUNTIME_FIELDS and saved.get(name) != current[name]
    ]
    if mismatches:
        raise ValueError("checkpoint config does not match the model: " + "; ".join(mismatches))


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a `save_checkpoint` file (weights only: no code from the file runs), checked whole."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        with zipfile.ZipFile(path) as archive:  # torch.save writes a zip with a CRC per entry
            damaged = archive.testzip()
        checkpoint = None if damaged else torch.load(path, map_location="cpu", weights_only=True)
    except OSError:  # a file we may not read: say so, as open() does
        raise
    except Exception:  # what a damaged archive raises varies from byte to byte
        checkpoint = None
    if checkpoint is None:
        state = "empty" if path.stat().st_size == 0 else "truncated or damaged"
        raise ValueError(f"{path} is not a readable t5mini checkpoint: the file is {state}")
    _check_entries(checkpoint, path)
    return checkpoint


def restore_checkpoint(
    checkpoint: dict[str, Any],
    model: T5ForConditionalGeneration,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    scaler: torch.amp.GradScaler | None = None,
    restore_rng: bool = True,
    path: str | os.PathLike = "checkpoint",
) -> None:
    """Load what `read_checkpoint` returned into the objects, after checking that all of it fits."""
    scaler = scaler if scaler is not None and scaler.is_enabled() else None  # fp16 only
    check_config(checkpoint["config"], model.config)
    _check_weights(checkpoint["model"], model, Path(path))
    if optimizer is not None:
        _check_optimizer(
            checkpoint["optimizer"], checkpoint["optimizer_class"], optimizer, Path(path)
        )
    if scaler is not None and checkpoint["scaler"] is None:
        raise ValueError(
            f"{path} holds no gradient-scaler state (it was not written in fp16); "
            "resume it with the precision it was written in"
        )
    if restore_rng:
        _check_rng(checkpoint["rng"], Path(path))
    undo = (optimizer and optimizer.state_dict(), scaler and scaler.state_dict(), rng_state())
    try:  # the weights last: whatever refuses before them can be put back as it was
        if optimizer is not None:
            optimizer.load_state_dict(checkpoint["optimizer"])
        if scaler is not None:
            scaler.load_state_dict(checkpoint["scaler"])
        if restore_rng:
            set_rng_state(checkpoint["rng"])
        model.load_state_dict(checkpoint["model"])
    except BaseException:
        if optimizer is not None:
            optimizer.load_state_dict(undo[0])
        if scaler is not None:
            scaler.load_state_dict(undo[1])
        set_rng_state(undo[2])
        raise


def load_checkpoint(
    path: str | os.PathLike,
    model: T5ForConditionalGeneration,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    scaler: torch.amp.GradScaler | None = None,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Load a `save_checkpoint` file into `model` (and optimiser, scaler, RNG); return it."""
    checkpoint = read_checkpoint(path)
    restore_checkpoint(
        checkpoint, model, optimizer, scaler=scaler, restore_rng=restore_rng, path=path
    )
    return checkpoint


def text_to_text_batch(
    tokenizer: Any,
    sources: Sequence[str],
    targets: Sequence[str],
    max_source_length: int | None = None,
    max_target_length: int | None = None,
) -> dict[str, torch.Tensor]:
    """Tokenise (input, target) text pairs into `input_ids`, `attention_mask`, `labels` (-100 pad)."""
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
