"""FeedForward against transformers' T5DenseActDense / T5DenseGatedActDense."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import T5Config as HFConfig
from transformers.models.t5.modeling_t5 import T5DenseActDense, T5DenseGatedActDense

from t5mini.feedforward import (
    FeedForward,
    clamp_fp16,
    gelu_tanh,
    gelu_tanh_as_sigmoid,
    keep_wo_in_fp32,
    parse_feed_forward_proj,
)


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


def gelu_tanh_float64(x: torch.Tensor) -> torch.Tensor:
    """The tanh GELU written out in float64: x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    x = x.double()
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def test_gated_gelu_is_the_tanh_approximation() -> None:
    """The gated layer's activation is the tanh formula, within fp32 rounding of float64."""
    torch.manual_seed(0)
    ff = FeedForward(8, 16, feed_forward_proj="gated-gelu")
    for p in ff.parameters():
        torch.nn.init.normal_(p, std=2.0)
    x = torch.randn(4, 8)[None]
    seen = {}
    ff.wo.register_forward_pre_hook(lambda module, args: seen.update(hidden=args[0]))
    ff(x)
    pre_activation, gate = ff.wi_0(x), ff.wi_1(x)
    truth = gelu_tanh_float64(pre_activation) * gate.double()  # the same inputs, in float64
    eps = torch.finfo(torch.float32).eps
    scale = truth.abs().clamp(min=1.0)
    assert ((seen["hidden"].double() - truth).abs() / scale).max() <= 4 * eps
    erf = torch.nn.functional.gelu(pre_activation.double()) * gate.double()
    assert ((erf - truth).abs() / scale).max() > 1e3 * eps  # a test that tells the two apart


def test_gelu_forms_match_the_float64_formula() -> None:
    x = torch.linspace(-8, 8, 4001)
    truth = gelu_tanh_float64(x)
    eps = torch.finfo(torch.float32).eps
    for form in (gelu_tanh, gelu_tanh_as_sigmoid):
        error = ((form(x).double() - truth).abs() / x.double().abs().clamp(min=1.0)).max()
        assert error <= 2 * eps, (form.__name__, error / eps)


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


@pytest.mark.parametrize(
    "proj,expected",
    [
        ("relu", (False, "relu")),
        ("gelu", (False, "gelu")),
        ("silu", (False, "silu")),
        ("gated-gelu", (True, "gelu_tanh")),
        ("gated-relu", (True, "relu")),
        ("gated-silu", (True, "silu")),
    ],
)
def test_parse_feed_forward_proj(proj: str, expected: tuple[bool, str]) -> None:
    assert parse_feed_forward_proj(proj) == expected
    assert HFConfig(feed_forward_proj=proj).is_gated_act == expected[0]


@pytest.mark.parametrize(
    "bad", ["gated", "swish", "gated-gelu-x", "GELU", "", "-relu", "relu-gated", "gated-"]
)
def test_unknown_feed_forward_proj(bad) -> None:
    with pytest.raises(ValueError, match="^feed_forward_proj must be 'ACT' or 'gated-ACT'"):
        parse_feed_forward_proj(bad)


@pytest.mark.parametrize("bad", [None, 1, ["relu"], b"relu"])
def test_feed_forward_proj_of_the_wrong_type(bad) -> None:
    with pytest.raises(TypeError, match="^feed_forward_proj must be a str"):
        parse_feed_forward_proj(bad)


@pytest.mark.parametrize(
    "kwargs,error,argument",
    [
        (dict(d_model=0, d_ff=16), ValueError, "d_model"),
        (dict(d_model=8.0, d_ff=16), TypeError, "d_model"),
        (dict(d_model=True, d_ff=16), TypeError, "d_model"),
        (dict(d_model=8, d_ff=-1), ValueError, "d_ff"),
        (dict(d_model=8, d_ff="16"), TypeError, "d_ff"),
        (dict(d_model=8, d_ff=16, dropout_rate=1.0), ValueError, "dropout_rate"),
        (dict(d_model=8, d_ff=16, dropout_rate=-0.1), ValueError, "dropout_rate"),
        (dict(d_model=8, d_ff=16, dropout_rate=float("nan")), ValueError, "dropout_rate"),
        (dict(d_model=8, d_ff=16, dropout_rate="0.1"), TypeError, "dropout_rate"),
        (dict(d_model=8, d_ff=16, dropout_rate=None), TypeError, "dropout_rate"),
        (dict(d_model=8, d_ff=16, feed_forward_proj="swish"), ValueError, "feed_forward_proj"),
        (dict(d_model=8, d_ff=16, feed_forward_proj=None), TypeError, "feed_forward_proj"),
    ],
)
def test_feedforward_rejects_bad_arguments(kwargs: dict, error: type, argument: str) -> None:
    with pytest.raises(error, match=rf"^{argument}\b"):
        FeedForward(**kwargs)


@pytest.mark.parametrize(
    "hidden_states,error",
    [
        (torch.ones(2, 3, 8, dtype=torch.long), TypeError),
        ([[1.0] * 8], TypeError),
        (torch.ones(2, 3, 7), ValueError),
        (torch.ones(2, 8, 3), ValueError),
    ],
)
@pytest.mark.parametrize("proj", ["relu", "gated-gelu"])
def test_feedforward_rejects_bad_input(hidden_states, error: type, proj: str) -> None:
    with pytest.raises(error, match=r"^hidden_states\b"):
        FeedForward(8, 16, feed_forward_proj=proj)(hidden_states)


def test_half_precision_helpers_reject_bad_input() -> None:
    with pytest.raises(TypeError, match="^model must be a torch.nn.Module"):
        keep_wo_in_fp32("model")
    with pytest.raises(TypeError, match="^hidden_states must be a tensor"):
        clamp_fp16([1.0, 2.0])


def test_keep_wo_in_fp32_finds_wo_by_name() -> None:
    # like transformers' _keep_in_fp32_modules = ["wo"]: any module tree naming it so
    cfg = HFConfig(d_model=8, d_ff=16, feed_forward_proj="gated-gelu")
    model = torch.nn.Sequential(T5DenseGatedActDense(cfg), FeedForward(8, 16)).half()
    keep_wo_in_fp32(model)
    assert all(m.wo.weight.dtype == torch.float32 for m in model)
    assert all(m.wi_1.weight.dtype == torch.float16 for m in model[:1])
    assert model[1].wi.weight.dtype == torch.float16
    for module in model:  # each takes fp16 in and gives fp32 out
        out = module(torch.randn(2, 3, 8).half())
        assert out.dtype == torch.float32 and torch.isfinite(out).all()
