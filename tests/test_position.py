"""Relative position buckets and bias against transformers' T5Attention."""

from __future__ import annotations

import pytest
import torch
from transformers import T5Config as HFConfig
from transformers.models.t5.modeling_t5 import T5Attention as HFAttention

from t5mini.position import RelativePositionBias, relative_position_bucket

GRID = torch.arange(-700, 701)


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize(
    "num_buckets,max_distance", [(32, 128), (16, 64), (64, 300), (8, 20), (48, 100), (32, 33)]
)
def test_bucket_matches_reference(bidirectional: bool, num_buckets: int, max_distance: int) -> None:
    ours = relative_position_bucket(GRID, bidirectional, num_buckets, max_distance)
    ref = HFAttention._relative_position_bucket(GRID, bidirectional, num_buckets, max_distance)
    assert torch.equal(ours, ref)
    assert ours.min() >= 0 and ours.max() < num_buckets


def test_bucket_2d_and_int32() -> None:
    rel = torch.arange(20)[None, :] - torch.arange(20)[:, None]
    ref = HFAttention._relative_position_bucket(rel, True, 32, 128)
    assert torch.equal(relative_position_bucket(rel.int()), ref)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(num_buckets=32, max_distance=16, bidirectional=False), "max_distance"),
        (dict(num_buckets=32, max_distance=8, bidirectional=True), "max_distance"),
        (dict(num_buckets=2, max_distance=128, bidirectional=True), "num_buckets"),
    ],
)
def test_bucket_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        relative_position_bucket(GRID, **kwargs)


def test_bucket_rejects_float_positions() -> None:
    with pytest.raises(TypeError, match="relative_position"):
        relative_position_bucket(torch.zeros(3))


@pytest.mark.parametrize("is_decoder", [False, True])
@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (16, 40)])
def test_bias_matches_compute_bias(is_decoder: bool, num_buckets: int, max_distance: int) -> None:
    torch.manual_seed(0)
    cfg = HFConfig(
        d_model=16,
        d_kv=4,
        num_heads=3,
        relative_attention_num_buckets=num_buckets,
        relative_attention_max_distance=max_distance,
        is_decoder=is_decoder,
    )
    ref = HFAttention(cfg, has_relative_attention_bias=True, layer_idx=0)
    ours = RelativePositionBias(num_buckets, max_distance, 3, bidirectional=not is_decoder)
    ours.embedding.weight.data.copy_(ref.relative_attention_bias.weight.data)
    torch.testing.assert_close(ours(37, 41), ref.compute_bias(37, 41), atol=0, rtol=0)
    torch.testing.assert_close(
        ours(1, 30, query_offset=29), ref.compute_bias(1, 30, past_seen_tokens=29), atol=0, rtol=0
    )
