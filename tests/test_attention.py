"""T5Attention against transformers' T5Attention; eager against SDPA; the masks; bad arguments.

Tolerances come from the computation: transformers run in float64 is the truth, and our
fp32 result may be only a few times further from it than transformers' own fp32 result is.
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import T5Config as HFConfig
from transformers.models.t5.modeling_t5 import T5Attention as HFAttention

from t5mini.attention import (
    T5Attention,
    causal_bias,
    eager_attention,
    mask_value,
    padding_bias,
    sdpa_attention,
)
from t5mini.position import RelativePositionBias
from tests.tolerance import assert_close_to_truth

MASK = torch.tensor([[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0]])


def assert_parity(ours: torch.Tensor, reference: torch.Tensor, reference64: torch.Tensor) -> None:
    """Our fp32 result is as close to the reference's float64 result as the reference's fp32 one."""
    assert_close_to_truth(ours, reference, reference64)


def double(module: torch.nn.Module) -> torch.nn.Module:
    """A float64 copy of ``module``."""
    return copy.deepcopy(module).double()


def _pair(d_model: int, d_kv: int, heads: int, is_decoder: bool, implementation: str = "eager"):
    torch.manual_seed(0)
    cfg = HFConfig(d_model=d_model, d_kv=d_kv, num_heads=heads, is_decoder=is_decoder)
    ref = HFAttention(cfg, has_relative_attention_bias=True, layer_idx=0).eval()
    for p in ref.parameters():
        torch.nn.init.normal_(p, std=0.3)
    ours = T5Attention(d_model, d_kv, heads, implementation=implementation).eval()
    position = RelativePositionBias(32, 128, heads, bidirectional=not is_decoder)
    ours.load_state_dict(
        {n: ref.state_dict()[n] for n in ("q.weight", "k.weight", "v.weight", "o.weight")}
    )
    position.embedding.weight.data.copy_(ref.relative_attention_bias.weight.data)
    return ours, position, ref


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("d_model,d_kv,heads", [(32, 8, 4), (24, 10, 3)])
def test_encoder_self_attention_with_padding(implementation, d_model, d_kv, heads) -> None:
    ours, position, ref = _pair(d_model, d_kv, heads, False, implementation)
    x = torch.randn(3, 7, d_model)
    mask = padding_bias(MASK, torch.float32)
    expected, ref_bias, _ = ref(x, mask=mask)
    mask64 = padding_bias(MASK, torch.float64)
    expected64, _, _ = double(ref)(x.double(), mask=mask64)
    bias = position(7, 7)
    torch.testing.assert_close(bias, ref_bias, atol=0, rtol=0)
    out = ours(x, bias=bias + mask)
    # only rows of real tokens are meaningful, but padded query rows match too
    assert_parity(out, expected, expected64)


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_decoder_self_attention_causal_and_padding(implementation) -> None:
    ours, position, ref = _pair(32, 8, 4, True, implementation)
    x = torch.randn(3, 7, 32)
    mask = padding_bias(MASK, torch.float32) + causal_bias(7, 7, torch.float32)
    expected, _, _ = ref(x, mask=mask)
    mask64 = padding_bias(MASK, torch.float64) + causal_bias(7, 7, torch.float64)
    expected64, _, _ = double(ref)(x.double(), mask=mask64)
    assert_parity(ours(x, bias=position(7, 7) + mask), expected, expected64)


def test_cross_attention_with_padding() -> None:
    torch.manual_seed(1)
    cfg = HFConfig(d_model=32, d_kv=6, num_heads=5, is_decoder=True)
    ref = HFAttention(cfg, has_relative_attention_bias=False, layer_idx=0).eval()
    ours = T5Attention(32, 6, 5)
    ours.load_state_dict(ref.state_dict())
    queries, memory = torch.randn(3, 4, 32), torch.randn(3, 7, 32)
    mask = padding_bias(MASK, torch.float32)
    expected, _, _ = ref(queries, mask=mask, key_value_states=memory)
    mask64 = padding_bias(MASK, torch.float64)
    args64 = dict(key_value_states=memory.double())
    expected64, _, _ = double(ref)(queries.double(), mask=mask64, **args64)
    out = ours(queries, key_value_states=memory, bias=mask)
    assert_parity(out, expected, expected64)
    kv = ours.key_value(memory)
    assert_parity(ours(queries, bias=mask, key_value=kv), expected, expected64)


def test_parity_test_can_fail() -> None:
    """The tolerance sees a query projection off by one part in 10,000."""
    ours, position, ref = _pair(32, 8, 4, False)
    x = torch.randn(3, 7, 32)
    mask = padding_bias(MASK, torch.float32)
    expected, _, _ = ref(x, mask=mask)
    mask64 = padding_bias(MASK, torch.float64)
    expected64, _, _ = double(ref)(x.double(), mask=mask64)
    with torch.no_grad():
        ours.q.weight.mul_(1 + 1e-4)
    with pytest.raises(AssertionError):
        assert_parity(ours(x, bias=position(7, 7) + mask), expected, expected64)


def _eager_and_sdpa(dtype: torch.dtype, dropout_rate: float = 0.1):
    results = {}
    for implementation in ("eager", "sdpa"):
        torch.manual_seed(5)
        layer = T5Attention(32, 8, 4, dropout_rate=dropout_rate, implementation=implementation)
        layer = layer.to(dtype).eval()
        position = RelativePositionBias(32, 128, 4, bidirectional=False).to(dtype)
        x = torch.randn(3, 7, 32).to(dtype).requires_grad_()
        bias = position(7, 7) + causal_bias(7, 7, dtype) + padding_bias(MASK, dtype)
        out = layer(x, bias=bias)
        out.sin().sum().backward()
        grads = [x.grad, position.embedding.weight.grad] + [p.grad for p in layer.parameters()]
        results[implementation] = [out.detach(), *grads]
    return results


def test_eager_equals_sdpa_values_and_gradients() -> None:
    fp32, fp64 = _eager_and_sdpa(torch.float32), _eager_and_sdpa(torch.float64)
    truth = fp64["eager"]
    torch.testing.assert_close(fp64["sdpa"], truth, atol=1e-12, rtol=1e-10)
    for eager, sdpa, exact in zip(fp32["eager"], fp32["sdpa"], truth, strict=True):
        assert_close_to_truth(sdpa, eager, exact)
        assert_close_to_truth(eager, sdpa, exact)


def test_fully_masked_row_is_uniform_and_finite() -> None:
    torch.manual_seed(2)
    q, k, v = torch.randn(3, 2, 4, 5, 8)
    bias = padding_bias(torch.zeros(2, 5, dtype=torch.long), torch.float32)
    eager, probabilities = eager_attention(q, k, v, bias)
    torch.testing.assert_close(probabilities, torch.full_like(probabilities, 1 / 5))
    torch.testing.assert_close(eager, v.mean(2, keepdim=True).expand_as(eager))
    torch.testing.assert_close(sdpa_attention(q, k, v, bias), eager)


def test_masks() -> None:
    pad = padding_bias(MASK, torch.float16)
    assert pad.shape == (3, 1, 1, 7) and pad.dtype == torch.float16
    assert torch.equal(pad[:, 0, 0] == mask_value(torch.float16), MASK == 0)
    causal = causal_bias(3, 5, torch.float32, query_offset=2)  # queries at positions 2, 3, 4
    masked = causal[0, 0] == mask_value(torch.float32)
    assert torch.equal(masked, torch.arange(5)[None, :] > torch.arange(2, 5)[:, None])


def test_shapes_and_inner_dim() -> None:
    layer = T5Attention(24, 10, 3).eval()  # 3 * 10 = 30 != 24
    assert layer.q.weight.shape == (30, 24) and layer.o.weight.shape == (24, 30)
    key, value = layer.key_value(torch.randn(2, 5, 24))
    assert key.shape == value.shape == (2, 3, 5, 10)
    assert layer(torch.randn(2, 4, 24), key_value=(key, value)).shape == (2, 4, 24)


def test_cache_object_is_duck_typed() -> None:
    """Any object with ``update(key, value)`` serves as the cache; its keys and values are used."""

    class Recorder:
        def __init__(self) -> None:
            self.keys: list[torch.Tensor] = []

        def update(self, key, value):
            self.keys.append(key)
            return key, value

    layer = T5Attention(16, 4, 2).eval()
    cache = Recorder()
    x = torch.randn(1, 3, 16)
    torch.testing.assert_close(layer(x, cache=cache), layer(x))
    assert len(cache.keys) == 1 and cache.keys[0].shape == (1, 2, 3, 4)


GOOD = dict(d_model=32, d_kv=8, num_heads=4, dropout_rate=0.1, implementation="sdpa")


@pytest.mark.parametrize(
    "name,bad,error",
    [
        ("d_model", 0, ValueError),
        ("d_model", 32.0, TypeError),
        ("d_model", True, TypeError),
        ("d_kv", -1, ValueError),
        ("d_kv", "8", TypeError),
        ("num_heads", 0, ValueError),
        ("num_heads", None, TypeError),
        ("dropout_rate", 1.0, ValueError),
        ("dropout_rate", -0.1, ValueError),
        ("dropout_rate", float("nan"), ValueError),
        ("dropout_rate", "0.1", TypeError),
        ("dropout_rate", False, TypeError),
        ("implementation", "flash", ValueError),
        ("implementation", None, ValueError),
    ],
)
def test_bad_constructor_arguments(name, bad, error) -> None:
    with pytest.raises(error, match=name):
        T5Attention(**{**GOOD, name: bad})


@pytest.mark.parametrize(
    "mask,error",
    [
        (torch.ones(3), ValueError),
        (torch.ones(2, 1, 3), ValueError),
        ([[1, 1, 0]], TypeError),
        (None, TypeError),
    ],
)
def test_bad_padding_masks(mask, error) -> None:
    with pytest.raises(error, match="attention_mask"):
        padding_bias(mask, torch.float32)
