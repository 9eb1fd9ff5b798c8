"""RMSNorm against transformers' T5LayerNorm."""

from __future__ import annotations

import pytest
import torch
from transformers.models.t5.modeling_t5 import T5LayerNorm

from t5mini.norm import RMSNorm


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_rmsnorm_matches_reference(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    ours, ref = RMSNorm(48, eps=1e-6), T5LayerNorm(48, eps=1e-6)
    weight = torch.randn(48)
    with torch.no_grad():
        ours.weight.copy_(weight)
        ref.weight.copy_(weight)
    ours.to(dtype), ref.to(dtype)
    x = (torch.randn(3, 7, 48) * 50).to(dtype)
    out, expected = ours(x), ref(x)
    assert out.dtype == expected.dtype == dtype
    torch.testing.assert_close(out, expected, atol=0, rtol=0)


@pytest.mark.parametrize("eps", [1e-6, 1e-3])
@pytest.mark.parametrize("scale", [1e-4, 1e-3, 3e-2])
def test_rmsnorm_eps_where_it_matters(eps: float, scale: float) -> None:
    """Inputs whose mean square is near eps: the eps shapes the output, as in the reference."""
    torch.manual_seed(1)
    ours, ref = RMSNorm(48, eps=eps), T5LayerNorm(48, eps=eps)
    x = torch.randn(3, 7, 48) * scale  # mean square about scale**2
    out, expected = ours(x), ref(x)
    torch.testing.assert_close(out, expected, atol=0, rtol=0)
    truth = x.double() * torch.rsqrt(x.double().pow(2).mean(-1, keepdim=True) + eps)
    torch.testing.assert_close(out.double(), truth, atol=1e-6, rtol=1e-5)
    # the eps is visible: the output's root mean square is sqrt(ms / (ms + eps)), not 1
    mean_square = x.double().pow(2).mean(-1)
    rms = out.double().pow(2).mean(-1).sqrt()
    torch.testing.assert_close(rms, (mean_square / (mean_square + eps)).sqrt(), rtol=1e-5, atol=0)


def test_rmsnorm_values_and_fp16_overflow() -> None:
    x = torch.full((1, 4), 300.0)
    norm = RMSNorm(4)
    torch.testing.assert_close(norm(x), torch.ones(1, 4), atol=1e-5, rtol=1e-5)
    out = norm.half()(x.half())
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), torch.ones(1, 4), atol=1e-3, rtol=1e-3)


def test_rmsnorm_rejects_bad_size() -> None:
    with pytest.raises(ValueError, match="d_model"):
        RMSNorm(0)


@pytest.mark.parametrize(
    "kwargs,error,argument",
    [
        (dict(d_model=0), ValueError, "d_model"),
        (dict(d_model=-4), ValueError, "d_model"),
        (dict(d_model=2.5), TypeError, "d_model"),
        (dict(d_model=True), TypeError, "d_model"),
        (dict(d_model="8"), TypeError, "d_model"),
        (dict(d_model=8, eps=0.0), ValueError, "eps"),
        (dict(d_model=8, eps=-1e-6), ValueError, "eps"),
        (dict(d_model=8, eps=float("nan")), ValueError, "eps"),
        (dict(d_model=8, eps=float("inf")), ValueError, "eps"),
        (dict(d_model=8, eps="1e-6"), TypeError, "eps"),
        (dict(d_model=8, eps=None), TypeError, "eps"),
    ],
)
def test_rmsnorm_rejects_bad_arguments(kwargs: dict, error: type, argument: str) -> None:
    with pytest.raises(error, match=rf"^{argument}\b"):
        RMSNorm(**kwargs)


@pytest.mark.parametrize(
    "hidden_states,error",
    [
        (torch.ones(2, 8, dtype=torch.long), TypeError),  # ints would be normalised silently
        (torch.ones(2, 8, dtype=torch.bool), TypeError),
        ([[1.0] * 8], TypeError),
        (torch.ones(2, 7), ValueError),  # the wrong number of features
        (torch.ones(8, 2), ValueError),
        (torch.tensor(1.0), ValueError),
    ],
)
def test_rmsnorm_rejects_bad_input(hidden_states, error: type) -> None:
    with pytest.raises(error, match=r"^hidden_states\b"):
        RMSNorm(8)(hidden_states)


def test_rmsnorm_accepts_numpy_sizes_and_int_eps() -> None:
    import numpy as np

    norm = RMSNorm(np.int64(8), eps=np.float32(1e-6))
    assert norm.weight.shape == (8,) and isinstance(norm.eps, float)
    assert RMSNorm(8, eps=1).eps == 1.0
    assert norm(torch.ones(3, 8, dtype=torch.float64)).dtype == torch.float64
