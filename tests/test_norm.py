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
