# Generated from chapters/02_embeddings_rmsnorm.md — edit the chapter, not this file.

from __future__ import annotations

import torch
from torch import nn

from t5mini.checks import check_float, check_hidden_states, check_int


class RMSNorm(nn.Module):
    """T5's layer norm: divide by the root mean square (computed in fp32), no mean, no bias."""

    def __init__(self, d_model: int, eps: float = 1e-6) -> None:
        """A gain of ones over ``d_model`` features; ``eps`` keeps the rsqrt finite."""
        super().__init__()
        self.weight = nn.Parameter(torch.ones(check_int("d_model", d_model, 1)))
        self.eps = check_float("eps", eps, 0, low_open=True)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Normalise the last dimension of ``hidden_states`` and apply the learned gain."""
        check_hidden_states("hidden_states", hidden_states, self.weight.shape[0])
        # Square and average in fp32: in fp16, |x| >= 256 already overflows x**2.
        variance = hidden_states.float().pow(2).mean(-1, keepdim=True)  # (..., 1)
        hidden_states = hidden_states * torch.rsqrt(variance + self.eps)  # fp32 from here
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            hidden_states = hidden_states.to(self.weight.dtype)
        return self.weight * hidden_states

    def extra_repr(self) -> str:
        """Show the size and epsilon when the module is printed."""
        return f"{self.weight.shape[0]}, eps={self.eps}"
