# Generated from chapters/13_guard_rails.md — edit the chapter, not this file.

"""Argument checks shared by every module: each error names the argument and what was expected."""

from __future__ import annotations

import itertools
import math
import numbers
import operator
from collections.abc import Collection, Iterable, Sequence
from typing import Any

import torch


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


def check_text(name: str, value: Any) -> str:
    """Return ``value``; raise unless it is one str of Unicode text (no lone surrogate)."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__} {value!r:.40}")
    if not value.isascii():  # the one way a str can fail to be text: a lone surrogate
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as error:
            raise ValueError(
                f"{name} holds a lone surrogate {value[error.start]!r} at index {error.start}, "
                "which is no character; expected text that encodes as UTF-8"
            ) from None
    return value


def check_texts(name: str, value: Any) -> list[str]:
    """Return ``value`` as a list of str; raise for a bare str or a non-str element."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(
            f"{name} must be a list of strings, got {type(value).__name__} {value!r:.40}"
            + (" (wrap a single text in a list)" if isinstance(value, str) else "")
        )
    return [check_text(f"{name}[{index}]", text) for index, text in enumerate(value)]


def check_token_id(name: str, value: Any, vocab_size: int | None = None) -> int:
    """``value`` as an int (Python or NumPy int, 0-d tensor); raise unless in [0, vocab_size)."""
    try:
        if isinstance(value, bool):
            raise TypeError
        token_id = operator.index(value)  # refuses 5.7 and "5" rather than truncating them
    except TypeError:
        got = f"{type(value).__name__} {value!r:.40}"
        raise TypeError(f"{name} must be an int token id, got {got}") from None
    if token_id < 0 or (vocab_size is not None and token_id >= vocab_size):
        hint = " (-100 marks ignored labels; replace it before decoding)" * (token_id == -100)
        where = f"outside the vocabulary range [0, {'inf' if vocab_size is None else vocab_size})"
        raise ValueError(f"{name} is {token_id}, {where}{hint}")
    return token_id


def check_token_ids(name: str, ids: Any, vocab_size: int | None = None) -> list[int]:
    """``ids`` as a list of ints: a 1-D tensor or array, or a sequence of ids, but never a str."""
    if hasattr(ids, "ndim") and hasattr(ids, "tolist"):  # a tensor or a NumPy array
        if ids.ndim != 1:
            raise ValueError(
                f"{name} must be one sequence (1-D), got shape {tuple(ids.shape)}; "
                "use batch_decode for a batch"
            )
        ids = ids.tolist()
    elif isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
        got = f"{type(ids).__name__} {ids!r:.40}"
        raise TypeError(f"{name} must be a sequence of token ids, got {got}")
    return [check_token_id(f"{name}[{i}]", token, vocab_size) for i, token in enumerate(ids)]


def check_id_batch(name: str, sequences: Any, vocab_size: int | None = None) -> list[list[int]]:
    """``sequences`` as lists of ints: a 2-D tensor or array, or a sequence of id sequences."""
    if hasattr(sequences, "ndim") and sequences.ndim != 2:
        raise ValueError(f"{name} must be a batch (2-D), got shape {tuple(sequences.shape)}")
    if isinstance(sequences, (str, bytes)) or not isinstance(sequences, Iterable):
        raise TypeError(f"{name} must be a batch of id sequences, got {type(sequences).__name__}")
    return [check_token_ids(f"{name}[{i}]", ids, vocab_size) for i, ids in enumerate(sequences)]


ID_DTYPES = (torch.int32, torch.int64)  # what nn.Embedding and cross_entropy accept


def is_compiling() -> bool:
    """True while torch.compile traces the caller."""
    probe = getattr(getattr(torch, "compiler", None), "is_compiling", None)
    return bool(probe is not None and probe())


def check_not_meta(name: str, value: torch.Tensor | torch.nn.Module) -> None:
    """Raise if ``value`` (a tensor, or a parameter or buffer of a module) is on the meta device."""
    if isinstance(value, torch.nn.Module):
        tensors = itertools.chain(value.named_parameters(), value.named_buffers())
        where = next((f"{name}.{key}" for key, tensor in tensors if tensor.is_meta), None)
        fix = "load weights with load_state_dict(..., assign=True), or to_empty(device=...)"
    else:
        where = name if isinstance(value, torch.Tensor) and value.is_meta else None
        fix = "move it to a real device first, e.g. .to('cpu')"
    if where is not None:
        raise ValueError(f"{where} is on the meta device, which holds shapes but no values; {fix}")


def check_ids(name: str, ids: Any, vocab_size: int, allow_ignore: bool = False) -> None:
    """Raise unless ``ids`` is a (batch, seq_len > 0) int32/int64 tensor of ids < vocab_size."""
    if not isinstance(ids, torch.Tensor) or ids.dtype not in ID_DTYPES:
        got = ids.dtype if isinstance(ids, torch.Tensor) else type(ids).__name__
        raise TypeError(f"{name} must be a torch.int64 (or int32) tensor, got {got}")
    if ids.dim() != 2 or ids.shape[1] == 0:
        raise ValueError(f"{name} must have shape (batch, seq_len > 0), got {tuple(ids.shape)}")
    check_not_meta(name, ids)
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
    """Raise unless ``value`` is a floating-point tensor with ``d_model`` features last."""
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        got = value.dtype if isinstance(value, torch.Tensor) else type(value).__name__
        raise TypeError(f"{name} must be a floating-point tensor, got {got}")
    check_not_meta(name, value)
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
        got = type(mask).__name__
        raise TypeError(f"{name} must be a tensor of 1 (token) and 0 (padding), got {got}")
    if tuple(mask.shape) != tuple(ids.shape):
        raise ValueError(
            f"{name} has shape {tuple(mask.shape)} but {ids_name} has shape "
            f"{tuple(ids.shape)}; they must match (1 = token, 0 = padding)"
        )
    check_not_meta(name, mask)
