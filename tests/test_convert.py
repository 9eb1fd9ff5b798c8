"""t5mini.convert: parity with transformers after conversion, the round trip, and the errors."""

from __future__ import annotations

import pytest
import torch
import transformers

from t5mini.config import T5Config
from t5mini.convert import (
    LEGACY_IGNORED_KEYS,
    StateDictMismatch,
    config_from_hf,
    config_to_hf,
    from_hf,
    hf_to_t5mini_names,
    load_hf_state_dict,
    to_hf,
    to_hf_state_dict,
)
from t5mini.generation import init_cache
from t5mini.model import T5ForConditionalGeneration
from tests.reference import hf_model, hf_name_to_t5mini

BASE = dict(vocab_size=300, d_model=48, d_kv=12, d_ff=96, num_layers=2, num_heads=4)
GATED = dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False)
CONFIGS = {
    "v1.0": dict(BASE),
    "v1.1": dict(BASE, **GATED),
    "mt5": dict(BASE, **GATED, vocab_size=3000, num_layers=3),
    "odd-heads": dict(BASE, num_heads=5, d_kv=7),
    "inner-ne-d_model": dict(BASE, **GATED, num_heads=6, d_kv=16),
    "buckets": dict(BASE, relative_attention_num_buckets=12, relative_attention_max_distance=20),
    "buckets-wide": dict(
        BASE, relative_attention_num_buckets=64, relative_attention_max_distance=256
    ),
    "deeper-decoder": dict(BASE, **GATED, num_decoder_layers=4),
    "shallower-decoder": dict(BASE, num_layers=3, num_decoder_layers=1),
}


def _batch(vocab_size: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(2, vocab_size, (4, 40), generator=g)  # long enough for far buckets
    attention_mask = torch.ones_like(input_ids)
    for row, length in enumerate((40, 33, 9, 2)):
        input_ids[row, length:] = 0
        attention_mask[row, length:] = 0
    labels = torch.randint(2, vocab_size, (4, 30), generator=g)
    labels[1, 20:] = -100
    labels[3, 3:] = -100
    return dict(input_ids=input_ids, attention_mask=attention_mask, labels=labels)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_parity_after_from_hf(name: str) -> None:
    config = T5Config(**CONFIGS[name])
    hf = hf_model(config)
    ours = from_hf(hf)
    assert ours.config == config
    assert (ours.lm_head is None) == config.tie_word_embeddings
    batch = _batch(config.vocab_size)
    with torch.no_grad():
        expected, got = hf(**batch), ours(**batch)
    scale = expected.logits.abs().max()
    torch.testing.assert_close(
        got.encoder_last_hidden_state, expected.encoder_last_hidden_state, atol=1e-5, rtol=1e-5
    )
    torch.testing.assert_close(got.logits / scale, expected.logits / scale, atol=1e-6, rtol=0)
    torch.testing.assert_close(got.loss, expected.loss, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["v1.0", "mt5", "odd-heads"])
def test_cached_decoding_matches_reference(name: str) -> None:
    config = T5Config(**CONFIGS[name])
    hf = hf_model(config)
    ours = from_hf(hf)
    batch = _batch(config.vocab_size)
    dec = ours.shift_right(batch["labels"])
    with torch.no_grad():
        expected = hf(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            decoder_input_ids=dec,
        ).logits
        states = ours.encode(batch["input_ids"], batch["attention_mask"])
        cache = init_cache(ours, states, batch["attention_mask"], max_length=dec.shape[1])
        steps = torch.cat(
            [ours.decode(dec[:, t : t + 1], states, cache=cache) for t in range(dec.shape[1])], 1
        )
    scale = expected.abs().max()
    torch.testing.assert_close(steps / scale, expected / scale, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["v1.0", "v1.1", "odd-heads", "deeper-decoder"])
def test_round_trip_strict_load(name: str) -> None:
    config = T5Config(**CONFIGS[name])
    torch.manual_seed(1)
    ours = T5ForConditionalGeneration(config).eval()
    state = to_hf_state_dict(ours)
    fresh = transformers.T5ForConditionalGeneration(config_to_hf(config)).eval()
    if (
        not config.tie_word_embeddings
    ):  # transformers 5 ties at construction; untie like a checkpoint
        fresh.lm_head.weight = torch.nn.Parameter(fresh.lm_head.weight.detach().clone())
    result = fresh.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    batch = _batch(config.vocab_size, seed=2)
    with torch.no_grad():
        torch.testing.assert_close(
            fresh(**batch).logits, ours(**batch).logits, atol=1e-5, rtol=1e-5
        )
        torch.testing.assert_close(
            to_hf(ours)(**batch).logits, ours(**batch).logits, atol=1e-5, rtol=1e-5
        )
    back = from_hf(fresh)
    for (n1, p1), (n2, p2) in zip(ours.named_parameters(), back.named_parameters(), strict=True):
        assert n1 == n2 and torch.equal(p1, p2)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_name_map_covers_both_models(name: str) -> None:
    config = T5Config(**CONFIGS[name])
    names = hf_to_t5mini_names(config)
    with torch.device("meta"):
        ours = T5ForConditionalGeneration(config)
        hf = transformers.T5ForConditionalGeneration(config_to_hf(config))
    assert sorted(names.values()) == sorted(n for n, _ in ours.named_parameters())
    for key in hf.state_dict():
        independent = hf_name_to_t5mini(key)  # tests/reference.py, written separately
        if independent is not None and key in names:
            assert names[key] == independent
        else:
            assert key in (
                "encoder.embed_tokens.weight",
                "decoder.embed_tokens.weight",
                "lm_head.weight",
            )


def test_errors_list_every_missing_unexpected_and_misshapen_key() -> None:
    config = T5Config(**CONFIGS["v1.1"])
    state = dict(hf_model(config).state_dict())
    for key in (
        "encoder.block.1.layer.1.DenseReluDense.wo.weight",
        "decoder.final_layer_norm.weight",
    ):
        del state[key]
    state["encoder.block.0.layer.0.SelfAttention.q.bias"] = torch.zeros(48)
    state["extra.thing"] = torch.zeros(1)
    state["shared.weight"] = torch.zeros(301, 48)
    state["decoder.block.1.layer.1.EncDecAttention.k.weight"] = torch.zeros(48, 47)
    model = T5ForConditionalGeneration(config)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(StateDictMismatch) as info:
        load_hf_state_dict(model, state)
    message = str(info.value)
    for key in (
        "missing key: encoder.block.1.layer.1.DenseReluDense.wo.weight",
        "missing key: decoder.final_layer_norm.weight",
        "unexpected key: encoder.block.0.layer.0.SelfAttention.q.bias",
        "unexpected key: extra.thing",
        "shape mismatch: shared.weight: checkpoint [301, 48], model [300, 48]",
        "shape mismatch: decoder.block.1.layer.1.EncDecAttention.k.weight: checkpoint [48, 47], model [48, 48]",
    ):
        assert key in message
    assert isinstance(info.value, ValueError)
    assert (
        len(info.value.missing) == 2
        and len(info.value.unexpected) == 2
        and len(info.value.mismatched) == 2
    )
    # nothing was loaded
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_legacy_key_ignored_and_missing_untied_head_reported() -> None:
    config = T5Config(**CONFIGS["v1.1"])
    hf = hf_model(config)
    state = dict(hf.state_dict())
    state[LEGACY_IGNORED_KEYS[0]] = torch.zeros(32, 4)
    model = load_hf_state_dict(T5ForConditionalGeneration(config), state)
    assert torch.equal(model.lm_head.weight, hf.lm_head.weight)
    del state["lm_head.weight"]
    with pytest.raises(StateDictMismatch, match="missing key: lm_head.weight"):
        load_hf_state_dict(T5ForConditionalGeneration(config), state)


def test_tied_model_rejects_a_different_head() -> None:
    config = T5Config(**CONFIGS["v1.0"])
    hf = hf_model(config)
    state = dict(hf.state_dict())
    state["lm_head.weight"] = state["lm_head.weight"] + 1
    with pytest.raises(StateDictMismatch, match="lm_head.weight"):
        load_hf_state_dict(T5ForConditionalGeneration(config), state)
    hf.lm_head.weight = torch.nn.Parameter(hf.shared.weight.detach() + 1)
    with pytest.raises(ValueError, match="lm_head"):
        from_hf(hf)


def test_from_hf_keeps_dtype_and_copies() -> None:
    hf = hf_model(T5Config(**CONFIGS["v1.1"])).to(torch.bfloat16)
    ours = from_hf(hf)
    assert all(p.dtype == torch.bfloat16 for p in ours.parameters())
    with torch.no_grad():
        ours.embedding.weight.zero_()
    assert hf.shared.weight.abs().sum() > 0  # weights were copied, not shared


def test_config_field_for_field() -> None:
    for kwargs in CONFIGS.values():
        config = T5Config(**kwargs, dropout_rate=0.05, layer_norm_epsilon=1e-5)
        hf_config = config_to_hf(config)
        for field in (
            "d_model",
            "d_kv",
            "d_ff",
            "num_layers",
            "num_decoder_layers",
            "num_heads",
            "vocab_size",
        ):
            assert getattr(hf_config, field) == getattr(config, field)
        assert config_from_hf(hf_config) == config
