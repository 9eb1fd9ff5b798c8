# Generated from chapters/15_training_at_scale.md — edit the chapter, not this file.

from __future__ import annotations

import errno
import io
import os
import random
import zipfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from t5mini.checks import check_bool, check_ids, check_int
from t5mini.config import T5Config
from t5mini.files import replaced_atomically
from t5mini.model import T5ForConditionalGeneration
from t5mini.training import Schedule, TrainingStep


def weights_are_finite(model: nn.Module) -> bool:
    """True when no floating-point parameter or buffer of `model` holds nan or inf."""
    tensors = [t for t in model.state_dict().values() if t.is_floating_point()]
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


class NonFiniteSteps:
    """Raises when too many skipped steps come in a row or the weights are not finite."""

    def __init__(self, max_in_a_row: int, model: nn.Module) -> None:
        """Allow `max_in_a_row` skipped steps in a row; watch `model`'s weights."""
        self.max_in_a_row, self.model, self.in_a_row = max_in_a_row, model, 0
        half = (torch.float16, torch.bfloat16)
        self.half_precision = any(p.dtype in half for p in model.parameters())

    def record(self, stepped: bool) -> None:
        """Note a step (taken or skipped); raise FloatingPointError when training cannot go on."""
        self.in_a_row = 0 if stepped else self.in_a_row + 1
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


def process_group() -> tuple[int, int]:
    """(rank, world_size) of this process: (0, 1) unless torch.distributed is initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def wrap_model(
    model: T5ForConditionalGeneration, device: torch.device, compile: bool = False
) -> tuple[nn.parallel.DistributedDataParallel | None, Callable[..., Any]]:
    """(the model in DDP when several processes train it, else None; what computes the loss)."""
    ddp = None
    if process_group()[1] > 1:
        device_ids = [device.index] if device.type == "cuda" else None  # gloo on the CPU: none
        ddp = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    forward = ddp or model
    return ddp, compile_forward(forward, model, device) if compile else forward


class Trainer(TrainingStep):
    """T5's training loop: `TrainingStep` with several processes, compile, fit, save and load.

    Under torchrun (torch.distributed initialised, world size > 1) the model is wrapped in
    DistributedDataParallel (device_ids=[its GPU]; none on the CPU) and `step(batch)` takes
    `batch` as this process's part of the global batch: losses are weighted by the label
    tokens of all processes, so the gradient is the one-process gradient of the whole batch,
    and the logged loss and tokens are the whole batch's. `trainer.model` stays the plain
    module, the one `save` writes; save and print where `is_main_process`. `compile=True`
    runs the forward pass and the loss (of the model or its DDP wrapper) through torch.compile.
    """

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
        """As `TrainingStep`; `compile=True` compiles the loss; at most `max_skipped_steps`."""
        check_bool("compile", compile)
        check_int("max_skipped_steps", max_skipped_steps, 0)
        super().__init__(
            model,
            optimizer,
            schedule,
            accumulation_steps=accumulation_steps,
            max_grad_norm=max_grad_norm,
            precision=precision,
            gradient_checkpointing=gradient_checkpointing,
        )
        self.rank, self.world_size = process_group()
        self.ddp, self.forward = wrap_model(model, self.device, compile)  # DDP: None in one process
        self.non_finite = NonFiniteSteps(max_skipped_steps, model)

    def sum_over_processes(self, values: Iterable[float]) -> list[float]:
        """`values` summed over every process (one all-reduce when there are several)."""
        if self.world_size == 1:
            return super().sum_over_processes(values)
        total = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        dist.all_reduce(total)  # a sum, by default
        return total.tolist()

    def gradient_sync(self, last: bool) -> AbstractContextManager:
        """DDP all-reduces the gradients in the last micro-batch's backward pass only."""
        return nullcontext() if last or self.ddp is None else self.ddp.no_sync()

    def record_step(self, stepped: bool) -> None:
        """Count a skipped step; raise FloatingPointError when training cannot go on."""
        super().record_step(stepped)
        self.non_finite.record(stepped)

    @property
    def is_main_process(self) -> bool:
        """True in a single process, and on rank 0 of several."""
        return self.rank == 0


CPU_INDUCTOR_OPTIONS = {"realize_reads_threshold": 2}  # a value read twice is stored once


@contextmanager
def gelu_as_sigmoid(model: nn.Module) -> Iterator[None]:
    """While active, the tanh-GELU feed-forwards of `model` compute its sigmoid form."""
    swapped = [m for m in model.modules() if getattr(m, "activation", None) == "gelu_tanh"]
    for module in swapped:
        module.activation = "gelu_tanh_as_sigmoid"
    try:
        yield
    finally:
        for module in swapped:
            module.activation = "gelu_tanh"


def compile_forward(
    forward: Callable[..., Any],
    model: T5ForConditionalGeneration,
    device: torch.device,
    backend: str | Callable[..., Any] = "inductor",
) -> Callable[..., Any]:
    """`forward` through torch.compile: ids checked eagerly; on the CPU, the settings above."""
    cpu = device.type == "cpu"
    options = CPU_INDUCTOR_OPTIONS if cpu and backend == "inductor" else None
    compiled = torch.compile(forward, backend=backend, options=options)

    def checked(**batch: torch.Tensor) -> Any:
        """Check the ids eagerly (inside the compiled graph the model skips that host sync)."""
        for name in ("input_ids", "decoder_input_ids", "labels"):
            if batch.get(name) is not None:
                check_ids(name, batch[name], model.config.vocab_size, name == "labels")
        with gelu_as_sigmoid(model) if cpu else nullcontext():
            return compiled(**batch)

    return checked


def format_stats(stats: dict[str, float]) -> str:
    """One log line: step, loss, learning rate, gradient norm, tokens per second (and skips)."""
    line = (
        f"step {stats['step']:>6} | loss {stats['loss']:.4f} | lr {stats['lr']:.2e} | "
        f"grad-norm {stats['grad_norm']:.3f} | {stats['tokens_per_s']:>9,.0f} tokens/s"
    )
    skipped = stats.get("skipped_steps", 0)
    return line + (f" | {skipped} skipped" if skipped else "")


def _fit(
    self: Trainer,
    batches: Iterable[dict[str, torch.Tensor]],
    num_steps: int,
    log_every: int = 0,
    log: Callable[[str], Any] = print,
) -> list[dict[str, float]]:
    """`num_steps` updates on the next batches; a log line every `log_every` steps (0: never)."""
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


Trainer.fit = _fit


def _write_error(error: Exception, path: Path) -> Exception:
    """The error to raise when writing `path` failed: an OSError names the path and the cause."""
    if isinstance(error, OSError):  # a full disk (ENOSPC), a file-size limit (EFBIG), ...
        message = f"{path} was not written: {error.strerror or error}"
        return OSError(error.errno, message) if error.errno else OSError(message)
    if "inline_container" in str(error):  # torch.save's writer: a short write, same causes
        return OSError(
            errno.EIO,
            f"{path} was not written: writing it failed (is the disk "
            f"full, or a file-size limit reached?): {error}",
        )
    return error


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """`torch.save` to `path` whole or not at all, through appendix A's `replaced_atomically`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    written = None
    try:
        with replaced_atomically(path) as file:  # an error or an interrupt: the old file stays
            written = os.fstat(file.fileno())
            torch.save(obj, file)
    except Exception as error:
        if written is not None and path.exists() and os.path.samestat(path.stat(), written):
            raise  # written and renamed: only the directory's fsync failed
        raised = _write_error(error, path)
        if raised is error:
            raise
        raise raised from error
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
    """Raise unless `saved` is the state of an optimiser like `optimizer`, same parameters."""
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


def _save(self: Trainer, path: str | os.PathLike, **extra: Any) -> Path:
    """Write everything needed to resume, atomically; `extra` entries come back from `load`."""
    _check_extra(extra)  # before its names meet those of save_checkpoint's arguments
    trainer = dict(precision=self.precision, history=self.history, skipped_steps=self.skipped_steps)
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


def _load(self: Trainer, path: str | os.PathLike) -> dict[str, Any]:
    """Restore a `save` checkpoint, all or nothing; return it (with the `extra` entries)."""
    checkpoint = read_checkpoint(path)
    restore_checkpoint(checkpoint, self.model, self.optimizer, scaler=self.scaler, path=path)
    saved = checkpoint["trainer"] or {}
    self.global_step = checkpoint["step"]
    self.history = list(saved.get("history", []))
    self.skipped_steps = saved.get("skipped_steps", 0)
    return checkpoint


Trainer.save, Trainer.load = _save, _load
