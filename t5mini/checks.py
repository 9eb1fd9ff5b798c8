# Generated from chapters/01_tokenizer.md — edit the chapter, not this file.

"""Argument checks shared by every module: each error names the argument and what was expected."""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection, Sequence
from typing import Any

import torch

ID_DTYPES = (torch.int32, torch.int64)  # what nn.Embedding and cross_entropy accept


def _interval(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    """``[low, high)``-style text for an error message."""
    left = "(" if low_open or low is None else "["
    right = ")" if high_open or high is None else "]"
    return f"{left}{'-inf' if low is None else low}, {'inf' if high is None else high}{right}"


def check_int(name: str, value: Any, low: int | None = None, high: int | None = None) -> int:
    """Return ``value`` as an int; raise unless it is an integer (not a bool) in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if (low is not None and value < low) or (high is not None and value > high):
        where = _interval(low, high, False, False)
        raise ValueError(f"{name} must be an int in {where}, got {value!r}")
    return int(value)


def check_float(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """Return ``value`` as a float; raise unless it is a finite real number in the interval."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    try:
        value = float(value)
    except OverflowError:  # an int beyond the float range, such as 10**400
        value = math.inf
    below = low is not None and (value <= low if low_open else value < low)
    above = high is not None and (value >= high if high_open else value > high)
    if not math.isfinite(value) or below or above:
        where = _interval(low, high, low_open, high_open)
        raise ValueError(f"{name} must be a finite number in {where}, got {value!r}")
    return value


def check_bool(name: str, value: Any) -> bool:
    """Return ``value``; raise unless it is ``True`` or ``False`` (not 0, 1, "no", ...)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")
    return value


def _same_choice(value: Any, choice: Any) -> bool:
    """``value == choice``, where a bool matches only a bool and a failed comparison is False."""
    if isinstance(value, bool) != isinstance(choice, bool):
        return False  # True == 1, but padding=1 is not padding=True
    try:
        return bool(value == choice)
    except (TypeError, ValueError, RuntimeError):  # arrays and tensors compare element-wise
        return False


def check_choice(name: str, value: Any, choices: Collection[Any]) -> Any:
    """Return ``value``; raise unless it is one of ``choices``."""
    if not any(_same_choice(value, choice) for choice in choices):
        listed = ", ".join(sorted(map(repr, choices)))
        raise ValueError(f"{name} must be one of [{listed}], got {value!r:.40}")
    return value


def check_texts(name: str, value: Any) -> list[str]:
    """Return ``value`` as a list of str; raise for a bare str or a non-str element."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(
            f"{name} must be a list of strings, got {type(value).__name__} {value!r:.40}"
            + (" (wrap a single text in a list)" if isinstance(value, str) else "")
        )
    for index, text in enumerate(value):
        if not isinstance(text, str):
            raise TypeError(f"{name}[{index}] must be a str, got {type(text).__name__}")
    return list(value)


def is_compiling() -> bool:
    """True while torch.compile traces the caller."""
    probe = getattr(getattr(torch, "compiler", None), "is_compiling", None)
    return bool(probe is not None and probe())


def check_ids(name: str, ids: Any, vocab_size: int, allow_ignore: bool = False) -> None:
    """Raise unless ``ids`` is a (batch, seq_len > 0) int32/int64 tensor of ids in [0, vocab_size)."""
    if not isinstance(ids, torch.Tensor) or ids.dtype not in ID_DTYPES:
        got = ids.dtype if isinstance(ids, torch.Tensor) else type(ids).__name__
        raise TypeError(f"{name} must be a torch.int64 (or int32) tensor, got {got}")
    if ids.dim() != 2 or ids.shape[1] == 0:
        raise ValueError(f"{name} must have shape (batch, seq_len > 0), got {tuple(ids.shape)}")
    if is_compiling():  # a host sync would split the compiled graph: callers check eagerly
        return
    values = ids[ids != -100] if allow_ignore else ids
    if values.numel() == 0:
        return
    low, high = (int(v) for v in torch.aminmax(values))  # one host sync
    if low < 0 or high >= vocab_size:
        bad = low if low < 0 else high
        allowed = f"[0, {vocab_size})" + (" or -100" if allow_ignore else "")
        raise ValueError(f"{name} contains {bad}, outside the vocabulary range {allowed}")


def check_hidden_states(name: str, value: Any, d_model: int) -> None:
    """Raise unless ``value`` is a floating-point tensor with ``d_model`` features in its last dim."""
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        got = value.dtype if isinstance(value, torch.Tensor) else type(value).__name__
        raise TypeError(f"{name} must be a floating-point tensor, got {got}")
    if value.dim() == 0 or value.shape[-1] != d_model:
        raise ValueError(
            f"{name} must have d_model={d_model} features in its last dimension, "
            f"got shape {tuple(value.shape)}"
        )


def check_mask(name: str, mask: Any, ids: torch.Tensor, ids_name: str) -> None:
    """Raise unless ``mask`` is None or a tensor with the shape of ``ids`` (1 = token, 0 = pad)."""
    if mask is None:
        return
    if not isinstance(mask, torch.Tensor) or mask.is_complex():
        raise TypeError(
            f"{name} must be a tensor of 1 (token) and 0 (padding), got {type(mask).__name__}"
        )
    if tuple(mask.shape) != tuple(ids.shape):
        raise ValueError(
            f"{name} has shape {tuple(mask.shape)} but {ids_name} has shape "
            f"{tuple(ids.shape)}; they must match (1 = token, 0 = padding)"
        )
