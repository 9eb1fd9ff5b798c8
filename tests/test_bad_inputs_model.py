"""Bad inputs to T5Config and the model: each gets the right error type and names the argument."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from t5mini.config import T5Config
from t5mini.feedforward import keep_wo_in_fp32
from t5mini.model import T5ForConditionalGeneration

GOOD = dict(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2)

SIZES = ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_decoder_layers", "num_heads")
BUCKETS = ("relative_attention_num_buckets", "relative_attention_max_distance")

BAD_FIELDS = [
    *[(name, value, TypeError) for name in SIZES + BUCKETS for value in (2.0, "8", True)],
    *[(name, value, ValueError) for name in SIZES for value in (0, -3)],
    ("relative_attention_num_buckets", 2, ValueError),
    ("relative_attention_max_distance", 8, ValueError),
    ("dropout_rate", 1.0, ValueError),
    ("dropout_rate", -0.1, ValueError),
    ("dropout_rate", math.nan, ValueError),
    ("dropout_rate", "0.1", TypeError),
    ("dropout_rate", None, TypeError),
    ("layer_norm_epsilon", 0.0, ValueError),
    ("layer_norm_epsilon", -1e-6, ValueError),
    ("layer_norm_epsilon", math.inf, ValueError),
    ("layer_norm_epsilon", "1e-6", TypeError),
    ("initializer_factor", math.nan, ValueError),
    ("initializer_factor", math.inf, ValueError),
    ("initializer_factor", -1.0, ValueError),
    ("initializer_factor", 0.0, ValueError),
    ("initializer_factor", "1", TypeError),
    ("feed_forward_proj", "swish", ValueError),
    ("feed_forward_proj", "gated-gelu-x", ValueError),
    ("feed_forward_proj", None, TypeError),
    ("tie_word_embeddings", "no", TypeError),
    ("tie_word_embeddings", 0, TypeError),
    ("gradient_checkpointing", "yes", TypeError),
    ("gradient_checkpointing", None, TypeError),
    ("pad_token_id", 64, ValueError),
    ("pad_token_id", -1, ValueError),
    ("eos_token_id", True, TypeError),
    ("eos_token_id", 1.0, TypeError),
    ("eos_token_id", [1], TypeError),
    ("decoder_start_token_id", 99, ValueError),
    ("decoder_start_token_id", "0", TypeError),
    ("attn_implementation", "flash", ValueError),
    ("attn_implementation", None, ValueError),
]


@pytest.mark.parametrize("name,value,error", BAD_FIELDS)
def test_config_field(name, value, error) -> None:
    with pytest.raises(error, match=name):
        T5Config(**{**GOOD, name: value})


@pytest.mark.parametrize("name,value,error", BAD_FIELDS)
def test_config_field_changed_after_construction(name, value, error) -> None:
    """A field changed on a made config is caught when a model is built from it."""
    config = T5Config(**GOOD)
    setattr(config, name, value)
    with pytest.raises(error, match=name):
        T5ForConditionalGeneration(config)


@pytest.mark.parametrize("name,value,error", BAD_FIELDS)
def test_config_replace(name, value, error) -> None:
    with pytest.raises(error, match=name):
        T5Config(**GOOD).replace(**{name: value})


# from_dict reads None as "not given" and a list of end ids as its first (both tested below)
BAD_IN_A_DICT = [
    bad for bad in BAD_FIELDS if bad[1] is not None and bad[:2] != ("eos_token_id", [1])
]


@pytest.mark.parametrize("name,value,error", BAD_IN_A_DICT)
def test_config_from_dict(name, value, error) -> None:
    with pytest.raises(error, match=name):
        T5Config.from_dict({**GOOD, name: value})


@pytest.mark.parametrize("name", [field.name for field in dataclasses.fields(T5Config)])
def test_config_from_dict_reads_none_as_not_given(name) -> None:
    """A transformers config dict may hold None for a field: the default is used."""
    without = T5Config(**{key: value for key, value in GOOD.items() if key != name})
    config = T5Config.from_dict({**GOOD, name: None})
    assert getattr(config, name) == getattr(without, name)
    assert config == without


def test_config_from_dict_takes_the_first_of_several_end_ids() -> None:
    assert T5Config.from_dict({**GOOD, "eos_token_id": [1, 7]}).eos_token_id == 1


@pytest.fixture(scope="module")
def model() -> T5ForConditionalGeneration:
    return T5ForConditionalGeneration(T5Config(**GOOD, dropout_rate=0.0)).eval()


IDS = torch.tensor([[5, 6, 7, 1], [8, 9, 1, 0]])
MASK = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
LABELS = torch.tensor([[3, 4, 1], [5, 1, -100]])

BAD_IDS = [
    (IDS.float(), TypeError),
    (IDS.to(torch.int8), TypeError),
    (IDS.to(torch.int16), TypeError),
    (IDS.to(torch.uint8), TypeError),
    (IDS.bool(), TypeError),
    (IDS.tolist(), TypeError),
    (IDS[0], ValueError),  # 1-D
    (IDS[:, :0], ValueError),  # empty
    (IDS + 64, ValueError),  # beyond the vocabulary
    (IDS - 10, ValueError),  # negative
]


@pytest.mark.parametrize("ids,error", BAD_IDS)
def test_forward_input_ids(model, ids, error) -> None:
    with pytest.raises(error, match=r"^input_ids\b"):
        model(ids, labels=LABELS)


@pytest.mark.parametrize("ids,error", BAD_IDS)
def test_encode_input_ids(model, ids, error) -> None:
    with pytest.raises(error, match=r"^input_ids\b"):
        model.encode(ids)


@pytest.mark.parametrize("ids,error", BAD_IDS)
def test_forward_decoder_input_ids(model, ids, error) -> None:
    with pytest.raises(error, match=r"^decoder_input_ids\b"):
        model(IDS, decoder_input_ids=ids)


@pytest.mark.parametrize("ids,error", BAD_IDS)
def test_decode_decoder_input_ids(model, ids, error) -> None:
    states = model.encode(IDS, MASK)
    with pytest.raises(error, match=r"^decoder_input_ids\b"):
        model.decode(ids, states, MASK)


@pytest.mark.parametrize(
    "labels,error",
    [
        (LABELS.float(), TypeError),
        (LABELS.to(torch.int16), TypeError),
        (LABELS.clamp(min=0).to(torch.uint8), TypeError),
        (LABELS[0], ValueError),
        (LABELS + 70, ValueError),
        (torch.tensor([[3, -5]]).expand(2, 2), ValueError),
    ],
)
def test_forward_labels(model, labels, error) -> None:
    with pytest.raises(error, match="labels"):
        model(IDS, labels=labels)


@pytest.mark.parametrize(
    "mask,error",
    [(MASK[:, :3], ValueError), (MASK[0], ValueError), (MASK.tolist(), TypeError)],
)
def test_attention_mask(model, mask, error) -> None:
    with pytest.raises(error, match="attention_mask"):
        model(IDS, attention_mask=mask, labels=LABELS)
    with pytest.raises(error, match="attention_mask"):
        model.encode(IDS, mask)
    states = model.encode(IDS)
    with pytest.raises(error, match="attention_mask"):
        model.decode(LABELS.clamp(min=0), states, mask)


@pytest.mark.parametrize(
    "mask,error",
    [(torch.ones(2, 2), ValueError), (torch.ones(3), ValueError), ([[1, 1, 1]], TypeError)],
)
def test_decoder_attention_mask(model, mask, error) -> None:
    with pytest.raises(error, match="decoder_attention_mask"):
        model(IDS, labels=LABELS, decoder_attention_mask=mask)


@pytest.mark.parametrize(
    "states,error",
    [
        (torch.zeros(2, 4), ValueError),  # not (batch, src_len, d_model)
        (torch.zeros(3, 4, 16), ValueError),  # another batch size
        (torch.zeros(2, 4, 8), ValueError),  # another width
        ([[0.0]], TypeError),
    ],
)
def test_encoder_hidden_states(model, states, error) -> None:
    with pytest.raises(error, match="encoder_hidden_states"):
        model.decode(LABELS.clamp(min=0), states)
    with pytest.raises(error, match="encoder_hidden_states"):
        model(encoder_hidden_states=states, labels=LABELS)


def test_missing_inputs(model) -> None:
    with pytest.raises(ValueError, match="decoder_input_ids or labels"):
        model(IDS)
    with pytest.raises(ValueError, match="input_ids or encoder_hidden_states"):
        model(labels=LABELS)
    with pytest.raises(ValueError, match="labels"):  # labels and decoder inputs disagree
        model(IDS, labels=LABELS, decoder_input_ids=IDS)


@pytest.mark.parametrize("config", [None, {"d_model": 16}, "t5-small", 3])
def test_model_config(config) -> None:
    with pytest.raises(TypeError, match="config"):
        T5ForConditionalGeneration(config)


def test_labels_of_another_batch_size(model) -> None:
    """The error names labels and input_ids, not encoder_hidden_states (which was not given)."""
    with pytest.raises(ValueError, match=r"^labels\b") as info:
        model(IDS, labels=LABELS[:1])
    message = str(info.value)
    assert "input_ids" in message and "encoder_hidden_states" not in message
    with pytest.raises(ValueError, match=r"^labels\b"):
        model(IDS[:1], attention_mask=MASK[:1], labels=LABELS)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.int64, torch.bool])
def test_encoder_hidden_states_of_another_dtype(model, dtype) -> None:
    states = model.encode(IDS, MASK).to(dtype)
    with pytest.raises(TypeError, match=r"^encoder_hidden_states\b"):
        model.decode(LABELS.clamp(min=0), states, MASK)
    with pytest.raises(TypeError, match=r"^encoder_hidden_states\b"):
        model(encoder_hidden_states=states, attention_mask=MASK, labels=LABELS)


@pytest.mark.parametrize(
    "where", ["embedding", "encoder.blocks.0.self_attention.q", "decoder.final_norm"]
)
def test_model_with_mixed_dtypes(where) -> None:
    """One part cast to another dtype: an error that names it, for forward, encode and decode."""
    mixed = T5ForConditionalGeneration(T5Config(**GOOD, dropout_rate=0.0)).eval()
    states = mixed.encode(IDS, MASK)
    mixed.get_submodule(where).double()
    with pytest.raises(TypeError, match="dtype") as info:
        mixed(IDS, attention_mask=MASK, labels=LABELS)
    assert "model." in str(info.value)
    with pytest.raises(TypeError, match="dtype"):
        mixed.encode(IDS, MASK)
    with pytest.raises(TypeError, match="dtype"):
        mixed.decode(LABELS.clamp(min=0), states, MASK)


def test_fp16_model_may_keep_wo_in_fp32() -> None:
    """The one mix that is meant: every feed-forward wo in fp32 under an fp16 model."""
    half = keep_wo_in_fp32(T5ForConditionalGeneration(T5Config(**GOOD)).half().eval())
    assert {p.dtype for p in half.parameters()} == {torch.float16, torch.float32}
    with torch.no_grad():
        logits = half(IDS, attention_mask=MASK, labels=LABELS).logits
    assert torch.isfinite(logits).all()


def test_inputs_on_the_meta_device(model) -> None:
    meta = IDS.to("meta")
    with pytest.raises(ValueError, match=r"^input_ids\b.*meta"):
        model(meta, labels=LABELS)
    with pytest.raises(ValueError, match=r"^labels\b.*meta"):
        model(IDS, labels=LABELS.to("meta"))
    with pytest.raises(ValueError, match=r"^attention_mask\b.*meta"):
        model.encode(IDS, MASK.to("meta"))
    states = model.encode(IDS, MASK)
    with pytest.raises(ValueError, match=r"^encoder_hidden_states\b.*meta"):
        model.decode(LABELS.clamp(min=0), states.to("meta"), MASK)


def test_model_on_the_meta_device() -> None:
    with torch.device("meta"):
        meta = T5ForConditionalGeneration(T5Config(**GOOD))
    assert meta.num_parameters() > 0  # counting works without storage
    for call in (
        lambda: meta(IDS, attention_mask=MASK, labels=LABELS),
        lambda: meta.encode(IDS, MASK),
        lambda: meta.decode(LABELS.clamp(min=0), torch.zeros(2, 4, 16), MASK),
    ):
        with pytest.raises(ValueError, match=r"^model\..*meta device"):
            call()


def test_each_model_owns_its_config() -> None:
    """Switching checkpointing on in one model leaves the caller's config and other models alone."""
    config = T5Config(**GOOD)
    first = T5ForConditionalGeneration(config)
    first.gradient_checkpointing_enable(True)
    assert first.config.gradient_checkpointing and first.encoder.gradient_checkpointing
    assert config.gradient_checkpointing is False
    second = T5ForConditionalGeneration(config)
    assert not second.config.gradient_checkpointing and not second.decoder.gradient_checkpointing
    config.d_model = 32  # and a later change to the caller's config does not reach the model
    assert first.config.d_model == second.config.d_model == 16


@pytest.mark.parametrize("enable", ["yes", 1, None, 0.0])
def test_gradient_checkpointing_enable_takes_a_bool(model, enable) -> None:
    with pytest.raises(TypeError, match=r"^enable\b"):
        model.gradient_checkpointing_enable(enable)
    assert model.config.gradient_checkpointing is False
