# Generated from chapters/05_feedforward.md — edit the chapter, not this file.

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from t5mini.checks import check_float, check_hidden_states, check_int


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """The tanh approximation of GELU that T5 v1.1 and mT5 use."""
    return F.gelu(x, approximate="tanh")


SQRT_8_OVER_PI = math.sqrt(8.0 / math.pi)  # 2 sqrt(2 / pi)


def gelu_tanh_as_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """`gelu_tanh` written x sigmoid(2z), the same function: (1 + tanh z) / 2 = sigmoid(2z)."""
    return x * torch.sigmoid(SQRT_8_OVER_PI * (x + 0.044715 * x * x * x))


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "gelu": F.gelu,  # exact (erf) GELU
    "gelu_tanh": gelu_tanh,
    "gelu_tanh_as_sigmoid": gelu_tanh_as_sigmoid,  # the same function in another form
    "silu": F.silu,
}


def parse_feed_forward_proj(feed_forward_proj: str) -> tuple[bool, str]:
    """``"relu"`` -> (False, "relu"); ``"gated-gelu"`` -> (True, "gelu_tanh"), as transformers."""
    if not isinstance(feed_forward_proj, str):
        got = type(feed_forward_proj).__name__
        raise TypeError(f"feed_forward_proj must be a str ('relu', 'gated-gelu', ...), got {got}")
    *gate, name = feed_forward_proj.split("-")
    if gate not in ([], ["gated"]) or name not in ("relu", "gelu", "silu"):
        raise ValueError(
            "feed_forward_proj must be 'ACT' or 'gated-ACT' with ACT in relu, gelu, silu "
            f"(T5: 'relu', T5 v1.1/mT5: 'gated-gelu'), got {feed_forward_proj!r}"
        )
    if gate and name == "gelu":
        name = "gelu_tanh"  # T5 v1.1's gated-gelu is the tanh approximation
    return bool(gate), name


class FeedForward(nn.Module):
    """T5's position-wise feed-forward network: ReLU (v1.0) or gated GELU (v1.1, mT5), no biases."""

    def __init__(
        self, d_model: int, d_ff: int, dropout_rate: float = 0.0, feed_forward_proj: str = "relu"
    ) -> None:
        """``wi`` (or ``wi_0``, ``wi_1`` when gated) d_model -> d_ff, and ``wo`` back; no biases."""
        super().__init__()
        d_model, d_ff = check_int("d_model", d_model, 1), check_int("d_ff", d_ff, 1)
        check_float("dropout_rate", dropout_rate, 0.0, 1.0, high_open=True)
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
        check_hidden_states("hidden_states", hidden_states, self.wo.out_features)
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
    """Cast every feed-forward output projection ``wo`` in ``model`` to fp32 (after ``.half()``)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    for module in model.modules():
        if isinstance(getattr(module, "wo", None), nn.Linear):  # found by name, as transformers
            module.wo.float()
    return model


def clamp_fp16(hidden_states: torch.Tensor) -> torch.Tensor:
    """In fp16, clip to just inside the finite range (as transformers' T5 does); else unchanged."""
    if not isinstance(hidden_states, torch.Tensor):
        got = type(hidden_states).__name__
        raise TypeError(f"hidden_states must be a tensor, got {got}")
    if hidden_states.dtype != torch.float16:
        return hidden_states
    largest = torch.finfo(torch.float16).max
    # no host sync: pick the bound on the device
    bound = torch.where(torch.isinf(hidden_states).any(), largest - 1000, largest)
    return torch.clamp(hidden_states, min=-bound, max=bound)
