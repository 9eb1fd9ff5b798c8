"""t5mini.convert: parity with transformers after conversion, the round trip, and the errors."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import transformers

from t5mini.config import T5Config
from t5mini.convert import (
    LEGACY_IGNORED_KEYS,
    StateDictMismatch,
    config_from_hf,
    config_from_json_dict,
    config_to_hf,
    config_to_json_dict,
    from_hf,
    hf_to_t5mini_names,
    load_hf_state_dict,
    to_hf,
    to_hf_state_dict,
)
from t5mini.generation import init_cache
from t5mini.model import T5ForConditionalGeneration
from tests.reference import HF_FIELDS, hf_model, hf_name_to_t5mini
from tests.tolerance import assert_close_to_truth

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


# 8 times the fp32 reference's error plus 16 float32 steps: a whole model's logits and loss
assert_rounding_close = functools.partial(assert_close_to_truth, factor=8.0, steps=16.0)


def _exact(model: torch.nn.Module) -> torch.nn.Module:
    """A float64 copy of the reference: the truth both fp32 implementations are measured against.

    Always a copy of the transformers model, never of t5mini's: a t5mini model that computed
    the wrong function would otherwise be its own truth.
    """
    return copy.deepcopy(model).double()


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
        expected, got, truth = hf(**batch), ours(**batch), _exact(hf)(**batch)
    assert_rounding_close(
        got.encoder_last_hidden_state,
        expected.encoder_last_hidden_state,
        truth.encoder_last_hidden_state,
        "encoder states",
    )
    assert_rounding_close(got.logits, expected.logits, truth.logits)
    assert_rounding_close(got.loss, expected.loss, truth.loss, "loss")


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
        truth = _exact(hf)(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            decoder_input_ids=dec,
        ).logits
    assert_rounding_close(steps, expected, truth, "cached steps")


@pytest.mark.parametrize("name", ["v1.0", "v1.1", "odd-heads", "deeper-decoder"])
def test_round_trip_strict_load(name: str) -> None:
    config = T5Config(**CONFIGS[name])
    torch.manual_seed(1)
    ours = T5ForConditionalGeneration(config).eval()
    state = to_hf_state_dict(ours)
    fresh = transformers.T5ForConditionalGeneration(config_to_hf(config)).eval()
    if not config.tie_word_embeddings:  # transformers 5 ties at construction; untie it
        fresh.lm_head.weight = torch.nn.Parameter(fresh.lm_head.weight.detach().clone())
    result = fresh.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    batch = _batch(config.vocab_size, seed=2)
    with torch.no_grad():
        got, truth = ours(**batch).logits, _exact(fresh)(**batch).logits
        assert_rounding_close(got, fresh(**batch).logits, truth)
        assert_rounding_close(got, to_hf(ours)(**batch).logits, truth)
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


def test_config_json_dict_is_what_transformers_reads() -> None:
    for kwargs in CONFIGS.values():
        config = T5Config(**kwargs, dropout_rate=0.05, decoder_start_token_id=3)
        values = config_to_json_dict(config, dtype=torch.bfloat16)
        assert values["model_type"] == "t5" and values["dtype"] == "bfloat16"
        assert values["architectures"] == ["T5ForConditionalGeneration"]
        hf_config = transformers.T5Config.from_dict(values)
        fresh = transformers.T5Config(**{k: getattr(config, k) for k in HF_FIELDS})
        for field in (*HF_FIELDS, "is_gated_act", "dense_act_fn", "scale_decoder_outputs"):
            if field != "tie_word_embeddings":  # transformers 5 always sets it to True
                assert getattr(hf_config, field) == getattr(fresh, field), field
        assert hf_config.scale_decoder_outputs == config.tie_word_embeddings
        assert values["is_gated_act"] == config.is_gated_act
        assert config_from_json_dict(values) == config
        assert config_from_json_dict(hf_config.to_dict() | {"decoder_start_token_id": 3}) == config
    mt5 = config_to_json_dict(T5Config(**CONFIGS["mt5"])) | {"model_type": "mt5"}
    assert config_from_json_dict(mt5) == T5Config(**CONFIGS["mt5"])


def _bert() -> torch.nn.Module:
    config = transformers.BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
    )
    return transformers.BertModel(config)


def test_from_hf_refuses_what_is_not_a_t5() -> None:
    with pytest.raises(ValueError, match=r"hf_model must be a transformers T5.*'bert'"):
        from_hf(_bert())
    for value in (torch.nn.Linear(2, 2), "google-t5/t5-small", None):
        with pytest.raises(TypeError, match="hf_model must be a transformers T5"):
            from_hf(value)
    # a T5 without a decoder: the model type is right, the weights list what is missing
    config = T5Config(**CONFIGS["v1.0"])
    encoder_only = transformers.T5EncoderModel(config_to_hf(config))
    with pytest.raises(StateDictMismatch, match="missing key: decoder.final_layer_norm.weight"):
        from_hf(encoder_only)


@pytest.mark.parametrize(
    "call, error, name",
    [
        (
            lambda m: load_hf_state_dict(m, [("shared.weight", torch.zeros(1))]),
            TypeError,
            "state_dict",
        ),
        (lambda m: load_hf_state_dict(m, {"shared.weight": [1.0]}), TypeError, "state_dict"),
        (lambda m: load_hf_state_dict(m, {3: torch.zeros(1)}), TypeError, "state_dict"),
        (lambda m: load_hf_state_dict("model", {}), TypeError, "model"),
        (lambda m: to_hf_state_dict(m.state_dict()), TypeError, "model"),
        (lambda m: to_hf(None), TypeError, "model"),
        (lambda m: hf_to_t5mini_names(m.config.to_dict()), TypeError, "config"),
        (lambda m: config_to_json_dict("t5-small"), TypeError, "config"),
        (lambda m: config_to_hf(m.config.to_dict()), TypeError, "config"),
        (lambda m: config_from_json_dict([("model_type", "t5")]), TypeError, "values"),
        (
            lambda m: config_from_json_dict({"model_type": "bert"}),
            ValueError,
            r"values\['model_type'\]",
        ),
        (
            lambda m: config_from_json_dict(m.config.to_dict()),
            ValueError,
            r"values\['model_type'\]",
        ),
        (lambda m: config_from_hf(m.config), ValueError, "hf_config.model_type"),
        (lambda m: config_from_hf(m.config.to_dict()), TypeError, "hf_config"),
        (lambda m: config_from_hf(transformers.BertConfig()), ValueError, "hf_config.model_type"),
    ],
)
def test_bad_arguments_get_errors_naming_them(call, error, name) -> None:
    model = T5ForConditionalGeneration(T5Config(**CONFIGS["v1.0"]))
    with pytest.raises(error, match=name):
        call(model)
