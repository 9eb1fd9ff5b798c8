"""T5Attention against transformers' T5Attention; eager against SDPA; the KV cache."""

from __future__ import annotations

import pytest
import torch
from transformers import T5Config as HFConfig
from transformers.models.t5.modeling_t5 import T5Attention as HFAttention

from t5mini.attention import T5Attention, causal_bias, padding_bias
from t5mini.position import RelativePositionBias

MASK = torch.tensor([[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0]])


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
    bias = position(7, 7)
    torch.testing.assert_close(bias, ref_bias, atol=0, rtol=0)
    out = ours(x, bias=bias + mask)
    # only rows of real tokens are meaningful, but padded query rows match too
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_decoder_self_attention_causal_and_padding(implementation) -> None:
    ours, position, ref = _pair(32, 8, 4, True, implementation)
    x = torch.randn(3, 7, 32)
    mask = padding_bias(MASK, torch.float32) + causal_bias(7, 7, torch.float32)
    expected, _, _ = ref(x, mask=mask)
    torch.testing.assert_close(ours(x, bias=position(7, 7) + mask), expected, atol=1e-6, rtol=1e-5)


def test_cross_attention_with_padding() -> None:
    torch.manual_seed(1)
    cfg = HFConfig(d_model=32, d_kv=6, num_heads=5, is_decoder=True)
    ref = HFAttention(cfg, has_relative_attention_bias=False, layer_idx=0).eval()
    ours = T5Attention(32, 6, 5)
    ours.load_state_dict(ref.state_dict())
    queries, memory = torch.randn(3, 4, 32), torch.randn(3, 7, 32)
    mask = padding_bias(MASK, torch.float32)
    expected, _, _ = ref(queries, mask=mask, key_value_states=memory)
    torch.testing.assert_close(
        ours(queries, key_value_states=memory, bias=mask), expected, atol=1e-6, rtol=1e-5
    )
    kv = ours.key_value(memory)
    torch.testing.assert_close(
        ours(queries, bias=mask, key_value=kv), expected, atol=1e-6, rtol=1e-5
    )


def test_eager_equals_sdpa_values_and_gradients() -> None:
    results = {}
    for implementation in ("eager", "sdpa"):
        torch.manual_seed(5)
        layer = T5Attention(32, 8, 4, dropout_rate=0.1, implementation=implementation).eval()
        position = RelativePositionBias(32, 128, 4, bidirectional=False)
        x = torch.randn(3, 7, 32, requires_grad=True)
        bias = position(7, 7) + causal_bias(7, 7, torch.float32) + padding_bias(MASK, torch.float32)
        out = layer(x, bias=bias)
        (out.sin()).sum().backward()
        grads = [x.grad, position.embedding.weight.grad] + [p.grad for p in layer.parameters()]
        results[implementation] = (out.detach(), grads)
    torch.testing.assert_close(results["eager"][0], results["sdpa"][0], atol=1e-6, rtol=1e-5)
    for a, b in zip(results["eager"][1], results["sdpa"][1], strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="num_heads"):
        T5Attention(32, 8, 0)
    with pytest.raises(ValueError, match="implementation"):
        T5Attention(32, 8, 4, implementation="flash")
    for bad in (1.0, -0.1, "0.1"):
        with pytest.raises(ValueError, match="dropout_rate"):
            T5Attention(32, 8, 4, dropout_rate=bad)
    with pytest.raises(ValueError, match="attention_mask"):
        padding_bias(torch.ones(3), torch.float32)
