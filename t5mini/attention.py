# Generated from chapters/04_attention.md — edit the chapter, not this file.

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from t5mini.checks import check_choice, check_float, check_int

ATTENTION_IMPLEMENTATIONS = ("eager", "sdpa")


def mask_value(dtype: torch.dtype) -> float:
    """The additive bias that removes a key: the most negative finite number of ``dtype``."""
    return torch.finfo(dtype).min


def padding_bias(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A (batch, key_len) mask of 1 (keep) / 0 (pad) as an additive (batch, 1, 1, key_len) bias."""
    if not isinstance(attention_mask, torch.Tensor):
        raise TypeError(f"attention_mask must be a tensor, got {type(attention_mask).__name__}")
    if attention_mask.dim() != 2:
        shape = tuple(attention_mask.shape)
        raise ValueError(f"attention_mask must have shape (batch, key_len), got {shape}")
    keep = attention_mask[:, None, None, :] != 0  # (batch, 1, 1, key_len)
    bias = torch.zeros(keep.shape, dtype=dtype, device=attention_mask.device)
    return bias.masked_fill(~keep, mask_value(dtype))


def causal_bias(
    query_len: int,
    key_len: int,
    dtype: torch.dtype,
    device: torch.device | str | None = None,
    query_offset: int = 0,
) -> torch.Tensor:
    """An additive (1, 1, query_len, key_len) bias: query ``query_offset + i`` sees keys <= it."""
    query_position = torch.arange(query_offset, query_offset + query_len, device=device)
    key_position = torch.arange(key_len, device=device)
    future = key_position[None, :] > query_position[:, None]  # (query_len, key_len)
    bias = torch.zeros(future.shape, dtype=dtype, device=device)
    return bias.masked_fill(future, mask_value(dtype))[None, None]


def eager_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    bias: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``softmax(q @ k.T + bias) @ v`` with no 1/sqrt(d_kv); returns (output, probabilities)."""
    scores = query @ key.transpose(-1, -2)  # (batch, num_heads, query_len, key_len)
    if bias is not None:
        scores = scores + bias
    # the softmax in at least fp32: half-precision scores are upcast first
    probabilities = scores.softmax(-1, dtype=torch.promote_types(scores.dtype, torch.float32))
    probabilities = probabilities.to(query.dtype)
    if dropout_p > 0.0:
        probabilities = F.dropout(probabilities, p=dropout_p, training=True)
    return probabilities @ value, probabilities  # (batch, num_heads, query_len, d_kv)


def sdpa_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    bias: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """The same computation through ``F.scaled_dot_product_attention`` (float mask, scale 1)."""
    if bias is not None and bias.dtype != query.dtype:
        bias = bias.to(query.dtype)
    return F.scaled_dot_product_attention(
        query, key, value, attn_mask=bias, dropout_p=dropout_p, scale=1.0
    )  # (batch, num_heads, query_len, d_kv)


def split_heads(states: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(batch, len, num_heads * d_kv) -> (batch, num_heads, len, d_kv)."""
    batch, length, inner_dim = states.shape
    return states.view(batch, length, num_heads, inner_dim // num_heads).transpose(1, 2)


def merge_heads(states: torch.Tensor) -> torch.Tensor:
    """(batch, num_heads, len, d_kv) -> (batch, len, num_heads * d_kv)."""
    batch, num_heads, length, d_kv = states.shape
    return states.transpose(1, 2).reshape(batch, length, num_heads * d_kv)


class T5Attention(nn.Module):
    """T5 multi-head attention: no biases, no 1/sqrt(d_kv), an additive position bias and mask."""

    def __init__(
        self,
        d_model: int,
        d_kv: int,
        num_heads: int,
        dropout_rate: float = 0.0,
        implementation: str = "sdpa",
    ) -> None:
        """The projections ``q, k, v`` (d_model -> num_heads * d_kv) and ``o`` (back), no biases."""
        super().__init__()
        d_model = check_int("d_model", d_model, 1)
        self.d_kv, self.num_heads = check_int("d_kv", d_kv, 1), check_int("num_heads", num_heads, 1)
        self.dropout_rate = check_float("dropout_rate", dropout_rate, 0.0, 1.0, high_open=True)
        choices = ATTENTION_IMPLEMENTATIONS
        self.implementation = check_choice("implementation", implementation, choices)
        self.inner_dim = num_heads * d_kv  # need not equal d_model
        self.q = nn.Linear(d_model, self.inner_dim, bias=False)
        self.k = nn.Linear(d_model, self.inner_dim, bias=False)
        self.v = nn.Linear(d_model, self.inner_dim, bias=False)
        self.o = nn.Linear(self.inner_dim, d_model, bias=False)

    def key_value(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Project ``states`` (batch, key_len, d_model) to per-head keys and values."""
        key, value = self.k(states), self.v(states)  # (batch, key_len, num_heads * d_kv)
        return split_heads(key, self.num_heads), split_heads(value, self.num_heads)

    def forward(
        self,
        hidden_states: torch.Tensor,
        key_value_states: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
        cache: Any | None = None,
        key_value: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Attend from ``hidden_states`` (batch, query_len, d_model) to itself or another."""
        query = split_heads(self.q(hidden_states), self.num_heads)  # (batch, heads, len, d_kv)
        if key_value is not None:  # precomputed (cross-attention while decoding)
            key, value = key_value
        else:
            source = hidden_states if key_value_states is None else key_value_states
            key, value = self.key_value(source)  # (batch, heads, key_len, d_kv)
            if cache is not None:
                key, value = cache.update(key, value)
        dropout_p = self.dropout_rate if self.training else 0.0
        if self.implementation == "sdpa":
            output = sdpa_attention(query, key, value, bias, dropout_p)
        else:
            output, _ = eager_attention(query, key, value, bias, dropout_p)
        return self.o(merge_heads(output))  # (batch, query_len, d_model)
