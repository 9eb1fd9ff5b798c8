"""Bad inputs to T5Config and the model: each gets the right error type and names the argument."""

from __future__ import annotations

import math

import pytest
import torch

from t5mini.config import T5Config
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


@pytest.mark.parametrize("name,value,error", BAD_FIELDS)
def test_config_from_dict(name, value, error) -> None:
    if value is None or (name == "eos_token_id" and value == [1]):
        pytest.skip("from_dict reads None as 'not given', and a list of end ids as its first")
    with pytest.raises(error, match=name):
        T5Config.from_dict({**GOOD, name: value})


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
    with pytest.raises(error, match="input_ids"):
        model(ids, labels=LABELS)


@pytest.mark.parametrize("ids,error", BAD_IDS)
def test_encode_input_ids(model, ids, error) -> None:
    with pytest.raises(error, match="input_ids"):
        model.encode(ids)


@pytest.mark.parametrize("ids,error", BAD_IDS)
def test_forward_decoder_input_ids(model, ids, error) -> None:
    with pytest.raises(error, match="decoder_input_ids"):
        model(IDS, decoder_input_ids=ids)


@pytest.mark.parametrize("ids,error", BAD_IDS)
def test_decode_decoder_input_ids(model, ids, error) -> None:
    states = model.encode(IDS, MASK)
    with pytest.raises(error, match="decoder_input_ids"):
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
