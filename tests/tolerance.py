"""The suite's one tolerance rule: a result is judged against a float64 run of the same weights.

An fp32 computation is off its float64 value by rounding alone, and how much depends on the
computation and on the CPU (its BLAS, its vector width). The fp32 reference's own distance from
the float64 truth measures that cost in the run at hand; a result may be off by a small multiple
of it, plus a few float32 steps at the largest value (for results the reference happens to round
almost exactly). Bounds derived this way hold on any x86-64 CPU, unlike a fixed atol.
"""

from __future__ import annotations

import torch

FP32_EPS = torch.finfo(torch.float32).eps


def assert_close_to_truth(
    got: torch.Tensor,
    reference: torch.Tensor,
    truth: torch.Tensor,
    what: str = "result",
    *,
    factor: float = 4.0,
    steps: float = 4.0,
) -> None:
    """``got`` is within ``factor`` times the fp32 ``reference``'s error from the float64 ``truth``
    (plus ``steps`` float32 steps at the largest value)."""
    truth = truth.double()
    error = (got.double() - truth).abs().max().item()
    reference_error = (reference.double() - truth).abs().max().item()
    allowed = factor * reference_error + steps * FP32_EPS * truth.abs().max().item()
    assert error <= allowed, (
        f"{what}: |got - float64| = {error:.3e} > allowed {allowed:.3e} "
        f"(the fp32 reference's own error: {reference_error:.3e})"
    )
