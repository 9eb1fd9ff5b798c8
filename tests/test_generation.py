"""t5mini.generation against transformers' `generate` on shared random weights.

Random T5 models hardly ever emit EOS, so `reference_pair` makes EOS likely: the decoder's
final RMSNorm blows up hidden unit 0 and only the EOS row of the head reads it. EOS then wins
at some steps of some rows and not others, which is what the EOS handling needs to be tested.
"""

from __future__ import annotations

import copy

import pytest
import torch
import transformers
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from transformers.generation import logits_process as hf_lp

from t5mini.attention import T5Attention, causal_bias
from t5mini.convert import from_hf
from t5mini.generation import (
    CACHE_CHUNK,
    KVCache,
    apply_repetition_penalty,
    generate,
    init_cache,
    top_k_filter,
    top_p_filter,
)
from t5mini.position import RelativePositionBias
from tests.tolerance import assert_close_to_truth

VOCAB = 96
EOS = 1


def reference_pair(
    seed: int = 0,
    *,
    num_layers: int = 2,
    num_decoder_layers: int | None = None,
    feed_forward_proj: str = "gated-gelu",
    tied: bool = False,
    eos_weight: float = 1.5,
):
    """A transformers T5 with varied random weights and a t5mini copy of it (both in eval mode)."""
    config = transformers.T5Config(
        vocab_size=VOCAB,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=num_layers,
        num_decoder_layers=num_decoder_layers,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=20,
        feed_forward_proj=feed_forward_proj,
        tie_word_embeddings=tied,
        dropout_rate=0.0,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=EOS,
    )
    torch.manual_seed(seed)
    hf = transformers.T5ForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, param in hf.named_parameters():
            if "layer_norm" not in name:  # the default init gives near-constant outputs
                param.normal_(0.0, 1.0)
        hf.decoder.final_layer_norm.weight[0] = 5.0
        head = hf.get_output_embeddings().weight  # the shared embedding when tied
        head[:, 0] = 0.0
        head[EOS, 0] = eos_weight * (config.d_model**0.5 if tied else 1.0)
    return hf, from_hf(hf).eval()


def padded_batch(seed: int = 0, batch_size: int = 5, src_len: int = 9):
    """Random source ids with rows padded to different lengths."""
    gen = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(2, VOCAB, (batch_size, src_len), generator=gen)
    lengths = torch.tensor([src_len, src_len - 2, 3, src_len - 4, 1])[:batch_size]
    attention_mask = (torch.arange(src_len)[None, :] < lengths[:, None]).long()
    return input_ids * attention_mask, attention_mask


def hf_generate(hf, input_ids, attention_mask, **kwargs):
    """transformers' generate, quiet about settings it would warn on."""
    with torch.no_grad():
        return hf.generate(input_ids, attention_mask=attention_mask, **kwargs)


def eos_steps(ids: torch.Tensor) -> list[int | None]:
    """The step at which each row emitted EOS, or None."""
    steps = []
    for row in ids.tolist():
        steps.append(row.index(EOS) if EOS in row else None)
    return steps


# --- greedy ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "variant",
    [
        dict(seed=0),
        dict(seed=3, feed_forward_proj="relu", tied=True),
        dict(seed=7, num_layers=3),
    ],
)
def test_greedy_matches_transformers_batched_padded_with_eos(variant):
    hf, model = reference_pair(**variant)
    input_ids, attention_mask = padded_batch(variant["seed"])
    expected = hf_generate(hf, input_ids, attention_mask, max_new_tokens=14)
    # the premise: rows stop at different steps and at least one runs to the limit
    steps = eos_steps(expected)
    stopped = [s for s in steps if s is not None]
    assert len(set(stopped)) >= 2 and None in steps, steps
    for use_cache in (True, False):
        got = model.generate(
            input_ids, attention_mask=attention_mask, max_new_tokens=14, use_cache=use_cache
        )
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_greedy_stops_when_every_row_has_finished():
    hf, model = reference_pair(1, eos_weight=2.0)
    input_ids, attention_mask = padded_batch(1)
    expected = hf_generate(hf, input_ids, attention_mask, max_new_tokens=30)
    assert expected.shape[1] < 31  # stopped early on EOS everywhere
    got = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=30)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert (got[:, 0] == 0).all()  # the decoder start token leads every row


# --- beam search ---------------------------------------------------------------------------

BEAM_SETTINGS = [
    dict(num_beams=4, length_penalty=0.6, early_stopping=True),
    dict(num_beams=4, length_penalty=1.0, early_stopping=False),
    dict(num_beams=4, length_penalty=2.0, early_stopping=False, num_return_sequences=3),
    dict(num_beams=3, length_penalty=1.0, early_stopping="never", num_return_sequences=2),
    dict(num_beams=4, length_penalty=-0.5, early_stopping="never"),
    dict(num_beams=5, length_penalty=0.0, early_stopping=True, num_return_sequences=5),
    dict(num_beams=2, length_penalty=0.6, early_stopping=True, repetition_penalty=1.4),
    dict(num_beams=3, min_new_tokens=5),
]


@pytest.mark.parametrize("settings", BEAM_SETTINGS, ids=lambda s: str(sorted(s.items())))
@pytest.mark.parametrize("seed", [0, 1])
# min_new_tokens=5 against max_new_tokens=4 is a case we test on purpose; transformers warns
@pytest.mark.filterwarnings("ignore:Unfeasible length constraints:UserWarning")
def test_beam_search_matches_transformers(settings, seed):
    hf, model = reference_pair(seed)
    input_ids, attention_mask = padded_batch(seed)
    for max_new_tokens in (4, 12):
        expected = hf_generate(
            hf, input_ids, attention_mask, max_new_tokens=max_new_tokens, **settings
        )
        got = model.generate(
            input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens, **settings
        )
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_beam_search_finishes_hypotheses_early():
    """The premise of the beam tests: some hypotheses end with EOS before the limit."""
    hf, model = reference_pair(0)
    input_ids, attention_mask = padded_batch(0)
    got = model.generate(
        input_ids, attention_mask=attention_mask, max_new_tokens=12, num_beams=4,
        length_penalty=0.6, early_stopping=True, num_return_sequences=4,
    )  # fmt: skip
    steps = eos_steps(got)
    assert any(s is not None and s < 12 for s in steps), steps


def test_beam_search_cache_off_equals_cache_on():
    _, model = reference_pair(2)
    input_ids, attention_mask = padded_batch(2)
    kwargs = dict(max_new_tokens=10, num_beams=4, length_penalty=0.6, num_return_sequences=2)
    on = model.generate(input_ids, attention_mask=attention_mask, use_cache=True, **kwargs)
    off = model.generate(input_ids, attention_mask=attention_mask, use_cache=False, **kwargs)
    torch.testing.assert_close(on, off, rtol=0, atol=0)


# --- sampling ------------------------------------------------------------------------------

SAMPLE_SETTINGS = [
    dict(),  # top_k=50 by default, as in transformers
    dict(temperature=0.7, top_k=10, top_p=0.9),
    dict(top_k=0, top_p=0.6, num_return_sequences=3),
    dict(temperature=1.5, top_k=0, repetition_penalty=1.3, min_new_tokens=3),
    dict(num_beams=3, temperature=1.3),
    dict(num_beams=3, num_return_sequences=2, top_p=0.8, length_penalty=0.6),
]


@pytest.mark.parametrize("settings", SAMPLE_SETTINGS, ids=lambda s: str(sorted(s.items())))
def test_sampling_matches_transformers_under_the_same_seed(settings):
    # transformers draws from the global generator, t5mini from the one passed in; seeded
    # alike, both consume it the same way (one multinomial draw over the batch per step).
    hf, model = reference_pair(4)
    input_ids, attention_mask = padded_batch(4)
    torch.manual_seed(1234)
    expected = hf_generate(
        hf, input_ids, attention_mask, do_sample=True, max_new_tokens=10, **settings
    )
    got = model.generate(
        input_ids,
        attention_mask=attention_mask,
        do_sample=True,
        max_new_tokens=10,
        generator=torch.Generator().manual_seed(1234),
        **settings,
    )
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_sampling_is_reproducible_with_a_seeded_generator():
    _, model = reference_pair(4)
    input_ids, attention_mask = padded_batch(4)

    def sample(seed: int, use_cache: bool = True) -> torch.Tensor:
        return model.generate(
            input_ids,
            attention_mask=attention_mask,
            do_sample=True,
            top_k=0,
            max_new_tokens=12,
            generator=torch.Generator().manual_seed(seed),
            use_cache=use_cache,
        )

    first = sample(7)
    torch.manual_seed(0)  # the global generator is not used
    torch.testing.assert_close(sample(7), first, rtol=0, atol=0)
    torch.testing.assert_close(sample(7, use_cache=False), first, rtol=0, atol=0)
    assert not torch.equal(sample(8), first)


# --- controls: repetition penalty and min_new_tokens ---------------------------------------


@pytest.mark.parametrize("penalty", [0.7, 1.3, 2.0])
def test_repetition_penalty_matches_transformers(penalty):
    hf, model = reference_pair(6)
    input_ids, attention_mask = padded_batch(6)
    expected = hf_generate(
        hf, input_ids, attention_mask, max_new_tokens=12, repetition_penalty=penalty
    )
    got = model.generate(
        input_ids, attention_mask=attention_mask, max_new_tokens=12, repetition_penalty=penalty
    )
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    plain = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=12)
    assert not torch.equal(got, plain)  # the penalty changed something


def test_min_new_tokens_matches_transformers():
    hf, model = reference_pair(0, eos_weight=4.0)
    input_ids, attention_mask = padded_batch(0)
    plain = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=12)
    assert min(s for s in eos_steps(plain) if s is not None) < 6  # EOS comes early without it
    expected = hf_generate(hf, input_ids, attention_mask, max_new_tokens=12, min_new_tokens=6)
    got = model.generate(
        input_ids, attention_mask=attention_mask, max_new_tokens=12, min_new_tokens=6
    )
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert all(s is None or s > 6 for s in eos_steps(got))


def test_max_new_tokens_zero_returns_the_start_token():
    _, model = reference_pair(0)
    input_ids, attention_mask = padded_batch(0)
    got = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=0)
    torch.testing.assert_close(got, torch.zeros(5, 1, dtype=torch.long), rtol=0, atol=0)


# --- the processors, one by one, against transformers' ------------------------------------


def test_processors_match_transformers_processors():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(4, 50, generator=gen) * 3
    scores[0, :10] = scores[0, 10]  # ties at the top-k border
    sequences = torch.randint(0, 50, (4, 7), generator=gen)
    for k, keep in [(1, 1), (5, 1), (10, 2), (60, 1), (1, 2)]:
        expected = hf_lp.TopKLogitsWarper(k, min_tokens_to_keep=keep)(sequences, scores)
        torch.testing.assert_close(top_k_filter(scores, k, keep), expected, rtol=0, atol=0)
    for p, keep in [(0.05, 1), (0.5, 1), (0.9, 2), (1.0, 1)]:
        expected = hf_lp.TopPLogitsWarper(p, min_tokens_to_keep=keep)(sequences, scores)
        torch.testing.assert_close(top_p_filter(scores, p, keep), expected, rtol=0, atol=0)
    for penalty in [0.5, 1.2, 3.0]:
        expected = hf_lp.RepetitionPenaltyLogitsProcessor(penalty)(sequences, scores.clone())
        got = apply_repetition_penalty(scores, sequences, penalty)
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


# --- the cache -----------------------------------------------------------------------------


def greedy_by_full_forward(model, input_ids, attention_mask, max_new_tokens):
    """The slow reference: run the whole model on the whole prefix at every step."""
    decoder_input_ids = torch.zeros(input_ids.shape[0], 1, dtype=torch.long)
    finished = torch.zeros(input_ids.shape[0], dtype=torch.bool)
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = model(
                input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids
            ).logits
            next_tokens = logits[:, -1].argmax(-1).masked_fill(finished, 0)
            decoder_input_ids = torch.cat([decoder_input_ids, next_tokens[:, None]], dim=1)
            finished |= next_tokens == EOS
            if finished.all():
                break
    return decoder_input_ids


@pytest.mark.parametrize("num_layers, num_decoder_layers, seed", [(2, 2, 1), (3, 1, 4), (1, 3, 2)])
def test_cache_on_equals_cache_off_and_full_forward(num_layers, num_decoder_layers, seed):
    # transformers 5.x generate fails when num_decoder_layers != num_layers, so the reference
    # here is a greedy loop over t5mini's own full forward (which matches transformers' forward).
    hf, model = reference_pair(
        seed, num_layers=num_layers, num_decoder_layers=num_decoder_layers, eos_weight=2.0
    )
    input_ids, attention_mask = padded_batch(seed)
    with torch.no_grad():
        decoder_input_ids = torch.randint(2, VOCAB, (5, 6))
        ours = model(input_ids, attention_mask, decoder_input_ids=decoder_input_ids).logits
        theirs = hf(
            input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids
        ).logits
    # the large random weights give logits in the hundreds: compare relative to their scale
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5 * theirs.abs().max().item())
    expected = greedy_by_full_forward(model, input_ids, attention_mask, 12)
    steps = eos_steps(expected)
    assert len({s for s in steps if s is not None}) >= 2 and None in steps, steps
    for use_cache in (True, False):
        got = model.generate(
            input_ids, attention_mask=attention_mask, max_new_tokens=12, use_cache=use_cache
        )
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_cached_steps_give_the_full_forward_logits():
    _, model = reference_pair(1, num_layers=2, num_decoder_layers=3)
    input_ids, attention_mask = padded_batch(1)
    decoder_input_ids = torch.randint(2, VOCAB, (5, 7))
    with torch.no_grad():
        encoder_hidden_states = model.encode(input_ids, attention_mask)
        full = model.decode(decoder_input_ids, encoder_hidden_states, attention_mask)
        cache = init_cache(model, encoder_hidden_states, attention_mask, max_length=7)
        steps = [
            model.decode(decoder_input_ids[:, :3], encoder_hidden_states, attention_mask, cache)
        ]
        for t in range(3, 7):  # then one token at a time
            steps.append(
                model.decode(
                    decoder_input_ids[:, t : t + 1], encoder_hidden_states, attention_mask, cache
                )
            )
        assert cache.length == 7
        # the truth: the same weights in float64. Incremental and full decoding multiply
        # matrices of different shapes, so each has its own fp32 rounding; the stepped
        # logits may be off the truth by a few times the full forward's own error.
        exact = copy.deepcopy(model).double()
        truth = exact.decode(
            decoder_input_ids, exact.encode(input_ids, attention_mask), attention_mask
        )
    stepped = torch.cat(steps, dim=1)
    assert_close_to_truth(stepped, full, truth, "stepped logits", factor=8.0, steps=64.0)


def test_the_encoder_runs_once(monkeypatch):
    _, model = reference_pair(0)
    input_ids, attention_mask = padded_batch(0)
    calls = []
    encode = model.encode
    monkeypatch.setattr(model, "encode", lambda *a, **k: calls.append(1) or encode(*a, **k))
    model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=6, num_beams=3)
    model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=6)
    assert len(calls) == 2


def test_generate_function_and_method_agree():
    _, model = reference_pair(2)
    input_ids, attention_mask = padded_batch(2)
    torch.testing.assert_close(
        generate(model, input_ids, attention_mask, max_new_tokens=8, num_beams=2),
        model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=8, num_beams=2),
        rtol=0,
        atol=0,
    )


# --- invalid arguments -----------------------------------------------------------------------

BAD_ARGUMENTS = [
    (dict(num_beams=0), ValueError, "num_beams"),
    (dict(num_beams=2.0), TypeError, "num_beams"),
    (dict(num_beams=True), TypeError, "num_beams"),
    (dict(top_p=0.0), ValueError, "top_p"),
    (dict(top_p=1.5), ValueError, "top_p"),
    (dict(top_p=float("nan")), ValueError, "top_p"),
    (dict(top_p="0.9"), TypeError, "top_p"),
    (dict(do_sample=True, temperature=0.0), ValueError, "temperature"),
    (dict(do_sample=True, temperature=-1.0), ValueError, "temperature"),
    (dict(do_sample=True, temperature=1e-300), ValueError, "temperature"),
    (dict(do_sample=True, temperature=float("nan")), ValueError, "temperature"),
    (dict(temperature="hot"), TypeError, "temperature"),
    (dict(max_new_tokens=-1), ValueError, "max_new_tokens"),
    (dict(max_new_tokens=2.5), TypeError, "max_new_tokens"),
    (dict(max_new_tokens=None), TypeError, "max_new_tokens"),
    (dict(min_new_tokens=-2), ValueError, "min_new_tokens"),
    (dict(min_new_tokens=1.0), TypeError, "min_new_tokens"),
    (dict(top_k=-1), ValueError, "top_k"),
    (dict(top_k=5.0), TypeError, "top_k"),
    (dict(repetition_penalty=0.0), ValueError, "repetition_penalty"),
    (dict(repetition_penalty=float("inf")), ValueError, "repetition_penalty"),
    (dict(repetition_penalty=[1.2]), TypeError, "repetition_penalty"),
    (dict(num_beams=2, length_penalty=float("inf")), ValueError, "length_penalty"),
    (dict(num_beams=2, length_penalty=1e6), ValueError, "length_penalty"),
    (dict(num_beams=2, length_penalty=-1e6), ValueError, "length_penalty"),
    (dict(num_beams=2, length_penalty="long"), TypeError, "length_penalty"),
    (dict(num_beams=2, length_penalty_style="t5"), ValueError, "length_penalty_style"),
    (dict(num_beams=2, length_penalty_style=None), ValueError, "length_penalty_style"),
    (dict(num_return_sequences=0), ValueError, "num_return_sequences"),
    (dict(num_beams=2, num_return_sequences=3), ValueError, "num_return_sequences"),
    (dict(num_return_sequences=2), ValueError, "num_return_sequences"),
    (dict(num_return_sequences=1.0), TypeError, "num_return_sequences"),
    (dict(num_beams=2, early_stopping="sometimes"), ValueError, "early_stopping"),
    (dict(num_beams=2, early_stopping=1), ValueError, "early_stopping"),
    (dict(do_sample="yes"), TypeError, "do_sample"),
    (dict(do_sample=1), TypeError, "do_sample"),
    (dict(use_cache=1), TypeError, "use_cache"),
    (dict(compile="yes"), TypeError, "compile"),
    (dict(compile=True, use_cache=False), ValueError, "use_cache"),
    (dict(generator=1234), TypeError, "generator"),
    (dict(weight_layout="transposed"), ValueError, "weight_layout"),  # eager: the model's own
    (dict(weight_layout=None), ValueError, "weight_layout"),
]


@pytest.mark.parametrize(
    "kwargs, error, name", BAD_ARGUMENTS, ids=[str(kwargs) for kwargs, _, _ in BAD_ARGUMENTS]
)
def test_bad_arguments_raise_errors_naming_them(kwargs, error, name):
    _, model = reference_pair(0)
    input_ids, attention_mask = padded_batch(0)
    with pytest.raises(error, match=name):
        model.generate(input_ids, attention_mask=attention_mask, **kwargs)


@pytest.mark.parametrize(
    "input_ids, attention_mask, error, name",
    [
        (torch.ones(4, dtype=torch.long), None, ValueError, "input_ids"),  # not (batch, len)
        (torch.ones(2, 3), None, TypeError, "input_ids"),  # float ids
        (torch.ones(2, 3, dtype=torch.int16), None, TypeError, "input_ids"),
        ([[5, 6, 7]], None, TypeError, "input_ids"),  # a list, not a tensor
        (torch.full((2, 3), VOCAB), None, ValueError, "input_ids"),  # outside the vocabulary
        (torch.full((2, 3), -1), None, ValueError, "input_ids"),
        (torch.ones(2, 0, dtype=torch.long), None, ValueError, "input_ids"),  # no tokens
        (torch.ones(2, 3, dtype=torch.long), torch.ones(2, 4), ValueError, "attention_mask"),
        (torch.ones(2, 3, dtype=torch.long), [[1, 1, 1]] * 2, TypeError, "attention_mask"),
    ],
)
def test_bad_inputs_raise_errors_naming_them(input_ids, attention_mask, error, name):
    _, model = reference_pair(0)
    with pytest.raises(error, match=name):
        model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=3)


def test_generate_returns_an_ordinary_tensor():
    """Not an inference tensor: the caller may modify it in place."""
    _, model = reference_pair(0)
    input_ids, attention_mask = padded_batch(0)
    for kwargs in (dict(), dict(num_beams=2), dict(max_new_tokens=0)):
        out = model.generate(input_ids, attention_mask=attention_mask, **kwargs)
        assert not out.is_inference()
        out.masked_fill_(out == 0, 5)  # raises for an inference tensor
        assert (out != 0).all()


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(),
        dict(num_beams=3, num_return_sequences=2),
        dict(do_sample=True, num_return_sequences=2),
    ],
)
def test_an_empty_batch_gives_an_empty_result(kwargs):
    _, model = reference_pair(0)
    input_ids = torch.zeros(0, 5, dtype=torch.long)
    out = model.generate(input_ids, attention_mask=torch.ones(0, 5), max_new_tokens=4, **kwargs)
    assert out.shape == (0, 1) and out.dtype == torch.long


def test_extreme_but_valid_penalties_and_temperature_work():
    input_ids, attention_mask = padded_batch(0)
    hf, model = reference_pair(0)
    outputs = {}
    for length_penalty in (10.0, -10.0):  # the bounds: |y| ** alpha stays finite
        kwargs = dict(max_new_tokens=12, num_beams=3, length_penalty=length_penalty)
        expected = hf_generate(hf, input_ids, attention_mask, **kwargs)
        outputs[length_penalty] = model.generate(input_ids, attention_mask=attention_mask, **kwargs)
        torch.testing.assert_close(outputs[length_penalty], expected, rtol=0, atol=0)
    # +10 favours long hypotheses, -10 short ones: the returned lengths differ
    long_ends, short_ends = (eos_steps(outputs[alpha]) for alpha in (10.0, -10.0))
    assert long_ends != short_ends
    assert sum(s or 13 for s in long_ends) > sum(s or 13 for s in short_ends)
    # the smallest temperature allowed samples (almost) greedily, without NaN
    greedy = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=8)
    cold = model.generate(
        input_ids, attention_mask=attention_mask, max_new_tokens=8, do_sample=True, top_k=0,
        temperature=1e-4, generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    torch.testing.assert_close(cold, greedy, rtol=0, atol=0)


def test_gnmt_length_penalty_uses_its_own_normaliser():
    """length_penalty_style="gnmt" ranks finished hypotheses by log p / ((5 + |y|) / 6) ** α."""
    from t5mini.generation import BeamStep, DecoderStepper, GenerationSettings, beam_search

    _, model = reference_pair(0)
    input_ids, attention_mask = padded_batch(0)
    scores = {}
    for style in ("transformers", "gnmt"):
        settings = GenerationSettings(
            max_new_tokens=8, num_beams=3, length_penalty=0.6, length_penalty_style=style
        )
        history: list[BeamStep] = []
        with torch.no_grad():
            states = model.encode(input_ids, attention_mask).repeat_interleave(3, dim=0)
            step = DecoderStepper(model, states, attention_mask.repeat_interleave(3, dim=0), 9)
            beam_search(step, torch.zeros(15, 1, dtype=torch.long), settings, EOS, 0,
                        on_step=history.append)  # fmt: skip
        final = history[-1]
        divisor = final.finished_lengths.double()
        divisor = (5 + divisor) / 6 if style == "gnmt" else divisor
        log_p = final.finished_scores.double() * divisor**0.6  # undo the normalisation
        with torch.no_grad():  # recompute log p of each hypothesis by a teacher-forced pass
            for row in range(5):
                for slot in range(3):
                    length = int(final.finished_lengths[row, slot])
                    ids = final.finished[row, slot, : 1 + length][None]
                    logits = model(
                        input_ids[row : row + 1], attention_mask[row : row + 1],
                        decoder_input_ids=ids[:, :-1],
                    ).logits  # fmt: skip
                    total = logits.log_softmax(-1).gather(2, ids[:, 1:, None]).sum().double()
                    torch.testing.assert_close(log_p[row, slot], total, rtol=1e-4, atol=1e-3)
        scores[style] = final.finished_scores
    assert not torch.equal(scores["transformers"], scores["gnmt"])


@pytest.mark.parametrize("reserve", [CACHE_CHUNK, 2])
def test_kv_cache_matches_full_causal_attention(reserve: int) -> None:
    torch.manual_seed(2)
    layer = T5Attention(32, 8, 4).eval()
    position = RelativePositionBias(32, 128, 4, bidirectional=False)
    x = torch.randn(2, 9, 32)
    with torch.no_grad():
        full = layer(x, bias=position(9, 9) + causal_bias(9, 9, torch.float32))
        cache = KVCache(2, 4, max_length=12, d_kv=8, reserve=reserve)  # 2: grows 2, 4, 8, 12
        pieces = [
            layer(x[:, :4], bias=position(4, 4) + causal_bias(4, 4, torch.float32), cache=cache)
        ]
        for t in range(4, 9):
            pieces.append(
                layer(x[:, t : t + 1], bias=position(1, t + 1, query_offset=t), cache=cache)
            )
    assert cache.length == 9 and cache.key.shape == (2, 4, 12, 8)  # grown to max_length
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-6, rtol=1e-5)


def test_kv_cache_overflow_and_reorder() -> None:
    cache = KVCache(3, 2, max_length=4, d_kv=5)
    key = torch.arange(3.0)[:, None, None, None].expand(3, 2, 3, 5)
    cache.update(key, key)
    with pytest.raises(ValueError, match="max_length=4"):
        cache.update(key, key)
    cache.reorder(torch.tensor([2, 2, 0]))
    assert cache.key[:, 0, 0, 0].tolist() == [2.0, 2.0, 0.0]
    cache.reorder(torch.tensor([0, 1, 1, 2, 2]))  # grows the batch (beam expansion)
    assert cache.key.shape[0] == 5 and cache.value[:, 0, 0, 0].tolist() == [2.0, 2.0, 2.0, 0.0, 0.0]


# --- memory: linear in max_length ------------------------------------------------------------


class _AllocationAudit(TorchDispatchMode):
    """Records the number of elements of every tensor an operation returns."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in tree_flatten(out)[0]:
            if isinstance(value, torch.Tensor):
                self.sizes.append(value.numel())
        return out


def test_init_cache_allocates_a_chunk_not_max_length():
    _, model = reference_pair(0)
    heads, d_kv, max_length = model.config.num_heads, model.config.d_kv, 4000
    audit = _AllocationAudit()
    with torch.no_grad(), audit:
        cache = init_cache(model, torch.randn(2, 5, 32), None, max_length=max_length)
    assert cache.bias_by_key.shape == (heads, CACHE_CHUNK)
    assert cache.self_attention[0].key.shape == (2, heads, CACHE_CHUNK, d_kv)
    # the largest tensors are the first chunk of K/V slots; nothing is sized by max_length
    assert max(audit.sizes) == 2 * heads * CACHE_CHUNK * d_kv


def test_the_cache_grows_and_its_logits_stay_right():
    """Past the first chunk the cache doubles; the stepped logits still match a full pass."""
    _, model = reference_pair(1)
    input_ids, attention_mask = padded_batch(1)
    length = 3 * CACHE_CHUNK
    decoder_input_ids = torch.randint(
        2, VOCAB, (5, length), generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        states = model.encode(input_ids, attention_mask)
        full = model.decode(decoder_input_ids, states, attention_mask)
        cache = init_cache(model, states, attention_mask, max_length=10**6)
        capacities, steps = [], []
        for t in range(length):
            steps.append(
                model.decode(decoder_input_ids[:, t : t + 1], states, attention_mask, cache)
            )
            capacities.append((cache.self_attention[0].capacity, cache.bias_by_key.shape[-1]))
    assert sorted(set(capacities)) == [
        (c, c) for c in (CACHE_CHUNK, 2 * CACHE_CHUNK, 4 * CACHE_CHUNK)
    ]
    # the truth: the same weights in float64 (as in the test above)
    with torch.no_grad():
        exact = copy.deepcopy(model).double()
        truth = exact.decode(
            decoder_input_ids, exact.encode(input_ids, attention_mask), attention_mask
        )
    assert_close_to_truth(
        torch.cat(steps, 1), full, truth, "grown-cache logits", factor=8.0, steps=64.0
    )


@pytest.mark.parametrize(
    "settings",
    [
        dict(),
        dict(num_beams=3, length_penalty=0.6),
        dict(do_sample=True, top_k=5, min_new_tokens=80),
    ],
    ids=["greedy", "beam", "sampling"],
)
def test_outputs_longer_than_a_chunk_match_transformers(settings):
    """Decoding past CACHE_CHUNK tokens widens the cache and the outputs; nothing changes."""
    hf, model = reference_pair(5, eos_weight=-8.0)  # EOS (almost) never wins
    input_ids, attention_mask = padded_batch(5)
    max_new_tokens = CACHE_CHUNK + 20
    torch.manual_seed(11)
    expected = hf_generate(hf, input_ids, attention_mask, max_new_tokens=max_new_tokens, **settings)
    got = model.generate(
        input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
        generator=torch.Generator().manual_seed(11), **settings,
    )  # fmt: skip
    assert got.shape[1] > CACHE_CHUNK + 1  # the premise: the buffers had to grow
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_generation_that_stops_early_never_plans_quadratic_memory():
    _, model = reference_pair(1, eos_weight=2.0)
    input_ids, attention_mask = padded_batch(1)
    audit = _AllocationAudit()
    with audit:
        out = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=4000)
    assert out.shape[1] < 100  # EOS everywhere long before the limit
    assert max(audit.sizes) < 4000 * 4000 // 16


def test_names_that_moved_to_appendix_b_still_import_from_generation():
    """`from t5mini.generation import CompiledStepper` and the like keep working."""
    import t5mini.compiled
    import t5mini.generation

    assert t5mini.generation.MOVED_TO_COMPILED
    for name in t5mini.generation.MOVED_TO_COMPILED:
        assert getattr(t5mini.generation, name) is getattr(t5mini.compiled, name), name
    with pytest.raises(AttributeError, match="no_such_name"):
        t5mini.generation.no_such_name  # noqa: B018


def test_eager_generate_accepts_the_model_weight_layout():
    _, model = reference_pair(0)
    input_ids, attention_mask = padded_batch(0)
    for layout in ("auto", "model"):
        torch.testing.assert_close(
            model.generate(input_ids, attention_mask=attention_mask, weight_layout=layout),
            model.generate(input_ids, attention_mask=attention_mask),
            rtol=0,
            atol=0,
        )
