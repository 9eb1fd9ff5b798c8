# Generated from chapters/04_attention.md — edit the chapter, not this file.

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ATTENTION_IMPLEMENTATIONS = ("eager", "sdpa")


def mask_value(dtype: torch.dtype) -> float:
    """The additive bias that removes a key: the most negative finite number of ``dtype``."""
    return torch.finfo(dtype).min


def padding_bias(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A ``(batch, key_len)`` mask of 1 (keep) / 0 (pad) as an additive ``(batch, 1, 1, key_len)`` bias."""
    if attention_mask.dim() != 2:
        raise ValueError(
            f"attention_mask must have shape (batch, key_len), got {tuple(attention_mask.shape)}"
        )
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
    """An additive ``(1, 1, query_len, key_len)`` bias letting query ``query_offset + i`` see keys ``<= it``."""
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
    probabilities = scores.float().softmax(dim=-1).to(query.dtype)
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
    """The same computation through ``F.scaled_dot_product_attention`` (float mask, ``scale=1.0``)."""
    if bias is not None and bias.dtype != query.dtype:
        bias = bias.to(query.dtype)
    return F.scaled_dot_product_attention(
        query, key, value, attn_mask=bias, dropout_p=dropout_p, scale=1.0
    )  # (batch, num_heads, query_len, d_kv)


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
        for name, size in (("d_model", d_model), ("d_kv", d_kv), ("num_heads", num_heads)):
            if not isinstance(size, int) or size <= 0:
                raise ValueError(f"{name} must be a positive int, got {size!r}")
        if implementation not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(
                f"implementation must be one of {ATTENTION_IMPLEMENTATIONS}, got {implementation!r}"
            )
        if (
            isinstance(dropout_rate, bool)
            or not isinstance(dropout_rate, (int, float))
            or not (0.0 <= dropout_rate < 1.0)
        ):
            raise ValueError(f"dropout_rate must be a number in [0, 1), got {dropout_rate!r}")
        self.d_kv, self.num_heads = d_kv, num_heads
        self.inner_dim = num_heads * d_kv  # need not equal d_model
        self.dropout_rate = dropout_rate
        self.implementation = implementation
        self.q = nn.Linear(d_model, self.inner_dim, bias=False)
        self.k = nn.Linear(d_model, self.inner_dim, bias=False)
        self.v = nn.Linear(d_model, self.inner_dim, bias=False)
        self.o = nn.Linear(self.inner_dim, d_model, bias=False)

    def split_heads(self, states: torch.Tensor) -> torch.Tensor:
        """(batch, len, heads * d_kv) -> (batch, heads, len, d_kv)."""
        batch, length, _ = states.shape
        return states.view(batch, length, self.num_heads, self.d_kv).transpose(1, 2)

    def key_value(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Project ``states`` (batch, key_len, d_model) to per-head keys and values."""
        return self.split_heads(self.k(states)), self.split_heads(self.v(states))

    def forward(
        self,
        hidden_states: torch.Tensor,
        key_value_states: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
        cache: Any | None = None,
        key_value: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Attend from ``hidden_states`` (batch, query_len, d_model) to itself or ``key_value_states``."""
        batch, query_len, _ = hidden_states.shape
        query = self.split_heads(self.q(hidden_states))  # (batch, heads, query_len, d_kv)
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
        output = output.transpose(1, 2).reshape(batch, query_len, self.inner_dim)
        return self.o(output)  # (batch, query_len, d_model)
