"""FeedForward against transformers' T5DenseActDense / T5DenseGatedActDense."""

from __future__ import annotations

import pytest
import torch
from transformers import T5Config as HFConfig
from transformers.models.t5.modeling_t5 import T5DenseActDense, T5DenseGatedActDense

from t5mini.feedforward import FeedForward, clamp_fp16, keep_wo_in_fp32, parse_feed_forward_proj


@pytest.mark.parametrize("proj", ["relu", "gated-gelu", "gelu", "gated-silu", "gated-relu"])
def test_feedforward_matches_reference(proj: str) -> None:
    torch.manual_seed(0)
    cfg = HFConfig(d_model=24, d_ff=40, feed_forward_proj=proj, dropout_rate=0.0)
    ref = (T5DenseGatedActDense if cfg.is_gated_act else T5DenseActDense)(cfg).eval()
    for p in ref.parameters():
        torch.nn.init.normal_(p, std=1.0)  # large pre-activations: the GELU variant matters
    ours = FeedForward(24, 40, feed_forward_proj=proj).eval()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(3, 5, 24)
    torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)


def test_gated_gelu_is_the_tanh_approximation() -> None:
    torch.manual_seed(0)
    ff = FeedForward(8, 16, feed_forward_proj="gated-gelu")
    for p in ff.parameters():
        torch.nn.init.normal_(p, std=2.0)
    x = torch.randn(4, 8)[None]
    exact = ff.wo(torch.nn.functional.gelu(ff.wi_0(x)) * ff.wi_1(x))
    assert (ff(x) - exact).abs().max() > 1e-4  # it is not the erf GELU


@pytest.mark.parametrize("proj", ["relu", "gated-gelu"])
def test_dropout_is_before_wo(proj: str) -> None:
    torch.manual_seed(0)
    ff = FeedForward(16, 64, dropout_rate=0.5, feed_forward_proj=proj)
    seen = {}
    ff.wo.register_forward_pre_hook(lambda m, a: seen.update(x=a[0]))
    x = torch.randn(2, 50, 16)
    ff.eval()(x)
    clean = seen["x"]
    ff.train()(x)
    kept = clean != 0  # ReLU zeros some activations itself; the gated GELU none
    dropped = (seen["x"] == 0) & kept  # zeroed by dropout alone
    assert 0.45 < dropped.sum() / kept.sum() < 0.55
    survivors = kept & ~dropped
    torch.testing.assert_close(seen["x"][survivors], 2 * clean[survivors])  # scaled by 1/(1-p)


def test_keep_wo_in_fp32_and_clamp() -> None:
    torch.manual_seed(0)
    ff = FeedForward(16, 64, feed_forward_proj="gated-gelu")
    x = torch.randn(2, 3, 16)
    expected = ff(x)
    keep_wo_in_fp32(ff.half())
    assert ff.wo.weight.dtype == torch.float32 and ff.wi_1.weight.dtype == torch.float16
    out = ff(x.half())
    assert out.dtype == torch.float32
    # fp16 inputs to wi cost ~3 significant digits (observed error ~2e-4 on outputs ~0.35)
    torch.testing.assert_close(out, expected, atol=1e-3, rtol=1e-3)
    big = torch.tensor([float("inf"), -float("inf"), 3.0]).half()
    assert torch.isfinite(clamp_fp16(big)).all() and clamp_fp16(big)[2] == 3.0
    assert torch.equal(clamp_fp16(torch.tensor([1e30])), torch.tensor([1e30]))


@pytest.mark.parametrize("bad", ["gated", "swish", "gated-gelu-x", "GELU", "", None])
def test_unknown_feed_forward_proj(bad) -> None:
    with pytest.raises(ValueError, match="feed_forward_proj"):
        parse_feed_forward_proj(bad)


@pytest.mark.parametrize("bad", [1.0, -0.1, "0.1"])
def test_bad_dropout_rate(bad) -> None:
    with pytest.raises(ValueError, match="dropout_rate"):
        FeedForward(8, 16, dropout_rate=bad)
