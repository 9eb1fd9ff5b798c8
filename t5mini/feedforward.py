# Generated from chapters/05_feedforward.md — edit the chapter, not this file.

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """The tanh approximation of GELU that T5 v1.1 and mT5 use."""
    return F.gelu(x, approximate="tanh")


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "gelu": F.gelu,  # exact (erf) GELU
    "gelu_tanh": gelu_tanh,
    "silu": F.silu,
}


def parse_feed_forward_proj(feed_forward_proj: str) -> tuple[bool, str]:
    """``"relu"`` -> (False, "relu"); ``"gated-gelu"`` -> (True, "gelu_tanh"), as transformers reads it."""
    parts = feed_forward_proj.split("-") if isinstance(feed_forward_proj, str) else []
    gated = len(parts) == 2 and parts[0] == "gated"
    name = parts[-1] if parts else None
    if not (len(parts) == 1 or gated) or name not in ("relu", "gelu", "silu"):
        raise ValueError(
            "feed_forward_proj must be 'ACT' or 'gated-ACT' with ACT in relu, gelu, silu "
            f"(T5: 'relu', T5 v1.1/mT5: 'gated-gelu'), got {feed_forward_proj!r}"
        )
    if gated and name == "gelu":
        name = "gelu_tanh"  # T5 v1.1's gated-gelu is the tanh approximation
    return gated, name


class FeedForward(nn.Module):
    """T5's position-wise feed-forward network: ReLU (v1.0) or gated GELU (v1.1, mT5), no biases."""

    def __init__(
        self, d_model: int, d_ff: int, dropout_rate: float = 0.0, feed_forward_proj: str = "relu"
    ) -> None:
        """``wi`` (or ``wi_0``, ``wi_1`` when gated) d_model -> d_ff, and ``wo`` back; no biases."""
        super().__init__()
        for name, size in (("d_model", d_model), ("d_ff", d_ff)):
            if not isinstance(size, int) or size <= 0:
                raise ValueError(f"{name} must be a positive int, got {size!r}")
        if (
            isinstance(dropout_rate, bool)
            or not isinstance(dropout_rate, (int, float))
            or not (0.0 <= dropout_rate < 1.0)
        ):
            raise ValueError(f"dropout_rate must be a number in [0, 1), got {dropout_rate!r}")
        self.gated, self.activation = parse_feed_forward_proj(feed_forward_proj)
        if self.gated:
            self.wi_0 = nn.Linear(d_model, d_ff, bias=False)  # through the activation
            self.wi_1 = nn.Linear(d_model, d_ff, bias=False)  # the linear gate
        else:
            self.wi = nn.Linear(d_model, d_ff, bias=False)
        self.wo = nn.Linear(d_ff, d_model, bias=False)
        self.dropout = nn.Dropout(dropout_rate)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(batch, seq_len, d_model) -> (batch, seq_len, d_model)."""
        act = ACTIVATIONS[self.activation]
        if self.gated:
            hidden = act(self.wi_0(hidden_states)) * self.wi_1(hidden_states)  # (b, s, d_ff)
        else:
            hidden = act(self.wi(hidden_states))  # (batch, seq_len, d_ff)
        hidden = self.dropout(hidden)
        if hidden.dtype != self.wo.weight.dtype:  # wo kept in fp32 under fp16 (see below)
            hidden = hidden.to(self.wo.weight.dtype)
        return self.wo(hidden)


def keep_wo_in_fp32(model: nn.Module) -> nn.Module:
    """Cast the ``wo`` of every ``FeedForward`` in ``model`` to fp32 (use after ``model.half()``)."""
    for module in model.modules():
        if isinstance(module, FeedForward):
            module.wo.float()
    return model


def clamp_fp16(hidden_states: torch.Tensor) -> torch.Tensor:
    """In fp16, clip to just inside the finite range (as T5's reference does); else unchanged."""
    if hidden_states.dtype != torch.float16:
        return hidden_states
    largest = torch.finfo(torch.float16).max
    # no host sync: pick the bound on the device
    bound = torch.where(torch.isinf(hidden_states).any(), largest - 1000, largest)
    return torch.clamp(hidden_states, min=-bound, max=bound)
