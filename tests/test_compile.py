"""generate(..., compile=True): the static-shape step of t5mini.compiled gives eager's tokens.

Compiling costs seconds per shape, so the tests share compiled steps: each model and shape
is compiled once (the step is kept with the model) and reused by every test that follows.
The static step's logic is also checked uncompiled, which is cheap.
"""

from __future__ import annotations

import logging

import pytest
import torch
from torch._dynamo.utils import counters

from t5mini import compiled
from t5mini.compiled import (
    MAX_COMPILED_STEPS,
    SHAPE_MULTIPLE,
    TRANSPOSED_MAX_ROWS,
    StaticDecoderStep,
    _compiled_steps,
    batch_bucket,
    compiled_generate,
    layout_seconds,
    reset_static_step,
    step_matrices,
    transposed_matrices,
)
from t5mini.decoding import DecoderStepper, GenerationSettings
from tests.test_generation import EOS, padded_batch, reference_pair


@pytest.fixture(scope="module")
def pair():
    """A 2 + 2 layer model (gated GELU, untied) and its padded batch, shared by the tests."""
    _, model = reference_pair(0)
    return model, *padded_batch(0)


def compiled_tokens(model, input_ids, attention_mask, weight_layout="auto", **kwargs):
    """`generate(..., compile=True)` with a chosen weight layout: what generate prepares."""
    settings = GenerationSettings(**kwargs)
    with torch.no_grad():
        states = model.encode(input_ids, attention_mask)
    start = torch.zeros(states.shape[0], 1, dtype=torch.long)
    return compiled_generate(model, states, attention_mask, start, settings, None, weight_layout)


def test_static_step_uncompiled_equals_the_cached_decoder(pair):
    model, input_ids, attention_mask = pair
    tokens = torch.randint(2, 90, (5, 7), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        states = model.encode(input_ids, attention_mask)
        eager = DecoderStepper(model, states, attention_mask, max_length=8)
        step = StaticDecoderStep(model, 8, 16, max_length=16)  # larger than needed: masked
        reset_static_step(step, model, states, attention_mask, tokens[:, :1])
        for t in range(7):
            step.position.fill_(t)
            bias = step.self_bias()  # (1, heads, 1, max_length)
            assert (bias[..., t + 1 :] == torch.finfo(bias.dtype).min).all()  # later slots
            expected = eager(tokens[:, : t + 1])  # (5, vocab)
            got = step(torch.cat([tokens[:, t : t + 1], torch.zeros(3, 1, dtype=torch.long)]))
            scale = expected.abs().max().item()
            torch.testing.assert_close(got[:5], expected, rtol=1e-5, atol=1e-5 * scale)


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
        compiled_ids = model.generate(
            input_ids, attention_mask, compile=True,
            generator=torch.Generator().manual_seed(5), **kwargs,
        )  # fmt: skip
        torch.testing.assert_close(compiled_ids, eager, rtol=0, atol=0)
    assert len(_compiled_steps[model]) == 1  # one shape: compiled once, reused
    assert _unique_graphs() - graphs <= 2  # greedy_step and the step: no new graph per step
    # the premise: some rows stopped at EOS, so padding and stopping were exercised
    assert (compiled_ids == EOS).any()
    # rows that all stop early: the compiled greedy search ends and trims as eager does
    eager = model.generate(input_ids[:2], attention_mask[:2], max_new_tokens=10)
    compiled_ids = model.generate(input_ids[:2], attention_mask[:2], max_new_tokens=10,
                                  compile=True)  # fmt: skip
    assert eager.shape[1] < 11 and (eager == EOS).any(dim=1).all()
    torch.testing.assert_close(compiled_ids, eager, rtol=0, atol=0)


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
        compiled_ids = model.generate(
            input_ids, attention_mask, max_new_tokens=10, compile=True,
            generator=torch.Generator().manual_seed(2), **kwargs,
        )  # fmt: skip
        torch.testing.assert_close(compiled_ids, eager, rtol=0, atol=0)
    # batches 5 and 2, and 5 x 3 beams: buckets of 8, 2 and 16 rows
    assert sorted(key[0] for key in _compiled_steps[model]) == [2, 8, 16]


def test_batch_sizes_share_a_power_of_two_bucket():
    """Batches of 3 and 4 rows share one compiled step of 4 rows; each gets eager's tokens."""
    assert [batch_bucket(n) for n in (1, 2, 3, 4, 5, 8, 9)] == [1, 2, 4, 4, 8, 8, 16]
    _, model = reference_pair(6)
    input_ids, attention_mask = padded_batch(6, batch_size=4)
    for rows in (3, 4, 3):
        eager = model.generate(input_ids[:rows], attention_mask[:rows], max_new_tokens=6)
        compiled_ids = model.generate(input_ids[:rows], attention_mask[:rows], max_new_tokens=6,
                                      compile=True)  # fmt: skip
        torch.testing.assert_close(compiled_ids, eager, rtol=0, atol=0)
    assert [key[0] for key in _compiled_steps[model]] == [4]


def test_compiled_unequal_depths_tied_head_padded_batch():
    # 1 encoder layer, 3 decoder layers, ReLU, tied embeddings (the head's rescale)
    _, model = reference_pair(2, num_layers=1, num_decoder_layers=3, feed_forward_proj="relu",
                              tied=True, eos_weight=2.0)  # fmt: skip
    input_ids, attention_mask = padded_batch(2, batch_size=4, src_len=7)
    eager = model.generate(input_ids, attention_mask, max_new_tokens=8)
    compiled_ids = model.generate(input_ids, attention_mask, max_new_tokens=8, compile=True)
    torch.testing.assert_close(compiled_ids, eager, rtol=0, atol=0)
    # a second call with other inputs of the same shape reuses the step, reset
    other_ids, other_mask = padded_batch(5, batch_size=4, src_len=7)
    eager = model.generate(other_ids, other_mask, max_new_tokens=8)
    compiled_ids = model.generate(other_ids, other_mask, max_new_tokens=8, compile=True)
    torch.testing.assert_close(compiled_ids, eager, rtol=0, atol=0)
    assert len(_compiled_steps[model]) == 1


def test_two_models_of_one_shape_each_decode_with_their_own_weights(pair):
    """A second model of the same configuration may share the compiled code, not the weights."""
    model, input_ids, attention_mask = pair
    _, other = reference_pair(7)
    for owner in (other, model):
        eager = owner.generate(input_ids, attention_mask, max_new_tokens=10)
        compiled_ids = owner.generate(input_ids, attention_mask, max_new_tokens=10, compile=True)
        torch.testing.assert_close(compiled_ids, eager, rtol=0, atol=0)
    assert not torch.equal(other.generate(input_ids, attention_mask, max_new_tokens=10), eager)


def test_many_shapes_compile_without_hitting_dynamo_limits():
    """Each stepper has its own code object: no shape competes for dynamo's graphs per code."""
    _, model = reference_pair(3, num_layers=1)
    input_ids, attention_mask = padded_batch(3, batch_size=2, src_len=5)
    limit = torch._dynamo.config.recompile_limit
    lengths = [SHAPE_MULTIPLE * k for k in range(1, limit + 2)]  # one bucket per length
    for max_new_tokens in lengths:  # one shape more than a code object may hold
        eager = model.generate(input_ids, attention_mask, max_new_tokens=max_new_tokens)
        compiled_ids = model.generate(
            input_ids, attention_mask, max_new_tokens=max_new_tokens, compile=True
        )
        torch.testing.assert_close(compiled_ids, eager, rtol=0, atol=0)
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
            compiled_ids = model.generate(input_ids, mask, max_new_tokens=max_new_tokens,
                                          compile=True)  # fmt: skip
            torch.testing.assert_close(compiled_ids, eager, rtol=0, atol=0)
    assert [key[:3] for key in _compiled_steps[model]] == [(4, 16, 16)]


def test_a_change_to_the_model_between_searches_is_seen(pair):
    """Guards are skipped within a search but checked at its first step: a changed model recompiles."""
    model, input_ids, attention_mask = pair
    before = model.generate(input_ids, attention_mask, max_new_tokens=10, compile=True)
    norm = model.decoder.blocks[-1].feed_forward_norm
    old_eps = norm.eps
    try:
        norm.eps = 1e6  # a module attribute the compiled graph read as a constant
        eager = model.generate(input_ids, attention_mask, max_new_tokens=10)
        compiled_ids = model.generate(input_ids, attention_mask, max_new_tokens=10, compile=True)
        torch.testing.assert_close(compiled_ids, eager, rtol=0, atol=0)
        assert not torch.equal(compiled_ids, before)  # the premise: the change changes the tokens
    finally:
        norm.eps = old_eps
    again = model.generate(input_ids, attention_mask, max_new_tokens=10, compile=True)
    torch.testing.assert_close(again, before, rtol=0, atol=0)


def test_the_model_keeps_sdpa_and_the_compiled_cpu_step_traces_plain_attention(pair):
    model, input_ids, attention_mask = pair
    model.generate(input_ids, attention_mask, max_new_tokens=10, compile=True)
    layers = [m for m in model.modules() if hasattr(m, "implementation")]
    assert {layer.implementation for layer in layers} == {"sdpa"}  # set back after tracing
    seen = []
    with compiled.plain_attention(compiled.attention_layers(model.decoder)):
        seen = {m.implementation for m in model.decoder.modules() if hasattr(m, "implementation")}
    assert seen == {"eager"}


# --- weight layouts: a rule, overridable; a timing only when asked for by name -------------


def test_the_auto_layout_is_a_rule_on_shape_rows_and_device(pair, monkeypatch):
    model, _, _ = pair

    def no_timing(*args, **kwargs):
        raise AssertionError("the rule must not time anything")

    monkeypatch.setattr(compiled, "layout_seconds", no_timing)
    names = step_matrices(model)
    wide = [n for n in names if model.get_parameter(n).shape[0] > model.get_parameter(n).shape[1]]
    assert wide and len(wide) < len(names)  # the premise: both kinds of matrix
    for rows in range(1, TRANSPOSED_MAX_ROWS + 1):
        assert transposed_matrices(model, rows) == wide
    assert transposed_matrices(model, TRANSPOSED_MAX_ROWS + 1) == []
    assert transposed_matrices(model, 1, "model") == []
    assert transposed_matrices(model, 8, "transposed") == names
    with pytest.raises(ValueError, match="weight_layout"):
        transposed_matrices(model, 1, "fastest")


def test_autotune_copies_what_measured_clearly_faster(pair, monkeypatch):
    model, _, _ = pair
    head = tuple(model.lm_head.weight.shape)
    monkeypatch.setattr(
        compiled, "layout_seconds",
        lambda matrices, rows: {tuple(w.shape): [1.0, 0.1 if tuple(w.shape) == head else 1.0]
                                for w in matrices},
    )  # fmt: skip
    assert transposed_matrices(model, 4, "autotune") == ["lm_head.weight"]


def test_layout_seconds_times_both_layouts_of_every_shape(pair):
    model, _, _ = pair
    names = step_matrices(model)
    assert "lm_head.weight" in names and not any(".cross_attention.k." in n for n in names)
    matrices = [model.get_parameter(name).detach() for name in names]
    seconds = layout_seconds(matrices, rows=1, passes=1)
    assert set(seconds) == {tuple(w.shape) for w in matrices}
    assert all(len(pair_) == 2 and min(pair_) > 0 for pair_ in seconds.values())


@pytest.mark.parametrize("layout", ["transposed", "auto"])
def test_compiled_step_follows_weights_edited_in_place(layout):
    """Copies refilled at every search: in-place updates, even through .data, are followed."""
    _, model = reference_pair(1)
    input_ids, attention_mask = padded_batch(1, batch_size=1)  # one row: "auto" copies too
    head = model.lm_head.weight
    tokens = []
    for edit in (None, lambda: head.data.mul_(-1), lambda: head.data.copy_(head.data.roll(1, 0))):
        if edit is not None:
            edit()  # no version counter moves
        eager = model.generate(input_ids, attention_mask, max_new_tokens=8)
        compiled_ids = compiled_tokens(model, input_ids, attention_mask, layout, max_new_tokens=8)
        torch.testing.assert_close(compiled_ids, eager, rtol=0, atol=0)
        (step,) = _compiled_steps[model].values()
        assert "lm_head.weight" in step.static.weights  # the premise: copies in use
        tokens.append(compiled_ids)
    assert not torch.equal(tokens[0], tokens[1]) and not torch.equal(tokens[1], tokens[2])


def test_inference_mode_then_a_weight_update_then_generate_again(pair):
    """Buffers and copies are ordinary tensors whatever mode made them."""
    _, model = reference_pair(8)
    input_ids, attention_mask = padded_batch(8, batch_size=1)
    with torch.inference_mode():
        first = model.generate(input_ids, attention_mask, max_new_tokens=6, compile=True)
    (step,) = _compiled_steps[model].values()
    assert not any(t.is_inference() for t in step.static.static_tensors())
    assert not any(t.is_inference() for t in step.static.weights.values())
    with torch.no_grad():  # an optimiser's update, in place
        for param in model.parameters():
            param.mul_(0.9)
    eager = model.generate(input_ids, attention_mask, max_new_tokens=6)
    again = model.generate(input_ids, attention_mask, max_new_tokens=6, compile=True)
    torch.testing.assert_close(again, eager, rtol=0, atol=0)
    assert first.shape[0] == again.shape[0]


def test_compiling_logs_and_prints_nothing(capsys, caplog):
    _, model = reference_pair(9, num_layers=1)
    input_ids, attention_mask = padded_batch(9, batch_size=1)
    with caplog.at_level(logging.INFO, logger="t5mini.compiled"):
        model.generate(input_ids, attention_mask, max_new_tokens=4, compile=True)
    assert capsys.readouterr().out == ""
    assert any("compiled the greedy step" in record.getMessage() for record in caplog.records)


def test_a_static_cache_too_large_names_max_new_tokens(pair):
    model, _, _ = pair
    with pytest.raises(MemoryError, match="max_new_tokens"):
        StaticDecoderStep(model, batch_size=1, src_len=16, max_length=10**15)
