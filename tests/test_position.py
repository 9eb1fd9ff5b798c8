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


BUCKET_BAD_CALLS = {
    "positions as a list": (dict(relative_position=[0, 1]), TypeError, "relative_position"),
    "float positions": (dict(relative_position=torch.zeros(3)), TypeError, "relative_position"),
    "bool positions": (
        dict(relative_position=torch.zeros(3, dtype=torch.bool)),
        TypeError,
        "relative_position",
    ),
    "bidirectional='yes'": (dict(bidirectional="yes"), TypeError, "bidirectional"),
    "bidirectional=1": (dict(bidirectional=1), TypeError, "bidirectional"),
    "bidirectional=None": (dict(bidirectional=None), TypeError, "bidirectional"),
    "num_buckets=32.0": (dict(num_buckets=32.0), TypeError, "num_buckets"),
    "num_buckets=True": (dict(num_buckets=True), TypeError, "num_buckets"),
    "num_buckets=3": (dict(num_buckets=3), ValueError, "num_buckets"),
    "num_buckets=1 causal": (dict(num_buckets=1, bidirectional=False), ValueError, "num_buckets"),
    "max_distance=128.0": (dict(max_distance=128.0), TypeError, "max_distance"),
    "max_distance='128'": (dict(max_distance="128"), TypeError, "max_distance"),
    "max_distance=-5": (dict(max_distance=-5), ValueError, "max_distance"),
}


@pytest.mark.parametrize("case", list(BUCKET_BAD_CALLS))
def test_bucket_bad_inputs_name_the_argument(case: str) -> None:
    kwargs, error, argument = BUCKET_BAD_CALLS[case]
    kwargs = {"relative_position": GRID, **kwargs}
    with pytest.raises(error, match=rf"^{argument}\b"):
        relative_position_bucket(**kwargs)


BIAS_BAD_CALLS = {
    "num_heads=0": (lambda: RelativePositionBias(32, 128, 0, True), ValueError, "num_heads"),
    "num_heads=2.5": (lambda: RelativePositionBias(32, 128, 2.5, True), TypeError, "num_heads"),
    "bidirectional='no'": (
        lambda: RelativePositionBias(32, 128, 4, "no"),
        TypeError,
        "bidirectional",
    ),
    "num_buckets=32.0": (
        lambda: RelativePositionBias(32.0, 128, 4, True),
        TypeError,
        "num_buckets",
    ),
    "max_distance=8": (lambda: RelativePositionBias(32, 8, 4, True), ValueError, "max_distance"),
    "query_len=-1": (
        lambda: RelativePositionBias(32, 128, 4, True)(-1, 3),
        ValueError,
        "query_len",
    ),
    "query_len=2.5": (
        lambda: RelativePositionBias(32, 128, 4, True)(2.5, 3),
        TypeError,
        "query_len",
    ),
    "key_len='3'": (lambda: RelativePositionBias(32, 128, 4, True)(3, "3"), TypeError, "key_len"),
    "key_len=None": (lambda: RelativePositionBias(32, 128, 4, True)(3, None), TypeError, "key_len"),
    "query_offset=-2": (
        lambda: RelativePositionBias(32, 128, 4, False)(1, 3, query_offset=-2),
        ValueError,
        "query_offset",
    ),
    "query_offset=True": (
        lambda: RelativePositionBias(32, 128, 4, False)(1, 3, query_offset=True),
        TypeError,
        "query_offset",
    ),
}


@pytest.mark.parametrize("case", list(BIAS_BAD_CALLS))
def test_bias_bad_inputs_name_the_argument(case: str) -> None:
    call, error, argument = BIAS_BAD_CALLS[case]
    with pytest.raises(error, match=rf"^{argument}\b"):
        call()


def test_numpy_sizes_are_accepted() -> None:
    import numpy as np

    bias = RelativePositionBias(np.int64(32), np.int64(128), np.int64(4), True)
    assert bias(np.int64(3), 5).shape == (1, 4, 3, 5)
    assert type(bias.num_buckets) is int and type(bias.max_distance) is int
    assert torch.equal(
        relative_position_bucket(GRID, True, np.int32(32), np.int64(128)),
        relative_position_bucket(GRID, True, 32, 128),
    )
    assert bias(0, 5).shape == (1, 4, 0, 5)  # an empty query block is allowed


def test_the_last_bucket_starts_before_max_distance() -> None:
    # chapter 3's corrected claim: 32 buckets, max distance 128
    distances = torch.arange(0, 1000)
    encoder = relative_position_bucket(-distances, True, 32, 128)
    decoder = relative_position_bucket(-distances, False, 32, 128)
    assert int(distances[encoder == 15].min()) == 91 and encoder[90] == 14
    assert int(distances[decoder == 31].min()) == 113 and decoder[112] == 30
    used = set(relative_position_bucket(torch.arange(-1000, 1001), True, 32, 128).tolist())
    assert set(range(32)) - used == {16}
