"""The full model against transformers' T5ForConditionalGeneration, and its own contracts.

Tolerances come from the computation: transformers run in float64 is the truth, and our
fp32 result may be only a few times further from it than transformers' own fp32 result is.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import transformers

from t5mini.config import PRESETS, T5Config
from t5mini.generation import init_cache
from t5mini.model import T5ForConditionalGeneration, shift_right
from tests.reference import copy_hf_weights, hf_model, hf_name_to_t5mini
from tests.tolerance import FP32_EPS, assert_close_to_truth

SMALL = dict(vocab_size=160, d_model=32, d_kv=8, d_ff=48, num_heads=4, dropout_rate=0.1)
V10 = dict(**SMALL, num_layers=2, feed_forward_proj="relu", tie_word_embeddings=True)
V11 = dict(
    **SMALL,
    num_layers=2,
    num_decoder_layers=3,
    feed_forward_proj="gated-gelu",
    tie_word_embeddings=False,
)


def _batch():
    g = torch.Generator().manual_seed(1)
    input_ids = torch.randint(2, 160, (3, 11), generator=g)
    attention_mask = torch.ones_like(input_ids)
    for row, length in enumerate((11, 7, 3)):
        input_ids[row, length:] = 0
        attention_mask[row, length:] = 0
    input_ids[:, [0]] = torch.tensor([[5], [6], [7]])
    labels = torch.randint(2, 160, (3, 6), generator=g)
    labels[1, 4:] = -100
    labels[2, 2:] = -100
    return input_ids, attention_mask, labels


def _pair(config_kwargs, implementation="sdpa"):
    config = T5Config(**config_kwargs, attn_implementation=implementation)
    hf = hf_model(config)
    model = T5ForConditionalGeneration(config).eval()
    copy_hf_weights(hf, model)
    return model, hf


@pytest.mark.parametrize("style", ["v1.0", "v1.1"])
@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_logits_and_loss_match_reference(style, implementation) -> None:
    model, hf = _pair(V10 if style == "v1.0" else V11, implementation)
    hf64 = copy.deepcopy(hf).double()
    input_ids, attention_mask, labels = _batch()
    decoder_attention_mask = (labels != -100).long()
    inputs = dict(
        input_ids=input_ids,
        attention_mask=attention_mask,
        labels=labels,
        decoder_attention_mask=decoder_attention_mask,
    )
    with torch.no_grad():
        expected, truth, out = hf(**inputs), hf64(**inputs), model(**inputs)
    for name in ("encoder_last_hidden_state", "logits", "loss"):
        assert_close_to_truth(getattr(out, name), getattr(expected, name), getattr(truth, name))
    # without a decoder mask too (causal only), and with explicit decoder_input_ids
    dec = hf._shift_right(labels)
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=dec)
    with torch.no_grad():
        expected, truth, out = hf(**inputs), hf64(**inputs), model(**inputs)
    assert_close_to_truth(out.logits, expected.logits, truth.logits)
    assert out.loss is None


def test_parity_tolerance_can_fail() -> None:
    """One feed-forward weight off by one part in 10,000 is seen."""
    model, hf = _pair(V11)
    input_ids, attention_mask, labels = _batch()
    with torch.no_grad():
        model.decoder.blocks[1].feed_forward.wo.weight.mul_(1 + 1e-4)
        expected = hf(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        truth = copy.deepcopy(hf).double()(
            input_ids=input_ids, attention_mask=attention_mask, labels=labels
        )
        out = model(input_ids, attention_mask=attention_mask, labels=labels)
    with pytest.raises(AssertionError):
        assert_close_to_truth(out.logits, expected.logits, truth.logits)


@pytest.mark.parametrize("style", ["v1.0", "v1.1"])
def test_gradients_match_reference(style) -> None:
    """The gradient of every parameter, tied embedding and position biases included."""
    model, hf = _pair(V10 if style == "v1.0" else V11)
    hf64 = copy.deepcopy(hf).double()
    input_ids, attention_mask, labels = _batch()
    model(input_ids, attention_mask=attention_mask, labels=labels).loss.backward()
    for reference in (hf, hf64):
        reference(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss.backward()
    ours = dict(model.named_parameters())
    truths = dict(hf64.named_parameters())
    compared = set()
    for hf_name, param in hf.named_parameters():
        our_name = hf_name_to_t5mini(hf_name)
        if our_name is None or (our_name == "lm_head.weight" and model.lm_head is None):
            continue  # a tied copy of the embedding: its gradient is in shared.weight
        assert ours[our_name].grad is not None, f"{our_name} has no gradient"
        assert_close_to_truth(ours[our_name].grad, param.grad, truths[hf_name].grad, our_name)
        compared.add(our_name)
    assert compared == set(ours), set(ours) - compared


@pytest.mark.parametrize("style", ["v1.0", "v1.1"])
def test_layer_norm_epsilon_reaches_every_norm(style) -> None:
    """A non-default layer_norm_epsilon, where it matters: small activations in every norm."""
    model, hf = _pair({**(V10 if style == "v1.0" else V11), "layer_norm_epsilon": 1e-3})
    assert hf.config.layer_norm_epsilon == 1e-3
    with torch.no_grad():  # embeddings of RMS 0.03: a mean square near eps at the first norms
        for embedding in (hf.shared.weight, model.embedding.weight):
            embedding.mul_(0.03)
    hf64 = copy.deepcopy(hf).double()
    input_ids, attention_mask, labels = _batch()
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    with torch.no_grad():
        expected, truth, out = hf(**inputs), hf64(**inputs), model(**inputs)
    for name in ("encoder_last_hidden_state", "logits", "loss"):
        assert_close_to_truth(getattr(out, name), getattr(expected, name), getattr(truth, name))


@pytest.mark.parametrize("style", ["v1.0", "v1.1"])
def test_cache_decoding_equals_full_decode(style) -> None:
    model, hf = _pair(V10 if style == "v1.0" else V11)
    input_ids, attention_mask, labels = _batch()
    decoder_input_ids = shift_right(labels)
    inputs = dict(
        input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids
    )
    with torch.no_grad():
        states = model.encode(input_ids, attention_mask)
        full = model.decode(decoder_input_ids, states, attention_mask)
        reference = hf(**inputs).logits
        truth = copy.deepcopy(hf).double()(**inputs).logits
        cache = init_cache(model, states, attention_mask, max_length=10)
        assert cache.length == 0 and cache.max_length == 10
        pieces = [model.decode(decoder_input_ids[:, :2], states, cache=cache)]  # a 2-token chunk
        assert cache.length == 2
        for t in range(2, 6):
            pieces.append(model.decode(decoder_input_ids[:, t : t + 1], states, cache=cache))
    stepped = torch.cat(pieces, 1)
    assert cache.length == 6
    assert_close_to_truth(full, reference, truth)
    assert_close_to_truth(stepped, reference, truth)
    with pytest.raises(ValueError, match="max_length=10"):
        model.decode(torch.zeros(3, 5, dtype=torch.long), states, cache=cache)


def test_cache_reorder() -> None:
    model, _ = _pair(V11)
    input_ids, attention_mask, labels = _batch()
    dec = shift_right(labels)
    index = torch.tensor([2, 0, 0, 1])
    with torch.no_grad():
        states = model.encode(input_ids, attention_mask)
        cache = init_cache(model, states, attention_mask, max_length=6)
        model.decode(dec[:, :3], states, cache=cache)
        cache.reorder(index)
        last = model.decode(dec[index, 3:4], states[index], cache=cache)
        expected = model.decode(dec[index, :4], states[index], attention_mask[index])[:, 3:]
        model64 = copy.deepcopy(model).double()
        states64 = model64.encode(input_ids, attention_mask)[index]
        truth = model64.decode(dec[index, :4], states64, attention_mask[index])[:, 3:]
    assert_close_to_truth(last, expected, truth)


def _eager_or_sdpa(implementation: str, dtype: torch.dtype):
    input_ids, attention_mask, labels = _batch()
    # no dropout: the two kernels draw attention-dropout masks differently
    torch.manual_seed(0)
    config = T5Config(**{**V11, "dropout_rate": 0.0}, attn_implementation=implementation)
    model = T5ForConditionalGeneration(config).to(dtype)
    out = model(input_ids, attention_mask=attention_mask, labels=labels)
    out.loss.backward()
    return [out.logits.detach()] + [p.grad for p in model.parameters()]


def test_eager_equals_sdpa_values_and_gradients() -> None:
    eager, sdpa = _eager_or_sdpa("eager", torch.float32), _eager_or_sdpa("sdpa", torch.float32)
    truth = _eager_or_sdpa("eager", torch.float64)
    for a, b, exact in zip(eager, sdpa, truth, strict=True):
        assert_close_to_truth(a, b, exact)
        assert_close_to_truth(b, a, exact)


def test_gradient_checkpointing_gives_same_gradients() -> None:
    input_ids, attention_mask, labels = _batch()
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = T5ForConditionalGeneration(
            T5Config(**V10, gradient_checkpointing=checkpointing)
        ).train()
        torch.manual_seed(3)  # the same dropout masks, also when a block is recomputed
        model(input_ids, attention_mask=attention_mask, labels=labels).loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    # the same operations on the same numbers: equal up to a few roundings at most
    scale = grads[0].abs().max().item()
    assert (grads[0] - grads[1]).abs().max().item() <= 8 * FP32_EPS * scale


PUBLISHED = {
    "t5-small": 60_506_624,
    "t5-base": 222_903_552,
    "t5-large": 737_668_096,
    "t5-v1_1-small": 76_961_152,
    "t5-v1_1-base": 247_577_856,
    "mt5-small": 300_176_768,
}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_parameter_counts(name) -> None:
    config = T5Config.preset(name)
    with torch.device("meta"):
        ours = T5ForConditionalGeneration(config).num_parameters()
    if name in PUBLISHED:
        assert ours == PUBLISHED[name]
    if name in (
        "t5-small",
        "t5-v1_1-small",
        "tiny",
    ):  # the reference agrees (small enough to build)
        hf_config = transformers.T5Config(
            **{k: v for k, v in config.to_dict().items() if k in transformers.T5Config().to_dict()}
        )
        with torch.device("meta"):
            hf = transformers.T5ForConditionalGeneration(hf_config)
        extra = 0 if config.tie_word_embeddings else config.vocab_size * config.d_model
        assert ours == sum(p.numel() for p in hf.parameters()) + extra  # hf ties lm_head at init


def test_initialisation_stds() -> None:
    config = T5Config(**{**V11, "d_model": 128, "d_ff": 512, "vocab_size": 2000})
    model = T5ForConditionalGeneration(config)
    block = model.encoder.blocks[0]
    for weight, expected in (
        (model.embedding.weight, 1.0),
        (block.self_attention.q.weight, (128 * 8) ** -0.5),
        (block.self_attention.k.weight, 128**-0.5),
        (block.self_attention.o.weight, 32**-0.5),
        (block.feed_forward.wi_1.weight, 128**-0.5),
        (block.feed_forward.wo.weight, 512**-0.5),
        (model.lm_head.weight, 128**-0.5),
    ):
        assert abs(weight.std().item() / expected - 1) < 0.1
    assert torch.equal(block.feed_forward_norm.weight, torch.ones(128))


def test_input_errors() -> None:
    model = T5ForConditionalGeneration(T5Config(**V10))
    input_ids, attention_mask, labels = _batch()
    too_big = input_ids.clone()
    too_big[1, 2] = 160
    with pytest.raises(ValueError, match=r"input_ids contains 160, outside .*\[0, 160\)"):
        model(too_big, labels=labels)
    too_big[1, 2] = -3
    with pytest.raises(ValueError, match="input_ids contains -3"):
        model(too_big, labels=labels)
    with pytest.raises(ValueError, match=r"attention_mask has shape \(3, 10\)"):
        model(input_ids, attention_mask=attention_mask[:, 1:], labels=labels)
    with pytest.raises(ValueError, match="decoder_attention_mask"):
        model(input_ids, labels=labels, decoder_attention_mask=torch.ones(3, 2))
    with pytest.raises(ValueError, match="labels contains 999"):
        model(input_ids, labels=torch.full((3, 2), 999))
    with pytest.raises(TypeError, match="input_ids"):
        model(input_ids.float(), labels=labels)
    with pytest.raises(ValueError, match="decoder_input_ids or labels"):
        model(input_ids)
    with pytest.raises(ValueError, match="max_length"):
        init_cache(model, torch.zeros(3, 11, 32), max_length=0)


@pytest.mark.parametrize("dtype", [torch.int8, torch.int16, torch.uint8, torch.bool])
def test_narrow_integer_ids_are_refused_by_name(dtype) -> None:
    """They used to pass the check and crash inside F.embedding."""
    model = T5ForConditionalGeneration(T5Config(**V10))
    input_ids, _, labels = _batch()
    with pytest.raises(TypeError, match="input_ids"):
        model(input_ids.to(dtype), labels=labels)
    with pytest.raises(TypeError, match="labels"):
        model(input_ids, labels=labels.clamp(min=0).to(dtype))
    with pytest.raises(TypeError, match="decoder_input_ids"):
        model(input_ids, decoder_input_ids=labels.clamp(min=0).to(dtype))


def test_int32_ids_and_labels_give_the_int64_results() -> None:
    """int32 labels used to crash in cross_entropy."""
    model = T5ForConditionalGeneration(T5Config(**V11)).eval()
    input_ids, attention_mask, labels = _batch()
    with torch.no_grad():
        wide = model(input_ids, attention_mask=attention_mask, labels=labels)
        narrow = model(input_ids.int(), attention_mask=attention_mask.int(), labels=labels.int())
    assert torch.equal(narrow.logits, wide.logits) and torch.equal(narrow.loss, wide.loss)


def test_any_config_with_validate_builds_a_model() -> None:
    """A notebook's own copy of T5Config (another class) works; the model calls its validate()."""
    Copied = dataclasses.make_dataclass(
        "T5Config",
        [
            (f.name, f.type, dataclasses.field(default=f.default))
            for f in dataclasses.fields(T5Config)
        ],
        namespace={"validate": T5Config.validate, "__post_init__": T5Config.__post_init__},
    )
    config = Copied(**V10)
    assert not isinstance(config, T5Config)
    assert T5ForConditionalGeneration(config).num_parameters() > 0
    config.d_model = -1  # changed after construction: the model's validate() catches it
    with pytest.raises(ValueError, match="d_model"):
        T5ForConditionalGeneration(config)
    with pytest.raises(TypeError, match="config"):
        T5ForConditionalGeneration(dict(V10))


@pytest.mark.parametrize(
    "bad,field,error",
    [
        (dict(d_model=0), "d_model", ValueError),
        (dict(num_heads=-1), "num_heads", ValueError),
        (dict(d_ff=3.5), "d_ff", TypeError),
        (dict(num_decoder_layers=0), "num_decoder_layers", ValueError),
        (dict(feed_forward_proj="gated-swish"), "feed_forward_proj", ValueError),
        (dict(relative_attention_max_distance=16), "relative_attention_max_distance", ValueError),
        (
            dict(relative_attention_num_buckets=64, relative_attention_max_distance=32),
            "max_distance",
            ValueError,
        ),
        (dict(dropout_rate=1.0), "dropout_rate", ValueError),
        (dict(pad_token_id=40000), "pad_token_id", ValueError),
        (dict(attn_implementation="flash"), "attn_implementation", ValueError),
    ],
)
def test_config_validation(bad, field, error) -> None:
    with pytest.raises(error, match=field):
        T5Config(**bad)


def test_config_from_transformers_dict() -> None:
    for kwargs in (V10, V11):
        ours = T5Config(**kwargs)
        hf = hf_model(ours).config
        back = T5Config.from_dict(hf.to_dict())
        assert back == ours
    assert T5Config.from_dict({"num_layers": 3}).num_decoder_layers == 3
    assert T5Config.from_dict({"eos_token_id": [1, 7]}).eos_token_id == 1
    with pytest.raises(ValueError, match="name"):
        T5Config.preset("t5-xxl-imaginary")


def test_from_dict_errors_name_the_key() -> None:
    with pytest.raises(ValueError, match="eos_token_id"):  # was an IndexError
        T5Config.from_dict({"eos_token_id": []})
    with pytest.raises(ValueError, match="d_modle, num_head"):
        T5Config.from_dict({"d_modle": 64, "num_head": 4, "d_ff": 128}, strict=True)
    assert T5Config.from_dict({"d_modle": 64}).d_model == 512  # not strict: ignored
    with pytest.raises(TypeError, match="scale_decoder_outputs"):
        T5Config.from_dict({"scale_decoder_outputs": "no"})
    with pytest.raises(TypeError, match="values"):
        T5Config.from_dict([("d_model", 64)])
    with pytest.raises(TypeError, match="strict"):
        T5Config.from_dict({}, strict="yes")
