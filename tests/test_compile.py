"""generate(..., compile=True): the static-shape step gives the tokens of eager decoding.

Compiling costs seconds per shape, so the tests share compiled steps: each model and shape
is compiled once (the step is cached on the model) and reused by every test that follows.
The static step's logic is also checked uncompiled, which is cheap.
"""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from t5mini import generation
from t5mini.generation import (
    MAX_COMPILED_STEPS,
    SHAPE_MULTIPLE,
    RelaidWeights,
    StaticDecoderStep,
    _compiled_steps,
    init_cache,
    layout_seconds,
    relaid_weights,
    step_matrices,
)
from tests.test_generation import EOS, padded_batch, reference_pair


@pytest.fixture(scope="module")
def pair():
    """A 2 + 2 layer model (gated GELU, untied) and its padded batch, shared by the tests."""
    _, model = reference_pair(0)
    return model, *padded_batch(0)


def test_static_step_uncompiled_equals_the_cached_decoder(pair):
    model, input_ids, attention_mask = pair
    decoder_input_ids = torch.randint(2, 90, (5, 7), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        states = model.encode(input_ids, attention_mask)
        cache = init_cache(model, states, attention_mask, max_length=9)
        step = StaticDecoderStep(model, 5, input_ids.shape[1], max_length=9)
        for (key, value), (new_key, new_value) in zip(step.cross_attention, cache.cross_attention):
            key.copy_(new_key)
            value.copy_(new_value)
        step.cross_bias.copy_(cache.cross_bias)
        step.bias_by_key.copy_(cache.bias_by_key)
        for t in range(7):
            step.position.fill_(t)
            # the bias of one query at t: DecoderCache's slice, then masked slots after t
            expected_bias = cache.self_bias(1)  # (1, heads, 1, t + 1)
            bias = step.self_bias()  # (1, heads, 1, max_length)
            torch.testing.assert_close(bias[..., : t + 1], expected_bias, rtol=0, atol=0)
            assert (bias[..., t + 1 :] == torch.finfo(bias.dtype).min).all()
            expected = model.decode(decoder_input_ids[:, t : t + 1], states, attention_mask, cache)
            got = step.forward(model, decoder_input_ids[:, t : t + 1])
            scale = expected.abs().max().item()
            torch.testing.assert_close(got, expected[:, -1], rtol=1e-5, atol=1e-5 * scale)


def _unique_graphs() -> int:
    return counters["stats"]["unique_graphs"]


def test_compiled_greedy_and_sampling_equal_eager(pair):
    model, input_ids, attention_mask = pair
    graphs = _unique_graphs()
    runs = [
        dict(max_new_tokens=10),
        dict(max_new_tokens=10, repetition_penalty=1.3, min_new_tokens=2),
        dict(max_new_tokens=10, do_sample=True, temperature=0.8, top_k=20, top_p=0.9),
        dict(max_new_tokens=10, do_sample=True, top_k=0),
    ]
    for kwargs in runs:
        eager = model.generate(
            input_ids, attention_mask, generator=torch.Generator().manual_seed(5), **kwargs
        )
        compiled = model.generate(
            input_ids, attention_mask, compile=True,
            generator=torch.Generator().manual_seed(5), **kwargs,
        )  # fmt: skip
        torch.testing.assert_close(compiled, eager, rtol=0, atol=0)
    assert len(_compiled_steps[model]) == 1  # one shape: compiled once, reused
    assert _unique_graphs() - graphs <= 2  # greedy_step and forward: no new graph per step
    # the premise: some rows stopped at EOS, so padding and stopping were exercised
    assert (compiled == EOS).any()
    # rows that all stop early: the compiled greedy search ends and trims as eager does
    eager = model.generate(input_ids[:2], attention_mask[:2], max_new_tokens=10)
    compiled = model.generate(input_ids[:2], attention_mask[:2], max_new_tokens=10, compile=True)
    assert eager.shape[1] < 11 and (eager == EOS).any(dim=1).all()
    torch.testing.assert_close(compiled, eager, rtol=0, atol=0)


def test_compiled_beam_search_equals_eager(pair):
    model, input_ids, attention_mask = pair
    runs = [
        dict(num_beams=3, length_penalty=0.6, early_stopping=True, num_return_sequences=2),
        dict(num_beams=3, length_penalty=1.0, early_stopping="never"),
        dict(num_beams=3, length_penalty=0.6, length_penalty_style="gnmt"),
        dict(num_beams=3, do_sample=True, temperature=1.3),
    ]
    for kwargs in runs:
        eager = model.generate(
            input_ids, attention_mask, max_new_tokens=10,
            generator=torch.Generator().manual_seed(2), **kwargs,
        )  # fmt: skip
        compiled = model.generate(
            input_ids, attention_mask, max_new_tokens=10, compile=True,
            generator=torch.Generator().manual_seed(2), **kwargs,
        )  # fmt: skip
        torch.testing.assert_close(compiled, eager, rtol=0, atol=0)
    # greedy's shape, the early stop's (batch 2) and the beams' (batch * 3)
    assert len(_compiled_steps[model]) == 3


def test_compiled_unequal_depths_tied_head_padded_batch():
    # 1 encoder layer, 3 decoder layers, ReLU, tied embeddings (the head's rescale)
    _, model = reference_pair(2, num_layers=1, num_decoder_layers=3, feed_forward_proj="relu",
                              tied=True, eos_weight=2.0)  # fmt: skip
    input_ids, attention_mask = padded_batch(2, batch_size=4, src_len=7)
    eager = model.generate(input_ids, attention_mask, max_new_tokens=8)
    compiled = model.generate(input_ids, attention_mask, max_new_tokens=8, compile=True)
    torch.testing.assert_close(compiled, eager, rtol=0, atol=0)
    # a second call with other inputs of the same shape reuses the step, reset
    other_ids, other_mask = padded_batch(5, batch_size=4, src_len=7)
    eager = model.generate(other_ids, other_mask, max_new_tokens=8)
    compiled = model.generate(other_ids, other_mask, max_new_tokens=8, compile=True)
    torch.testing.assert_close(compiled, eager, rtol=0, atol=0)
    assert len(_compiled_steps[model]) == 1


def test_two_models_of_one_shape_each_decode_with_their_own_weights(pair):
    """A second model of the same configuration may share the compiled code, not the weights."""
    model, input_ids, attention_mask = pair
    _, other = reference_pair(7)
    for owner in (other, model):
        eager = owner.generate(input_ids, attention_mask, max_new_tokens=10)
        compiled = owner.generate(input_ids, attention_mask, max_new_tokens=10, compile=True)
        torch.testing.assert_close(compiled, eager, rtol=0, atol=0)
    assert not torch.equal(other.generate(input_ids, attention_mask, max_new_tokens=10), eager)


def test_many_shapes_compile_without_hitting_dynamo_limits():
    """Each stepper has its own code object: no shape competes for dynamo's 8 graphs per code."""
    _, model = reference_pair(3, num_layers=1)
    input_ids, attention_mask = padded_batch(3, batch_size=2, src_len=5)
    limit = torch._dynamo.config.recompile_limit
    lengths = [SHAPE_MULTIPLE * k for k in range(1, limit + 2)]  # one bucket per length
    for max_new_tokens in lengths:  # one shape more than a code object may hold
        eager = model.generate(input_ids, attention_mask, max_new_tokens=max_new_tokens)
        compiled = model.generate(
            input_ids, attention_mask, max_new_tokens=max_new_tokens, compile=True
        )
        torch.testing.assert_close(compiled, eager, rtol=0, atol=0)
    steps = _compiled_steps[model]
    assert len(steps) == MAX_COMPILED_STEPS  # the oldest shapes were dropped
    kept = [key[2] for key in steps]  # max_length, rounded up, oldest first
    assert kept == [n + SHAPE_MULTIPLE for n in lengths[-MAX_COMPILED_STEPS:]]


def test_lengths_in_one_bucket_share_a_step_and_decode_as_eager():
    """Sources of 5 to 16 tokens and 3 to 15 new tokens: one compiled step, eager's tokens,
    with a padding mask and without one (the slots past the source are masked either way)."""
    _, model = reference_pair(4)
    for src_len, max_new_tokens in [(5, 15), (9, 8), (16, 3), (12, 11)]:
        input_ids, attention_mask = padded_batch(src_len, batch_size=3, src_len=src_len)
        for mask in (attention_mask, None):
            eager = model.generate(input_ids, mask, max_new_tokens=max_new_tokens)
            compiled = model.generate(input_ids, mask, max_new_tokens=max_new_tokens, compile=True)
            torch.testing.assert_close(compiled, eager, rtol=0, atol=0)
    assert list(_compiled_steps[model]) == [(3, 16, 16, torch.float32, torch.device("cpu"))]


def test_a_change_to_the_model_between_searches_is_seen(pair):
    """Guards are skipped within a search but checked at its first step: a changed model recompiles."""
    model, input_ids, attention_mask = pair
    before = model.generate(input_ids, attention_mask, max_new_tokens=10, compile=True)
    norm = model.decoder.blocks[-1].feed_forward_norm
    old_eps = norm.eps
    try:
        norm.eps = 1e6  # a module attribute the compiled graph read as a constant
        eager = model.generate(input_ids, attention_mask, max_new_tokens=10)
        compiled = model.generate(input_ids, attention_mask, max_new_tokens=10, compile=True)
        torch.testing.assert_close(compiled, eager, rtol=0, atol=0)
        assert not torch.equal(compiled, before)  # the premise: the change changes the tokens
    finally:
        norm.eps = old_eps
    again = model.generate(input_ids, attention_mask, max_new_tokens=10, compile=True)
    torch.testing.assert_close(again, before, rtol=0, atol=0)


def _all_faster_transposed(monkeypatch) -> None:
    """Make every shape's (in, out) copy the faster, so that the copies are surely used."""
    monkeypatch.setattr(
        generation,
        "layout_seconds",
        lambda matrices, rows: {tuple(w.shape): [1.0, 0.0] for w in matrices},
    )


def test_layout_seconds_times_both_layouts_of_every_shape(pair):
    model, _, _ = pair
    names = step_matrices(model)
    assert "lm_head.weight" in names and not any(".cross_attention.k." in n for n in names)
    matrices = [model.get_parameter(name).detach() for name in names]
    seconds = layout_seconds(matrices, rows=1, passes=1)
    assert set(seconds) == {tuple(w.shape) for w in matrices}
    assert all(len(pair_) == 2 and min(pair_) > 0 for pair_ in seconds.values())


def test_relaid_copies_follow_in_place_changes_and_replacements(pair, monkeypatch):
    model, _, _ = pair
    _all_faster_transposed(monkeypatch)
    relaid = RelaidWeights(model, rows=1)
    assert set(relaid.copies) == set(step_matrices(model))
    name = "decoder.blocks.0.self_attention.q.weight"
    copy, weight = relaid.copies[name], model.get_parameter(name)
    assert copy.stride() == (1, copy.shape[0])  # stored (in, out)
    torch.testing.assert_close(copy, weight.detach(), rtol=0, atol=0)
    original = weight.detach().clone()
    try:
        with torch.no_grad():
            weight.mul_(2.0)  # in place, as an optimiser does: the version counter moves
        relaid.refresh(model)
        torch.testing.assert_close(copy, weight.detach(), rtol=0, atol=0)
        module = model.decoder.blocks[0].self_attention.q
        module.weight = torch.nn.Parameter(-original)  # replaced, as load_state_dict(assign=True)
        relaid.refresh(model)
        torch.testing.assert_close(copy, -original, rtol=0, atol=0)
    finally:
        model.decoder.blocks[0].self_attention.q.weight = weight
        with torch.no_grad():
            weight.copy_(original)


def test_compiled_step_on_relaid_weights_sees_a_trained_model(monkeypatch):
    """With every matrix relaid, compiled = eager, before and after an in-place update."""
    _all_faster_transposed(monkeypatch)
    _, model = reference_pair(1)
    input_ids, attention_mask = padded_batch(1)
    tokens = []
    for _ in range(2):
        eager = model.generate(input_ids, attention_mask, max_new_tokens=8)
        compiled = model.generate(input_ids, attention_mask, max_new_tokens=8, compile=True)
        torch.testing.assert_close(compiled, eager, rtol=0, atol=0)
        (step,) = _compiled_steps[model].values()
        assert len(step.weights) == len(step_matrices(model))  # the copies were in use
        assert step.weights is relaid_weights(model).copies  # one set per model, shared
        tokens.append(compiled)
        with torch.no_grad():  # an update in place, as an optimiser's step
            for name in step_matrices(model):
                model.get_parameter(name).mul_(-0.5)
    assert not torch.equal(tokens[0], tokens[1])  # the premise: the update changed the tokens
