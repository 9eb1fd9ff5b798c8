# Generated from chapters/03_relative_position.md — edit the chapter, not this file.

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from t5mini.checks import check_bool, check_int


def _check_bucket_arguments(num_buckets: Any, max_distance: Any, bidirectional: Any) -> int:
    """Validate the bucketing arguments and return ``max_exact``, the size of the exact region."""
    check_bool("bidirectional", bidirectional)
    check_int("num_buckets", num_buckets, 4 if bidirectional else 2)
    max_exact = (num_buckets // 2 if bidirectional else num_buckets) // 2
    if check_int("max_distance", max_distance) <= max_exact:
        raise ValueError(
            f"max_distance must be an int > {max_exact} (the exact region of {num_buckets} "
            f"buckets, bidirectional={bidirectional}) to leave room for the log-spaced "
            f"buckets, got {max_distance!r}"
        )
    return max_exact


def _check_relative_position(relative_position: Any) -> None:
    """Raise unless ``relative_position`` is a tensor of integer offsets."""
    if not isinstance(relative_position, torch.Tensor):
        got = type(relative_position).__name__
        raise TypeError(f"relative_position must be an integer tensor, got {got}")
    dtype = relative_position.dtype
    if dtype.is_floating_point or dtype.is_complex or dtype == torch.bool:
        raise TypeError(f"relative_position must be an integer tensor, got dtype {dtype}")


def relative_position_bucket(
    relative_position: torch.Tensor,
    bidirectional: bool = True,
    num_buckets: int = 32,
    max_distance: int = 128,
) -> torch.Tensor:
    """Map signed offsets ``key - query`` to T5's bucket ids in ``[0, num_buckets)``."""
    _check_relative_position(relative_position)
    max_exact = _check_bucket_arguments(num_buckets, max_distance, bidirectional)
    relative_position = relative_position.long()
    if bidirectional:
        num_buckets //= 2
        # keys after the query use the upper half of the buckets
        offset = (relative_position > 0).long() * num_buckets
        distance = relative_position.abs()
    else:
        offset = torch.zeros_like(relative_position)
        distance = (-relative_position).clamp(min=0)  # future keys count as distance 0
    # log-spaced buckets between max_exact and max_distance; beyond, all share the last one
    scaled = torch.log(distance.clamp(min=max_exact).float() / max_exact)
    scaled = scaled / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    log_bucket = (max_exact + scaled.long()).clamp(max=num_buckets - 1)
    return offset + torch.where(distance < max_exact, distance, log_bucket)


class RelativePositionBias(nn.Module):
    """T5's learned relative position bias: one scalar per (bucket, head), added to the scores."""

    def __init__(
        self, num_buckets: int, max_distance: int, num_heads: int, bidirectional: bool
    ) -> None:
        """A ``(num_buckets, num_heads)`` table; the bucketing arguments are checked here."""
        super().__init__()
        _check_bucket_arguments(num_buckets, max_distance, bidirectional)
        check_int("num_heads", num_heads, 1)
        self.num_buckets, self.max_distance = int(num_buckets), int(max_distance)
        self.bidirectional = bidirectional
        self.embedding = nn.Embedding(self.num_buckets, int(num_heads))

    def forward(self, query_len: int, key_len: int, query_offset: int = 0) -> torch.Tensor:
        """The bias for queries at ``query_offset + i`` and keys at ``j``: (1, heads, q, k)."""
        for name, value in (
            ("query_len", query_len),
            ("key_len", key_len),
            ("query_offset", query_offset),
        ):
            check_int(name, value, 0)
        device = self.embedding.weight.device
        query_position = torch.arange(query_offset, query_offset + query_len, device=device)
        key_position = torch.arange(key_len, device=device)
        relative_position = key_position[None, :] - query_position[:, None]  # (q, k)
        buckets = relative_position_bucket(
            relative_position, self.bidirectional, self.num_buckets, self.max_distance
        )
        values = self.embedding(buckets)  # (query_len, key_len, num_heads)
        return values.permute(2, 0, 1).unsqueeze(0)  # (1, num_heads, query_len, key_len)

    def extra_repr(self) -> str:
        """Show the bucketing settings when the module is printed."""
        return (
            f"num_buckets={self.num_buckets}, max_distance={self.max_distance}, "
            f"bidirectional={self.bidirectional}"
        )
